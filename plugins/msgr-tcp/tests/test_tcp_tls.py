"""tls://: mutual TLS with real certificates made by trustme, on real
loopback sockets (every async test runs on asyncio's loop and on uvloop)."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from msgr_tcp import TlsLink, TlsTransport

from msgr_core import Messenger
from msgr_core.errors import ConfigError, LinkClosed, PeerUnreachable
from msgr_core.testing import TransportHarness, TransportTests
from msgr_core.transport import TransportOptions


@dataclass
class Pki:
    """PEM files: ``ca`` signs ``node`` (127.0.0.1, ::1, localhost) and
    ``named`` (node.example only); ``rogue_ca`` signs ``rogue``."""

    dir: Path
    ca: str
    node: tuple[str, str]
    named: tuple[str, str]
    rogue_ca: str
    rogue: tuple[str, str]

    def settings(self, pair: tuple[str, str] | None = None, ca: str | None = None, **kw: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"cafile": ca or self.ca}
        if pair is not None:
            out["certfile"], out["keyfile"] = pair
        return {**out, **kw}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")

    def write(ca: trustme.CA, name: str, *identities: str) -> tuple[str, str]:
        leaf = ca.issue_cert(*identities)
        cert, key = d / f"{name}.pem", d / f"{name}.key"
        leaf.cert_chain_pems[0].write_to_path(cert)
        leaf.private_key_pem.write_to_path(key)
        return str(cert), str(key)

    ca, rogue_ca = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(d / "ca.pem")
    rogue_ca.cert_pem.write_to_path(d / "rogue-ca.pem")
    return Pki(
        dir=d,
        ca=str(d / "ca.pem"),
        node=write(ca, "node", "127.0.0.1", "::1", "localhost"),
        named=write(ca, "named", "node.example"),
        rogue_ca=str(d / "rogue-ca.pem"),
        rogue=write(rogue_ca, "rogue", "127.0.0.1", "localhost"),
    )


def tls(settings: dict[str, Any], **options: Any) -> TlsTransport:
    return TlsTransport("tls", TransportOptions(settings=settings, **options))


class Failures:
    """Waits for a TLS transport's failed accepting handshakes."""

    def __init__(self, transport: TlsTransport) -> None:
        self.transport = transport
        self.changed = asyncio.Event()
        original = transport._handshake_failed

        def failed(peer: str, exc: BaseException) -> None:
            original(peer, exc)
            self.changed.set()

        transport._handshake_failed = failed  # type: ignore[method-assign]

    async def wait(self, n: int = 1, timeout: float = 10.0) -> dict[str, int]:
        async with asyncio.timeout(timeout):
            while sum(self.transport.handshake_failures.values()) < n:
                self.changed.clear()
                await self.changed.wait()
        return dict(self.transport.handshake_failures)


async def serve(net: Any, pki: Pki, **server: Any) -> tuple[TlsTransport, str, list[Any], Failures]:
    t = tls(pki.settings(pki.node, **server))
    listener, accepted = await net.listen(t, "tls://127.0.0.1:0")  # type: ignore[arg-type]
    return t, listener.address, accepted, Failures(t)


async def roundtrip(
    net: Any, link: Any, client: Any, accepted: list[Any], data: bytes = b"ping", index: int = 0
) -> None:
    """A frame each way between ``link`` and the listener's ``index``-th link."""
    await net.until(lambda: len(accepted) > index and accepted[index].link is not None)
    server = accepted[index]
    link.send([data])
    await server.wait_frames(1)
    assert bytes(server.frames[-1][0]) == data
    server.link.send([b"re:" + data])
    await client.wait_frames(1)
    assert bytes(client.frames[-1][0]) == b"re:" + data


# -- links that work ------------------------------------------------------------


async def test_mutual_tls_link_carries_frames_both_ways(net: Any, pki: Pki) -> None:
    _t, address, accepted, failures = await serve(net, pki)
    assert address.startswith("tls://127.0.0.1:")
    client = net.recorder("client")
    link = await tls(pki.settings(pki.node)).connect(address, client)
    assert isinstance(link, TlsLink) and link.peer_address == address
    await roundtrip(net, link, client, accepted)
    # each side verified the other's certificate
    server_link = accepted[0].link
    assert isinstance(server_link, TlsLink)
    for cert in (link.peer_certificate, server_link.peer_certificate):
        assert cert is not None and ("IP Address", "127.0.0.1") in cert["subjectAltName"]
    assert link._transport.get_extra_info("ssl_object").version() == "TLSv1.3"
    assert not failures.transport.handshake_failures


