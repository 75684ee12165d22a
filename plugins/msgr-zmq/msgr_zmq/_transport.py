"""The :class:`ZmqTransport` (schemes ``zmq+tcp`` and ``zmq+ipc``)."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import stat
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

from msgr_core.errors import ConfigError, UnsupportedAddress
from msgr_core.transport import (
    HandlerFactory,
    Link,
    LinkHandler,
    Listener,
    Transport,
    TransportOptions,
    split_address,
)

from ._client import ZmqClientLink
from ._listener import ZmqListener, wait_released
from ._settings import DEFAULTS, SECTION, ZmqSettings

__all__ = ["ZmqTransport", "parse_address"]

SCHEMES = ("zmq+tcp", "zmq+ipc")


def parse_address(address: str, *, listen: bool) -> tuple[str, str, bool]:
    """``(scheme, libzmq endpoint, is IPv6)`` for a msgr-zmq address.

    ``zmq+tcp://host:port`` (IPv6 as ``[::1]``; port 0 only to listen) and
    ``zmq+ipc:///absolute/path``.

    :raises UnsupportedAddress: anything else.
    """
    scheme, host, port, path = split_address(address, SCHEMES)
    parts = urlsplit(address)
    if parts.query or parts.fragment or parts.username is not None:
        raise UnsupportedAddress(address, "no user, query or fragment allowed")
    if scheme == "zmq+tcp":
        if not host:
            raise UnsupportedAddress(address, "expected zmq+tcp://host:port")
        if path not in ("", "/"):
            raise UnsupportedAddress(address, "a zmq+tcp address has no path")
        if port is None:
            raise UnsupportedAddress(address, "expected zmq+tcp://host:port (no port given)")
        if port == 0 and not listen:
            raise UnsupportedAddress(address, "port 0 means 'pick one' and can only be listened on")
        ipv6 = ":" in host
        shown = f"[{host}]" if ipv6 else host
        return scheme, f"tcp://{shown}:{'*' if port == 0 else port}", ipv6
    if parts.netloc:
        raise UnsupportedAddress(address, "expected zmq+ipc:///absolute/path (three slashes)")
    path = unquote(path)
    if not path.startswith("/") or path.endswith("/"):
        raise UnsupportedAddress(address, "expected zmq+ipc:///absolute/path")
    return scheme, f"ipc://{path}", False


def _check_ipc_path(path: str) -> None:
    """libzmq unlinks whatever is at an ipc path before binding it: refuse
    to take over a live listener's socket, or to delete a file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, f"cannot listen on {path}: it exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return  # a stale socket file: libzmq replaces it
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EINPROGRESS):
            return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"cannot listen on {path}: another listener is using it")


class ZmqTransport(Transport):
    """ZeroMQ links for ``zmq+tcp://host:port`` and ``zmq+ipc:///path``;
    see the :mod:`msgr_zmq` module docstring.

    One instance serves the scheme it was created for and accepts
    addresses of both schemes.
    """

    schemes: ClassVar[tuple[str, ...]] = SCHEMES
    distribution: ClassVar[str] = "msgr-zmq"
    config_section: ClassVar[str] = SECTION
    config_defaults: ClassVar[dict[str, Any]] = DEFAULTS
    test_addresses: ClassVar[dict[str, str]] = {
        "zmq+tcp": "zmq+tcp://127.0.0.1:0",
        "zmq+ipc": "zmq+ipc://{tmp}/z{n}.ipc",
    }

    def __init__(self, scheme: str, options: TransportOptions) -> None:
        if scheme not in self.schemes:
            raise ValueError(f"{type(self).__name__} serves {', '.join(self.schemes)}, not {scheme!r}")
        super().__init__(scheme, options)
        #: The checked ``[zmq]`` settings.
        self.settings = ZmqSettings.from_mapping(dict(options.settings))
        if not 0 <= options.low_watermark <= options.high_watermark:
            raise ConfigError(
                "limits.low_watermark",
                options.low_watermark,
                f"an integer between 0 and the high watermark ({options.high_watermark})",
            )
        self._listeners: set[ZmqListener] = set()
        self._links: set[ZmqClientLink] = set()

    async def listen(self, address: str, handler_factory: HandlerFactory) -> Listener:
        """Bind a ROUTER socket at ``address`` (port 0: any free port).

        :raises UnsupportedAddress: the address is malformed.
        :raises OSError: it cannot be bound (in use, no such interface, an
            ipc path that is a live socket or not a socket at all).
        """
        scheme, endpoint, ipv6 = parse_address(address, listen=True)
        if scheme == "zmq+ipc":
            _check_ipc_path(endpoint[len("ipc://") :])
        opts = self.options
        listener = ZmqListener(
            scheme,
            endpoint,
            handler_factory,
            self.settings,
            opts.max_frame_bytes,
            opts.high_watermark,
            opts.low_watermark,
            self._listeners.discard,
            hello_timeout=opts.connect_timeout,
        )
        await wait_released(endpoint)  # the same address, closed a moment ago in this process
        listener.bind(ipv6)
        self._listeners.add(listener)
        return listener

    async def connect(self, address: str, handler: LinkHandler) -> Link:
        """Open a link: a DEALER socket of its own, a hello, the listener's
        accept — within ``connect_timeout``.

        :raises UnsupportedAddress: the address is malformed.
        :raises ConnectionRefusedError: nothing listens there, or it refused.
        :raises TimeoutError: no msgr-zmq answer in time.
        :raises ZmqAuthenticationFailed: the security (CURVE) handshake
            failed; also a ``PermissionError``.
        """
        scheme, endpoint, ipv6 = parse_address(address, listen=False)
        opts = self.options
        link = ZmqClientLink(
            address,
            scheme,
            self.settings,
            opts.max_frame_bytes,
            opts.high_watermark,
            opts.low_watermark,
            asyncio.get_running_loop(),
            self._links.discard,
        )
        self._links.add(link)
        await link.open(endpoint, handler, opts.connect_timeout, ipv6)
        return link

    async def aclose(self) -> None:
        """Close every listener and link of this transport (links end with
        ``link_lost(LinkClosed)``)."""
        for listener in list(self._listeners):
            listener.shutdown()
        for link in list(self._links):
            link._teardown_now()
        await asyncio.sleep(0)
