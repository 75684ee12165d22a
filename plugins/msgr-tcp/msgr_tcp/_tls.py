"""The :class:`TlsTransport` (scheme ``tls``): msgr stream framing over mutual TLS.

The links are the same :class:`~msgr_tcp.StreamLink` objects as for ``tcp://``
(asyncio's SSL transport feeds a ``BufferedProtocol`` too), with TLS in
between:

Dialling
    TCP connect, then ``loop.create_connection(ssl=..., server_hostname=...)``
    on the socket.  A handshake that fails (the listener's certificate is
    not signed by ``cafile``, names another host, a protocol version below
    ``minimum_version``, ...) makes ``connect`` raise
    :class:`~msgr_core.errors.LinkClosed` with OpenSSL's reason in the
    text (``ssl.SSLError`` as ``__cause__``); one that takes longer than
    ``handshake_timeout`` raises ``TimeoutError``.
Accepting
    The listener runs its own accept loop and hands each connection to
    ``loop.connect_accepted_socket(ssl=...)`` in a task of its own, so
    that a failed handshake is *seen*: it is logged at WARNING on
    ``msgr.tcp`` with the peer's address and OpenSSL's reason and counted
    in :attr:`TlsTransport.handshake_failures`, and no link handler (no
    messenger connection) is ever made for it.  Other connections are not
    affected: each handshake is bounded by ``handshake_timeout``.
After the handshake
    An ``ssl.SSLError`` that ends a link (with TLS 1.3 the listener checks
    the client's certificate *after* the client finished its handshake, so
    a refused client certificate reaches the dialler as an alert on its
    first read) is passed to ``link_lost`` as
    :class:`~msgr_core.errors.LinkClosed` naming the peer and the reason.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import errno
import logging
import os
import shutil
import socket
import ssl
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from msgr_core.errors import ConfigError, LinkClosed
from msgr_core.transport import HandlerFactory, LinkHandler, TransportOptions

from ._link import LinkSettings, StreamLink, format_address
from ._transport import TcpTransport

__all__ = ["KitCertificates", "TlsLink", "TlsTransport"]

logger = logging.getLogger("msgr.tcp")

_VERSIONS = {
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}


def _reason(exc: BaseException) -> str:
    """OpenSSL's reason, without the ``(_ssl.c:1006)`` tail."""
    text = str(exc) or type(exc).__name__
    cut = text.rfind(" (_ssl.c:")
    return text[:cut] if cut > 0 else text


def _failure_kind(exc: BaseException) -> str:
    """A short key for counting handshake failures by reason."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, ConnectionAbortedError | TimeoutError):
        return "TIMEOUT"  # asyncio's ssl_handshake_timeout
    if isinstance(exc, ConnectionResetError):
        return "CONNECTION_RESET"
    if isinstance(exc, ssl.SSLError):
        return "SSL_ERROR"
    return type(exc).__name__


class _NoHandler:
    """Stands in for an accepted link's handler until TLS is up."""

    def link_made(self, link: Any) -> None:  # pragma: no cover - replaced first
        pass

    def frame_received(self, frame: list[Any]) -> None:  # pragma: no cover
        pass

    def pause_writing(self) -> None:  # pragma: no cover
        pass

    def resume_writing(self) -> None:  # pragma: no cover
        pass

    def link_lost(self, exc: BaseException | None) -> None:  # pragma: no cover
        pass


_NO_HANDLER = _NoHandler()