async def test_server_name_maps_an_address_to_the_certificate_name(net: Any, pki: Pki) -> None:
    """A listener whose certificate names node.example, dialled at 127.0.0.1:
    refused by default, accepted with server_name = "node.example", and with
    check_hostname = false (the chain is still verified)."""
    t = tls(pki.settings(pki.named))
    listener, accepted = await net.listen(t, "tls://127.0.0.1:0")  # type: ignore[arg-type]
    with pytest.raises(LinkClosed, match=r"(?i)mismatch") as info:
        await tls(pki.settings(pki.node)).connect(listener.address, net.recorder("default name"))
    assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)
    assert "'127.0.0.1'" in str(info.value) and listener.address in str(info.value)
    for i, settings in enumerate(({"server_name": "node.example"}, {"check_hostname": False})):
        client = net.recorder(f"client {settings}")
        link = await tls(pki.settings(pki.node, **settings)).connect(listener.address, client)
        await roundtrip(net, link, client, accepted, repr(settings).encode(), index=i)
    with pytest.raises(LinkClosed, match=r"(?i)mismatch"):
        await tls(pki.settings(pki.node, server_name="other.example")).connect(listener.address, net.recorder("x"))


async def test_optional_client_certificate(net: Any, pki: Pki) -> None:
    _t, address, accepted, _f = await serve(net, pki, require_client_cert=False)
    client = net.recorder("anonymous client")
    link = await tls(pki.settings()).connect(address, client)
    await roundtrip(net, link, client, accepted)
    assert accepted[0].link.peer_certificate is None  # type: ignore[union-attr]


async def test_tls12_allowed_when_configured(net: Any, pki: Pki) -> None:
    _t, address, accepted, _f = await serve(net, pki, minimum_version="TLSv1.2")
    ctx = _raw_client_context(pki, maximum=ssl.TLSVersion.TLSv1_2)
    host, port = address[len("tls://") :].rsplit(":", 1)
    _reader, writer = await asyncio.open_connection(host, int(port), ssl=ctx, server_hostname="127.0.0.1")
    try:
        assert writer.get_extra_info("ssl_object").version() == "TLSv1.2"
        await net.until(lambda: bool(accepted) and accepted[0].link is not None)
    finally:
        writer.close()


async def test_sixteen_mib_frames_arrive_intact(net: Any, pki: Pki) -> None:
    _t, address, accepted, _f = await serve(net, pki)
    client = net.recorder("client")
    link = await tls(pki.settings(pki.node)).connect(address, client)
    await net.until(lambda: bool(accepted) and accepted[0].link is not None)
    big = [os.urandom(16 * 1024 * 1024), b"head", os.urandom(3 * 1024 * 1024 + 7)]
    for _ in range(2):
        link.send(big)
    await accepted[0].wait_frames(2, timeout=60)
    for frame in accepted[0].frames:
        assert [bytes(b) for b in frame] == big
    link.close()
    assert await client.wait_lost() is None
    assert await accepted[0].wait_lost() is None


# -- handshakes that fail -------------------------------------------------------


async def test_client_without_certificate_is_refused(net: Any, pki: Pki) -> None:
    _t, address, accepted, failures = await serve(net, pki)
    client = net.recorder("client without a certificate")
    try:
        # TLS 1.3: the client's handshake completes before the listener
        # checks its certificate; the refusal arrives as an alert
        link = await tls(pki.settings()).connect(address, client)
        link.send([b"let me in"])
        exc = await client.wait_lost()
        assert isinstance(exc, OSError), exc
        if isinstance(exc, LinkClosed):
            assert "certificate required" in str(exc) and address in str(exc)
    except LinkClosed as exc:
        assert "certificate" in str(exc)
    assert await failures.wait() == {"PEER_DID_NOT_RETURN_A_CERTIFICATE": 1}
    assert not accepted  # no link, no handler, nothing delivered


