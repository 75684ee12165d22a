"""The :class:`TcpTransport` (schemes ``tcp`` and ``unix``) and its listener."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
from typing import Any, ClassVar, Protocol
from urllib.parse import unquote

from msgr_core.errors import ConfigError, UnsupportedAddress
from msgr_core.transport import (
    HandlerFactory,
    LinkHandler,
    Listener,
    Transport,
    TransportOptions,
    split_address,
)

from ._link import LinkSettings, StreamLink, format_address

__all__ = ["StreamListener", "TcpTransport"]

logger = logging.getLogger("msgr.tcp")

_HAS_UNIX = hasattr(socket, "AF_UNIX")


class _Server(Protocol):
    """What a listener stops: an ``asyncio.Server``, or a transport's own
    accept loop."""

    def close(self) -> None: ...


class StreamListener(Listener):
    """A listening socket served by an ``asyncio.Server``.

    :ivar address: the address actually bound (port 0 resolved).
    """

    def __init__(
        self,
        server: _Server,
        address: str,
        unix_path: str = "",
        unix_id: tuple[int, int] | None = None,
    ) -> None:
        self.address = address
        self._server: _Server | None = server
        self._unix_path = unix_path
        self._unix_id = unix_id

    def __repr__(self) -> str:
        state = "closed" if self._server is None else "listening"
        return f"<StreamListener {self.address} {state}>"

    async def aclose(self) -> None:
        """Stop accepting and close the listening socket (a unix socket's
        file is removed, if it is still the one this listener bound).
        Links already made stay up.  Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        # Not ``wait_closed()``: since Python 3.12 it also waits for every
        # accepted connection to close, and links outlive their listener.
        server.close()
        if self._unix_path:
            try:
                st = os.stat(self._unix_path)
                if (st.st_dev, st.st_ino) == self._unix_id:
                    os.unlink(self._unix_path)
            except FileNotFoundError:
                pass
            except OSError as exc:  # pragma: no cover - permissions changed under us
                logger.warning("cannot remove unix socket %s: %s", self._unix_path, exc)
        # let the loop drop the listening handle (uvloop closes it on the next turn)
        await asyncio.sleep(0)