class TlsLink(StreamLink):
    """A :class:`~msgr_tcp.StreamLink` over TLS.

    ``link_lost`` receives what a ``StreamLink``'s does, except that an
    ``ssl.SSLError`` (a TLS alert from the peer, a record that does not
    decrypt) arrives as :class:`~msgr_core.errors.LinkClosed` whose text
    names the peer and OpenSSL's reason (the ``ssl.SSLError`` is its
    ``cause`` and ``__cause__``).
    """

    @property
    def peer_certificate(self) -> dict[str, Any] | None:
        """The peer's verified certificate (``ssl.SSLSocket.getpeercert()``
        form), or ``None`` when it sent none (a client of a listener with
        ``require_client_cert = false``)."""
        tr = self._transport
        cert = tr.get_extra_info("peercert") if tr is not None else None
        return cert or None

    _draining = False

    def __init__(
        self,
        handler: LinkHandler | None,
        settings: LinkSettings,
        *,
        handler_factory: HandlerFactory | None = None,
    ) -> None:
        super().__init__(handler or _NO_HANDLER, settings)
        # an accepted link gets its handler only once TLS is up
        self._handler_factory = handler_factory if handler is None else None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        factory, self._handler_factory = self._handler_factory, None
        if factory is not None:
            self._set_handler(factory())
        super().connection_made(transport)

    def _close_transport(self, tr: Any) -> None:
        """The end of :meth:`close`: a TLS ``close_notify`` once every queued
        byte has been encrypted and handed to the socket.

        TLS has no half-close, and asyncio's SSL transport (3.11) drops what
        is still waiting for encryption when it is closed while the
        socket's buffer is full.  The wait is bounded by ``close_timeout``,
        after which the link is aborted.
        """
        self._linger = self._loop.call_later(  # type: ignore[union-attr]
            self._settings.close_timeout, self._linger_expired
        )
        if tr.get_write_buffer_size():
            # high = low = 0: resume_writing() comes when the buffer is empty
            self._draining = True
            tr.set_write_buffer_limits(high=0, low=0)
        else:
            tr.close()

    def resume_writing(self) -> None:
        if self._draining:
            tr = self._transport
            if not tr.get_write_buffer_size() and not tr.is_closing():
                self._draining = False
                tr.close()
        super().resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if isinstance(exc, ssl.SSLError):
            wrapped = LinkClosed(f"TLS error on the link with {self._who()}: {_reason(exc)}", cause=exc)
            wrapped.__cause__ = exc
            exc = wrapped
        super().connection_lost(exc)


class _TlsServer:
    """A TLS listener's accept loop: one task accepting on the listening
    socket, and one task per accepted connection running its handshake
    (``loop.connect_accepted_socket(ssl=...)``), bounded by
    ``handshake_timeout``.  The link, and so its handler (a messenger
    connection), is made only once the handshake succeeded."""

    def __init__(
        self,
        owner: TlsTransport,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        handler_factory: HandlerFactory,
        settings: LinkSettings,
    ) -> None:
        self._owner = owner
        self._loop = loop
        self._sock = sock
        self._handler_factory = handler_factory
        self._settings = settings
        self._handshakes: dict[asyncio.Task[None], TlsLink] = {}
        self._closed = False
        self._accepting = loop.create_task(self._accept_loop())

    def close(self) -> None:
        """Stop accepting and end the handshakes in progress (they are not
        links yet); links already made stay up."""
        if self._closed:
            return
        self._closed = True
        self._accepting.cancel()
        for task, link in list(self._handshakes.items()):
            # a link made (TLS up) whose task has not resumed yet is a link:
            # cancelling the task would close it
            if link._transport is None:
                task.cancel()
        self._sock.close()

    async def _accept_loop(self) -> None:
        loop = self._loop
        while not self._closed:
            try:
                conn, addr = await loop.sock_accept(self._sock)
            except asyncio.CancelledError:
                raise
            except OSError as exc:
                if self._closed or self._sock.fileno() == -1:
                    return
                if exc.errno in _ACCEPT_TRANSIENT:
                    continue
                # out of descriptors / memory: the kernel keeps the backlog;
                # retry after asyncio's own accept retry delay
                logger.warning("accept on %s failed: %s; retrying in 1 s", self._owner.scheme, exc)
                await asyncio.sleep(1.0)
                continue
            link = TlsLink(None, self._settings, handler_factory=self._handler_factory)
            task = loop.create_task(self._handshake(conn, addr, link))
            self._handshakes[task] = link
            task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._handshakes.pop(task, None)

    async def _handshake(self, conn: socket.socket, addr: Any, link: TlsLink) -> None:
        owner = self._owner
        peer = format_address("tls", conn.family, addr)
        conn.setblocking(False)
        try:
            await self._loop.connect_accepted_socket(
                lambda: link,
                conn,
                ssl=owner.server_context,
                ssl_handshake_timeout=owner.handshake_timeout,
            )
        except asyncio.CancelledError:
            _close_quietly(conn)
            raise
        except Exception as exc:
            _close_quietly(conn)
            owner._handshake_failed(peer, exc)


_ACCEPT_TRANSIENT = frozenset({errno.ECONNABORTED, errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR, errno.EPROTO})


