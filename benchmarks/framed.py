"""The raw asyncio peer: a length-prefixed frame stream, written to be fast.

This is what a careful developer writes when they skip a messaging library:
``u32 length | body`` frames, a :class:`asyncio.BufferedProtocol` receiving
into one reused buffer (bodies of 64 KiB and more straight into a buffer of
their own, so large frames are not copied on receipt), sends batched with
``writelines``, and watermark back-pressure.  It is the same cost class as
msgr's stream framing (a prefix, a copy of small bodies out of the receive
buffer, a callback per frame), minus everything a messenger adds: sessions,
headers, verbs, queues.

Request/response adds a ``u32`` correlation id in front of the body.  The
client writes the first request of a loop iteration at once (lowest
latency with one request outstanding) and coalesces the rest of that
iteration into one ``writelines`` (fewest syscalls with many outstanding);
the server answers everything one read delivered with one ``writelines``.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable

__all__ = ["U32", "FrameReceiver", "FrameSender", "RawClient", "RawServer"]

U32 = struct.Struct("!I")
_U32X2 = struct.Struct("!II")
HIGH_WATERMARK = 1024 * 1024  # the same limits msgr's sessions use by default
LOW_WATERMARK = 256 * 1024


class FrameReceiver(asyncio.BufferedProtocol):
    """Receives ``u32 length | body`` frames and calls ``on_frame(body)``.

    Bodies under ``direct`` bytes are copied (``bytes``) out of one reused
    buffer; larger ones are received into a ``bytearray`` of their own and
    passed as is (no copy).
    """

    def __init__(self, on_frame: Callable[[bytes | bytearray], None], *,
                 buffer_size: int = 256 * 1024, direct: int = 64 * 1024) -> None:
        self.on_frame = on_frame
        self._buf = bytearray(buffer_size)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self._direct = direct
        self._big: bytearray | None = None
        self._big_view: memoryview | None = None
        self._big_filled = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._big_view is not None:
            return self._big_view[self._big_filled:]
        if self._end == len(self._buf):
            held = self._end - self._start
            self._buf[:held] = self._view[self._start:self._end]
            self._start, self._end = 0, held
        return self._view[self._end:]

    def buffer_updated(self, nbytes: int) -> None:
        if self._big is not None:
            self._big_filled += nbytes
            if self._big_filled == len(self._big):
                big = self._big
                self._big = self._big_view = None
                self.on_frame(big)
            return
        start = self._start
        end = self._end + nbytes
        buf = self._buf
        view = self._view
        on_frame = self.on_frame
        unpack = U32.unpack_from
        while end - start >= 4:
            (n,) = unpack(buf, start)
            body = start + 4
            if end - body >= n:
                start = body + n
                on_frame(bytes(view[body:start]))
                continue
            if n >= self._direct:
                big = bytearray(n)
                got = end - body
                big[:got] = view[body:end]
                self._big, self._big_view, self._big_filled = big, memoryview(big), got
                start = end = 0
            break
        if start == end:
            start = end = 0
        self._start, self._end = start, end
        self.after_read()

    def after_read(self) -> None:
        """Called after each read's frames were delivered (servers flush here)."""


class FrameSender(asyncio.Protocol):
    """The sending end of a one-way frame stream: tracks back-pressure."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.paused = False
        self._resumed: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=HIGH_WATERMARK, low=LOW_WATERMARK)  # type: ignore[attr-defined]

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self._resumed is not None and not self._resumed.done():
            self._resumed.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.resume_writing()

    async def writable(self) -> None:
        """Wait until the transport's buffer is under the low watermark."""
        if self.paused:
            self._resumed = asyncio.get_running_loop().create_future()
            await self._resumed


class RawServer(FrameReceiver):
    """Answers ``u32 length | u32 cid | payload`` requests with ``handler(payload)``,
    every reply of one read in one ``writelines``."""

    def __init__(self, handler: Callable[[bytes | bytearray], bytes | bytearray]) -> None:
        super().__init__(self._request)
        self._handler = handler
        self._out: list[bytes | bytearray] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.transport.set_write_buffer_limits(high=HIGH_WATERMARK, low=LOW_WATERMARK)  # type: ignore[union-attr]

    def _request(self, body: bytes | bytearray) -> None:
        (cid,) = U32.unpack_from(body)
        reply = self._handler(body[4:])
        self._out.append(_U32X2.pack(len(reply) + 4, cid))
        self._out.append(reply)

    def after_read(self) -> None:
        if self._out:
            out, self._out = self._out, []
            self.transport.writelines(out)  # type: ignore[union-attr]


class RawClient(FrameReceiver):
    """``await client.request(payload)`` over one connection, many outstanding."""

    def __init__(self) -> None:
        super().__init__(self._reply)
        self._waiting: dict[int, asyncio.Future[bytes]] = {}
        self._next = 1
        self._loop = asyncio.get_running_loop()
        self._pending: list[bytes] = []
        self._in_iteration = False

    def _reply(self, body: bytes | bytearray) -> None:
        (cid,) = U32.unpack_from(body)
        fut = self._waiting.pop(cid, None)
        if fut is not None and not fut.done():
            fut.set_result(bytes(body[4:]))

    def connection_lost(self, exc: Exception | None) -> None:
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(ConnectionResetError("connection lost"))
        self._waiting.clear()

    def _flush(self) -> None:
        self._in_iteration = False
        if self._pending:
            out, self._pending = self._pending, []
            self.transport.writelines(out)  # type: ignore[union-attr]

    def request(self, payload: bytes) -> asyncio.Future[bytes]:
        cid = self._next
        self._next = cid + 1
        fut = self._loop.create_future()
        self._waiting[cid] = fut
        head = _U32X2.pack(len(payload) + 4, cid)
        if self._in_iteration:
            self._pending.append(head)
            self._pending.append(payload)
        else:
            self._in_iteration = True
            self._loop.call_soon(self._flush)
            self.transport.writelines((head, payload))  # type: ignore[union-attr]
        return fut