class TcpTransport(Transport):
    """asyncio stream transport for ``tcp://host:port`` and ``unix:///path``.

    One instance serves the scheme it was created for (and accepts
    addresses of any scheme in :attr:`schemes`).  Subclasses that wrap the
    stream (:class:`~msgr_tcp.TlsTransport`) override :meth:`_serve`,
    :meth:`_new_link` and :meth:`_start_link` and set :attr:`direct_send`
    to ``False``.
    """

    schemes: ClassVar[tuple[str, ...]] = ("tcp", "unix") if _HAS_UNIX else ("tcp",)
    distribution: ClassVar[str] = "msgr-tcp"
    config_section: ClassVar[str] = "tcp"
    config_defaults: ClassVar[dict[str, Any]] = {
        "nodelay": True,
        "keepalive": True,
        "backlog": 1024,
        "receive_buffer": 256 * 1024,
        "direct_receive_threshold": 64 * 1024,
        "direct_send": True,
        "close_timeout": 10.0,
    }
    test_addresses: ClassVar[dict[str, str]] = {
        "tcp": "tcp://127.0.0.1:0",
        "unix": "unix://{tmp}/s{n}.sock",
    }
    #: May links bypass asyncio's write path with ``socket.sendmsg``?
    #: (``False`` for any transport whose bytes are not the socket's bytes.)
    direct_send: ClassVar[bool] = True

    def __init__(self, scheme: str, options: TransportOptions) -> None:
        if scheme not in self.schemes:
            served = ", ".join(self.schemes)
            raise ValueError(f"{type(self).__name__} serves {served}, not {scheme!r}")
        super().__init__(scheme, options)
        self.settings = self._check_settings(options.settings)
        if not 0 <= options.low_watermark <= options.high_watermark:
            raise ConfigError(
                "limits.low_watermark",
                options.low_watermark,
                f"an integer between 0 and the high watermark ({options.high_watermark})",
            )
        self._link_settings: dict[str, LinkSettings] = {}

    @classmethod
    def _check_settings(cls, given: dict[str, Any]) -> dict[str, Any]:
        merged = dict(cls.config_defaults)
        section = cls.config_section
        for key, value in given.items():
            if key not in merged:
                raise ConfigError(f"{section}.{key}", value, f"one of {', '.join(sorted(merged))}")
            default = merged[key]
            if isinstance(default, str):
                if not isinstance(value, str):
                    raise ConfigError(f"{section}.{key}", value, "a string")
            elif isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ConfigError(f"{section}.{key}", value, "true or false")
            elif isinstance(default, int) and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ConfigError(f"{section}.{key}", value, "a positive integer")
            elif isinstance(default, float):
                if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                    raise ConfigError(f"{section}.{key}", value, "a positive number of seconds")
                value = float(value)
            merged[key] = value
        return merged

    def _settings_for(self, scheme: str) -> LinkSettings:
        ls = self._link_settings.get(scheme)
        if ls is None:
            opts, s = self.options, self.settings
            ls = self._link_settings[scheme] = LinkSettings(
                scheme=scheme,
                max_frame_bytes=opts.max_frame_bytes,
                high_watermark=opts.high_watermark,
                low_watermark=opts.low_watermark,
                nodelay=s["nodelay"],
                keepalive=s["keepalive"],
                receive_buffer=s["receive_buffer"],
                direct_receive_threshold=s["direct_receive_threshold"],
                close_timeout=s["close_timeout"],
                allow_direct=self.direct_send and s.get("direct_send", False),
            )
        return ls

    # -- hooks for transports that wrap the stream (TLS) -------------------------

    def _check_listen(self) -> None:
        """Raise before binding if this transport cannot listen (a TLS
        transport without a certificate)."""

    async def _serve(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        handler_factory: HandlerFactory,
        settings: LinkSettings,
        backlog: int,
    ) -> _Server:
        """Accept links on the bound socket ``sock``; the result's
        ``close()`` stops accepting (links already made stay up)."""

        def make_link() -> StreamLink:
            return self._new_link(handler_factory(), settings)

        if sock.family == getattr(socket, "AF_UNIX", None):
            return await loop.create_unix_server(make_link, sock=sock, backlog=backlog)
        return await loop.create_server(make_link, sock=sock, backlog=backlog)

    def _new_link(self, handler: LinkHandler, settings: LinkSettings) -> StreamLink:
        """The link object for one connection."""
        return StreamLink(handler, settings)

    async def _start_link(
        self, loop: asyncio.AbstractEventLoop, link: StreamLink, sock: socket.socket, scheme: str, host: str
    ) -> None:
        """Run ``link`` over the connected socket ``sock`` (``link_made``
        has run when this returns)."""
        if scheme == "unix":
            await loop.create_unix_connection(lambda: link, sock=sock)
        else:
            await loop.create_connection(lambda: link, sock=sock)

    # -- addresses -------------------------------------------------------------

    def _parse(self, address: str, *, listen: bool) -> tuple[str, str, int, str]:
        scheme, host, port, path = split_address(address, self.schemes)
        if scheme == "unix":
            path = unquote(path)
            if host or port is not None or not path.startswith("/") or path == "/":
                raise UnsupportedAddress(address, "expected unix:///absolute/path/to/socket")
            return scheme, "", 0, path
        if path not in ("", "/"):
            raise UnsupportedAddress(address, f"a {scheme} address has no path")
        if port is None:
            raise UnsupportedAddress(address, f"expected {scheme}://host:port")
        if not listen and (not host or port == 0):
            raise UnsupportedAddress(address, "connect needs a host and a port other than 0")
        return scheme, host, port, path

    # -- Transport API ---------------------------------------------------------

    async def listen(self, address: str, handler_factory: HandlerFactory) -> StreamListener:
        """Bind and accept; port 0 picks a free port, ``tcp://:port`` binds
        the first address ``getaddrinfo`` gives for a passive socket.

        A unix socket file left by a dead listener is removed first; one a
        live listener still accepts on raises ``OSError(EADDRINUSE)``, and
        a path that is not a socket raises ``FileExistsError``.

        :raises UnsupportedAddress: malformed address.
        :raises OSError: the address cannot be bound.
        """
        scheme, host, port, path = self._parse(address, listen=True)
        loop = asyncio.get_running_loop()
        settings = self._settings_for(scheme)
        backlog = self.settings["backlog"]

        self._check_listen()
        unix_id: tuple[int, int] | None = None
        if scheme == "unix":
            sock = _bind_unix(path)
            try:
                st = os.stat(path)
                unix_id = (st.st_dev, st.st_ino)
                server = await self._serve(loop, sock, handler_factory, settings, backlog)
            except BaseException:
                sock.close()
                _unlink_quietly(path)
                raise
        else:
            sock = await _bind_inet(loop, host, port)
            try:
                server = await self._serve(loop, sock, handler_factory, settings, backlog)
            except BaseException:
                sock.close()
                raise
        bound = format_address(scheme, sock.family, sock.getsockname())
        logger.debug("listening on %s", bound)
        return StreamListener(server, bound, path, unix_id)

    async def connect(self, address: str, handler: LinkHandler) -> StreamLink:
        """Connect within ``options.connect_timeout`` seconds; when this
        returns, ``handler.link_made`` has run.

        :raises UnsupportedAddress: malformed address.
        :raises TimeoutError: no connection within the timeout.
        :raises ConnectionRefusedError: nothing listens there.
        :raises OSError: other socket errors (unknown host: ``socket.gaierror``;
            missing unix socket file: ``FileNotFoundError``).
        """
        scheme, host, port, path = self._parse(address, listen=False)
        loop = asyncio.get_running_loop()
        link = self._new_link(handler, self._settings_for(scheme))
        timeout = self.options.connect_timeout
        async with asyncio.timeout(timeout if timeout and timeout > 0 else None):
            if scheme == "unix":
                sock = await _connect_unix(loop, path)
            else:
                sock = await _connect_inet(loop, host, port)
        try:
            await self._start_link(loop, link, sock, scheme, host)
        except BaseException:
            sock.close()
            raise
        if link._lost and sock.fileno() != -1:
            # Aborted from link_made: uvloop attaches ``sock`` to its transport
            # only after connection_made, so its close never detached it, and
            # the object would close the (already closed, maybe reused) fd again.
            sock.detach()
        return link


