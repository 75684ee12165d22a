"""What the conformance checks need to know about a transport: the harness.

A :class:`TransportHarness` names the transport class, an address to listen
on, the :class:`~msgr_core.transport.TransportOptions` to create it with,
and the optional *capabilities* some checks need.  A check that needs a
capability the harness lacks raises :class:`NotSupported` (the pytest suite
turns that into a skip with the reason).

The listen address is a template: ``{n}`` becomes a counter (a fresh name
per listener) and ``{tmp}`` a private temporary directory (for socket
paths)::

    TransportHarness(MyTransport, "my://127.0.0.1:0")
    TransportHarness(MyTransport, "unix://{tmp}/s{n}.sock")

Capabilities:

``any_port_address``
    an address asking the transport to pick a free one (port 0); derived
    from the listen address when its port is 0, else ``None`` (unsupported).
``inject_raw(address, data)``
    open a raw connection to a listener, send ``data`` and return once the
    listener has closed that connection — so malformed input can be sent.
    :func:`stream_inject_raw` does this for ``tcp://`` and ``unix://``.
``malformed_inputs(max_frame_bytes)``
    the raw byte strings to inject, by description; defaults to
    :func:`stream_malformed_inputs` (the stream framing of :mod:`msgr_core.framing`).
``pause_reading(link)`` / ``resume_reading(link)``
    make a link stop / start reading, so its peer's sends back up.  By
    default the link's own ``pause_reading`` / ``resume_reading`` methods
    are used when it has them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import shutil
import struct
import tempfile
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import PluginNotInstalled
from ..framing import BANNER
from ..transport import Link, LinkHandler, Transport, TransportOptions, split_address

__all__ = [
    "DEFAULT_ANY_PORT_ADDRESSES",
    "NotSupported",
    "TransportHarness",
    "harness_for_scheme",
    "kit_options",
    "load_transport_class",
    "stream_inject_raw",
    "stream_malformed_inputs",
]


class NotSupported(Exception):
    """A check needs something the transport or its harness does not offer.

    Not a failure: the pytest suite reports it as a skip with :attr:`reason`.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def kit_options(**overrides: Any) -> TransportOptions:
    """The options the kit creates transports with unless told otherwise.

    Small limits keep the size and back-pressure checks fast: frames up to
    1 MiB, watermarks 64 KiB / 16 KiB, a 5 s connect timeout.
    """
    base = TransportOptions(
        max_frame_bytes=1024 * 1024,
        high_watermark=64 * 1024,
        low_watermark=16 * 1024,
        connect_timeout=5.0,
    )
    return dataclasses.replace(base, **overrides)


def _link_method(name: str) -> Callable[[Link], None]:
    def call(link: Link) -> None:
        method = getattr(link, name, None)
        if not callable(method):
            raise NotSupported(f"{type(link).__qualname__} has no {name}() and the harness gives no {name} capability")
        method()

    call.__qualname__ = call.__name__ = f"link.{name}"
    return call


@dataclass
class TransportHarness:
    """How the checks create, address and poke one transport.

    :ivar transport_class: the :class:`~msgr_core.transport.Transport` subclass.
    :ivar listen_address: listen address template (``{n}``, ``{tmp}``).
    :ivar options: the options transports are created with (override per
        check with :meth:`make_transport`).
    :ivar any_port_address: an address meaning "pick a free one"; ``""``
        (the default) derives it from ``listen_address`` when that has port
        0, ``None`` says the transport has no such thing.
    :ivar inject_raw: the raw-injection capability, or ``None``.
    :ivar malformed_inputs: ``max_frame_bytes -> {description: raw bytes}``.
    :ivar pause_reading: stop reading on a link (see the module docstring).
    :ivar resume_reading: start reading again.
    :ivar loop_factory: event loop factory for :func:`~msgr_core.testing.run_check`
        (``uvloop.new_event_loop``); ``None`` for asyncio's default.
    :ivar timeout: seconds any single wait in a check may take before it
        fails; every check is bounded by a few of these.
    :ivar scheme: the scheme under test; defaults to ``listen_address``'s.
    """

    transport_class: type[Transport]
    listen_address: str
    options: TransportOptions = field(default_factory=kit_options)
    any_port_address: str | None = ""
    inject_raw: Callable[[str, bytes], Awaitable[None]] | None = None
    malformed_inputs: Callable[[int], Mapping[str, bytes]] | None = None
    pause_reading: Callable[[Link], None] = field(default_factory=lambda: _link_method("pause_reading"))
    resume_reading: Callable[[Link], None] = field(default_factory=lambda: _link_method("resume_reading"))
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    timeout: float = 30.0
    scheme: str = ""

    _counter: itertools.count[int] = field(default_factory=itertools.count, init=False, repr=False)
    _tmp: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not (isinstance(self.transport_class, type) and issubclass(self.transport_class, Transport)):
            raise TypeError(f"transport_class must be a Transport subclass, got {self.transport_class!r}")
        probe = self.listen_address.replace("{n}", "0").replace("{tmp}", "/tmp")
        scheme, _host, port, _path = split_address(probe)
        if not self.scheme:
            self.scheme = scheme
        elif self.scheme != scheme:
            raise ValueError(f"listen address {self.listen_address!r} is not a {self.scheme}:// address")
        if self.transport_class.schemes and self.scheme not in self.transport_class.schemes:
            raise ValueError(
                f"{self.transport_class.__qualname__} serves {self.transport_class.schemes}, not {self.scheme!r}"
            )
        if self.any_port_address == "":
            self.any_port_address = self.listen_address if port == 0 else None
        if self.inject_raw is not None and self.malformed_inputs is None:
            self.malformed_inputs = stream_malformed_inputs

    # -- what the checks call ---------------------------------------------

    def make_transport(self, **option_overrides: Any) -> Transport:
        """A new transport instance; ``option_overrides`` replace fields of
        :attr:`options` (``max_frame_bytes=...``)."""
        options = dataclasses.replace(self.options, **option_overrides)
        return self.transport_class(self.scheme, options)

    def next_listen_address(self, template: str | None = None) -> str:
        """Expand ``template`` (default :attr:`listen_address`) into a fresh address."""
        template = self.listen_address if template is None else template
        n = next(self._counter)
        if "{tmp}" in template and self._tmp is None:
            # Short path: unix socket paths are limited to ~100 bytes.
            self._tmp = tempfile.mkdtemp(prefix="msgr-kit-", dir="/tmp")
            weakref.finalize(self, shutil.rmtree, self._tmp, ignore_errors=True)
        return template.replace("{n}", str(n)).replace("{tmp}", self._tmp or "")

    async def dead_address(self) -> str:
        """An address nobody listens on: bind one, then close the listener.

        Override for transports where a closed listener's address may still
        answer.
        """
        transport = self.make_transport()
        try:
            listener = await transport.listen(self.next_listen_address(), _refuse_all)
            address = listener.address
            await listener.aclose()
        finally:
            await transport.aclose()
        return address


