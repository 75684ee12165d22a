"""The link machinery both ends share, and socket monitors on the event loop.

The wire format is in :mod:`msgr_zmq._wire`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import struct
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import zmq
import zmq.backend

from msgr_core.errors import FrameTooLarge, LinkClosed, ProtocolError
from msgr_core.transport import Buffer, Frame, Link, LinkHandler

from ._settings import ZmqSettings, context
from ._wire import (
    BATCH_BYTES,
    C_ABORT,
    C_CLOSE,
    C_TOOBIG,
    PARTS,
    RAW,
    SMALL1,
    SMALLN,
    U64,
    QEntry,
    batch,
    entry,
    parts_lengths,
)

__all__ = ["SocketMonitor", "ZmqLink"]

logger = logging.getLogger("msgr.zmq")

# The Cython methods themselves: pyzmq's Python-level wrappers add a call
# and argument checks per part, which shows at a million parts a second.
_send: Callable[..., Any] = zmq.backend.Socket.send
_recv: Callable[..., Any] = zmq.backend.Socket.recv
_get: Callable[..., Any] = zmq.backend.Socket.get

# Plain ints, not pyzmq's enums: ``ev & POLLIN`` on an IntFlag builds a
# new enum member through Python code on every test.
NB = int(zmq.NOBLOCK)
NB_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)
MORE = int(zmq.SNDMORE)
RCVMORE = int(zmq.RCVMORE)
EVENTS = int(zmq.EVENTS)
POLLIN = int(zmq.POLLIN)
POLLOUT = int(zmq.POLLOUT)
Again = zmq.Again
ZMQError = zmq.ZMQError

#: About how many frames one wakeup reads before yielding to the loop.
READ_BUDGET = 512
#: A safety net only: how often to look whether libzmq has sent a large
#: frame (seconds) in case its release notification does not come.
_REAP_FALLBACK = 0.1

# link states
CONNECTING = 0
OPEN = 1
CLOSING = 2  # close() called or an oversize frame queued: flushing the queue
CLOSE_SENT = 3  # our close went out; waiting for the peer's
CLOSED = 4

_CLOSE = bytes((C_CLOSE,))
_ABORT = bytes((C_ABORT,))


def skip_rest(sock: zmq.Socket[Any]) -> None:
    """Read and drop the remaining parts of the current message."""
    while _get(sock, RCVMORE):
        _recv(sock, NB, False)


def fd_address(fd: int, scheme: str, peer: bool) -> str:
    """``scheme://host:port`` of a socket's peer (or local) end, from its fd."""
    try:
        with socket.socket(fileno=os.dup(fd)) as s:
            addr = s.getpeername() if peer else s.getsockname()
    except OSError:
        return ""
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = str(addr[0])
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{addr[1]}"
    if isinstance(addr, str) and addr.startswith("/"):
        return f"{scheme}://{addr}"
    return ""


