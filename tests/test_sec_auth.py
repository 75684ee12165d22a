"""Handshake authentication (``[auth]``): who may call a verb.

Over ``loop://`` and ``tcp://`` (the exchange is transport-independent; the
same tests apply to any scheme).  The raw-peer tests speak the handshake by
hand over a link of the same transport, to send what a real messenger never
would: no key, a wrong key, a replayed proof, a reflected proof, a request
before the proof.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest

from msgr_core import Messenger
from msgr_core import message as m
from msgr_core.auth import NONCE_BYTES, decode_key, generate_key, load_keyring, proof
from msgr_core.errors import AuthenticationFailed, ConfigError, PeerAuthenticationFailed, PeerUnreachable
from msgr_core.transport import Buffer, Link

KEY = generate_key()
OTHER = generate_key()


@pytest.fixture(params=["loop", "tcp"])
def scheme(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _listen(scheme: str, name: str) -> str:
    return {"loop": f"loop://{name}", "tcp": "tcp://127.0.0.1:0"}[scheme]


@pytest.fixture
async def server(scheme: str) -> AsyncIterator[tuple[Messenger, list[Any]]]:
    """A messenger requiring authentication (cluster key KEY) with a verb
    ``secret`` that records every call."""
    ms = Messenger.from_config({"messenger": {"name": "server", "type": "osd", "listen": [_listen(scheme, "srv")]},
                                "auth": {"cluster_key": KEY}, "limits": {"handshake_timeout": 5.0}})
    calls: list[Any] = []
    ms.register_handler("secret", lambda msg: calls.append(msg.payload) or b"the secret")
    ms.register_handler_oneway("secret1", lambda msg: calls.append(msg.payload))
    async with ms:
        yield ms, calls


async def _client(scheme: str, name: str = "client.1", **auth: Any) -> Messenger:
    ms = Messenger.from_config({"messenger": {"name": name, "type": "client", "transports": [scheme]},
                                "policy": {"default": "lossy_client"}, "auth": auth})
    await ms.start()
    return ms


# -- messengers -----------------------------------------------------------------


async def test_same_key_authenticates_both_ways(scheme: str, server: tuple[Messenger, list[Any]]) -> None:
    srv, calls = server
    client = await _client(scheme, cluster_key=KEY)
    try:
        assert await client.send_message("secret", srv.addresses[0], b"hi", timeout=10) == b"the secret"
        assert calls == [b"hi"]
        assert srv.stats["authenticated"] == 1
        assert srv.stats["rejected"] == {}
    finally:
        await client.stop()


@pytest.mark.parametrize("auth", [{}, {"cluster_key": OTHER}, {"keys": {"client.1": OTHER}}],
                         ids=["no key", "wrong key", "wrong named key"])
async def test_unauthenticated_peer_cannot_call_a_verb(
        scheme: str, server: tuple[Messenger, list[Any]], auth: dict[str, Any],
        caplog: pytest.LogCaptureFixture, watch_rejections: Callable[[Messenger], asyncio.Event]) -> None:
    srv, calls = server
    rejected = watch_rejections(srv)
    client = await _client(scheme, **auth)
    try:
        conn = client.get_connection(srv.addresses[0])
        oneway = conn.send_nowait("secret1", b"oneway")
        with pytest.raises(PeerAuthenticationFailed) as info:
            await client.send_message("secret", srv.addresses[0], b"let me in", timeout=10)
        await asyncio.wait_for(rejected.wait(), 10)
        assert oneway is None
        exc = info.value
        assert isinstance(exc, PeerUnreachable) and isinstance(exc, AuthenticationFailed)
        assert "authentication failed" in str(exc)
        if not auth:  # the server told us nothing more than that
            assert exc.reason == "refused by peer: authentication failed"
        assert calls == []
        assert srv.stats["rejected"] == {"auth_failed": 1}
        assert srv.stats["errors"]["AuthenticationFailed"] == 1
        assert srv.connections == []
        logged = [r.getMessage() for r in caplog.records if "authentication failed for" in r.getMessage()]
        assert logged and "client.1" in logged[0]
        if scheme == "tcp":
            assert "tcp://127.0.0.1:" in logged[0]  # the peer's address is logged
    finally:
        await client.stop()


async def test_named_and_typed_keys(scheme: str) -> None:
    """Keys by entity name win over keys by type, which win over the cluster key."""
    osd_key, client_key = generate_key(), generate_key()
    srv = Messenger.from_config({"messenger": {"name": "srv", "type": "osd", "listen": [_listen(scheme, "typed")]},
                                 "auth": {"types": {"client": client_key}, "keys": {"client.admin": KEY}}})
    srv.register_handler("who", lambda msg: msg.peer)
    async with srv:
        ok = await _client(scheme, "client.7", types={"client": client_key})
        admin = await _client(scheme, "client.admin", keys={"client.admin": KEY}, types={"client": client_key})
        bad = await _client(scheme, "client.8", types={"client": osd_key})
        try:
            assert await ok.send_message("who", srv.addresses[0], timeout=10) == "client.7"
            assert await admin.send_message("who", srv.addresses[0], timeout=10) == "client.admin"
            with pytest.raises(PeerAuthenticationFailed):
                await bad.send_message("who", srv.addresses[0], timeout=10)
        finally:
            for c in (ok, admin, bad):
                await c.stop()


async def test_client_refuses_a_server_that_does_not_authenticate(scheme: str) -> None:
    srv = Messenger.from_config({"messenger": {"name": "open", "listen": [_listen(scheme, "open")]}})
    calls: list[Any] = []
    srv.register_handler("secret", lambda msg: calls.append(1))
    async with srv:
        client = await _client(scheme, cluster_key=KEY)  # require defaults to true with a key
        try:
            with pytest.raises(PeerAuthenticationFailed, match="did not authenticate itself"):
                await client.send_message("secret", srv.addresses[0], timeout=10)
            assert calls == []
        finally:
            await client.stop()


async def test_client_refuses_a_server_with_another_key(scheme: str) -> None:
    """Mutual: the acceptor proves it holds the dialler's key first."""
    srv = Messenger.from_config({"messenger": {"name": "impostor", "listen": [_listen(scheme, "imp")]},
                                 "auth": {"cluster_key": OTHER, "require": False}})
    async with srv:
        client = await _client(scheme, cluster_key=KEY)
        try:
            with pytest.raises(PeerAuthenticationFailed, match="did not prove it holds the key"):
                await client.send_message("msgr.ping", srv.addresses[0], timeout=10)
        finally:
            await client.stop()


