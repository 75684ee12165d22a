"""A tiny in-memory transport that keeps the contract, broken variants of it,
and the conformance checks run directly (no pytest glue) against them.

The transport here exists to test the kit: a correct one must pass every
check, and each deliberately broken variant must fail the check aimed at
its flaw with a message that names the rule.  ``test_kit_pytester.py``
copies this module into pytester runs (as ``kit_memtransport``) to test
the pytest side of the kit with the same transports.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar

import pytest

import msgr_core
from msgr_core.errors import FrameTooLarge, LinkClosed, ProtocolError
from msgr_core.framing import StreamDecoder
from msgr_core.testing import (
    ConformanceError,
    NotSupported,
    TransportHarness,
    check_any_port,
    check_backpressure,
    check_bad_address,
    check_bidirectional,
    check_break_detection,
    check_close,
    check_close_from_callback,
    check_dead_address,
    check_frame_size_limit,
    check_link_made_first,
    check_listen_connect,
    check_listener_close,
    check_malformed_input,
    check_many_links,
    check_multi_buffer,
    check_ordered_delivery,
    check_oversize_received,
    check_received_buffers_owned,
    check_send_after_close,
)
from msgr_core.transport import (
    Buffer,
    Frame,
    HandlerFactory,
    Link,
    LinkHandler,
    Listener,
    Transport,
    frame_size,
    split_address,
)

_LISTENERS: dict[str, MemListener] = {}
_ids = itertools.count()


class MemListener(Listener):
    def __init__(self, transport: MemTransport, name: str, factory: HandlerFactory) -> None:
        self.transport = transport
        self.name = name
        self.address = f"mem://{name}"
        self.factory = factory

    async def aclose(self) -> None:
        if _LISTENERS.get(self.name) is self:
            del _LISTENERS[self.name]


class MemLink(Link):
    """One end.  ``send`` copies into a queue; a loop callback delivers."""

    def __init__(self, transport: MemTransport, handler: LinkHandler, local: str, peer: str) -> None:
        self.transport = transport
        self.handler = handler
        self.local_address = local
        self.peer_address = peer
        self.peer: MemLink | None = None
        self._loop = asyncio.get_running_loop()
        self._queue: deque[tuple[list[Buffer], int]] = deque()
        self._buffered = 0
        self._flush_scheduled = False
        self._closing = False
        self._lost = False
        self._writing_paused = False
        self._reading_paused = False
        self._scratch = bytearray(1 << 16)

    # -- Link --

    def send(self, frame: Frame) -> None:
        if self._closing:
            raise LinkClosed()
        size = frame_size(frame)
        limit = self.transport.options.max_frame_bytes
        if size > limit and not self.transport.accept_oversize:
            raise FrameTooLarge(size, limit)
        self._queue.append(([bytes(b) for b in frame], size))
        self._buffered += size
        self._schedule_flush()
        if self._buffered > self.transport.options.high_watermark and not self._writing_paused:
            self._loop.call_soon(self._maybe_pause)

    def write_buffer_size(self) -> int:
        return self._buffered

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._schedule_flush()

    def abort(self) -> None:
        if self._lost:
            return
        self._closing = True
        self._queue.clear()
        self._buffered = 0
        self._loop.call_soon(self._lose, None)
        if self.peer is not None:
            self._loop.call_soon(self.peer._lose, ConnectionResetError("peer aborted"))

    def is_closing(self) -> bool:
        return self._closing

    # -- capabilities --

    def pause_reading(self) -> None:
        self._reading_paused = True

    def resume_reading(self) -> None:
        self._reading_paused = False
        if self.peer is not None:
            self.peer._schedule_flush()

    # -- internals --

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _maybe_pause(self) -> None:
        high = self.transport.options.high_watermark
        if not self._lost and not self._writing_paused and self._buffered > high:
            self._writing_paused = True
            self.handler.pause_writing()

    def _flush(self) -> None:
        self._flush_scheduled = False
        peer = self.peer
        if self._lost or (peer is not None and peer._reading_paused):
            return
        batch = list(self._queue)
        self._queue.clear()
        self._buffered = 0
        if self.transport.reorder:
            for i in range(0, len(batch) - 1, 2):
                batch[i], batch[i + 1] = batch[i + 1], batch[i]
        for bufs, size in batch:
            if peer is None or peer._closing:
                break
            limit = peer.transport.options.max_frame_bytes
            if size > limit and not peer.transport.accept_oversize:
                peer._lose(FrameTooLarge(size, limit))
                self._lose(ConnectionResetError("peer refused an oversize frame"))
                return
            peer._deliver(bufs)
            if self._lost:
                return
        if self._writing_paused:
            self._writing_paused = False
            self.handler.resume_writing()
        if self._closing:
            self._lose(None)
            if peer is not None:
                peer._lose(None)

    def _deliver(self, frame: list[Buffer]) -> None:
        if self.transport.merge_buffers:
            frame = [b"".join(frame)]
        if self.transport.reuse_buffers:
            out: list[Buffer] = []
            view = memoryview(self._scratch)
            pos = 0
            for b in frame:
                n = len(b)
                if pos + n > len(self._scratch):
                    pos = 0
                if n > len(self._scratch):
                    out.append(b)
                    continue
                view[pos : pos + n] = b
                out.append(view[pos : pos + n])
                pos += n
            frame = out
        self.handler.frame_received(frame)

    def _lose(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        self._queue.clear()
        self._buffered = 0
        if not self.transport.forget_link_lost:
            self.handler.link_lost(exc)


class MemTransport(Transport):
    """``mem://name``; ``mem://`` picks a name.  Class flags break it on purpose."""

    schemes: ClassVar[tuple[str, ...]] = ("mem",)
    distribution: ClassVar[str] = "kit-memtransport"
    reorder: ClassVar[bool] = False
    merge_buffers: ClassVar[bool] = False
    forget_link_lost: ClassVar[bool] = False
    accept_oversize: ClassVar[bool] = False
    reuse_buffers: ClassVar[bool] = False

    async def listen(self, address: str, handler_factory: HandlerFactory) -> Listener:
        _, host, _, _ = split_address(address, self.schemes)
        name = host or f"auto{next(_ids)}"
        if name in _LISTENERS:
            raise OSError(errno.EADDRINUSE, f"{address} is in use")
        listener = MemListener(self, name, handler_factory)
        _LISTENERS[name] = listener
        return listener

    async def connect(self, address: str, handler: LinkHandler) -> Link:
        _, host, _, _ = split_address(address, self.schemes)
        await asyncio.sleep(0)
        listener = _LISTENERS.get(host)
        if listener is None:
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"nobody listens on {address}")
        local = f"mem://client{next(_ids)}"
        client = MemLink(self, handler, local, listener.address)
        server = MemLink(listener.transport, listener.factory(), listener.address, local)
        client.peer, server.peer = server, client
        server.handler.link_made(server)
        client.handler.link_made(client)
        return client


