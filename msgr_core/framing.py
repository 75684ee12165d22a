"""Framing for byte-stream transports (TCP, unix sockets, anything stream-like).

A transport over a byte stream uses :func:`encode_prefix` to send and a
:class:`StreamDecoder` to receive; both keep a frame's buffer boundaries.

Wire format: once per stream, the 8-byte :data:`BANNER`; then per frame ::

    u32 body_length | u16 segment_count | u32 segment_length * count | body

(big-endian).  ``body_length`` is the sum of the segment lengths.

The decoder is made for :class:`asyncio.BufferedProtocol`: the transport
hands out :meth:`StreamDecoder.get_buffer` and reports
:meth:`StreamDecoder.buffer_updated`.  Small segments are copied out of one
reused receive buffer (cheaper than keeping views into it alive); a frame
whose body is at least ``direct_threshold`` bytes is received straight into
a buffer of its own, and its segments are delivered as views of it — no
copy at all on the large-message path.  That buffer is kept when the frame
is done and reused for the next large frame of a similar size once nothing
refers to it any more (the receiver dropped every view of it; CPython's
reference count says so), which saves zero-filling and page-faulting a
fresh buffer per message.  A view the receiver keeps is never overwritten.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable, Sequence

from .errors import FrameTooLarge, ProtocolError
from .transport import Buffer

__all__ = ["BANNER", "MAX_SEGMENTS", "StreamDecoder", "encode_prefix"]

BANNER = b"msgr\x00\x01\r\n"
"""Sent first on every stream: protocol family + framing version."""

MAX_SEGMENTS = 1024
"""Most buffers one frame may carry."""

_HEAD = struct.Struct("!IH")
_SEG1 = struct.Struct("!IHI")
_SEG2 = struct.Struct("!IHII")
_U32 = struct.Struct("!I")
_HEAD_SIZE = _HEAD.size
_SEG2_SIZE = _SEG2.size
_INITIAL_BUFFER = 4 * 1024
_MAX_SPARE = 256 * 1024 * 1024
# CPython: a reference count tells when a large frame's buffer is free to reuse
_refcount: Callable[[object], int] | None = getattr(sys, "getrefcount", None)


def _drop(frame: list[Buffer]) -> None:
    pass


def _nbytes(b: Buffer) -> int:
    return b.nbytes if type(b) is memoryview else len(b)


def encode_prefix(frame: Sequence[Buffer], max_frame_bytes: int) -> bytes:
    """The bytes to send before ``frame``'s buffers.

    :raises FrameTooLarge: the frame is over ``max_frame_bytes``.
    :raises ValueError: the frame has no buffer, or more than :data:`MAX_SEGMENTS`.
    """
    n = len(frame)
    if n == 2:
        a = _nbytes(frame[0])
        b = _nbytes(frame[1])
        total = a + b
        if total > max_frame_bytes:
            raise FrameTooLarge(total, max_frame_bytes)
        return _SEG2.pack(total, 2, a, b)
    if n == 1:
        a = _nbytes(frame[0])
        if a > max_frame_bytes:
            raise FrameTooLarge(a, max_frame_bytes)
        return _SEG1.pack(a, 1, a)
    if n == 0 or n > MAX_SEGMENTS:
        raise ValueError(f"a frame has 1 to {MAX_SEGMENTS} buffers, got {n}")
    lengths = [_nbytes(b) for b in frame]
    total = sum(lengths)
    if total > max_frame_bytes:
        raise FrameTooLarge(total, max_frame_bytes)
    return _HEAD.pack(total, n) + struct.pack(f"!{n}I", *lengths)


class StreamDecoder:
    """Incremental decoder; calls ``on_frame(buffers)`` for each whole frame.

    :param on_frame: called with a list of buffers the receiver owns.
    :param max_frame_bytes: a larger announced body raises :class:`FrameTooLarge`.
    :param expect_banner: check :data:`BANNER` at the start of the stream.
    :param direct_threshold: bodies this large are received without a copy.

    :meth:`buffer_updated` raises :class:`ProtocolError` or
    :class:`FrameTooLarge` on bad input; after that the decoder is dead and
    the stream must be closed.
    """

    def __init__(
        self,
        on_frame: Callable[[list[Buffer]], None],
        max_frame_bytes: int,
        *,
        expect_banner: bool = True,
        buffer_size: int = 256 * 1024,
        direct_threshold: int = 64 * 1024,
    ) -> None:
        self._on_frame = on_frame
        self._max = max_frame_bytes
        # Start small (idle links cost little) and grow while reads fill it.
        self._max_buffer = max(buffer_size, 1024)
        self._buf = bytearray(min(self._max_buffer, _INITIAL_BUFFER))
        self._filled = False
        self._view = memoryview(self._buf)
        self._start = 0  # first unparsed byte
        self._end = 0  # one past the last received byte
        self._banner = expect_banner
        self._direct_threshold = direct_threshold
        # a frame being received straight into its own buffer
        self._big: bytearray | None = None
        self._big_view: memoryview | None = None
        self._big_filled = 0
        self._big_total = 0
        self._big_lengths: list[int] = []
        # the buffer of the last large frame, reused for the next one once
        # nothing refers to it any more (no page faults, no zero-filling)
        self._spare: bytearray | None = None
        self.bytes_received = 0

    @property
    def max_frame_bytes(self) -> int:
        """The largest body accepted from now on; may be changed at any
        time, also from ``on_frame`` (the next frame is checked against
        the new value)."""
        return self._max

    @max_frame_bytes.setter
    def max_frame_bytes(self, value: int) -> None:
        self._max = value

    # -- the BufferedProtocol side --------------------------------------

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Where the next received bytes should go (never empty)."""
        if self._big_view is not None:
            return self._big_view[self._big_filled :]
        if self._end == len(self._buf):
            self._make_room()
        return self._view[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` were written into the last :meth:`get_buffer`."""
        self.bytes_received += nbytes
        if self._big is not None:
            self._big_filled += nbytes
            if self._big_filled == self._big_total:
                self._finish_big()
            return
        self._end += nbytes
        if self._end == len(self._buf):
            self._filled = True
        self._parse()

    def feed(self, data: Buffer) -> None:
        """Decode ``data`` (a convenience for non-buffered transports)."""
        mv = memoryview(data).cast("B")
        while mv:
            target = self.get_buffer()
            n = min(len(target), len(mv))
            target[:n] = mv[:n]
            mv = mv[n:]
            self.buffer_updated(n)

    def deliver_to(self, on_frame: Callable[[list[Buffer]], None]) -> None:
        """Call ``on_frame`` for the frames decoded from now on."""
        self._on_frame = on_frame

    def stop(self) -> None:
        """Deliver no more frames (the stream is closing); bytes still fed
        are parsed and dropped."""
        self._on_frame = _drop

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held (0 at a frame boundary)."""
        if self._big is not None:
            return self._big_filled
        return self._end - self._start

    # -- internals ------------------------------------------------------

    def _make_room(self) -> None:
        # Called only when the buffer is full up to its end.
        held = self._end - self._start
        size = len(self._buf)
        if self._filled and size < self._max_buffer:
            size = min(size * 4, self._max_buffer)  # reads keep filling it: busy link
        elif held == size:
            size *= 2  # one frame header + small body larger than the buffer
        self._filled = False
        if size != len(self._buf):
            # A new buffer rather than a resize: views handed out earlier may
            # still be alive, and a bytearray with exports cannot be resized.
            new = bytearray(size)
            new[:held] = self._view[self._start : self._end]
            self._buf = new
            self._view = memoryview(new)
        elif self._start > 0:
            self._buf[:held] = self._view[self._start : self._end]
        self._start, self._end = 0, held

    def _parse(self) -> None:
        buf = self._buf
        view = self._view
        if self._banner:
            have = self._end - self._start
            n = min(have, len(BANNER))
            if buf[self._start : self._start + n] != BANNER[:n]:
                raise ProtocolError(
                    f"bad stream banner {bytes(buf[self._start:self._start + n])!r}, "
                    f"expected {BANNER!r} (not a msgr peer?)"
                )
            if have < len(BANNER):
                return
            self._start += len(BANNER)
            self._banner = False
        start, end = self._start, self._end
        unpack_head = _HEAD.unpack_from
        unpack_two = _SEG2.unpack_from
        limit = self._max
        try:
            while True:
                avail = end - start
                if avail >= _SEG2_SIZE:
                    total, nseg, a, b = unpack_two(buf, start)
                    if nseg == 2 and total <= limit and avail >= _SEG2_SIZE + total:
                        # the common case (header + payload, whole frame present)
                        body = start + _SEG2_SIZE
                        if a + b != total:
                            raise ProtocolError(f"frame segment lengths sum to {a + b}, header says {total}")
                        start = body + total
                        self._start = start
                        # looked up per frame: stop() may have been called by the last one
                        self._on_frame([view[body : body + a].tobytes(), view[body + a : start].tobytes()])
                        continue
                elif avail < _HEAD_SIZE:
                    break
                else:
                    total, nseg = unpack_head(buf, start)
                if total > self._max:
                    raise FrameTooLarge(total, self._max)
                if nseg == 0 or nseg > MAX_SEGMENTS:
                    raise ProtocolError(f"frame with {nseg} segments (1 to {MAX_SEGMENTS} allowed)")
                hlen = _HEAD_SIZE + 4 * nseg
                if end - start < hlen:
                    break
                if nseg == 1:
                    lengths: Sequence[int] = (_U32.unpack_from(buf, start + _HEAD_SIZE)[0],)
                else:
                    lengths = struct.unpack_from(f"!{nseg}I", buf, start + _HEAD_SIZE)
                if sum(lengths) != total:
                    raise ProtocolError(
                        f"frame segment lengths sum to {sum(lengths)}, header says {total}"
                    )
                body = start + hlen
                if end - body >= total:
                    segs: list[Buffer] = []
                    pos = body
                    for ln in lengths:
                        segs.append(view[pos : pos + ln].tobytes())
                        pos += ln
                    start = pos
                    self._start = start
                    self._on_frame(segs)
                    continue
                if total >= self._direct_threshold:
                    big = self._big_buffer(total)
                    got = end - body
                    big_view = memoryview(big)[:total]
                    big_view[:got] = view[body:end]
                    self._big = big
                    self._big_view = big_view
                    self._big_total = total
                    self._big_filled = got
                    self._big_lengths = list(lengths)
                    start = end = 0
                break
        finally:
            if start == end:
                start = end = 0
            self._start, self._end = start, end

    def _big_buffer(self, total: int) -> bytearray:
        """A buffer of at least ``total`` bytes for a large frame: the spare
        when nothing else refers to it (the receiver dropped every view of
        the frame it held) and its size fits, else a new one."""
        spare = self._spare
        if spare is not None:
            self._spare = None
            # references: ``spare`` and getrefcount's argument
            if _refcount is not None and total <= len(spare) <= 2 * total and _refcount(spare) <= 2:
                return spare
            del spare
        return bytearray(total)

    def _finish_big(self) -> None:
        big = self._big
        view = self._big_view
        lengths = self._big_lengths
        self._big = self._big_view = None
        self._big_filled = 0
        if big is None or view is None:
            return
        if _refcount is not None and len(big) <= _MAX_SPARE:
            self._spare = big
        segs: list[Buffer] = []
        pos = 0
        for ln in lengths:
            segs.append(view[pos : pos + ln])
            pos += ln
        self._on_frame(segs)