async def test_optional_auth_lets_keyless_peers_in(scheme: str) -> None:
    """``require = false``: keyless peers are served; peers with a key still authenticate."""
    srv = Messenger.from_config({"messenger": {"name": "opt", "listen": [_listen(scheme, "opt")]},
                                 "auth": {"cluster_key": KEY, "require": False}})
    async with srv:
        plain = await _client(scheme, "client.plain")
        keyed = await _client(scheme, "client.keyed", cluster_key=KEY)
        try:
            assert await plain.send_message("msgr.ping", srv.addresses[0], b"1", timeout=10) == b"1"
            assert await keyed.send_message("msgr.ping", srv.addresses[0], b"2", timeout=10) == b"2"
            assert srv.stats["authenticated"] == 1
        finally:
            await plain.stop()
            await keyed.stop()


async def test_lossless_resume_authenticates_again(scheme: str) -> None:
    """Every new link of a lossless session runs the exchange again; a key
    that no longer matches ends the session with a typed error."""
    cfg: dict[str, Any] = {"auth": {"cluster_key": KEY}, "policy": {"default": "lossless_peer"}}
    a = Messenger.from_config({"messenger": {"name": "a", "listen": [_listen(scheme, "la")]}, **cfg})
    b = Messenger.from_config({"messenger": {"name": "b", "listen": [_listen(scheme, "lb")]}, **cfg})
    got: list[int] = []
    b.register_handler("n", lambda msg: got.append(msg.payload) or msg.payload)
    async with a, b:
        conn = a.get_connection(b.addresses[0])
        assert (await conn.request("n", 1, timeout=10)).payload == 1
        link = conn.link
        assert link is not None
        link.abort()
        assert (await conn.request("n", 2, timeout=10)).payload == 2  # resumed on a new, authenticated link
        assert b.stats["authenticated"] + a.stats["authenticated"] >= 2
        assert conn.reconnects == 1
        # the peer's key changes: the next link fails authentication
        b.auth.keyring.cluster = decode_key(OTHER, key="test")
        link = conn.link
        assert link is not None
        link.abort()
        with pytest.raises(PeerAuthenticationFailed):
            await conn.request("n", 3, timeout=10)
        assert got == [1, 2]