# -- sockets ----------------------------------------------------------------------


async def _bind_inet(loop: asyncio.AbstractEventLoop, host: str, port: int) -> socket.socket:
    infos = await loop.getaddrinfo(
        host or None,
        port,
        type=socket.SOCK_STREAM,
        proto=socket.IPPROTO_TCP,
        flags=socket.AI_PASSIVE,
    )
    if not infos:  # pragma: no cover - getaddrinfo raises instead
        raise OSError(errno.EADDRNOTAVAIL, f"no address for {host!r}")
    family, type_, proto, _, addr = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _bind_unix(path: str) -> socket.socket:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise FileExistsError(errno.EEXIST, "exists and is not a socket", path)
        if _unix_alive(path):
            raise OSError(errno.EADDRINUSE, "a live listener accepts on this socket", path)
        logger.info("removing stale unix socket %s", path)
        _unlink_quietly(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _unix_alive(path: str) -> bool:
    """Does something accept on the unix socket ``path``?"""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.setblocking(False)
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except BlockingIOError:  # its backlog is full: very much alive
        return True
    except OSError:
        return False
    finally:
        probe.close()
    return True


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _numeric_addrinfo(host: str, port: int) -> list[Any] | None:
    """``getaddrinfo`` for an IP literal, resolved here and now (no DNS, so
    it cannot block); ``None`` for a name."""
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP,
                                  flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        return None


async def _connect_inet(loop: asyncio.AbstractEventLoop, host: str, port: int) -> socket.socket:
    # IP literals (most cluster configs) skip the executor thread that
    # loop.getaddrinfo uses: one thread hop less per dial, and dialling
    # still works while the interpreter exits (an atexit stop that flushes
    # a lossless session), when executors refuse new work.
    infos = _numeric_addrinfo(host, port) or await loop.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    errors: list[OSError] = []
    for family, type_, proto, _, addr in infos:
        sock = socket.socket(family, type_, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, addr)
        except OSError as exc:
            sock.close()
            errors.append(exc)
        except BaseException:
            sock.close()
            raise
        else:
            return sock
    if not errors:  # pragma: no cover - getaddrinfo raises instead
        raise OSError(errno.EADDRNOTAVAIL, f"no address for {host!r}")
    first = errors[0]
    for other in errors[1:]:
        first.add_note(f"also tried: {other}")
    raise first


async def _connect_unix(loop: asyncio.AbstractEventLoop, path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await loop.sock_connect(sock, path)
    except BaseException:
        sock.close()
        raise
    return sock
