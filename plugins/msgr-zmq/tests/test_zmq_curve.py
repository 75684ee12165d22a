"""CURVE: matching keys make working, encrypted links; keys or mechanisms
that do not match make ``connect`` fail at once with a clear error."""

from __future__ import annotations

import subprocess
import sys
import time
import tomllib

import pytest
import zmq
from msgr_zmq import ZmqAuthenticationFailed, ZmqTransport
from msgr_zmq.keygen import keypair_toml

from msgr_core import Messenger
from msgr_core.errors import AuthenticationFailed, ConfigError, PeerUnreachable
from msgr_core.transport import TransportOptions

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")


def _keys() -> tuple[str, str]:
    public, secret = zmq.curve_keypair()
    return public.decode(), secret.decode()


SERVER_PUB, SERVER_SEC = _keys()
CLIENT_PUB, CLIENT_SEC = _keys()
OTHER_PUB, _ = _keys()
SERVER = {"curve_server": True, "curve_secretkey": SERVER_SEC}


async def _roundtrip(make_transport, make_rec, make_accepting, server: dict, client: dict) -> None:
    accepting = make_accepting()
    listener = await make_transport(settings=server).listen("zmq+tcp://127.0.0.1:0", accepting)
    crec = make_rec()
    link = await make_transport(settings=client).connect(listener.address, crec)
    srec = await accepting.get(0)
    link.send([b"secret", b"x" * 100_000])
    assert [bytes(b) for b in (await srec.wait_frames(1))[0]] == [b"secret", b"x" * 100_000]
    srec.link.send([b"reply"])
    assert (await crec.wait_frames(1))[0] == [b"reply"]


async def test_matching_keys(make_transport, make_rec, make_accepting) -> None:
    client = {"curve_serverkey": SERVER_PUB, "curve_secretkey": CLIENT_SEC, "curve_publickey": CLIENT_PUB}
    await _roundtrip(make_transport, make_rec, make_accepting, SERVER, client)


async def test_client_without_keypair_uses_an_ephemeral_one(make_transport, make_rec, make_accepting) -> None:
    await _roundtrip(make_transport, make_rec, make_accepting, SERVER, {"curve_serverkey": SERVER_PUB})


async def test_one_cluster_keypair(make_transport, make_rec, make_accepting) -> None:
    """curve_server + secret key alone: the node connects with the same
    keypair's public key as the server key."""
    await _roundtrip(make_transport, make_rec, make_accepting, SERVER, SERVER)


async def _expect_refused(make_transport, make_rec, server: dict, client: dict) -> Exception:
    listener = await make_transport(settings=server).listen("zmq+tcp://127.0.0.1:0", lambda: make_rec())
    rec = make_rec()
    t0 = time.monotonic()
    with pytest.raises(ZmqAuthenticationFailed) as info:
        await make_transport(settings=client, connect_timeout=30.0).connect(listener.address, rec)
    assert time.monotonic() - t0 < 5.0, "a security mismatch must fail fast, not time out"
    assert not rec.made.done()
    exc = info.value
    assert isinstance(exc, AuthenticationFailed) and isinstance(exc, PermissionError)
    assert exc.peer == listener.address
    return exc


async def test_wrong_server_key(make_transport, make_rec) -> None:
    exc = await _expect_refused(make_transport, make_rec, SERVER, {"curve_serverkey": OTHER_PUB})
    assert "zmq.curve_serverkey" in str(exc)


async def test_plain_client_to_curve_server(make_transport, make_rec) -> None:
    exc = await _expect_refused(make_transport, make_rec, SERVER, {})
    assert "mechanism mismatch" in str(exc) and "zmq.curve_serverkey" in str(exc)