# -- raw peers: what a messenger would never send ------------------------------------


class RawPeer:
    """A link handler that speaks the handshake by hand."""

    def __init__(self) -> None:
        self.frames: asyncio.Queue[list[Buffer]] = asyncio.Queue()
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        self.link: Link | None = None

    def link_made(self, link: Link) -> None:
        self.link = link

    def frame_received(self, frame: list[Buffer]) -> None:
        self.frames.put_nowait(frame)

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass

    def link_lost(self, exc: BaseException | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)

    def send(self, mtype: int, body: Any, *, seq: int = 0, cid: int = 0, verb: str = "") -> None:
        assert self.link is not None
        self.link.send((m.pack_header(mtype, seq, 0, m.PACKED, 0, cid, verb), msgpack.packb(body)))

    async def recv(self) -> tuple[int, Any]:
        frame = await asyncio.wait_for(self.frames.get(), 10)
        head = m.unpack_header(frame[0])
        return head[0], msgpack.unpackb(frame[1]) if head[3] & m.PACKED else bytes(frame[1])

    async def closed(self) -> None:
        await asyncio.wait_for(self.lost, 10)


def _hello(nonce: bytes | None, name: str = "mallory") -> dict[str, Any]:
    hello: dict[str, Any] = {"v": m.PROTOCOL_VERSION, "name": name, "type": "client", "incarnation": 1,
                             "features": [], "policy": "lossy_client", "mode": "lossy", "addrs": [], "sid": 7,
                             "peer_sid": 0, "peer_inc": 0, "in_seq": 0}
    if nonce is not None:
        hello["auth"] = nonce
    return hello


async def _raw(srv: Messenger, helper: Messenger) -> RawPeer:
    peer = RawPeer()
    address = srv.addresses[0]
    await helper._transport(address.split("://")[0]).connect(address, peer)
    return peer


async def test_replayed_and_reflected_proofs_fail(scheme: str, server: tuple[Messenger, list[Any]]) -> None:
    srv, calls = server
    key = decode_key(KEY, key="test")
    helper = await _client(scheme, "helper")
    try:
        # 1. an honest handshake, by hand: it works, and we keep its transcript
        nonce = os.urandom(NONCE_BYTES)
        peer = await _raw(srv, helper)
        peer.send(m.HELLO, _hello(nonce))
        mtype, challenge = await peer.recv()
        assert mtype == m.AUTH
        fields = (nonce, challenge["nonce"], "mallory", "client", challenge["name"])
        assert challenge["proof"] == proof(key, b"server", *fields)
        good = proof(key, b"client", *fields)
        peer.send(m.AUTH, {"proof": good})
        mtype, ok = await peer.recv()
        assert mtype == m.HELLO_OK and ok["name"] == "server"
        peer.send(m.REQ, "by hand", seq=1, cid=1, verb="secret")
        mtype, _ = await peer.recv()
        while mtype != m.REP:
            mtype, _ = await peer.recv()
        assert calls == ["by hand"]
        assert peer.link is not None
        peer.link.abort()

        # 2. replay: the same HELLO and the same proof on a new link
        peer = await _raw(srv, helper)
        peer.send(m.HELLO, _hello(nonce))
        mtype, challenge2 = await peer.recv()
        assert mtype == m.AUTH and challenge2["nonce"] != challenge["nonce"]
        peer.send(m.AUTH, {"proof": good})
        assert await peer.recv() == (m.REFUSE, "authentication failed")
        await peer.closed()

        # 3. reflection: the server's own proof sent back as ours
        peer = await _raw(srv, helper)
        peer.send(m.HELLO, _hello(os.urandom(NONCE_BYTES)))
        mtype, challenge3 = await peer.recv()
        peer.send(m.AUTH, {"proof": challenge3["proof"]})
        assert await peer.recv() == (m.REFUSE, "authentication failed")
        await peer.closed()
        assert srv.stats["rejected"]["auth_failed"] == 2
        assert calls == ["by hand"]
    finally:
        await helper.stop()


