"""The msgr-rdma protocol over the verbs interface: one :class:`RdmaLink` per
RC queue pair.

Wire format: every message is one SEND into one of the peer's pre-posted
receive buffers (``buffer_size`` bytes each), starting with ::

    u8 type | u8 flags | u16 credits returned

``DATA`` (1)
    frames sent through receive buffers: with flags ``FIRST | LAST``, one
    or more whole frames back to back (small frames queued together share
    one SEND); otherwise a piece of one frame.  Flags ``FIRST`` /
    ``LAST`` bound a frame's pieces; the pieces' bytes, joined, are
    ``u32 total | u16 nseg | u32 length * nseg | payload``.  A frame that
    fits one buffer is one message; larger ones (below the rendezvous
    threshold) are split into a few and reassembled.
``RTS`` (2)
    rendezvous for a large frame: ``u32 id | u64 addr | u32 rkey | u32 total
    | u16 nseg``.  The sender wrote ``u32 length * nseg | payload`` into a
    registered region readable remotely (so the request is small whatever
    the number of buffers); the receiver RDMA-READs it into a region of its
    own and answers ``FIN``.
``FIN`` (3)
    ``u32 id``: the rendezvous read is done, the sender may reuse the region.
``CREDIT`` (4)
    credits only.
``CLOSE`` (5)
    orderly close: nothing follows; answered by a ``CLOSE``.

Credits: each side posts ``recv_count + EXTRA_RECVS`` receive buffers and
grants the peer ``recv_count`` credits.  ``DATA``, ``RTS`` and ``FIN`` cost
one; a receive buffer is reposted before its credit goes back, piggybacked
on every message, or in a ``CREDIT`` once ``ceil(recv_count / 2)`` are
owed.  ``CREDIT`` and ``CLOSE`` cost none and are never owed back (so credit
returns cannot ping-pong, and a side out of credits can still return
them); they land in the extra buffers: a side sends a ``CREDIT`` only
after ``ceil(recv_count / 2)`` credit-costing messages from its peer, and
the peer can only have sent those with credits it got from messages it
already processed, so at most 2 ``CREDIT`` messages are ever unprocessed, plus
one ``CLOSE``.  So every SEND finds a receive posted: no RNR, ever.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from msgr_core.errors import FrameTooLarge, LinkClosed, ProtocolError
from msgr_core.transport import Buffer, Frame, Link, LinkHandler, TransportOptions

from .verbs import Access, CompletionQueue, MemoryRegion, QueuePair, VerbsContext, VerbsError, WcStatus

__all__ = ["LinkParams", "RdmaLink", "RdmaLinkBroken"]

DATA, RTS, FIN, CREDIT, CLOSE = 1, 2, 3, 4, 5
FIRST, LAST = 1, 2
#: receive buffers posted beyond the credits: 2 for CREDIT messages, 1 for CLOSE
EXTRA_RECVS = 3
MAX_SEGMENTS = 1024

_HDR = struct.Struct("!BBH")
_PREFIX = struct.Struct("!IH")
_RTS = struct.Struct("!IQIIH")
_U32 = struct.Struct("!I")
_HDR_SIZE = _HDR.size

# wr_id = kind << 32 | index
_K_RECV, _K_SEND, _K_READ = 1, 2, 3


class RdmaLinkBroken(LinkClosed):
    """A completion error or a QP/CQ failure broke the link.

    :ivar status: the verbs completion status (``None``: a CQ error).
    """

    def __init__(self, message: str, status: WcStatus | None, cause: BaseException | None = None) -> None:
        self.status = status
        super().__init__(message, cause=cause)


@dataclass(frozen=True, slots=True)
class LinkParams:
    """The per-link sizes (from the ``[rdma]`` settings)."""

    buffer_size: int = 8192
    recv_count: int = 64
    inline_threshold: int = 128
    rendezvous_threshold: int = 65536
    max_reads: int = 8
    mr_cache_bytes: int = 64 * 1024 * 1024
    poll_batch: int = 64


def _nbytes(b: Buffer) -> int:
    return b.nbytes if type(b) is memoryview else len(b)


class MRPool:
    """Registered regions by power-of-two size, cached up to ``limit`` bytes."""

    def __init__(self, ctx: VerbsContext, access: Access, limit: int) -> None:
        self._ctx = ctx
        self._access = access
        self._limit = limit
        self._free: dict[int, list[MemoryRegion]] = {}
        self.cached = 0

    def get(self, size: int) -> MemoryRegion:
        cls = 1 << max(12, (size - 1).bit_length())
        free = self._free.get(cls)
        if free:
            self.cached -= cls
            return free.pop()
        return self._ctx.reg_mr(cls, self._access)

    def put(self, mr: MemoryRegion) -> None:
        if self.cached + mr.length > self._limit:
            mr.dereg()
            return
        self.cached += mr.length
        self._free.setdefault(mr.length, []).append(mr)

    def close(self) -> None:
        for free in self._free.values():
            for mr in free:
                mr.dereg()
        self._free.clear()
        self.cached = 0


class RdmaLink(Link):
    """A link over one connected RC QP (see the module docstring).

    Created in state RTS by the transport with the peer's ``recv_count``
    (initial credits) and ``buffer_size`` known.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        ctx: VerbsContext,
        cq: CompletionQueue,
        qp: QueuePair,
        recv_mr: MemoryRegion,
        params: LinkParams,
        options: TransportOptions,
        *,
        peer_credits: int,
        peer_buffer_size: int,
        local_address: str,
        peer_address: str,
        on_done: Callable[[RdmaLink], None] | None = None,
    ) -> None:
        self._loop = loop
        self._ctx = ctx
        self._cq = cq
        self.qp = qp
        self._p = params
        self._opts = options
        self.local_address = local_address
        self.peer_address = peer_address
        self._on_done = on_done
        self._handler: LinkHandler | None = None
        self._recv_mr = recv_mr
        self._piece = min(params.buffer_size, peer_buffer_size) - _HDR_SIZE
        # send slots: twice the credits (+ credit-free messages), so completions lagging behind credit
        # returns never stall sending
        # (bounded by our own recv_count too: the CQ was sized from it)
        self._nslots = 2 * (min(peer_credits, params.recv_count) + EXTRA_RECVS)
        self._send_mr = ctx.reg_mr(self._nslots * (self._piece + _HDR_SIZE), Access.LOCAL_WRITE)
        self._slots = list(range(self._nslots))
        self._slot_is_close: set[int] = set()
        self._stage = MRPool(ctx, Access.LOCAL_WRITE | Access.REMOTE_READ, params.mr_cache_bytes)
        self._landing = MRPool(ctx, Access.LOCAL_WRITE, params.mr_cache_bytes)
        # credits
        self.credits = peer_credits
        self._owed = 0
        self._credit_threshold = (params.recv_count + 1) // 2
        # send side
        self._frames: deque[tuple[Frame, int]] = deque()
        self._cur: memoryview | None = None  # the DATA stream being sent
        self._cur_first = True
        self._ctrl: deque[bytes] = deque()  # FIN bodies (type byte + payload)
        self._queued = 0
        self._rdv_out: dict[int, tuple[MemoryRegion, int]] = {}
        self._rdv_ids = 0
        self._close_wanted = False
        self._close_sent = False
        self._close_initiator = False
        self._torn = False
        # receive side
        self._held: deque[tuple[int, int]] = deque()
        self._reading = True
        self._asm: bytearray | None = None
        self._asm_fill = 0
        self._rx: deque[list[Any]] = deque()  # [frame or None]
        self._reads_waiting: deque[tuple[list[Any], int, int, int, int, int]] = deque()
        self._reads: dict[int, tuple[list[Any], MemoryRegion, int, int]] = {}
        self._read_ids = 0
        # state
        self._closing = False
        self._done = False
        self._paused = False
        self._water_scheduled = False
        self.stats_messages_sent = 0
        self.stats_reads = 0
        qp.on_async_error = self._on_async_error
        loop.add_reader(cq.fileno(), self._on_cq)
        cq.req_notify()
        # completions that arrived before the link existed (the peer may send as soon as its QP is in
        # RTS) do not wake an armed channel: poll once (after start(), which follows construction)
        loop.call_soon(self._on_cq)

    # -- Link API -----------------------------------------------------------------

    def start(self, handler: LinkHandler) -> None:
        self._handler = handler
        handler.link_made(self)

    def send(self, frame: Frame) -> None:
        if self._closing:
            raise LinkClosed("rdma link is closing or closed")
        n = len(frame)
        if n == 0 or n > MAX_SEGMENTS:
            raise ValueError(f"a frame has 1 to {MAX_SEGMENTS} buffers, got {n}")
        size = sum(_nbytes(b) for b in frame)
        if size > self._opts.max_frame_bytes:
            raise FrameTooLarge(size, self._opts.max_frame_bytes)
        self._frames.append((frame, size))
        self._queued += size
        self._pump()
        self._schedule_water()

    def write_buffer_size(self) -> int:
        return self._queued + sum(size for _mr, size in self._rdv_out.values())

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._close_wanted = True
        self._pump()

    def abort(self) -> None:
        if self._done:
            self._closing = True
            return
        self._closing = True
        self._loop.call_soon(self._finish, None)
        self._teardown()

    def is_closing(self) -> bool:
        return self._closing

    def pause_reading(self) -> None:
        """Stop processing received messages (their buffers stay consumed,
        so the peer runs out of credits): a testing aid."""
        self._reading = False

    def resume_reading(self) -> None:
        if not self._reading:
            self._reading = True
            self._loop.call_soon(self._on_cq)

    # -- sending ------------------------------------------------------------------

    def _post(self, kind: int, body: Sequence[Buffer], *, flags: int = 0, closing: bool = False) -> None:
        """SEND one message (header + ``body``), spending a credit unless
        it is a ``CREDIT`` or ``CLOSE``."""
        slot = self._slots.pop()
        size = self._piece + _HDR_SIZE
        base = slot * size
        view = self._send_mr.view
        owed = min(self._owed, 0xFFFF)
        self._owed -= owed
        _HDR.pack_into(view, base, kind, flags, owed)
        pos = base + _HDR_SIZE
        for b in body:
            n = _nbytes(b)
            view[pos : pos + n] = b if type(b) is not memoryview or b.format == "B" else b.cast("B")
            pos += n
        if kind != CREDIT and kind != CLOSE:
            self.credits -= 1
        if closing:
            self._slot_is_close.add(slot)
        length = pos - base
        self.stats_messages_sent += 1
        self.qp.post_send(_K_SEND << 32 | slot, self._send_mr, base, length, inline=length <= self._p.inline_threshold)

    def _can_send(self) -> bool:
        return self.credits >= 1 and bool(self._slots)

    def _pump(self) -> None:
        if self._done:
            return
        while self._ctrl and self._can_send():
            self._post(FIN, [self._ctrl.popleft()])
        while self._can_send():
            if self._cur is not None:
                self._send_piece()
                continue
            if not self._frames:
                break
            frame, size = self._frames[0]
            if size >= self._p.rendezvous_threshold:
                self._frames.popleft()
                self._send_rts(frame, size)
            elif _PREFIX.size + 4 * len(frame) + size <= self._piece:
                self._send_batch()
            else:
                self._frames.popleft()
                lengths = [_nbytes(b) for b in frame]
                stream = bytearray(_PREFIX.pack(size, len(frame)))
                stream += struct.pack(f"!{len(lengths)}I", *lengths)
                for b in frame:
                    stream += b
                self._cur = memoryview(stream)
                self._cur_first = True
                self._queued -= size
        if (
            self._close_wanted
            and not self._close_sent
            and self._cur is None
            and not self._frames
            and not self._ctrl
            and not self._rdv_out
            and self._slots
        ):
            self._close_sent = True
            self._close_initiator = True
            self._post(CLOSE, [], closing=True)
        if self._owed >= self._credit_threshold and self._slots and not self._close_sent:
            self._post(CREDIT, [])

    def _send_batch(self) -> None:
        """One SEND carrying as many whole small frames as fit."""
        frames = self._frames
        room = self._piece
        body: list[Buffer] = []
        threshold = self._p.rendezvous_threshold
        while frames:
            frame, size = frames[0]
            nseg = len(frame)
            need = _PREFIX.size + 4 * nseg + size
            if need > room or size >= threshold:
                break
            frames.popleft()
            room -= need
            self._queued -= size
            if nseg == 1:
                body.append(_PREFIX.pack(size, 1) + _U32.pack(size))
            else:
                body.append(_PREFIX.pack(size, nseg) + struct.pack(f"!{nseg}I", *[_nbytes(b) for b in frame]))
            body.extend(frame)
        self._post(DATA, body, flags=FIRST | LAST)

    def _send_piece(self) -> None:
        cur = self._cur
        if cur is None:
            return
        piece = cur[: self._piece]
        rest = cur[self._piece :]
        flags = (FIRST if self._cur_first else 0) | (0 if rest else LAST)
        self._cur_first = False
        self._cur = rest if rest else None
        self._post(DATA, [piece], flags=flags)

    def _send_rts(self, frame: Frame, size: int) -> None:
        nseg = len(frame)
        mr = self._stage.get(4 * nseg + size)
        view = mr.view
        pos = 4 * nseg
        lengths = []
        for b in frame:
            n = _nbytes(b)
            view[pos : pos + n] = b if type(b) is not memoryview or b.format == "B" else b.cast("B")
            pos += n
            lengths.append(n)
        struct.pack_into(f"!{nseg}I", view, 0, *lengths)
        self._rdv_ids = (self._rdv_ids + 1) & 0xFFFFFFFF
        rid = self._rdv_ids
        self._rdv_out[rid] = (mr, size)
        self._queued -= size
        self._post(RTS, [_RTS.pack(rid, mr.addr, mr.rkey, size, nseg)])

    # -- completions -----------------------------------------------------------------

    def _on_cq(self) -> None:
        if self._done or self._torn:
            return
        cq = self._cq
        try:
            cq.ack_events()
            while not self._done:
                wcs = cq.poll(self._p.poll_batch)
                if not wcs:
                    cq.req_notify()
                    wcs = cq.poll(self._p.poll_batch)
                    if not wcs:
                        break
                for wc in wcs:
                    if self._done:
                        return
                    if wc.status != WcStatus.SUCCESS:
                        # what arrived before the error is delivered first
                        # (it may be the peer's CLOSE)
                        self._process_held()
                        if self._done:
                            return
                        if self._close_sent and not self._close_initiator:
                            self._finish(None)  # answered the peer's CLOSE; it has gone
                            return
                        vendor = f" (vendor error {wc.vendor_err:#x})" if wc.vendor_err else ""
                        self._break(
                            RdmaLinkBroken(
                                f"RDMA link to {self.peer_address} broke: {wc.opcode.name} completed with "
                                f"{wc.status.name}{vendor}",
                                wc.status,
                            )
                        )
                        return
                    kind, index = wc.wr_id >> 32, wc.wr_id & 0xFFFFFFFF
                    if kind == _K_RECV:
                        self._held.append((index, wc.byte_len))
                    elif kind == _K_SEND:
                        self._slots.append(index)
                        if index in self._slot_is_close and not self._close_initiator:
                            self._finish(None)
                            return
                    elif kind == _K_READ:
                        self._read_done(index)
                self._process_held()
                self._pump()
        except VerbsError as exc:
            self._break(RdmaLinkBroken(f"RDMA link to {self.peer_address} broke: {exc}", exc.status, exc))
            return
        except (FrameTooLarge, ProtocolError) as exc:
            self._break(exc)
            return
        self._process_held()
        self._pump()
        self._check_water()

    def _process_held(self) -> None:
        held = self._held
        while held and self._reading and not self._done:
            index, nbytes = held.popleft()
            size = self._p.buffer_size
            base = index * size
            view = self._recv_mr.view
            if nbytes < _HDR_SIZE:
                raise ProtocolError(f"RDMA message of {nbytes} bytes (no header)", peer=self.peer_address)
            kind, flags, credits = _HDR.unpack_from(view, base)
            msg = view[base + _HDR_SIZE : base + nbytes]
            self.credits += credits
            if kind == DATA:
                self._on_data(flags, msg)
            elif kind == RTS:
                self._on_rts(msg)
            elif kind == FIN:
                done = self._rdv_out.pop(_U32.unpack_from(msg)[0], None) if len(msg) >= 4 else None
                if done is None:
                    raise ProtocolError("FIN for no rendezvous in progress", peer=self.peer_address)
                self._stage.put(done[0])
            elif kind == CLOSE:
                if not self._close_sent:
                    self._closing = True
                    self._frames.clear()
                    self._cur = None
                    self._queued = 0
                    self._close_sent = True
                    if self._slots:
                        self._post(CLOSE, [], closing=True)
                        return
                    self._finish(None)
                    return
                self._finish(None)
                return
            elif kind != CREDIT:
                raise ProtocolError(f"unknown RDMA message type {kind}", peer=self.peer_address)
            # repost before the credit can go back
            self.qp.post_recv(_K_RECV << 32 | index, self._recv_mr, base, size)
            if kind != CREDIT:
                self._owed += 1

    def _on_async_error(self, description: str) -> None:
        """The device reported the QP (or its CQ, port, device) broken."""
        if not self._done:
            self._break(RdmaLinkBroken(f"RDMA link to {self.peer_address} broke: {description}", None))

    def _check_total(self, total: int) -> None:
        if total > self._opts.max_frame_bytes:
            raise FrameTooLarge(total, self._opts.max_frame_bytes, peer=self.peer_address)

    def _on_data(self, flags: int, msg: memoryview) -> None:
        if flags & FIRST:
            if self._asm is not None:
                raise ProtocolError("a frame started inside another", peer=self.peer_address)
            total, nseg = _PREFIX.unpack_from(msg)
            self._check_total(total)
            if nseg == 0 or nseg > MAX_SEGMENTS:
                raise ProtocolError(f"frame with {nseg} segments", peer=self.peer_address)
            stream_len = _PREFIX.size + 4 * nseg + total
            if flags & LAST:
                # one or more whole frames, back to back
                pos, end = 0, len(msg)
                while True:
                    if pos + stream_len > end:
                        raise ProtocolError("frame length disagrees with its header", peer=self.peer_address)
                    self._deliver_stream(msg[pos : pos + stream_len], nseg, total)
                    pos += stream_len
                    if pos == end:
                        return
                    if end - pos < _PREFIX.size:
                        raise ProtocolError("truncated frame in a batch", peer=self.peer_address)
                    total, nseg = _PREFIX.unpack_from(msg, pos)
                    self._check_total(total)
                    if nseg == 0 or nseg > MAX_SEGMENTS:
                        raise ProtocolError(f"frame with {nseg} segments", peer=self.peer_address)
                    stream_len = _PREFIX.size + 4 * nseg + total
            self._asm = bytearray(stream_len)
            self._asm_fill = 0
        asm = self._asm
        if asm is None:
            raise ProtocolError("a frame continued that never started", peer=self.peer_address)
        end = self._asm_fill + len(msg)
        if end > len(asm):
            raise ProtocolError("frame pieces longer than announced", peer=self.peer_address)
        asm[self._asm_fill : end] = msg
        self._asm_fill = end
        if flags & LAST:
            if end != len(asm):
                raise ProtocolError("frame pieces shorter than announced", peer=self.peer_address)
            self._asm = None
            total, nseg = _PREFIX.unpack_from(asm)
            self._deliver_stream(memoryview(asm), nseg, total, owned=True)

    def _deliver_stream(self, stream: memoryview, nseg: int, total: int, *, owned: bool = False) -> None:
        lengths = struct.unpack_from(f"!{nseg}I", stream, _PREFIX.size)
        if sum(lengths) != total:
            raise ProtocolError("segment lengths disagree with the frame length", peer=self.peer_address)
        pos = _PREFIX.size + 4 * nseg
        segs: list[Buffer] = []
        for n in lengths:
            segs.append(stream[pos : pos + n] if owned else stream[pos : pos + n].tobytes())
            pos += n
        self._rx.append([segs])
        self._deliver_ready()

    def _on_rts(self, msg: memoryview) -> None:
        rid, addr, rkey, total, nseg = _RTS.unpack_from(msg)
        self._check_total(total)
        if nseg == 0 or nseg > MAX_SEGMENTS:
            raise ProtocolError("malformed rendezvous request", peer=self.peer_address)
        slot: list[Any] = [None, total]
        self._rx.append(slot)
        self._reads_waiting.append((slot, rid, addr, rkey, nseg, total))
        self._start_reads()

    def _start_reads(self) -> None:
        while self._reads_waiting and len(self._reads) < self._p.max_reads:
            slot, rid, addr, rkey, nseg, total = self._reads_waiting.popleft()
            length = 4 * nseg + total
            mr = self._landing.get(length)
            self._read_ids = (self._read_ids + 1) & 0xFFFFFFFF
            self._reads[self._read_ids] = (slot, mr, nseg, rid)
            self.stats_reads += 1
            self.qp.rdma_read(_K_READ << 32 | self._read_ids, mr, 0, length, addr, rkey)

    def _read_done(self, index: int) -> None:
        slot, mr, nseg, rid = self._reads.pop(index)
        view = mr.view
        lengths = struct.unpack_from(f"!{nseg}I", view, 0)
        total = sum(lengths)
        if total != slot[1]:
            raise ProtocolError("rendezvous segment lengths disagree with the request", peer=self.peer_address)
        segs: list[Buffer] = []
        pos = 4 * nseg
        for n in lengths:
            segs.append(view[pos : pos + n].tobytes())
            pos += n
        self._landing.put(mr)
        slot[0] = segs
        self._ctrl.append(_U32.pack(rid))
        self._start_reads()
        self._deliver_ready()

    def _deliver_ready(self) -> None:
        rx = self._rx
        handler = self._handler
        while rx and rx[0][0] is not None and not self._done:
            frame = rx.popleft()[0]
            if handler is not None:
                handler.frame_received(frame)

    # -- watermarks ------------------------------------------------------------------

    def _schedule_water(self) -> None:
        if not self._water_scheduled:
            self._water_scheduled = True
            self._loop.call_soon(self._check_water)

    def _check_water(self) -> None:
        self._water_scheduled = False
        if self._done or self._handler is None:
            return
        size = self.write_buffer_size()
        if not self._paused and size > self._opts.high_watermark:
            self._paused = True
            self._handler.pause_writing()
        elif self._paused and size <= self._opts.low_watermark:
            self._paused = False
            self._handler.resume_writing()

    # -- the end ---------------------------------------------------------------------

    def _break(self, exc: BaseException) -> None:
        self._closing = True
        self._finish(exc)
        self._teardown()

    def _finish(self, exc: BaseException | None) -> None:
        if self._done:
            return
        self._done = True
        self._closing = True
        self._teardown()
        handler, self._handler = self._handler, None
        if self._on_done is not None:
            self._on_done(self)
        if handler is not None:
            handler.link_lost(exc)

    def _teardown(self) -> None:
        if self._torn:
            return
        self._torn = True
        self._loop.remove_reader(self._cq.fileno())
        self.qp.destroy()
        self._cq.close()
        self._recv_mr.dereg()
        self._send_mr.dereg()
        for mr, _size in self._rdv_out.values():
            mr.dereg()
        for _slot, mr, _l, _r in self._reads.values():
            mr.dereg()
        self._stage.close()
        self._landing.close()
        self._frames.clear()
        self._queued = 0
        self._rdv_out.clear()