class _RefusingHandler:
    def link_made(self, link: Link) -> None:
        link.abort()

    def frame_received(self, frame: list[Any]) -> None:
        pass

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass

    def link_lost(self, exc: BaseException | None) -> None:
        pass


def _refuse_all() -> LinkHandler:
    return _RefusingHandler()


# -- stream transports ----------------------------------------------------------


def stream_malformed_inputs(max_frame_bytes: int) -> dict[str, bytes]:
    """Malformed byte streams for a transport using :mod:`msgr_core.framing`.

    Each must make the listener close that connection with
    :class:`~msgr_core.errors.ProtocolError` or
    :class:`~msgr_core.errors.FrameTooLarge`.
    """
    return {
        "garbage instead of the banner": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        "a frame header announcing max_frame_bytes + 1": BANNER
        + struct.pack("!IHI", max_frame_bytes + 1, 1, max_frame_bytes + 1),
        "a frame header with zero segments": BANNER + struct.pack("!IH", 0, 0),
        "segment lengths that disagree with the body length": BANNER
        + struct.pack("!IHII", 10, 2, 3, 4)
        + b"0123456789",
    }


async def stream_inject_raw(address: str, data: bytes) -> None:
    """Send ``data`` over a raw ``tcp://host:port`` or ``unix:///path``
    connection to ``address``; return once the listener closes it.

    Whatever the listener sends (its banner) is read and dropped, so our
    close never turns into a reset before the listener has read ``data``.
    The caller bounds the wait.

    :raises NotSupported: another scheme.
    """
    scheme, host, port, path = split_address(address)
    if scheme == "tcp" and port is not None:
        reader, writer = await asyncio.open_connection(host, port)
    elif scheme == "unix" and path:
        reader, writer = await asyncio.open_unix_connection(path)
    else:
        raise NotSupported(f"stream_inject_raw handles tcp:// and unix:// addresses, not {address!r}")
    try:
        writer.write(data)
        await writer.drain()
        while await reader.read(65536):
            pass
    except ConnectionError:
        pass  # reset by the listener: closed all the same
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


# -- finding a transport by scheme -------------------------------------------


def load_transport_class(scheme: str) -> type[Transport]:
    """The installed transport class serving ``scheme`` (entry point
    ``msgr.transports``, name = scheme).

    :raises PluginNotInstalled: nothing installed serves ``scheme``.
    :raises PluginError: the plugin failed to load or register.
    """
    from ..registry import load_transport_class as load

    return load(scheme)


#: Any-port addresses (the port-0 equivalent) of schemes without ports.
DEFAULT_ANY_PORT_ADDRESSES: dict[str, str] = {"loop": "loop://"}

_STREAM_SCHEMES = ("tcp", "unix")


def harness_for_scheme(scheme: str, listen_address: str | None = None) -> TransportHarness:
    """A harness for the installed transport serving ``scheme``.

    :param listen_address: a template; default: the transport class's
        ``test_addresses[scheme]``, else ``scheme://127.0.0.1:0``.
    :raises PluginNotInstalled: nothing installed serves ``scheme``.
    """
    cls = load_transport_class(scheme)
    if scheme not in cls.schemes:
        raise PluginNotInstalled("transport", scheme, list(cls.schemes), cls.distribution or None)
    address = listen_address or cls.test_addresses.get(scheme, f"{scheme}://127.0.0.1:0")
    inject = stream_inject_raw if scheme in _STREAM_SCHEMES else None
    settings = {**cls.config_defaults, **cls.test_settings.get(scheme, {})}
    return TransportHarness(
        cls,
        address,
        scheme=scheme,
        options=kit_options(settings=settings),
        inject_raw=inject,
        any_port_address=DEFAULT_ANY_PORT_ADDRESSES.get(scheme, ""),
    )