def _close_quietly(sock: socket.socket) -> None:
    # the transport closed it already when it got that far
    with contextlib.suppress(OSError):
        if sock.fileno() != -1:
            sock.close()


# -- certificates for the conformance kit ------------------------------------


class KitCertificates(Mapping[str, Any]):
    """``TlsTransport.test_settings["tls"]``: the ``[tls]`` settings the
    conformance kit runs with.

    A mapping whose contents are made the first time it is read: a
    throwaway CA and one certificate for ``127.0.0.1``, ``::1`` and
    ``localhost`` (used by every kit messenger, as server and as client),
    generated with ``trustme`` (msgr-tcp's ``test`` extra) into a private
    temporary directory that is removed at interpreter exit.  Nothing is
    generated, and ``trustme`` is not imported, unless the kit asks.
    """

    def __init__(self) -> None:
        self._data: dict[str, Any] | None = None

    def _load(self) -> dict[str, Any]:
        if self._data is None:
            try:
                import trustme
            except ImportError:
                raise RuntimeError(
                    "the tls:// conformance kit makes its certificates with trustme: "
                    "pip install 'msgr-tcp[test]'"
                ) from None
            tmp = tempfile.mkdtemp(prefix="msgr-tls-kit-")
            atexit.register(shutil.rmtree, tmp, True)
            ca = trustme.CA()
            cert = ca.issue_cert("127.0.0.1", "::1", "localhost")
            cafile = os.path.join(tmp, "ca.pem")
            certfile = os.path.join(tmp, "node.pem")
            keyfile = os.path.join(tmp, "node.key")
            ca.cert_pem.write_to_path(cafile)
            cert.cert_chain_pems[0].write_to_path(certfile)
            cert.private_key_pem.write_to_path(keyfile)
            self._data = {"certfile": certfile, "keyfile": keyfile, "cafile": cafile}
        return self._data

    def __getitem__(self, key: str) -> Any:
        return self._load()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())