def shutdown_fd(fd: int) -> None:
    """Make libzmq drop the connection on ``fd``: shut it down (libzmq
    then sees end-of-stream and closes it itself)."""
    try:
        with socket.socket(fileno=os.dup(fd)) as s:
            s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class SocketMonitor:
    """A socket's monitor events, delivered on the event loop.

    ``callback(event, value)`` is called for each event, in order.  The
    monitor's PAIR socket is connected before the monitored socket binds
    or connects, so no event is missed.
    """

    _ids = itertools.count()

    def __init__(
        self,
        sock: zmq.Socket[Any],
        events: int,
        callback: Callable[[int, int], None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        address = f"inproc://msgr-zmq-monitor-{os.getpid()}-{next(self._ids)}"
        sock.monitor(address, events)
        pair = context().socket(zmq.PAIR)
        pair.setsockopt(zmq.LINGER, 0)
        pair.connect(address)
        self._sock: zmq.Socket[Any] | None = sock
        self._pair: zmq.Socket[Any] | None = pair
        self._fd = pair.FD
        self._callback = callback
        self._loop = loop
        self._draining = False
        loop.add_reader(self._fd, self.drain)
        # libzmq signals the FD only once a reader has found its pipe empty
        self.drain()

    def drain(self) -> None:
        """Handle every event already emitted (also called directly, to
        catch up before acting on something the events might contradict)."""
        pair = self._pair
        if pair is None or self._draining:
            return
        self._draining = True
        try:
            while self._pair is not None:
                try:
                    head = _recv(pair, NB)
                except Again:
                    return
                skip_rest(pair)
                event, value = struct.unpack_from("=HI", head)
                self._callback(event, value)
        finally:
            self._draining = False

    def close(self) -> None:
        pair, self._pair = self._pair, None
        sock, self._sock = self._sock, None
        if pair is None:
            return
        self._loop.remove_reader(self._fd)
        if sock is not None and not sock.closed:
            with contextlib.suppress(ZMQError):
                sock.disable_monitor()
        pair.close(0)


class ZmqLink(Link):
    """What both ends of a msgr-zmq link share: the send queue, the
    watermarks, the close handshake and the handler calls.

    Subclasses provide the socket (:attr:`_sock`, and :attr:`_rid` for a
    ROUTER end), :meth:`_want_flush` (schedule :meth:`_drain_queue`),
    :meth:`_release` (let go of the socket side when the link ends), and
    the reading.
    """

    _rid: bytes | None = None

    def __init__(
        self,
        scheme: str,
        settings: ZmqSettings,
        max_frame_bytes: int,
        high: int,
        low: int,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._scheme = scheme
        self._settings = settings
        self._loop = loop
        self._handler: LinkHandler | None = None
        self._state = CONNECTING
        self._queue: deque[QEntry] = deque()
        self._buffered = 0
        self._max = max_frame_bytes
        self._peer_max = max_frame_bytes
        self._high = high
        self._low = low
        self._thr = settings.copy_threshold
        self._write_paused = False
        self._final: bytes | None = None  # sent once the queue is empty
        self._final_exc: BaseException | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._sock: zmq.Socket[Any] | None = None
        self._frame_received: Callable[[list[Buffer]], None] | None = None
        # zero-copy frames handed to libzmq and not yet released by it:
        # (tracker, bytes, weakref to the view libzmq holds)
        self._inflight: deque[tuple[zmq.MessageTracker, int, weakref.ref[memoryview]]] = deque()
        self._inflight_bytes = 0
        self._reap_timer: asyncio.TimerHandle | None = None
        self._release_pending = False

    def __repr__(self) -> str:
        state = ("connecting", "open", "closing", "close-sent", "closed")[self._state]
        return f"<{type(self).__name__} {self.local_address or '?'} -> {self.peer_address or '?'} {state}>"

    # -- Link API --------------------------------------------------------------

    def send(self, frame: Frame) -> None:
        """Queue ``frame``; it is handed to libzmq on the next loop iteration.

        :raises FrameTooLarge: over this side's ``max_frame_bytes``.
        :raises LinkClosed: the link is closing or closed.
        """
        if self._state != OPEN:
            raise LinkClosed(f"link to {self.peer_address or '?'} is closed")
        if len(frame) == 2:
            # the common frame (header, small payload), queued without the
            # general path's per-buffer work
            a, b = frame
            if type(a) is bytes and type(b) is bytes:
                la = len(a)
                lb = len(b)
                size = la + lb
                if size < self._thr and size <= self._peer_max and size <= self._max:
                    self._queue.append(((a, b), size, SMALLN, (la, lb)))
                    self._buffered += size
                    self._want_flush()
                    return
        self._enqueue(frame)
        self._want_flush()

    def send_many(self, frames: Sequence[Frame]) -> None:
        """Queue several frames (one flush for all)."""
        if self._state != OPEN:
            raise LinkClosed(f"link to {self.peer_address or '?'} is closed")
        try:
            for frame in frames:
                if self._state != OPEN:
                    break  # an oversize frame for the peer ended the link
                self._enqueue(frame)
        finally:
            self._want_flush()

    def write_buffer_size(self) -> int:
        """Bytes queued here, plus large (zero-copy) frames libzmq still
        holds.  (libzmq also holds up to ``sndhwm`` batches of small frames,
        16 KiB each at most.)"""
        if self._inflight:
            self._reap()
        return self._buffered + self._inflight_bytes

    def close(self) -> None:
        """Hand every queued frame to libzmq, send a close, and end with
        ``link_lost(None)`` once the peer answers it (or
        ``LinkClosed`` after ``zmq.close_timeout``).  Idempotent."""
        if self._state != OPEN:
            return
        self._state = CLOSING
        self._final = _CLOSE
        self._want_flush()

    def abort(self) -> None:
        """Drop the queue, tell the peer, end now (``link_lost(None)``
        follows on the next loop iteration).  Idempotent."""
        if self._state == CLOSED:
            return
        self._end(None, notify_peer=True)

    def is_closing(self) -> bool:
        return self._state != OPEN

    def pause_reading(self) -> None:
        """Stop reading (tests: makes the peer's sends back up)."""
        raise NotImplementedError

    def resume_reading(self) -> None:
        """Read again after :meth:`pause_reading`."""
        raise NotImplementedError

    # -- queueing ------------------------------------------------------------------

    def _enqueue(self, frame: Frame) -> None:
        e = entry(frame, self._thr)
        size = e[1]
        if size > self._max:
            raise FrameTooLarge(size, self._max)
        if size > self._peer_max:
            # The peer would close the link on it: say so instead of sending it.
            self._state = CLOSING
            self._final = bytes((C_TOOBIG,)) + U64.pack(size)
            self._final_exc = FrameTooLarge(size, self._peer_max, peer=self.peer_address)
            return
        self._queue.append(e)
        self._buffered += size

    def _want_flush(self) -> None:
        raise NotImplementedError

    def _drain_queue(self) -> bool:
        """Hand queued frames to libzmq until it says "full" (``False``)
        or the queue is empty (``True``; then the final message, if any).

        Consecutive small frames go as one batch message of up to
        ``copy_threshold`` bytes; a large frame as a message of its own.
        """
        s = self._sock
        if s is None:
            return True
        q = self._queue
        rid = self._rid
        send = _send
        limit = min(BATCH_BYTES, self._thr, self._peer_max)
        try:
            while q:
                first = q[0]
                if first[2] == RAW:
                    if rid is not None:
                        send(s, rid, NB_MORE)
                        send(s, first[0], 0)
                    else:
                        send(s, first[0], NB)
                    q.popleft()
                    continue
                if first[2] == PARTS:
                    if rid is not None:
                        send(s, rid, NB_MORE)  # EAGAIN here: this peer's pipe is full
                        send(s, first[3], MORE)
                    else:
                        send(s, first[3], NB_MORE)
                    self._send_parts(s, first[0], first[1])
                    q.popleft()
                    self._buffered -= first[1]
                    continue
                # a batch: its bytes plus its table stay within the limit
                taken = [q.popleft()]
                total = first[1]
                room = limit - total - 4 * (2 if first[2] == SMALL1 else 1 + len(first[0]))
                while q:
                    e = q[0]
                    kind = e[2]
                    if kind >= PARTS:
                        break
                    room -= e[1] + 4 * (2 if kind == SMALL1 else 1 + len(e[0]))
                    if room < 0:
                        break
                    taken.append(q.popleft())
                    total += e[1]
                head = batch(taken)
                try:
                    if rid is not None:
                        send(s, rid, NB_MORE)
                        send(s, head, 0)
                    else:
                        send(s, head, NB)
                except Again:
                    q.extendleft(reversed(taken))
                    raise
                self._buffered -= total
        except Again:
            return False
        except ZMQError as exc:
            self._send_failed(exc)
            return True
        if self._final is not None and self._state == CLOSING:
            return self._send_final()
        return True

    def _send_parts(self, s: zmq.Socket[Any], parts: list[Buffer], size: int) -> None:
        # the rest of a message is never refused once its first part went
        thr = self._thr
        last = len(parts) - 1
        tracked = -1  # the last zero-copy part: libzmq lets go of it last
        for i, b in enumerate(parts):
            if (b.nbytes if type(b) is memoryview else len(b)) >= thr:
                tracked = i
        for i, b in enumerate(parts):
            flags = MORE if i < last else 0
            if i == tracked:
                # A view of our own: once libzmq is done with the frame,
                # pyzmq drops the last reference to it (in its garbage
                # collector thread) and the weakref's callback wakes the
                # loop -- no polling of the tracker.
                view = memoryview(b)
                ref = weakref.ref(view, self._released)
                tracker = _send(s, view, flags, False, True)
                del view
                self._inflight.append((tracker, size, ref))
                self._inflight_bytes += size
            else:
                nb = b.nbytes if type(b) is memoryview else len(b)
                _send(s, b, flags, nb < thr)
        if tracked >= 0 and self._reap_timer is None:
            self._reap_timer = self._loop.call_later(_REAP_FALLBACK, self._reap_fallback)

    def _released(self, _ref: object) -> None:
        """libzmq let go of a zero-copy frame.  Called in whatever thread
        dropped the view's last reference (pyzmq's garbage collector
        thread, usually): only wakes the loop, once per burst."""
        if self._release_pending:
            return
        self._release_pending = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to tell
            self._loop.call_soon_threadsafe(self._reap_tick)

    def _reap(self) -> None:
        """Forget zero-copy frames libzmq is done with (sent)."""
        inflight = self._inflight
        while inflight and inflight[0][0].done:
            self._inflight_bytes -= inflight.popleft()[1]

    def _reap_tick(self) -> None:
        self._release_pending = False  # before looking: a later release wakes us again
        self._reap()
        # what the session sends on resume_writing goes to libzmq now
        self._flushing_after(self._check_watermarks)

    def _flushing_after(self, fn: Callable[[], None]) -> None:
        """Call ``fn``, then hand what it queued to libzmq at once
        (instead of on the next loop iteration)."""
        raise NotImplementedError

    def _reap_fallback(self) -> None:
        self._reap_timer = None
        self._reap()
        self._check_watermarks()
        if self._inflight and self._state < CLOSED:
            self._reap_timer = self._loop.call_later(_REAP_FALLBACK, self._reap_fallback)

    def _send_final(self) -> bool:
        s = self._sock
        final = self._final
        if s is None or final is None:
            return True
        try:
            if self._rid is not None:
                _send(s, self._rid, NB_MORE)
                _send(s, final, 0)
            else:
                _send(s, final, NB)
        except Again:
            return False
        except ZMQError as exc:
            self._send_failed(exc)
            return True
        self._final = None
        if final[0] == C_TOOBIG:
            self._end(self._final_exc, linger=True)
        else:
            self._state = CLOSE_SENT
            self._close_timer = self._loop.call_later(self._settings.close_timeout, self._close_timed_out)
        return True

    def _send_failed(self, exc: ZMQError) -> None:
        if exc.errno == zmq.EHOSTUNREACH:
            self._peer_gone()
        else:
            self._end(LinkClosed(f"send to {self.peer_address or '?'} failed: {exc}"))

    def _check_watermarks(self) -> None:
        if self._state >= CLOSED or self._handler is None:
            return
        if self._inflight:
            self._reap()
        size = self._buffered + self._inflight_bytes
        if self._write_paused:
            if size <= self._low:
                self._write_paused = False
                self._call(self._handler.resume_writing)
        elif size > self._high:
            self._write_paused = True
            self._call(self._handler.pause_writing)

    # -- what arrives --------------------------------------------------------------

    def _control(self, kind: int, head: bytes) -> None:
        """A control message (its head, ``kind = head[0]``)."""
        peer = self.peer_address
        if kind == C_CLOSE:
            self._peer_closed()
        elif kind == C_ABORT:
            if self._state == CLOSE_SENT:
                self._end(None)
            else:
                self._end(LinkClosed(f"{peer or 'the peer'} aborted the link"))
        elif kind == C_TOOBIG:
            if len(head) != 1 + U64.size:
                raise ProtocolError("bad oversize notice", peer=peer)
            (size,) = U64.unpack_from(head, 1)
            self._end(FrameTooLarge(size, self._max, peer=peer), linger=True)
        else:
            self._control_other(kind, head)

    def _control_other(self, kind: int, head: bytes) -> None:
        raise ProtocolError(f"unexpected msgr-zmq message type {kind:#04x}", peer=self.peer_address)

    def _peer_closed(self) -> None:
        if self._state in (OPEN, CLOSING):
            # answer, so the closer knows everything before it arrived
            self._queue.clear()
            self._buffered = 0
            self._state = CLOSING
            self._final = _CLOSE
            self._send_final()
            self._end(None, linger=True)
        elif self._state == CLOSE_SENT:
            self._end(None)
        else:
            raise ProtocolError("close before the handshake completed", peer=self.peer_address)

    def _peer_gone(self) -> None:
        """The connection is gone (disconnect, unroutable)."""
        if self._state == CLOSE_SENT:
            self._end(None)
        elif self._state < CLOSED:
            self._end(
                LinkClosed(
                    f"connection to {self.peer_address or 'the peer'} lost (closed, crashed, "
                    "missed heartbeats, or a ZMTP protocol error such as a message part over "
                    "max_frame_bytes)"
                )
            )

    def _close_timed_out(self) -> None:
        self._close_timer = None
        if self._state == CLOSE_SENT:
            self._end(
                LinkClosed(
                    f"{self.peer_address or 'the peer'} did not answer our close within "
                    f"{self._settings.close_timeout:g} s (zmq.close_timeout)"
                )
            )

    # -- ending ----------------------------------------------------------------------

    def _end(self, exc: BaseException | None, *, notify_peer: bool = False, linger: bool = False) -> None:
        """The link is over: release the socket side, then ``link_lost(exc)``
        on the next loop iteration (never from inside a caller's call)."""
        if self._state == CLOSED:
            return
        was_open = self._state != CONNECTING
        self._state = CLOSED
        self._queue.clear()
        self._buffered = 0
        self._inflight.clear()
        self._inflight_bytes = 0
        if self._reap_timer is not None:
            self._reap_timer.cancel()
            self._reap_timer = None
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self._release(exc, notify_peer=notify_peer, linger=linger)
        if was_open and self._handler is not None:
            self._loop.call_soon(self._lost, exc)

    def _lost(self, exc: BaseException | None) -> None:
        handler, self._handler = self._handler, None
        self._frame_received = None
        if handler is not None:
            self._call(handler.link_lost, exc)

    def _release(self, exc: BaseException | None, *, notify_peer: bool, linger: bool) -> None:
        raise NotImplementedError

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:
            self._callback_failed(exc)

    def _deliver(self, frames: list[list[Any]]) -> None:
        """Hand received frames to the handler while the link stays open
        (a handler may close it mid-batch); a handler that raises closes it."""
        fr = self._frame_received
        for frame in frames:
            if self._state != OPEN or fr is None:
                break
            try:
                fr(frame)
            except Exception as exc:
                self._callback_failed(exc)

    def _callback_failed(self, exc: Exception) -> None:
        self._loop.call_exception_handler(
            {
                "message": f"msgr-zmq: a link handler raised; aborting {self!r}",
                "exception": exc,
                "link": self,
            }
        )
        self.abort()


def recv_parts(
    s: zmq.Socket[Any], head: bytes, limit: int, threshold: int, peer: str, check_more: bool
) -> list[Buffer]:
    """The parts an in-parts ``head`` announces (read from ``s``).

    Parts of ``threshold`` bytes or more are taken with ``copy=False`` (as
    memoryviews of their :class:`zmq.Frame`).  ``check_more``: verify the
    message ends exactly after them (a ROUTER must: a peer that sent more
    or fewer parts would otherwise shift the next message's boundaries).

    :raises ProtocolError: a malformed head or parts that disagree with it.
    :raises FrameTooLarge: the announced frame is over ``limit`` (nothing of
        it is delivered).
    """
    lengths = parts_lengths(head, peer)
    if len(head) != 5 + 4 * len(lengths):
        skip_rest(s)
        raise ProtocolError("frame head with trailing bytes", peer=peer)
    total = sum(lengths)
    if total > limit:
        skip_rest(s)
        raise FrameTooLarge(total, limit, peer=peer)
    out: list[Buffer] = []
    last = len(lengths) - 1
    for i, ln in enumerate(lengths):
        big = ln >= threshold
        try:
            f = _recv(s, NB, False) if (big or check_more) else _recv(s, NB)
        except Again:
            raise ProtocolError(f"frame announced {last + 1} parts, got {i}", peer=peer) from None
        more = True
        if big or check_more:
            more = f.more
            n = len(f)
            b = f.buffer if big else f.bytes
        else:
            n = len(f)
            b = f
        if n != ln:
            if more:
                skip_rest(s)
            raise ProtocolError(f"frame part of {n} bytes, its head said {ln}", peer=peer)
        if check_more and more != (i < last):
            if more:
                skip_rest(s)
            raise ProtocolError(f"frame announced {last + 1} parts, got another number", peer=peer)
        out.append(b)
    return out