class ReorderingTransport(MemTransport):
    reorder = True


class BoundaryDroppingTransport(MemTransport):
    merge_buffers = True


class SilentTransport(MemTransport):
    forget_link_lost = True


class OversizeAcceptingTransport(MemTransport):
    accept_oversize = True


class BufferReusingTransport(MemTransport):
    reuse_buffers = True


async def mem_inject_raw(address: str, data: bytes) -> None:
    """Raw stream bytes to a ``mem://`` listener, decoded with the core's
    stream framing by a link that has no peer."""
    _, host, _, _ = split_address(address, ("mem",))
    listener = _LISTENERS.get(host)
    if listener is None:
        raise ConnectionRefusedError(errno.ECONNREFUSED, address)
    link = MemLink(listener.transport, listener.factory(), address, "mem://raw")
    link.handler.link_made(link)
    decoder = StreamDecoder(link.handler.frame_received, listener.transport.options.max_frame_bytes)
    try:
        decoder.feed(data)
    except (ProtocolError, FrameTooLarge) as exc:
        link._lose(exc)
    else:
        link._lose(None)
    await asyncio.sleep(0)


def mem_harness(cls: type[MemTransport] = MemTransport, **kw: Any) -> TransportHarness:
    kw.setdefault("inject_raw", mem_inject_raw)
    kw.setdefault("timeout", 30.0)
    return TransportHarness(cls, "mem://kit{n}", any_port_address="mem://", **kw)