class TlsTransport(TcpTransport):
    """``tls://host:port``: :class:`~msgr_tcp.TcpTransport` with mutual TLS.

    The contexts are built, and every file named in the ``[tls]`` section
    is read, when the transport is created (at messenger start for a
    listener), so a missing or unreadable file is a
    :class:`~msgr_core.errors.ConfigError` naming the key, not a failure
    on the first connection.

    :ivar handshake_failures: failed accepting handshakes by OpenSSL
        reason (``CERTIFICATE_VERIFY_FAILED``, ``TLSV1_ALERT_UNKNOWN_CA``,
        ``UNSUPPORTED_PROTOCOL``, ``PEER_DID_NOT_RETURN_A_CERTIFICATE``,
        ``WRONG_VERSION_NUMBER`` (not TLS at all), ``TIMEOUT``,
        ``CONNECTION_RESET``, ...).
    """

    schemes: ClassVar[tuple[str, ...]] = ("tls",)
    config_section: ClassVar[str] = "tls"
    config_defaults: ClassVar[dict[str, Any]] = {
        **{k: v for k, v in TcpTransport.config_defaults.items() if k != "direct_send"},
        "certfile": "",
        "keyfile": "",
        "cafile": "",
        "require_client_cert": True,
        "check_hostname": True,
        "server_name": "",
        "minimum_version": "TLSv1.3",
        "ciphers": "",
        "handshake_timeout": 10.0,
    }
    test_addresses: ClassVar[dict[str, str]] = {"tls": "tls://127.0.0.1:0"}
    #: the kit's certificates, made on first use (see :class:`KitCertificates`)
    test_settings: ClassVar[dict[str, Any]] = {"tls": KitCertificates()}
    direct_send: ClassVar[bool] = False

    def __init__(self, scheme: str, options: TransportOptions) -> None:
        super().__init__(scheme, options)
        s = self.settings
        self.handshake_timeout: float = s["handshake_timeout"]
        self.handshake_failures: collections.Counter[str] = collections.Counter()
        version = _VERSIONS.get(s["minimum_version"])
        if version is None:
            raise ConfigError("tls.minimum_version", s["minimum_version"], " or ".join(repr(v) for v in _VERSIONS))
        if s["keyfile"] and not s["certfile"]:
            raise ConfigError("tls.certfile", "", "the certificate of tls.keyfile")
        #: the context links a listener accepts use (``None`` without a certificate)
        self.server_context: ssl.SSLContext | None = None
        if s["certfile"]:
            self.server_context = self._context(ssl.PROTOCOL_TLS_SERVER, version)
            self.server_context.verify_mode = ssl.CERT_REQUIRED if s["require_client_cert"] else ssl.CERT_OPTIONAL
        #: the context outgoing links use
        self.client_context: ssl.SSLContext = self._context(ssl.PROTOCOL_TLS_CLIENT, version)
        self.client_context.check_hostname = s["check_hostname"]
        self.client_context.verify_mode = ssl.CERT_REQUIRED

    def _context(self, protocol: ssl._SSLMethod, version: ssl.TLSVersion) -> ssl.SSLContext:
        s = self.settings
        ctx = ssl.SSLContext(protocol)
        ctx.minimum_version = version
        if s["ciphers"]:
            try:
                ctx.set_ciphers(s["ciphers"])
            except ssl.SSLError as exc:
                raise ConfigError("tls.ciphers", s["ciphers"], f"an OpenSSL cipher list ({_reason(exc)})") from None
        if s["certfile"]:
            _readable("tls.certfile", s["certfile"])
            if s["keyfile"]:
                _readable("tls.keyfile", s["keyfile"])
            try:
                ctx.load_cert_chain(s["certfile"], s["keyfile"] or None)
            except (ssl.SSLError, OSError) as exc:
                key = "tls.keyfile" if s["keyfile"] else "tls.certfile"
                raise ConfigError(
                    key, s[key.split(".")[1]], f"a PEM certificate and its private key ({_reason(exc)})"
                ) from None
        if s["cafile"]:
            _readable("tls.cafile", s["cafile"])
            try:
                ctx.load_verify_locations(cafile=s["cafile"])
            except (ssl.SSLError, OSError) as exc:
                raise ConfigError("tls.cafile", s["cafile"], f"PEM CA certificates ({_reason(exc)})") from None
        else:
            purpose = ssl.Purpose.CLIENT_AUTH if protocol == ssl.PROTOCOL_TLS_SERVER else ssl.Purpose.SERVER_AUTH
            ctx.load_default_certs(purpose)
        return ctx

    # -- the hooks of TcpTransport ------------------------------------------

    def _new_link(self, handler: LinkHandler, settings: LinkSettings) -> StreamLink:
        return TlsLink(handler, settings)

    def _check_listen(self) -> None:
        if self.server_context is None:
            raise ConfigError("tls.certfile", "", "the listener's certificate (a tls:// listener needs one)")

    async def _serve(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        handler_factory: HandlerFactory,
        settings: LinkSettings,
        backlog: int,
    ) -> _TlsServer:
        sock.listen(backlog)
        return _TlsServer(self, loop, sock, handler_factory, settings)

    async def _start_link(
        self, loop: asyncio.AbstractEventLoop, link: StreamLink, sock: socket.socket, scheme: str, host: str
    ) -> None:
        name = self.settings["server_name"] or host
        timeout = self.handshake_timeout
        if self.options.connect_timeout and self.options.connect_timeout > 0:
            timeout = min(timeout, self.options.connect_timeout)
        try:
            where = format_address("tls", sock.family, sock.getpeername())
        except OSError:
            where = f"tls://{host}"
        try:
            await loop.create_connection(
                lambda: link, sock=sock, ssl=self.client_context, server_hostname=name, ssl_handshake_timeout=timeout
            )
        except ssl.SSLError as exc:
            err = LinkClosed(f"TLS handshake with {where} (as {name!r}) failed: {_reason(exc)}", cause=exc)
            raise err from exc
        except ConnectionResetError as exc:
            # the listener refused the handshake and aborted before we read its alert
            raise LinkClosed(
                f"TLS handshake with {where} (as {name!r}) failed: the listener reset the connection "
                "(it refused the handshake: its log says why)",
                cause=exc,
            ) from exc
        except ConnectionAbortedError as exc:  # asyncio's ssl_handshake_timeout
            raise TimeoutError(f"TLS handshake with {where} took longer than {timeout:g} s") from exc

    def _handshake_failed(self, peer: str, exc: BaseException) -> None:
        kind = _failure_kind(exc)
        self.handshake_failures[kind] += 1
        logger.warning("TLS handshake with %s failed: %s", peer or "an unknown peer", _reason(exc))


def _readable(key: str, path: str) -> None:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise ConfigError(key, path, f"a readable PEM file ({exc.strerror or exc})") from None
