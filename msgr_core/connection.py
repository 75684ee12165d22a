"""A :class:`Connection` is the session with one peer.

It owns the peer's priority queues and pending requests, speaks the session
protocol over whatever :class:`~msgr_core.transport.Link` it currently has,
and applies the session's :class:`~msgr_core.policy.Policy` when that link
fails.  Applications get connections from
:meth:`Messenger.get_connection <msgr_core.messenger.Messenger.get_connection>`;
they are never constructed directly.

States::

    CONNECTING -> HANDSHAKE -> OPEN -> CLOSED        (we dialled)
    ACCEPTING  ------------->  OPEN -> CLOSED        (the peer dialled)

Messages sent before ``OPEN`` wait in the queues.  Under the lossy policies
a link fault moves the session to ``CLOSED``: pending requests fail with
:class:`~msgr_core.errors.ConnectionReset`, queued messages are counted as
dropped (``stats["dropped"]``) and ``handle_reset`` fires on both ends.

Priority: ``OOB`` before ``HIGH`` before ``NORMAL``; frames are handed to the
link only while it is under its high watermark, so a late high-priority
message overtakes everything still queued.  Order is kept per priority class.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgpack

from . import message as m
from .errors import (
    Backpressure,
    ConnectionReset,
    FrameTooLarge,
    LinkClosed,
    MessengerStopped,
    PeerUnreachable,
    ProtocolError,
    RemoteError,
    RequestTimeout,
    UnknownVerb,
)
from .message import Message, Priority, Reply
from .policy import Policy
from .transport import Buffer, Link

if TYPE_CHECKING:
    from .messenger import Messenger

__all__ = ["Connection"]

log = logging.getLogger("msgr.connection")

CONNECTING = "connecting"
HANDSHAKE = "handshake"
ACCEPTING = "accepting"
OPEN = "open"
CLOSED = "closed"

_BYTES_TYPES = (bytes, bytearray, memoryview)
# Queue accounting charges each message its payload plus this much for the
# header, so an empty payload still occupies the queue.
_OVERHEAD = 32
_unpackb = msgpack.unpackb
_packb = msgpack.packb


def _nbytes(b: Buffer) -> int:
    return b.nbytes if type(b) is memoryview else len(b)


class Connection:
    """The session with one peer (Ceph's ``Connection``).

    :ivar peer_name: the peer's entity name (``""`` until the handshake).
    :ivar peer_type: the peer's entity type.
    :ivar peer_addrs: the addresses the peer listens on, as it advertised
        them (or the address we dialled, before the handshake).
    :ivar peer_incarnation: changes whenever the peer process restarts.
    :ivar outgoing: ``True`` if we dialled.
    :ivar policy: the session's policy.
    """

    def __init__(self, messenger: Messenger, *, outgoing: bool, address: str = "",
                 policy: Policy | None = None) -> None:
        self._ms = messenger
        self._loop = messenger.loop
        lim = messenger.config["limits"]
        self._max_frame: int = lim["max_frame_bytes"]
        self._max_header: int = lim["max_header_bytes"]
        self._max_queued: int = lim["max_queued_bytes"]
        self._high: int = lim["high_watermark"]
        self.outgoing = outgoing
        self.address = address
        self.peer_name = ""
        self.peer_type = ""
        self.peer_addrs: tuple[str, ...] = (address,) if address else ()
        self.peer_incarnation = 0
        self.policy = policy
        self.state = CONNECTING if outgoing else ACCEPTING
        self.close_reason = ""
        self._link: Link | None = None
        self._queues: tuple[collections.deque[tuple[Any, ...]], ...] = (
            collections.deque(), collections.deque(), collections.deque())
        self._queued_bytes = 0
        self._paused = False
        self._recheck: asyncio.TimerHandle | asyncio.Handle | None = None
        self._space_waiters: list[asyncio.Future[None]] = []
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._pending: dict[int, tuple[asyncio.Future[Message], str, asyncio.TimerHandle | None]] = {}
        self._next_cid = 1
        self._out_seq = 0
        self._in_seq = 0
        self._handshake_done: asyncio.Future[None] = self._loop.create_future()
        self._link_gone: asyncio.Future[None] = self._loop.create_future()
        self._timer: asyncio.TimerHandle | None = None
        self._stopping = False
        inject = messenger.config["inject"]
        self._inject_n: int = inject["socket_failures"]
        self._rng = messenger.inject_rng
        # counters (plain ints: cheap on the hot path; read through .stats)
        self.msgs_out = self.bytes_out = self.msgs_in = self.bytes_in = 0
        self.dropped = self.handler_errors = self.unhandled = 0

    # -- public API ------------------------------------------------------

    def __repr__(self) -> str:
        who = self.peer_name or self.address or "?"
        return f"<Connection {who} {self.state} {'out' if self.outgoing else 'in'}>"

    @property
    def is_open(self) -> bool:
        """True once the handshake completed and until the session closes."""
        return self.state == OPEN

    @property
    def is_closed(self) -> bool:
        return self.state == CLOSED

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting in this session's priority queues."""
        return self._queued_bytes

    @property
    def stats(self) -> dict[str, Any]:
        """A snapshot of this connection's counters and queue depths."""
        return {
            "peer": self.peer_name,
            "state": self.state,
            "msgs_out": self.msgs_out,
            "bytes_out": self.bytes_out,
            "msgs_in": self.msgs_in,
            "bytes_in": self.bytes_in,
            "dropped": self.dropped,
            "handler_errors": self.handler_errors,
            "unhandled": self.unhandled,
            "pending_requests": len(self._pending),
            "queued_msgs": sum(len(q) for q in self._queues),
            "queued_bytes": self._queued_bytes,
            "link_buffered_bytes": self._link.write_buffer_size() if self._link else 0,
        }

    def send_nowait(self, verb: str, payload: Any = b"", *, attachments: Sequence[Buffer] = (),
                    priority: int = Priority.NORMAL) -> None:
        """Send a oneway message; never blocks.

        ``payload`` is sent as is when it is ``bytes``/``bytearray``/``memoryview``
        (do not modify it afterwards), otherwise packed with msgpack.

        :raises Backpressure: the session already holds ``limits.max_queued_bytes``.
        :raises FrameTooLarge: the message exceeds ``limits.max_frame_bytes``.
        :raises ConnectionReset: the session is closed.
        """
        self._submit(m.MSG, verb, payload, attachments, priority, 0)

    async def send(self, verb: str, payload: Any = b"", *, attachments: Sequence[Buffer] = (),
                   priority: int = Priority.NORMAL) -> None:
        """Send a oneway message, waiting while the session's queue is full."""
        while True:
            try:
                self._submit(m.MSG, verb, payload, attachments, priority, 0)
                return
            except Backpressure:
                await self._wait_for_space()

    async def _wait_for_space(self) -> None:
        fut = self._loop.create_future()
        self._space_waiters.append(fut)
        await fut

    async def request(self, verb: str, payload: Any = b"", *, timeout: float | None = None,
                      attachments: Sequence[Buffer] = (), priority: int = Priority.NORMAL) -> Message:
        """Call ``verb`` on the peer and return its reply as a :class:`Message`.

        :raises RequestTimeout: no reply within ``timeout`` (default
            ``limits.request_timeout``).
        :raises RemoteError: the remote handler raised (:class:`UnknownVerb`
            if it has none).
        :raises ConnectionReset: the session was reset before the reply came.
        :raises PeerUnreachable: the session could not be established.
        """
        cid = self._next_cid
        self._next_cid = cid + 1
        fut: asyncio.Future[Message] = self._loop.create_future()
        if timeout is None:
            timeout = self._ms.config["limits"]["request_timeout"]
        timer = self._loop.call_later(timeout, self._expire, cid, timeout) if timeout else None
        self._pending[cid] = (fut, verb, timer)
        try:
            while True:
                try:
                    self._submit(m.REQ, verb, payload, attachments, priority, cid)
                    break
                except Backpressure:
                    await self._wait_for_space()
        except BaseException:
            self._pending.pop(cid, None)
            if timer:
                timer.cancel()
            raise
        return await fut

    async def drain(self) -> None:
        """Wait until everything queued has been handed to the link.

        :raises ConnectionReset: the session closed first.
        """
        while self._queued_bytes or self.state in (CONNECTING, HANDSHAKE, ACCEPTING):
            if self.state == CLOSED:
                break
            fut = self._loop.create_future()
            self._drain_waiters.append(fut)
            await fut
        if self.state == CLOSED:
            raise ConnectionReset(self._who(), self.close_reason or "closed")

    def mark_down(self) -> None:
        """Close the session now: queued messages are dropped, pending
        requests fail.  The peer sees a reset; we do not fire ``handle_reset``."""
        self._reset("marked down", notify=False)

    # -- sending internals ---------------------------------------------------

    def _who(self) -> str:
        return self.peer_name or self.address or "unknown peer"

    def _submit(self, mtype: int, verb: str, payload: Any, attachments: Sequence[Buffer],
                priority: int, cid: int) -> None:
        if type(payload) in _BYTES_TYPES:
            body = payload
            flags = 0
        else:
            body = _packb(payload)
            flags = m.PACKED
        size = _nbytes(body)
        if attachments:
            for a in attachments:
                size += _nbytes(a)
        if size > self._max_frame:
            raise FrameTooLarge(size, self._max_frame, peer=self._who())
        state = self.state
        if state == OPEN and not self._paused and not self._queued_bytes:
            link = self._link
            if link is not None and link.write_buffer_size() < self._high:
                self._transmit(mtype, flags, priority, cid, verb, body, attachments, size)
                return
        if state == CLOSED:
            raise ConnectionReset(self._who(), self.close_reason or "closed")
        if self._queued_bytes + size > self._max_queued and self._queued_bytes:
            raise Backpressure(self._who(), self._queued_bytes, self._max_queued)
        prio = priority if 0 <= priority <= 2 else Priority.NORMAL
        self._queues[prio].append((mtype, flags, priority, cid, verb, body, attachments, size))
        self._queued_bytes += size + _OVERHEAD
        if state == OPEN and not self._paused and self._recheck is None:
            self._recheck = self._loop.call_soon(self._pump)

    def _transmit(self, mtype: int, flags: int, priority: int, cid: int, verb: str,
                  body: Any, attachments: Sequence[Buffer], size: int) -> None:
        link = self._link
        if link is None:
            self.dropped += 1
            return
        seq = self._out_seq = self._out_seq + 1
        header = self._ms._packer.pack((mtype, seq, self._in_seq, flags, priority, cid, verb))
        try:
            if attachments:
                link.send([header, body, *attachments])
            else:
                link.send((header, body))
        except LinkClosed:
            self.dropped += 1
            return
        self.msgs_out += 1
        self.bytes_out += size
        if self._inject_n and self._rng.random() * self._inject_n < 1.0:
            log.info("inject: failing link to %s (inject.socket_failures=%d)", self._who(), self._inject_n)
            link.abort()

    def _send_control(self, mtype: int, body: Any = b"", cid: int = 0, verb: str = "") -> None:
        """Send a session-protocol frame right away (not queued)."""
        link = self._link
        if link is None or link.is_closing():
            return
        header = self._ms._packer.pack((mtype, 0, self._in_seq, m.PACKED if body != b"" else 0, 0, cid, verb))
        with contextlib.suppress(LinkClosed):
            link.send((header, _packb(body) if body != b"" else body))

    def _pump(self) -> None:
        self._recheck = None
        link = self._link
        if self.state != OPEN or link is None:
            return
        queues = self._queues
        high = self._high
        while not self._paused:
            if queues[2]:
                item = queues[2].popleft()
            elif queues[1]:
                item = queues[1].popleft()
            elif queues[0]:
                item = queues[0].popleft()
            else:
                break
            self._queued_bytes -= item[7] + _OVERHEAD
            self._transmit(*item)
            if self._link is not link or self.state != OPEN:
                break
            if link.write_buffer_size() >= high:
                # The transport reports pause_writing when it flushes; if it
                # drained without pausing, look again shortly.
                if not self._paused:
                    self._recheck = self._loop.call_later(0.0005, self._pump)
                break
        self._wake_senders()

    def _wake_senders(self) -> None:
        if self._space_waiters and self._queued_bytes < self._max_queued // 2 + 1:
            waiters, self._space_waiters = self._space_waiters, []
            for w in waiters:
                if not w.done():
                    w.set_result(None)
        if self._drain_waiters and not self._queued_bytes:
            waiters, self._drain_waiters = self._drain_waiters, []
            for w in waiters:
                if not w.done():
                    w.set_result(None)

    def _expire(self, cid: int, timeout: float) -> None:
        entry = self._pending.pop(cid, None)
        if entry is not None and not entry[0].done():
            entry[0].set_exception(RequestTimeout(entry[1], self._who(), timeout))

    # -- LinkHandler ---------------------------------------------------------

    def link_made(self, link: Link) -> None:
        self._link = link
        if self.outgoing:
            self.state = HANDSHAKE
            self._send_control(m.HELLO, self._ms._hello(self))
        else:
            self.address = link.peer_address
            timeout = self._ms.config["limits"]["handshake_timeout"]
            self._timer = self._loop.call_later(timeout, self._handshake_timeout)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._queued_bytes and self._recheck is None:
            self._pump()

    def link_lost(self, exc: BaseException | None) -> None:
        if not self._link_gone.done():
            self._link_gone.set_result(None)
        self._link = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        state = self.state
        if state == CLOSED:
            return
        if isinstance(exc, ProtocolError | FrameTooLarge):
            log.warning("closing link with %s: %s: %s", self._who(), type(exc).__name__, exc)
            self._ms._count_error(type(exc).__name__)
        reason = self.close_reason or (f"link lost: {exc}" if exc else "link closed")
        if state in (CONNECTING, HANDSHAKE):
            if not self._handshake_done.done():
                self._handshake_done.set_exception(PeerUnreachable(self._who(), reason))
            return
        if state == ACCEPTING:
            self.state = CLOSED
            return
        # OPEN: the lossy policies (the only ones in this release) reset.
        self._reset(reason, notify=not self._stopping)

    def frame_received(self, frame: list[Buffer]) -> None:
        try:
            head = frame[0]
            if _nbytes(head) > self._max_header:
                raise ProtocolError(f"header of {_nbytes(head)} bytes over limits.max_header_bytes "
                                    f"= {self._max_header}")
            mtype, seq, _ack, flags, priority, cid, verb = _unpackb(head, use_list=False)
            if len(frame) < 2:
                raise ProtocolError("message frame without a payload segment")
            body = frame[1]
            payload = _unpackb(body) if flags & m.PACKED else body
        except (ValueError, TypeError, msgpack.UnpackException, ProtocolError) as exc:
            self._protocol_error(exc if isinstance(exc, ProtocolError) else
                                 ProtocolError(f"malformed message: {type(exc).__name__}: {exc}"))
            return
        if self.state != OPEN:
            self._handshake_frame(mtype, payload)
            return
        self._in_seq = seq
        self.msgs_in += 1
        if mtype == m.MSG:
            self.bytes_in += _nbytes(body)
            self._dispatch_oneway(verb, payload, frame, priority)
        elif mtype == m.REQ:
            self.bytes_in += _nbytes(body)
            self._dispatch_request(verb, payload, frame, priority, cid)
        elif mtype == m.REP or mtype == m.ERR:
            self._complete(mtype, cid, payload, frame)
        elif mtype == m.GOODBYE:
            self.close_reason = "peer said goodbye"
            if self._link is not None:
                self._link.close()
        elif mtype == m.KEEPALIVE:
            self._send_control(m.KEEPALIVE_ACK)
        elif mtype == m.KEEPALIVE_ACK or mtype == m.ACK:
            pass
        else:
            self._protocol_error(ProtocolError(f"unexpected message type {mtype} on an open session"))

    # -- receiving internals -------------------------------------------------

    def _protocol_error(self, exc: ProtocolError) -> None:
        if not exc.peer:
            exc.peer = self._who()
            exc.args = (f"{exc.args[0]} (peer {exc.peer})",)
        log.warning("closing link with %s: %s: %s", self._who(), type(exc).__name__, exc)
        self._ms._count_error(type(exc).__name__)
        self.close_reason = str(exc)
        if self._link is not None:
            self._link.abort()

    def _dispatch_oneway(self, verb: str, payload: Any, frame: list[Buffer], priority: int) -> None:
        handler = self._ms._oneway_handlers.get(verb)
        msg = Message(verb, payload, frame[2:], self, priority)
        if handler is None:
            self._unhandled(msg)
            return
        try:
            result = handler(msg)
        except Exception:
            self.handler_errors += 1
            log.exception("oneway handler for %r raised (message from %s)", verb, self._who())
            return
        if result is not None and inspect.isawaitable(result):
            self._ms._spawn(self._run_oneway(verb, result))

    async def _run_oneway(self, verb: str, aw: Awaitable[Any]) -> None:
        try:
            await aw
        except Exception:
            self.handler_errors += 1
            log.exception("oneway handler for %r raised (message from %s)", verb, self._who())

    def _unhandled(self, msg: Message) -> None:
        ms = self._ms
        if ms._has_dispatch and ms.hook.msgr_dispatch(conn=self, message=msg):
            return
        self.unhandled += 1
        log.debug("no handler for oneway verb %r from %s", msg.verb, self._who())

    def _dispatch_request(self, verb: str, payload: Any, frame: list[Buffer], priority: int,
                          cid: int) -> None:
        handler = self._ms._handlers.get(verb)
        if handler is None:
            self.unhandled += 1
            self._reply_error(cid, verb, "UnknownVerb", f"no handler for verb {verb!r}")
            return
        msg = Message(verb, payload, frame[2:], self, priority)
        try:
            result = handler(msg)
        except Exception as exc:
            self._handler_failed(cid, verb, exc)
            return
        if result is not None and inspect.isawaitable(result):
            self._ms._spawn(self._run_request(cid, verb, priority, result))
        else:
            self._reply(cid, verb, priority, result)

    async def _run_request(self, cid: int, verb: str, priority: int, aw: Awaitable[Any]) -> None:
        try:
            result = await aw
        except Exception as exc:
            self._handler_failed(cid, verb, exc)
            return
        self._reply(cid, verb, priority, result)

    def _handler_failed(self, cid: int, verb: str, exc: Exception) -> None:
        self.handler_errors += 1
        log.debug("handler for %r raised %r (request from %s)", verb, exc, self._who())
        self._reply_error(cid, verb, type(exc).__name__, str(exc))

    def _reply(self, cid: int, verb: str, priority: int, result: Any) -> None:
        if self.state == CLOSED:
            return
        if isinstance(result, Reply):
            payload, attachments = result.payload, result.attachments
        else:
            payload, attachments = (b"" if result is None else result), ()
        try:
            self._submit(m.REP, verb, payload, attachments, priority, cid)
        except (FrameTooLarge, TypeError, ValueError) as exc:
            self._reply_error(cid, verb, type(exc).__name__, f"reply could not be sent: {exc}")
        except (Backpressure, ConnectionReset):
            self.dropped += 1

    def _reply_error(self, cid: int, verb: str, etype: str, text: str) -> None:
        if self.state == CLOSED:
            return
        try:
            self._submit(m.ERR, verb, [etype, text[:4096]], (), Priority.HIGH, cid)
        except (Backpressure, ConnectionReset):
            self.dropped += 1

    def _complete(self, mtype: int, cid: int, payload: Any, frame: list[Buffer]) -> None:
        entry = self._pending.pop(cid, None)
        if entry is None:
            return  # a reply that arrived after its request timed out
        fut, verb, timer = entry
        if timer is not None:
            timer.cancel()
        if fut.done():
            return
        if mtype == m.REP:
            fut.set_result(Message(verb, payload, frame[2:], self))
            return
        try:
            etype, text = payload
            etype, text = str(etype), str(text)
        except (TypeError, ValueError):
            etype, text = "ProtocolError", f"malformed error reply {payload!r:.100}"
        cls = UnknownVerb if etype == "UnknownVerb" else RemoteError
        fut.set_exception(cls(verb, self._who(), etype, text))

    # -- handshake -------------------------------------------------------

    def _handshake_frame(self, mtype: int, payload: Any) -> None:
        if self.state == ACCEPTING and mtype == m.HELLO:
            self._ms._accept(self, payload)
        elif self.state == HANDSHAKE and mtype == m.HELLO_OK:
            self._ms._connected(self, payload)
        elif self.state == HANDSHAKE and mtype == m.REFUSE:
            reason = str(payload)[:1024]
            self.close_reason = f"refused by peer: {reason}"
            self._ms._refused(self, reason)
            if not self._handshake_done.done():
                self._handshake_done.set_exception(PeerUnreachable(self._who(), self.close_reason))
            if self._link is not None:
                self._link.abort()
        else:
            self._protocol_error(ProtocolError(f"message type {mtype} during handshake ({self.state})"))

    def _handshake_timeout(self) -> None:
        self._timer = None
        if self.state in (ACCEPTING, HANDSHAKE) and self._link is not None:
            self._protocol_error(ProtocolError("handshake timed out (limits.handshake_timeout)"))

    def _refuse(self, reason: str) -> None:
        log.warning("refusing %s: %s", self.address or "peer", reason)
        self._send_control(m.REFUSE, reason)
        self.close_reason = reason
        if self._link is not None:
            self._link.close()

    def _open(self, hello: dict[str, Any]) -> None:
        """The handshake succeeded: adopt the peer's identity and start sending."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.peer_name = hello["name"]
        self.peer_type = hello["type"]
        self.peer_incarnation = hello["incarnation"]
        addrs = tuple(hello.get("addrs", ()))
        if addrs:
            self.peer_addrs = addrs
        self.state = OPEN
        if not self._handshake_done.done():
            self._handshake_done.set_result(None)
        if self._queued_bytes:
            self._pump()
        self._wake_senders()

    async def _establish(self, connect: Callable[[Connection], Awaitable[Link]]) -> None:
        """Dial and handshake (outgoing sessions); runs as this session's one task."""
        try:
            await connect(self)
            timeout = self._ms.config["limits"]["handshake_timeout"]
            await asyncio.wait_for(asyncio.shield(self._handshake_done), timeout)
        except asyncio.CancelledError:
            self._reset("messenger stopping", notify=False)
            raise
        except TimeoutError:
            if self._link is not None:
                self._link.abort()
            self._reset("handshake timed out", notify=False, unreachable=True)
        except PeerUnreachable as exc:
            self._reset(exc.reason, notify=False, unreachable=True)
        except (OSError, MessengerStopped) as exc:
            self._reset(f"{type(exc).__name__}: {exc}", notify=False, unreachable=True)

    # -- teardown ------------------------------------------------------------

    def _reset(self, reason: str, *, notify: bool, unreachable: bool = False) -> None:
        """Close the session: fail what is pending, drop what is queued."""
        if self.state == CLOSED:
            return
        was_open = self.state == OPEN
        self.state = CLOSED
        self.close_reason = self.close_reason or reason
        link, self._link = self._link, None
        if link is not None and not link.is_closing():
            link.abort()
        if self._recheck is not None:
            self._recheck.cancel()
            self._recheck = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._handshake_done.done():
            self._handshake_done.set_exception(PeerUnreachable(self._who(), reason))
            self._handshake_done.exception()  # retrieved: nobody may be waiting
        who = self._who()
        exc_factory: Callable[[], Exception] = (
            (lambda: PeerUnreachable(who, reason)) if unreachable else (lambda: ConnectionReset(who, reason)))
        dropped = sum(len(q) for q in self._queues)
        for q in self._queues:
            for item in q:
                if item[0] == m.REQ:
                    dropped -= 1  # reported through its future below
            q.clear()
        self._queued_bytes = 0
        self.dropped += dropped
        pending, self._pending = self._pending, {}
        for fut, _verb, timer in pending.values():
            if timer is not None:
                timer.cancel()
            if not fut.done():
                fut.set_exception(exc_factory())
        for w in self._space_waiters + self._drain_waiters:
            if not w.done():
                w.set_result(None)
        self._space_waiters.clear()
        self._drain_waiters.clear()
        if dropped:
            log.info("session with %s reset (%s): %d queued message(s) dropped", who, reason, dropped)
        self._ms._forget(self)
        if notify and was_open:
            self._ms._fire("msgr_handle_reset", conn=self, reason=reason)

    async def _close_gracefully(self, timeout: float) -> None:
        """Flush, say goodbye, close; bounded by ``timeout``."""
        if self.state in (CONNECTING, HANDSHAKE) and self._queued_bytes:
            # messages are waiting for this session: let it come up first
            with contextlib.suppress(TimeoutError, PeerUnreachable):
                await asyncio.wait_for(asyncio.shield(self._handshake_done), timeout)
        if self.state == OPEN:
            with contextlib.suppress(TimeoutError, ConnectionReset):
                await asyncio.wait_for(self.drain(), timeout)
            if self.state == OPEN and self._link is not None:
                self._stopping = True
                self.close_reason = "messenger stopped"
                self._send_control(m.GOODBYE)
                self._link.close()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._link_gone), timeout)
        self._reset("messenger stopped", notify=False)


def random_seeded(seed: int) -> random.Random:
    """The RNG used for fault injection (seeded for reproducible chaos)."""
    return random.Random(seed or None)
