"""CURVE: matching keys make working, encrypted links; keys or mechanisms
that do not match make ``connect`` fail at once with a clear error."""

from __future__ import annotations

import time

import pytest
import zmq
from msgr_zmq import ZmqAuthenticationFailed, ZmqTransport

from msgr_core.errors import AuthenticationFailed, ConfigError
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