@msgr_core.hookimpl
def msgr_register_transports() -> list[type[Transport]]:
    return [MemTransport]


# -- the checks, called directly ------------------------------------------------

Check = Callable[[TransportHarness], Any]

TRANSPORT_CHECKS: list[Check] = [
    check_listen_connect,
    check_any_port,
    check_link_made_first,
    check_multi_buffer,
    check_ordered_delivery,
    check_bidirectional,
    check_frame_size_limit,
    check_oversize_received,
    check_received_buffers_owned,
    check_many_links,
    check_close,
    check_close_from_callback,
    check_send_after_close,
    check_break_detection,
    check_listener_close,
    check_dead_address,
    check_bad_address,
    check_backpressure,
    check_malformed_input,
]


@pytest.mark.parametrize("check", TRANSPORT_CHECKS, ids=lambda c: c.__name__)
async def test_kit_good_transport_passes(check: Check) -> None:
    await check(mem_harness())


@pytest.mark.parametrize(
    ("cls", "check", "message"),
    [
        (ReorderingTransport, check_ordered_delivery, "arrived in position .* in the order sent"),
        (BoundaryDroppingTransport, check_multi_buffer, "buffer boundaries must be kept"),
        (SilentTransport, check_close, "link_lost .*the .* closed"),
        (OversizeAcceptingTransport, check_frame_size_limit, "it must raise FrameTooLarge"),
        (BufferReusingTransport, check_received_buffers_owned, "received buffers belong to the"),
    ],
    ids=["reorders", "merges-buffers", "no-link-lost", "accepts-oversize", "reuses-buffers"],
)
async def test_kit_broken_transport_fails(cls: type[MemTransport], check: Check, message: str) -> None:
    # Only the never-calls-link_lost variant needs a short timeout: its
    # failure is a wait that never ends.
    timeout = 1.0 if cls is SilentTransport else 30.0
    with pytest.raises(ConformanceError, match=message):
        await check(mem_harness(cls, timeout=timeout))


async def test_kit_conformance_error_is_an_assertion_error() -> None:
    with pytest.raises(AssertionError):
        await check_ordered_delivery(mem_harness(ReorderingTransport), frames=100)


async def test_kit_capability_gaps_raise_not_supported() -> None:
    h = TransportHarness(MemTransport, "mem://kit{n}")
    assert h.any_port_address is None
    with pytest.raises(NotSupported, match="inject_raw"):
        await check_malformed_input(h)
    with pytest.raises(NotSupported, match="any-port"):
        await check_any_port(h)


async def test_kit_backpressure_without_pause_reading_is_not_supported() -> None:
    def no_pause(link: Link) -> None:
        raise NotSupported("this transport cannot stop reading")

    h = mem_harness(pause_reading=no_pause)
    with pytest.raises(NotSupported, match="cannot stop reading"):
        await check_backpressure(h)


class _ReentrantLink(MemLink):
    def send(self, frame: Frame) -> None:
        super().send(frame)
        self._flush_scheduled = True  # deliver now, from inside send: forbidden
        self._flush()


class ReentrantTransport(MemTransport):
    async def connect(self, address: str, handler: LinkHandler) -> Link:
        link = await super().connect(address, handler)
        link.__class__ = _ReentrantLink
        return link


async def test_kit_reentrant_delivery_is_reported() -> None:
    with pytest.raises(ConformanceError, match=r"from inside Link\.send"):
        await check_listen_connect(mem_harness(ReentrantTransport))


def test_kit_harness_validates_its_input() -> None:
    with pytest.raises(TypeError, match="Transport subclass"):
        TransportHarness(object, "mem://x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="serves"):
        TransportHarness(MemTransport, "tcp://127.0.0.1:0")
    h = TransportHarness(MemTransport, "mem://a{n}")
    assert (h.scheme, h.next_listen_address(), h.next_listen_address()) == ("mem", "mem://a0", "mem://a1")
    t = TransportHarness(MemTransport, "mem://{tmp}/s{n}")
    assert "/msgr-kit-" in t.next_listen_address()