async def test_client_certificate_from_another_ca_is_refused(net: Any, pki: Pki) -> None:
    _t, address, accepted, failures = await serve(net, pki)
    client = net.recorder("rogue client")
    try:
        link = await tls(pki.settings(pki.rogue)).connect(address, client)
        link.send([b"let me in"])
        exc = await client.wait_lost()
        assert isinstance(exc, OSError), exc
        if isinstance(exc, LinkClosed):
            assert "unknown ca" in str(exc)
    except LinkClosed as exc:
        assert "unknown ca" in str(exc)
    assert await failures.wait() == {"CERTIFICATE_VERIFY_FAILED": 1}
    assert not accepted


async def test_server_certificate_from_another_ca_is_refused(net: Any, pki: Pki) -> None:
    t = tls(pki.settings(pki.rogue, ca=pki.rogue_ca))
    failures = Failures(t)
    listener, accepted = await net.listen(t, "tls://127.0.0.1:0")  # type: ignore[arg-type]
    client = net.recorder("client")
    with pytest.raises(LinkClosed, match="certificate verify failed") as info:
        await tls(pki.settings(pki.node)).connect(listener.address, client)
    assert isinstance(info.value.cause, ssl.SSLCertVerificationError)
    assert client.link is None and not accepted
    # the client's alert, or the reset of its abort, whichever the listener reads first
    assert list(await failures.wait()) in (["TLSV1_ALERT_UNKNOWN_CA"], ["CONNECTION_RESET"])


async def test_tls12_peer_refused_when_minimum_is_13(net: Any, pki: Pki) -> None:
    _t, address, accepted, failures = await serve(net, pki)
    ctx = _raw_client_context(pki, maximum=ssl.TLSVersion.TLSv1_2)
    host, port = address[len("tls://") :].rsplit(":", 1)
    # the listener's alert, or a reset that overtook it (asyncio aborts the socket)
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        await asyncio.open_connection(host, int(port), ssl=ctx, server_hostname="127.0.0.1")
    assert await failures.wait() == {"UNSUPPORTED_PROTOCOL": 1}
    assert not accepted
    # and our own transport, limited the other way, refuses a 1.2-only listener
    t12 = tls(pki.settings(pki.node, minimum_version="TLSv1.2"))
    t12.server_context.maximum_version = ssl.TLSVersion.TLSv1_2  # type: ignore[union-attr]
    old, _ = await net.listen(t12, "tls://127.0.0.1:0")  # type: ignore[arg-type]
    with pytest.raises(LinkClosed, match=r"TLS handshake with tls://127\.0\.0\.1:\d+ \(as '127.0.0.1'\) failed"):
        await tls(pki.settings(pki.node)).connect(old.address, net.recorder("1.3 client"))


async def test_silent_client_dropped_after_handshake_timeout(net: Any, pki: Pki) -> None:
    _t, address, accepted, failures = await serve(net, pki, handshake_timeout=0.3)
    host, port = address[len("tls://") :].rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        assert await failures.wait() == {"TIMEOUT": 1}
        async with asyncio.timeout(5):
            assert await reader.read() == b""  # closed by the listener
    finally:
        writer.close()
    assert not accepted