async def test_curve_client_to_plain_server(make_transport, make_rec) -> None:
    exc = await _expect_refused(make_transport, make_rec, {}, {"curve_serverkey": SERVER_PUB})
    assert "mechanism mismatch" in str(exc)


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"curve_server": True}, "zmq.curve_secretkey"),
        ({"curve_serverkey": "too short"}, "zmq.curve_serverkey"),
        ({"curve_serverkey": "~" * 40}, "zmq.curve_serverkey"),
        ({"curve_secretkey": SERVER_SEC}, "zmq.curve_secretkey"),
        ({"curve_server": True, "curve_secretkey": SERVER_SEC, "curve_publickey": CLIENT_PUB}, "zmq.curve_publickey"),
        ({"curve_server": "yes"}, "zmq.curve_server"),
    ],
)
def test_bad_curve_settings(settings: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        ZmqTransport("zmq+tcp", TransportOptions(settings=settings))
    assert info.value.key == key


# -- per-address server keys, fast failures, messengers, key generation ----------


async def test_server_key_per_address(make_transport, make_rec, make_accepting) -> None:
    """Two listeners with their own keypairs; one client dials both with
    ``curve_serverkeys`` (address -> key), and its own keypair."""
    other_pub, other_sec = _keys()
    acc1, acc2 = make_accepting(), make_accepting()
    l1 = await make_transport(settings=SERVER).listen("zmq+tcp://127.0.0.1:0", acc1)
    l2 = await make_transport(settings={"curve_server": True, "curve_secretkey": other_sec}).listen(
        "zmq+tcp://127.0.0.1:0", acc2
    )
    client = make_transport(
        settings={
            "curve_secretkey": CLIENT_SEC,
            "curve_serverkeys": {l1.address: SERVER_PUB, l2.address: other_pub},
        }
    )
    for listener, accepting in ((l1, acc1), (l2, acc2)):
        rec = make_rec()
        link = await client.connect(listener.address, rec)
        srec = await accepting.get(0)
        link.send([listener.address.encode()])
        assert [bytes(b) for b in (await srec.wait_frames(1))[0]] == [listener.address.encode()]
    # swapped keys: refused, fast, saying CURVE
    swapped = make_transport(settings={"curve_serverkeys": {l1.address: other_pub}}, connect_timeout=3.0)
    with pytest.raises(ZmqAuthenticationFailed, match="CURVE handshake failed"):
        await swapped.connect(l1.address, make_rec())


async def test_wrong_server_key_fails_within_connect_timeout_saying_curve(make_transport, make_rec) -> None:
    listener = await make_transport(settings=SERVER).listen("zmq+tcp://127.0.0.1:0", lambda: make_rec())
    t0 = time.monotonic()
    with pytest.raises(ZmqAuthenticationFailed) as info:
        await make_transport(settings={"curve_serverkey": OTHER_PUB}, connect_timeout=2.0).connect(
            listener.address, make_rec()
        )
    assert time.monotonic() - t0 < 2.0
    assert "CURVE" in str(info.value) and "handshake" in str(info.value)
    assert listener.address in str(info.value)


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"curve_serverkeys": {"tcp://127.0.0.1:1": SERVER_PUB}}, "zmq.curve_serverkeys"),
        ({"curve_serverkeys": {"zmq+tcp://127.0.0.1:1": "short"}}, "zmq.curve_serverkeys.zmq+tcp://127.0.0.1:1"),
        ({"curve_serverkeys": ["x"]}, "zmq.curve_serverkeys"),
    ],
)
def test_bad_serverkeys(settings: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        ZmqTransport("zmq+tcp", TransportOptions(settings=settings))
    assert info.value.key == key


def _messenger(name: str, zmq_settings: dict, *, listen: bool = True, **extra: object) -> Messenger:
    cfg: dict = {
        "messenger": {"name": name, "listen": ["zmq+tcp://127.0.0.1:0"] if listen else [], "transports": ["zmq+tcp"]},
        "zmq": zmq_settings,
        "limits": {"connect_timeout": 3.0},
        **extra,
    }
    return Messenger.from_config(cfg)


async def test_curve_messengers_call_verbs_and_others_cannot() -> None:
    """Two messengers with the cluster keypair call verbs (a 16 MiB
    attachment too); a messenger without CURVE, or with a wrong server key,
    cannot call one: the dial fails with a CURVE error and the handler never runs."""
    called: list[object] = []
    server = _messenger("server", SERVER)
    server.register_handler("echo", lambda msg: called.append(msg.payload) or msg.payload)
    server.register_handler("size", lambda msg: sum(len(a) for a in msg.attachments))
    friend = _messenger("friend", SERVER)
    lossy = {"policy": {"default": "lossy_client"}}
    plain = _messenger("plain", {}, listen=False, **lossy)
    wrong = _messenger("wrong", {"curve_serverkey": OTHER_PUB}, listen=False, **lossy)
    async with server, friend, plain, wrong:
        address = server.addresses[0]
        assert await friend.send_message("echo", address, {"x": 1}, timeout=10) == {"x": 1}
        big = b"\x5a" * (16 * 1024 * 1024)
        assert await friend.send_message("size", address, b"", attachments=[big], timeout=60) == len(big)
        for who, text in ((plain, "mechanism mismatch"), (wrong, "CURVE handshake failed")):
            t0 = time.monotonic()
            with pytest.raises(PeerUnreachable, match=text):
                await who.send_message("echo", address, "intruder", timeout=10)
            assert time.monotonic() - t0 < 3.0
    assert called == [{"x": 1}]


def test_keygen_prints_a_usable_zmq_section() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "msgr_zmq.keygen", "--server"], check=True, capture_output=True, text=True
    ).stdout
    section = tomllib.loads(out)["zmq"]
    assert section["curve_server"] is True
    assert zmq.curve_public(section["curve_secretkey"].encode()).decode() == section["curve_publickey"]
    ZmqTransport("zmq+tcp", TransportOptions(settings=section))  # accepted as is
    client = tomllib.loads(keypair_toml(server=False))["zmq"]
    assert "curve_server" not in client