@pytest.mark.parametrize("attack", ["request first", "request before proof", "no auth offered", "garbage proof"])
async def test_nothing_is_dispatched_before_authentication(
        scheme: str, server: tuple[Messenger, list[Any]], attack: str) -> None:
    srv, calls = server
    helper = await _client(scheme, "helper")
    try:
        peer = await _raw(srv, helper)
        if attack == "request first":
            peer.send(m.REQ, "x", seq=1, cid=1, verb="secret")
        elif attack == "no auth offered":
            peer.send(m.HELLO, _hello(None))
        else:
            peer.send(m.HELLO, _hello(os.urandom(NONCE_BYTES)))
            mtype, _ = await peer.recv()
            assert mtype == m.AUTH
            if attack == "request before proof":
                peer.send(m.MSG, "x", seq=1, verb="secret1")
                peer.send(m.REQ, "x", seq=2, cid=1, verb="secret")
            else:
                peer.send(m.AUTH, {"proof": [1, 2, 3]})
        await peer.closed()
        assert calls == []
        assert srv.connections == []
        rejected = srv.stats["rejected"]
        assert sum(rejected.values()) == 1
        assert set(rejected) <= {"auth_failed", "protocol_error"}
    finally:
        await helper.stop()


# -- keyrings and config -------------------------------------------------------------


def test_keyring_file_permissions_and_format(tmp_path: Path) -> None:
    path = tmp_path / "keyring"
    path.write_text(f'cluster = "{KEY}"\n[keys]\n"osd.1" = "{OTHER}"\n[types]\nclient = "{KEY}"\n')
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_keyring(path)
    path.chmod(0o600)
    ring = load_keyring(path)
    assert ring.key_for("osd.1", "osd") == decode_key(OTHER, key="k")
    assert ring.key_for("client.4", "client") == decode_key(KEY, key="k")
    assert ring.key_for("mon.a", "mon") == decode_key(KEY, key="k")
    assert KEY not in repr(ring)
    # a config names it relative to itself
    conf = tmp_path / "node.toml"
    conf.write_text('[messenger]\nname = "n"\n[auth]\nkeyring = "keyring"\n')
    ms = Messenger.from_config(str(conf))
    assert ms.auth.require and ms.auth.key_for("osd.1", "osd") == decode_key(OTHER, key="k")
    path.write_text('[keys]\n"osd.1" = "not base64!"\n')
    with pytest.raises(ConfigError, match=r"keys\.osd\.1") as info:
        load_keyring(path)
    assert "not base64" not in str(info.value)  # key material is never echoed
    path.write_text('[keys]\n"osd.1" = "c2hvcnQ="\n')
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        load_keyring(path)
    with pytest.raises(ConfigError, match="keyring"):
        load_keyring(tmp_path / "missing")


def test_auth_config_checks() -> None:
    with pytest.raises(ConfigError, match=r"auth\.require"):
        Messenger.from_config({"auth": {"require": True}})
    with pytest.raises(ConfigError, match=r"auth\.require"):
        Messenger.from_config({"auth": {"require": "yes", "cluster_key": KEY}})
    with pytest.raises(ConfigError, match=r"auth\.cluster_key"):
        Messenger.from_config({"auth": {"cluster_key": "xx"}})
    assert not Messenger.from_config({}).auth.require
    assert Messenger.from_config({"auth": {"cluster_key": KEY}}).auth.require
    assert not Messenger.from_config({"auth": {"cluster_key": KEY, "require": False}}).auth.require


async def test_warns_when_listening_on_a_non_loopback_address_without_auth(
        caplog: pytest.LogCaptureFixture) -> None:
    async with Messenger.from_config({"messenger": {"name": "exposed", "listen": ["tcp://0.0.0.0:0"]}}):
        pass
    async with Messenger.from_config({"messenger": {"name": "local", "listen": ["tcp://127.0.0.1:0"]}}):
        pass
    warned = [r.getMessage() for r in caplog.records if "without requiring authentication" in r.getMessage()]
    assert len(warned) == 1 and "exposed" in warned[0]