async def test_failed_handshakes_do_not_disturb_other_links(
    net: Any, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    _t, address, accepted, failures = await serve(net, pki)
    client = net.recorder("good client", on_frame=None)
    link = await tls(pki.settings(pki.node)).connect(address, client)
    await net.until(lambda: bool(accepted) and accepted[0].link is not None)
    server = accepted[0]
    server._on_frame = lambda rec, frame: rec.link.send(frame)  # echo
    host, port = address[len("tls://") :].rsplit(":", 1)
    sent = 0

    async def garbage() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET / HTTP/1.1\r\n\r\n" * 100)
        try:
            async with asyncio.timeout(10):
                await reader.read()
        except ConnectionResetError:
            pass
        finally:
            writer.close()

    with caplog.at_level(logging.WARNING, logger="msgr.tcp"):
        attacks = [asyncio.ensure_future(garbage()) for _ in range(20)]
        attacks += [
            asyncio.ensure_future(_expect_refused(tls(pki.settings(pki.rogue)), address, net)) for _ in range(10)
        ]
        while not all(a.done() for a in attacks):
            link.send([b"%d" % sent])
            sent += 1
            await client.wait_frames(sent)
        await asyncio.gather(*attacks)
        counts = await failures.wait(30)
    assert sum(counts.values()) == 30, counts
    assert counts.get("CERTIFICATE_VERIFY_FAILED") == 10, counts
    assert [bytes(f[0]) for f in client.frames] == [b"%d" % i for i in range(sent)]
    assert len(accepted) == 1 and not server.lost.done()
    logged = [r.getMessage() for r in caplog.records if "TLS handshake with tls://127.0.0.1:" in r.getMessage()]
    assert len(logged) == 30


async def _expect_refused(t: TlsTransport, address: str, net: Any) -> None:
    rec = net.recorder("rogue")
    try:
        link = await t.connect(address, rec)
        link.send([b"x"])
        await rec.wait_lost()
    except OSError:
        pass


def _raw_client_context(pki: Pki, *, maximum: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=pki.ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = maximum
    ctx.load_cert_chain(*pki.node)
    return ctx


# -- configuration ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "key", "text"),
    [
        ({"certfile": "/nonexistent/node.pem"}, "tls.certfile", "No such file"),
        ({"certfile": "NODE", "keyfile": "/nonexistent/node.key"}, "tls.keyfile", "No such file"),
        ({"cafile": "/nonexistent/ca.pem"}, "tls.cafile", "No such file"),
        ({"certfile": "DIR"}, "tls.certfile", "directory"),
        ({"certfile": "GARBAGE"}, "tls.certfile", "PEM certificate"),
        ({"cafile": "GARBAGE"}, "tls.cafile", "PEM CA"),
        ({"certfile": "ROGUE_CERT", "keyfile": "NODE_KEY"}, "tls.keyfile", "private key"),
        ({"keyfile": "NODE_KEY"}, "tls.certfile", "certificate"),
        ({"minimum_version": "TLSv1.1"}, "tls.minimum_version", "TLSv1.3"),
        ({"ciphers": "NO-SUCH-CIPHER"}, "tls.ciphers", "cipher"),
        ({"certfile": 42}, "tls.certfile", "string"),
        ({"require_client_cert": "yes"}, "tls.require_client_cert", "true or false"),
        ({"no_such_key": 1}, "tls.no_such_key", "certfile"),
    ],
)
def test_bad_settings_are_config_errors_at_creation(pki: Pki, settings: dict, key: str, text: str) -> None:
    garbage = pki.dir / "garbage.pem"
    garbage.write_text("not a certificate\n")
    names = {
        "NODE": pki.node[0],
        "NODE_KEY": pki.node[1],
        "ROGUE_CERT": pki.rogue[0],
        "DIR": str(pki.dir),
        "GARBAGE": str(garbage),
    }
    given = {k: names.get(v, v) if isinstance(v, str) else v for k, v in settings.items()}
    with pytest.raises(ConfigError) as info:
        tls({"cafile": pki.ca, **given} if "cafile" not in given else given)
    assert info.value.key == key
    assert text in str(info.value)


async def test_listening_needs_a_certificate(pki: Pki) -> None:
    with pytest.raises(ConfigError) as info:
        await tls(pki.settings()).listen("tls://127.0.0.1:0", lambda: None)  # type: ignore[arg-type,return-value]
    assert info.value.key == "tls.certfile"


# -- messengers -----------------------------------------------------------------


def _messenger(name: str, pki: Pki, *, listen: bool = True, tls_settings: dict | None = None, **extra: Any) -> Any:
    cfg: dict[str, Any] = {
        "messenger": {"name": name, "listen": ["tls://127.0.0.1:0"] if listen else [], "transports": ["tls"]},
        "tls": tls_settings if tls_settings is not None else pki.settings(pki.node),
    }
    cfg.update(extra)
    return Messenger.from_config(cfg)


async def test_two_messengers_call_verbs_over_tls_with_16_mib_attachments(pki: Pki) -> None:
    a, b = _messenger("a", pki), _messenger("b", pki)
    b.register_handler("echo", lambda msg: msg.payload)
    b.register_handler("sizes", lambda msg: [len(x) for x in msg.attachments])
    got: list[bytes] = []
    b.register_handler("digest", lambda msg: got.extend(bytes(x) for x in msg.attachments) or len(got))
    async with a, b:
        peer = b.addresses[0]
        assert peer.startswith("tls://")
        assert await a.send_message("echo", peer, {"hello": "tls"}, timeout=10) == {"hello": "tls"}
        big = os.urandom(16 * 1024 * 1024)
        assert await a.send_message("digest", peer, b"", attachments=[big], timeout=60) == 1
        assert got[0] == big
        replies = await asyncio.gather(*(a.send_message("echo", peer, i, timeout=10) for i in range(200)))
        assert replies == list(range(200))


async def test_unencrypted_or_uncertified_peer_cannot_call_a_verb(pki: Pki) -> None:
    server = _messenger("server", pki)
    called: list[Any] = []
    server.register_handler("secret", lambda msg: called.append(msg.payload) or "ok")
    lossy = {"policy": {"default": "lossy_client"}}
    plain = Messenger.from_config({"messenger": {"name": "plain", "transports": ["tcp"]}, **lossy})
    uncertified = _messenger("uncertified", pki, listen=False, tls_settings=pki.settings(), **lossy)
    rogue = _messenger("rogue", pki, listen=False, tls_settings=pki.settings(pki.rogue), **lossy)
    async with server, plain, uncertified, rogue:
        address = server.addresses[0]
        port = address.rsplit(":", 1)[1]
        with pytest.raises(PeerUnreachable):
            await plain.send_message("secret", f"tcp://127.0.0.1:{port}", b"x", timeout=10)
        for client in (uncertified, rogue):
            with pytest.raises(PeerUnreachable):
                await client.send_message("secret", address, b"x", timeout=10)
        failures = server._transport("tls").handshake_failures
        assert sum(failures.values()) == 3, failures
    assert called == []


async def test_lossless_session_resumes_over_tls_after_link_failures(pki: Pki) -> None:
    inject = {"socket_failures": 40}
    receiver = _messenger("receiver", pki, inject={**inject, "seed": 5})
    sender = _messenger("sender", pki, listen=False, inject={**inject, "seed": 6})
    seen: list[int] = []
    receiver.register_handler_oneway("seq", lambda msg: seen.append(msg.payload))
    receiver.register_handler("count", lambda msg: len(seen))
    async with receiver, sender:
        conn = sender.get_connection(receiver.addresses[0])
        total = 3000
        for i in range(total):
            await conn.send("seq", i)
            if i % 16 == 0:
                await asyncio.sleep(0)  # one batch per link operation, for the fault injection
        assert (await conn.request("count", b"", timeout=60)).payload == total
        assert seen == list(range(total))
        assert sender.stats["injected_failures"] + receiver.stats["injected_failures"] >= 5
        assert conn.stats["reconnects"] >= 1


# -- the conformance kit, with malformed input sent over TLS ------------------------


def _tls_inject(pki_settings: Callable[[], dict[str, Any]]) -> Callable[[str, bytes], Any]:
    async def inject(address: str, data: bytes) -> None:
        s = pki_settings()
        ctx = ssl.create_default_context(cafile=s["cafile"])
        ctx.load_cert_chain(s["certfile"], s["keyfile"])
        host, port = address[len("tls://") :].rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port), ssl=ctx, server_hostname=host)
        try:
            writer.write(data)
            await writer.drain()
            while await reader.read(65536):
                pass
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    return inject


class TestTlsConformance(TransportTests):
    """Every check of the kit over tls://127.0.0.1, with the kit's own
    certificates, and malformed input written inside a TLS connection."""

    @pytest.fixture
    def transport_harness(self) -> TransportHarness:
        from msgr_core.testing import harness_for_scheme

        h = harness_for_scheme("tls")
        h.loop_factory = asyncio.SelectorEventLoop
        h.inject_raw = _tls_inject(lambda: dict(h.options.settings))
        from msgr_core.testing import stream_malformed_inputs

        h.malformed_inputs = stream_malformed_inputs
        return h
