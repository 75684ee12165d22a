"""A :class:`Connection` is the session with one peer.

It owns the peer's priority queues, its retransmit window and pending
requests, speaks the session protocol over whatever
:class:`~msgr_core.transport.Link` it currently has, and applies its
:class:`~msgr_core.policy.Policy` when that link fails.  Applications get
connections from :meth:`Messenger.get_connection
<msgr_core.messenger.Messenger.get_connection>`; they are never constructed
directly.

States::

    CONNECTING -> HANDSHAKE -> OPEN -> CLOSED            (we dialled)
    ACCEPTING  ------------->  OPEN -> CLOSED            (the peer dialled)
                               OPEN <-> STANDBY          (lossless: link lost / back)

Messages sent before ``OPEN`` (or in ``STANDBY``) wait in the queues.

*Lossy* policies: a link fault closes the session: pending requests fail
with :class:`~msgr_core.errors.ConnectionReset`, queued messages are
reported undeliverable (``msgr_undeliverable``) and ``handle_reset`` fires
on both ends.

*Lossless* policies: every data message gets a per-session sequence number
when it leaves the priority queues and stays in the retransmit window until
the peer acknowledges it (acks ride on every header, and go alone after
``session.ack_every`` messages or ``session.ack_delay`` seconds).  When the
link fails the session goes to ``STANDBY``; the client side (or, for
``lossless_peer``, a side with something to send) dials again — at once,
then with exponential backoff — and the handshake resumes the session: each
side says the last sequence number it received, the other replays the rest,
and the receiver drops duplicates.  Nothing is lost, duplicated or
reordered.  A peer that restarted (new incarnation) or discarded its session
is detected in the handshake: the old session is closed (its undelivered
messages reported) and a new one starts empty.

Priority: ``OOB`` before ``HIGH`` before ``NORMAL``; data frames are handed
to the link only while it is under its high watermark and the retransmit
window has room, so a late high-priority message overtakes everything still
queued.  Order is kept per priority class.  OOB payloads
(:meth:`Connection.register_oob_message`) bypass the queues and are never
sequenced or replayed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import logging
import math
import random
import secrets
import struct
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgpack

from . import message as m
from .auth import HandshakeAuth
from .errors import (
    AuthenticationFailed,
    Backpressure,
    ConnectionReset,
    FrameTooLarge,
    LinkClosed,
    PeerAuthenticationFailed,
    PeerBusy,
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
STANDBY = "standby"
CLOSED = "closed"

# Handler results that are certainly not awaitable (skips the slow ABC check).
_PLAIN = frozenset({bytes, bytearray, memoryview, str, int, float, bool, dict, list, tuple, Reply})
# A message this large is acknowledged at once: a few of them fill the
# sender's window, which must not wait for the ack timer.
_ACK_NOW_BYTES = 1 << 20
# Queue accounting charges each message its payload plus this much for the
# header, so an empty payload still occupies the queue.
_OVERHEAD = 32
_unpackb = msgpack.unpackb
_packb = msgpack.packb

_MSG = m.MSG
_ACK = m.ACK
_PACKED = m.PACKED

# The session header (the first buffer of every frame): see msgr_core.message.
_hdr_pack = m.HEADER.pack
_hdr_unpack = m.HEADER.unpack_from
_HDR_SIZE = m.HEADER.size
_verb_bytes = m._verb_bytes
_verb_str = m._verb_str
_encode_verb = m.encode_verb
_decode_verb = m.decode_verb
_pack_header = m.pack_header
_unpack_header = m.unpack_header

# queue item: (mtype, flags, priority, cid, verb, body, attachments, size)
_Item = tuple[int, int, int, int, str, Any, Sequence[Buffer], int]


def _nbytes(b: Buffer) -> int:
    return b.nbytes if type(b) is memoryview else len(b)


def _frame_cost(frame: Sequence[Buffer]) -> int:
    """What a sent frame was charged in the window: payload, attachments, header allowance."""
    if len(frame) == 2:
        return _nbytes(frame[1]) + _OVERHEAD
    return sum(_nbytes(b) for b in frame[1:]) + _OVERHEAD


def _item_of(frame: Sequence[Buffer]) -> _Item:
    """Rebuild a queue item from a sent frame (rare: to report it undeliverable)."""
    mtype, _seq, _ack, flags, priority, cid, verb = _unpack_header(frame[0])
    body = frame[1]
    attachments = tuple(frame[2:])
    return (mtype, flags, priority, cid, verb, body, attachments, _frame_cost(frame) - _OVERHEAD)


def _receive(port: _Port, frame: list[Buffer]) -> None:
    """A frame from ``port``'s link, for the session that owns the port now
    (``_Port.frame_received`` itself: the receive hot path, one call per
    frame up to the handler)."""
    s = port.session
    if s is None:
        return
    s._rx += 1
    if s._delayed is not None or (s._delay_p and s._rng.random() < s._delay_p):
        s._delay_frame(port, frame)
        return
    try:
        head = frame[0]
        hlen = head.nbytes if type(head) is memoryview else len(head)
        if hlen > s._max_header:
            raise ProtocolError(f"header of {hlen} bytes over limits.max_header_bytes "
                                f"= {s._max_header}")
        mtype, flags, priority, seq, ack, cid = _hdr_unpack(head)
        vb = head[_HDR_SIZE:]
        if type(vb) is not bytes:
            vb = bytes(vb)
        verb = _verb_str.get(vb)
        if verb is None:
            verb = _decode_verb(vb)
        if len(frame) < 2:
            raise ProtocolError("message frame without a payload segment")
        body = frame[1]
        # Until a link completes its handshake (and authentication), only
        # small handshake frames are read from it; nothing is dispatched.
        handshaking = s.state != OPEN or port is not s._port
        if handshaking and (len(frame) != 2 or _nbytes(body) > s._max_header):
            raise ProtocolError(f"handshake frame over limits.max_header_bytes = {s._max_header}")
        payload = _unpackb(body) if flags & _PACKED else body
    except (ValueError, TypeError, struct.error, msgpack.UnpackException, ProtocolError) as exc:
        s._protocol_error(port, exc if isinstance(exc, ProtocolError) else
                          ProtocolError(f"malformed message: {type(exc).__name__}: {exc}"))
        return
    if handshaking:
        s._handshake_frame(port, mtype, payload)
        return
    if s._inject_n and s._rng.random() * s._inject_n < 1.0:
        s._inject_failure()
    if ack and s._unacked:
        s._acked(ack)
    if seq:
        in_seq = s._in_seq
        if seq != in_seq + 1:
            if seq <= in_seq:
                s.duplicates += 1
                return
            s._protocol_error(port, ProtocolError(
                f"sequence gap: got {seq}, expected {in_seq + 1}"))
            return
        s._in_seq = seq
        if s._lossless:
            if seq - s._ack_sent >= s._ack_every or len(body) >= _ACK_NOW_BYTES:
                # the first ack of a loop iteration goes at once, the others
                # are folded into one at the end of it (a read of many frames
                # costs two acks, not one per ack_every of them)
                if not s._ack_soon:
                    s._ack_soon = True
                    s._loop.call_soon(s._ack_now)
                    s._send_control(_ACK)
            elif s._ack_timer is None:
                s._ack_timer = s._loop.call_later(s._ack_delay, s._ack_due)
        s.msgs_in += 1
        if mtype == _MSG and not s._blackhole:
            # oneway dispatch, inline (the hot path: no call per message)
            s.bytes_in += len(body) if type(body) is not memoryview else body.nbytes
            handler = s._ms._oneway_handlers.get(verb)
            msg = Message(verb, payload, frame[2:], s, priority)
            if handler is None:
                s._unhandled(msg)
                return
            try:
                result = handler(msg)
            except Exception:
                s.handler_errors += 1
                log.exception("oneway handler for %r raised (message from %s)", verb, s._who())
                return
            if result is not None and type(result) not in _PLAIN and inspect.isawaitable(result):
                s._start_oneway(verb, result)
            return
        if s._blackhole:
            return
        if mtype == m.REQ:
            s.bytes_in += _nbytes(body)
            s._dispatch_request(verb, payload, frame, priority, cid)
        elif mtype == m.REP or mtype == m.ERR:
            s._complete(mtype, cid, payload, frame)
        else:
            s._protocol_error(port, ProtocolError(f"unexpected sequenced message type {mtype}"))
        return
    if mtype == _ACK:
        return
    if mtype == m.OOB:
        s._dispatch_oob(payload)
    elif mtype == m.KEEPALIVE:
        s._send_control(m.KEEPALIVE_ACK)
    elif mtype == m.KEEPALIVE_ACK:
        pass
    elif mtype == m.GOODBYE:
        s._goodbye()
    elif mtype == m.HELLO or mtype == m.AUTH:
        # the peer dialled again while we thought this link was fine
        s._handshake_frame(port, mtype, payload)
    else:
        s._protocol_error(port, ProtocolError(f"unexpected message type {mtype} on an open session"))


class _Port:
    """The handler of one link: forwards its events to the session that owns
    it now.  A link can change hands (a resumed session adopts the link its
    peer opened) or be orphaned (replaced by a newer link); then its events
    go nowhere."""

    __slots__ = ("auth", "done", "gone", "link", "outgoing", "session")

    def __init__(self, session: Connection | None, outgoing: bool) -> None:
        self.session = session
        self.outgoing = outgoing
        self.link: Link | None = None
        # this link's handshake authentication (None: none started)
        self.auth: HandshakeAuth | None = None
        self.done: asyncio.Future[dict[str, Any]] | None = None  # outgoing handshake result
        self.gone: asyncio.Future[None] | None = None  # set when the link is lost

    def link_made(self, link: Link) -> None:
        self.link = link
        if self.session is not None:
            # until the handshake is done only handshake frames may come:
            # a peer cannot make us reserve max_frame_bytes before it
            link.limit_frames(2 * self.session._max_header)  # header + body
            self.session._link_made(self)

    frame_received = _receive

    def pause_writing(self) -> None:
        if self.session is not None and self.session._port is self:
            self.session._paused = True
            self.session._credit = 0

    def resume_writing(self) -> None:
        if self.session is not None and self.session._port is self:
            self.session._resume_writing()

    def link_lost(self, exc: BaseException | None) -> None:
        s = self.session
        self.session = None
        if self.gone is not None and not self.gone.done():
            self.gone.set_result(None)
        if self.done is not None and not self.done.done():
            self.done.set_exception(PeerUnreachable("", f"link lost in handshake: {exc or 'closed'}"))
            self.done.exception()
        if s is not None:
            s._link_lost(self, exc)

    def orphan(self) -> None:
        """Detach from its session and close the link (it was replaced)."""
        self.session = None
        if self.link is not None and not self.link.is_closing():
            self.link.abort()


class _Rejected:
    """The handler of an incoming link refused before anything was read
    (``limits.max_pending`` / messenger stopping): it closes it at once."""

    __slots__ = ()

    def link_made(self, link: Link) -> None:
        link.abort()

    def frame_received(self, frame: list[Buffer]) -> None:
        pass

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass

    def link_lost(self, exc: BaseException | None) -> None:
        pass


class _OobEntry:
    __slots__ = ("callback", "due", "interval", "op")

    def __init__(self, op: str, callback: Callable[[], Any], interval: float, due: float) -> None:
        self.op = op
        self.callback = callback
        self.interval = interval
        self.due = due


class Connection:
    """The session with one peer (Ceph's ``Connection``).

    :ivar peer_name: the peer's entity name (``""`` until the handshake).
    :ivar peer_type: the peer's entity type.
    :ivar peer_addrs: the addresses the peer listens on, as it advertised
        them (or the address we dialled, before the handshake).
    :ivar peer_incarnation: changes whenever the peer process restarts.
    :ivar outgoing: ``True`` if we dialled.
    :ivar policy: the session's policy.
    :ivar state: one of ``connecting``, ``handshake``, ``accepting``,
        ``open``, ``standby``, ``closed``.
    """

    def __init__(self, messenger: Messenger, *, outgoing: bool, address: str = "",
                 policy: Policy | None = None) -> None:
        self._ms = messenger
        self._loop = messenger.loop
        lim = messenger.config["limits"]
        ses = messenger.config["session"]
        self._max_frame: int = lim["max_frame_bytes"]
        self._max_header: int = lim["max_header_bytes"]
        self._max_queued: int = lim["max_queued_bytes"]
        self._request_timeout: float = lim["request_timeout"]
        self._max_inflight: int = lim["max_requests_in_flight"]
        self._high: int = lim["high_watermark"]
        self._ack_every: int = ses["ack_every"]
        self._ack_delay: float = ses["ack_delay"]
        self._max_unacked_bytes: int = ses["max_unacked_bytes"]
        self._max_unacked_msgs: int = ses["max_unacked_msgs"]
        self.outgoing = outgoing
        self.address = address
        self.peer_name = ""
        self.peer_type = ""
        self.peer_addrs: tuple[str, ...] = (address,) if address else ()
        self.peer_incarnation = 0
        self.policy: Policy | None = None
        self._lossless = False
        self.state = CONNECTING if outgoing else ACCEPTING
        self.close_reason = ""
        self.sid = secrets.randbits(62) + 1  # this side's session id
        self.peer_sid = 0  # the peer's session id, once known
        self._port: _Port | None = None
        self._link: Link | None = None
        self._queues: tuple[collections.deque[_Item], ...] = (
            collections.deque(), collections.deque(), collections.deque())
        self._queued_bytes = 0
        self._paused = False
        self._credit = 0  # bytes the link takes before write_buffer_size() is asked again
        self._window_full = False
        self._recheck: asyncio.TimerHandle | asyncio.Handle | None = None
        self._space_waiters: list[asyncio.Future[None]] = []
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._state_waiters: list[asyncio.Future[None]] = []
        # cid -> (future, verb, deadline, timeout)
        self._pending: dict[int, tuple[asyncio.Future[Message], str, float, float]] = {}
        self._expiry: asyncio.TimerHandle | None = None
        self._expiry_at = math.inf
        self._next_cid = 1
        # sequencing (lossless): _unacked holds the sent frames in seq order
        self._out_seq = 0
        self._in_seq = 0
        self._ack_sent = 0
        self._ack_timer: asyncio.TimerHandle | None = None
        self._ack_soon = False  # an ack is scheduled for the end of this loop iteration
        self._unacked: collections.deque[Sequence[Buffer]] = collections.deque()
        # window accounting without a per-frame size at ack time: the running
        # total of what was put in the window, that total after each frame in
        # it, and after the last frame acknowledged (bytes in the window =
        # _window_total - _acked_total)
        self._window_total = 0
        self._acked_total = 0
        self._unacked_totals: collections.deque[int] = collections.deque()
        # a resume's replay, fed to the link like the queues (under its
        # watermark), before anything new: frames, and the seq of the first
        self._replay_frames: list[Sequence[Buffer]] | None = None
        self._replay_base = 0
        self._replay_next = 0
        # reconnection
        self._attempt: asyncio.Task[None] | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._backoff = 0.0
        self._opened = self._loop.create_future()  # first OPEN (or failure) of this session
        self._timer: asyncio.TimerHandle | None = None  # accepting side's handshake timeout
        self._stopping = False
        self._closing: asyncio.Task[None] | None = None  # close() / stop() in progress
        self._rejected = False  # an accepting link already counted as rejected
        # handler tasks running for this peer, and async oneway handlers waiting for a slot
        self._inflight = 0
        self._waiting_oneway: collections.deque[tuple[str, Awaitable[Any]]] = collections.deque()
        self._oob: dict[str, _OobEntry] = {}
        self._oob_timer: asyncio.TimerHandle | None = None
        # liveness: frames received, and their count at the last keepalive tick
        self._rx = 0
        self._rx_mark = 0
        self._idle_ticks = 0
        inject = messenger.config["inject"]
        self._inject_n: int = inject["socket_failures"]
        self._inject_doomed: Link | None = None
        self._rng: random.Random = messenger.inject_rng
        self._blackhole = False
        self._delay_p: float = 0.0
        self._delayed: collections.deque[tuple[_Port, list[Buffer]]] | None = None
        # counters (plain ints: cheap on the hot path; read through .stats)
        self.msgs_out = self.bytes_out = self.msgs_in = self.bytes_in = 0
        self.dropped = self.handler_errors = self.unhandled = 0
        self.retransmits = self.duplicates = self.reconnects = self.links = 0
        self.oob_out = self.oob_in = 0
        if policy is not None:
            self._set_policy(policy)

    def _set_policy(self, policy: Policy) -> None:
        self.policy = policy
        self._lossless = not policy.lossy

    # -- public API ------------------------------------------------------

    def __repr__(self) -> str:
        who = self.peer_name or self.address or "?"
        return f"<Connection {who} {self.state} {'out' if self.outgoing else 'in'}>"

    @property
    def is_open(self) -> bool:
        """True while the session has a link that completed the handshake."""
        return self.state == OPEN

    @property
    def is_closed(self) -> bool:
        """True once the session is over (reset, marked down, stopped)."""
        return self.state == CLOSED

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting in this session's priority queues."""
        return self._queued_bytes

    @property
    def link(self) -> Link | None:
        """The current link, if any (for introspection)."""
        return self._link

    @property
    def stats(self) -> dict[str, Any]:
        """A snapshot of this connection's counters and queue depths."""
        return {
            "peer": self.peer_name,
            "state": self.state,
            "policy": self.policy.name if self.policy else "",
            "msgs_out": self.msgs_out,
            "bytes_out": self.bytes_out,
            "msgs_in": self.msgs_in,
            "bytes_in": self.bytes_in,
            "dropped": self.dropped,
            "handler_errors": self.handler_errors,
            "unhandled": self.unhandled,
            "retransmits": self.retransmits,
            "duplicates": self.duplicates,
            "reconnects": self.reconnects,
            "links": self.links,
            "oob_out": self.oob_out,
            "oob_in": self.oob_in,
            "pending_requests": len(self._pending),
            "queued_msgs": sum(len(q) for q in self._queues),
            "queued_bytes": self._queued_bytes,
            "unacked_msgs": len(self._unacked),
            "unacked_bytes": self._window_total - self._acked_total,
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
        self._submit(_MSG, verb, payload, attachments, priority, 0)

    async def send(self, verb: str, payload: Any = b"", *, attachments: Sequence[Buffer] = (),
                   priority: int = Priority.NORMAL) -> None:
        """Send a oneway message, waiting while the session's queue is full."""
        while True:
            try:
                self._submit(_MSG, verb, payload, attachments, priority, 0)
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
            timeout = self._request_timeout
        # One timer per connection, at the earliest deadline (not one per
        # request): most requests are answered long before it fires.
        deadline = self._loop.time() + timeout if timeout else math.inf
        self._pending[cid] = (fut, verb, deadline, timeout)
        if deadline < self._expiry_at:
            self._arm_expiry(deadline)
        try:
            while True:
                try:
                    self._submit(m.REQ, verb, payload, attachments, priority, cid)
                    break
                except Backpressure:
                    await self._wait_for_space()
        except BaseException:
            self._pending.pop(cid, None)
            raise
        return await fut

    async def drain(self) -> None:
        """Wait until everything queued has been handed to the link.

        :raises ConnectionReset: the session closed first.
        """
        while self._queued_bytes or self.state in (CONNECTING, HANDSHAKE, ACCEPTING, STANDBY):
            if self.state == CLOSED:
                break
            fut = self._loop.create_future()
            self._drain_waiters.append(fut)
            await fut
        if self.state == CLOSED:
            raise ConnectionReset(self._who(), self.close_reason or "closed")

    async def wait_acked(self) -> None:
        """Wait until the peer has acknowledged every message sent so far
        (lossless sessions; for lossy ones, the same as :meth:`drain`)."""
        await self.drain()
        while self._unacked and self.state != CLOSED:
            self._send_ack_soon()
            fut = self._loop.create_future()
            self._drain_waiters.append(fut)
            await fut
        if self.state == CLOSED:
            raise ConnectionReset(self._who(), self.close_reason or "closed")

    async def close(self, timeout: float = 5.0) -> None:
        """End this session gracefully, as :meth:`Messenger.stop
        <msgr_core.messenger.Messenger.stop>` ends every session: what is
        queued is sent and, on a lossless session, acknowledged; then the
        peer is told (``GOODBYE``: it closes its side at once instead of
        reconnecting) and the link closes.  Bounded by ``timeout``: what is
        still queued or unacknowledged then is reported undeliverable.

        What the peer had in flight to us when our goodbye crossed it is
        reported undeliverable on its side, never dropped silently.  The
        next message to this peer starts a new session.  For a session a
        protocol needed for one exchange (HyParView's shuffles) rather
        than :meth:`mark_down`, which drops what is queued and makes a
        lossless peer reconnect."""
        if self.state != CLOSED or self._closing is not None:
            await asyncio.shield(self._close_task(timeout, "closed"))

    def _close_task(self, timeout: float, reason: str) -> asyncio.Task[None]:
        """The graceful close of this session: started once, by :meth:`close`
        or by the messenger's stop, and awaited by both."""
        if self._closing is None:
            self._closing = self._loop.create_task(self._close_gracefully(timeout, reason))
        return self._closing

    def mark_down(self) -> None:
        """Close the session now: queued and unacknowledged messages are
        reported undeliverable, pending requests fail.  The peer sees a reset;
        we do not fire ``handle_reset``."""
        self._reset("marked down", notify=False)

    def register_oob_message(self, op: str, callback: Callable[[], Any], interval: float) -> None:
        """Every ``interval`` seconds, send ``callback()`` out of band as ``op``.

        All OOB payloads due on this connection at the same moment go out in
        one frame, ahead of every queued message; they are not sequenced or
        replayed (a lost one is simply produced again next interval).  The
        receiver gets ``dispatch_oob(conn, op, payload)``.  Registrations
        with the same interval are aligned, so they always share a frame.
        ``callback`` returning ``None`` skips that interval.
        """
        if interval <= 0:
            raise ValueError("interval must be > 0")
        now = self._loop.time()
        due = math.ceil(now / interval) * interval
        self._oob[op] = _OobEntry(op, callback, interval, due)
        self._arm_oob()

    def unregister_oob_message(self, op: str) -> None:
        """Stop sending ``op``."""
        self._oob.pop(op, None)
        self._arm_oob()

    def send_oob_now(self, payloads: dict[str, Any]) -> bool:
        """Send ``{op: payload}`` out of band right away (one frame).
        Returns False when there is no open link to send it on."""
        link = self._link
        if self.state != OPEN or link is None:
            return False
        header = _pack_header(m.OOB, 0, self._in_seq, m.PACKED, Priority.OOB, 0, "")
        try:
            link.send((header, _packb(payloads)))
        except LinkClosed:
            return False
        self._ack_sent = self._in_seq
        self.oob_out += 1
        return True

    # -- sending internals ---------------------------------------------------

    def _who(self) -> str:
        return self.peer_name or self.address or "unknown peer"

    def _submit(self, mtype: int, verb: str, payload: Any, attachments: Sequence[Buffer],
                priority: int, cid: int) -> None:
        # The hot path.  While the session is open with nothing queued, the
        # message goes to the link at once (no queue item); the link's
        # write_buffer_size() is asked only when the byte credit it gave last
        # time is used up (sends only add to it; flushes only take away).
        tp = type(payload)
        if tp is bytes or tp is bytearray:
            body = payload
            flags = 0
            size = len(payload)
        elif tp is memoryview:
            body = payload
            flags = 0
            size = payload.nbytes
        else:
            body = _packb(payload)
            flags = m.PACKED
            size = len(body)
        if attachments:
            for a in attachments:
                size += _nbytes(a)
        if size > self._max_frame:
            raise FrameTooLarge(size, self._max_frame, peer=self._who())
        if not 0 <= priority <= 2:
            priority = Priority.NORMAL
        credit = self._credit
        if credit <= 0:
            credit = self._fresh_credit()
        if credit > 0:
            # The fast path: a positive credit means the session is open with
            # nothing queued, not paused, window not full, no replay pending
            # (whatever ends one of those zeroes the credit).
            self._credit = credit - size - _OVERHEAD
            seq = self._out_seq = self._out_seq + 1
            ack = self._ack_sent = self._in_seq
            vb = _verb_bytes.get(verb)
            header = _hdr_pack(mtype, flags, priority, seq, ack, cid) + (
                vb if vb is not None else _encode_verb(verb))
            frame: Sequence[Buffer] = (header, body, *attachments) if attachments else (header, body)
            if self._lossless:
                unacked = self._unacked
                unacked.append(frame)
                total = self._window_total = self._window_total + size + _OVERHEAD
                self._unacked_totals.append(total)
                if total - self._acked_total > self._max_unacked_bytes or len(unacked) > self._max_unacked_msgs:
                    self._window_full = True
                    self._credit = 0
            try:
                self._link.send(frame)  # type: ignore[union-attr]  # credit > 0: there is a link
            except LinkClosed:
                if not self._lossless:
                    self._undeliverable([(mtype, flags, priority, cid, verb, body, attachments, size)],
                                        "link closed")
                return
            self.msgs_out += 1
            self.bytes_out += size
            if self._inject_n and self._rng.random() * self._inject_n < 1.0:
                self._inject_failure()
            return
        state = self.state
        if state == CLOSED:
            raise ConnectionReset(self._who(), self.close_reason or "closed")
        if self._queued_bytes + size + _OVERHEAD > self._max_queued and self._queued_bytes:
            raise Backpressure(self._who(), self._queued_bytes, self._max_queued)
        self._queues[priority].append((mtype, flags, priority, cid, verb, body, attachments, size))
        self._queued_bytes += size + _OVERHEAD
        self._credit = 0
        if state == OPEN:
            if not self._paused and self._recheck is None:
                self._recheck = self._loop.call_soon(self._pump)
        elif state == STANDBY:
            self._kick()

    def _fresh_credit(self) -> int:
        """Bytes _submit may hand to the link before asking again: > 0 only
        while the fast path is open (see _submit)."""
        link = self._link
        if (self.state != OPEN or link is None or self._paused or self._window_full or self._queued_bytes
                or self._replay_frames is not None):
            self._credit = 0
            return 0
        return self._high - link.write_buffer_size()

    def _transmit(self, mtype: int, flags: int, priority: int, cid: int, verb: str,
                  body: Any, attachments: Sequence[Buffer], size: int) -> None:
        # A queued message leaves (from _pump); _submit has its own copy of this.
        link = self._link
        if link is None:
            self._undeliverable([(mtype, flags, priority, cid, verb, body, attachments, size)], "no link")
            return
        seq = self._out_seq = self._out_seq + 1
        ack = self._ack_sent = self._in_seq
        header = _pack_header(mtype, seq, ack, flags, priority, cid, verb)
        frame: Sequence[Buffer] = (header, body, *attachments) if attachments else (header, body)
        if self._lossless:
            # the window holds frames in sequence order: the first one's
            # number is _out_seq - len(_unacked) + 1
            unacked = self._unacked
            unacked.append(frame)
            total = self._window_total = self._window_total + size + _OVERHEAD
            self._unacked_totals.append(total)
            if total - self._acked_total > self._max_unacked_bytes or len(unacked) > self._max_unacked_msgs:
                self._window_full = True
                self._credit = 0
        try:
            link.send(frame)
        except LinkClosed:
            if not self._lossless:
                self._undeliverable([(mtype, flags, priority, cid, verb, body, attachments, size)], "link closed")
            return
        self.msgs_out += 1
        self.bytes_out += size
        if self._inject_n and self._rng.random() * self._inject_n < 1.0:
            self._inject_failure()

    def _inject_failure(self) -> None:
        """[inject] socket_failures: break the current link (once), soon --
        not from inside the send or receive that rolled it."""
        link = self._link
        if link is None or self._inject_doomed is link:
            return
        self._inject_doomed = link
        log.info("inject: failing link to %s (inject.socket_failures=%d)", self._who(), self._inject_n)
        self._ms._injected += 1
        self._loop.call_soon(link.abort)

    def _send_control(self, mtype: int, body: Any = b"", cid: int = 0, verb: str = "",
                      link: Link | None = None) -> None:
        """Send a session-protocol frame right away (not queued, not sequenced)."""
        link = link or self._link
        if link is None or link.is_closing():
            return
        flags = m.PACKED if body != b"" else 0
        header = _pack_header(mtype, 0, self._in_seq, flags, 0, cid, verb)
        if mtype not in (m.HELLO, m.HELLO_OK):
            self._ack_sent = self._in_seq
        with contextlib.suppress(LinkClosed):
            link.send((header, _packb(body) if flags else body))

    def _pump(self) -> None:
        self._recheck = None
        self._credit = 0  # the pump filled the link: ask it again
        link = self._link
        if self.state != OPEN or link is None:
            return
        high = self._high
        if self._replay_frames is not None and not self._pump_replay(link, high):
            self._wake_senders()
            return
        queues = self._queues
        while not self._paused and not self._window_full:
            if queues[2]:
                item = queues[2].popleft()
            elif queues[1]:
                item = queues[1].popleft()
            elif queues[0]:
                item = queues[0].popleft()
            else:
                break
            self._queued_bytes -= item[7] + _OVERHEAD
            if item[0] == m.REQ and item[3] not in self._pending:
                continue  # timed out before it could be sent
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

    def _pump_replay(self, link: Link, high: int) -> bool:
        """Feed the resume's replay to the link while it is under its high
        watermark.  True once the replay is complete."""
        replay = self._replay_frames
        if replay is None:
            return True
        first_unacked = self._out_seq - len(self._unacked) + 1
        i = max(self._replay_next, first_unacked - self._replay_base)  # skip what got acked meanwhile
        n = len(replay)
        while i < n and not self._paused:
            try:
                link.send(replay[i])
            except LinkClosed:
                break
            i += 1
            self.retransmits += 1
            if link.write_buffer_size() >= high:
                break
        self._replay_next = i
        if i < n:
            if not self._paused and self._recheck is None and self._link is link:
                self._recheck = self._loop.call_later(0.0005, self._pump)
            return False
        self._replay_frames = None
        return True

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

    def _resume_writing(self) -> None:
        self._paused = False
        if (self._queued_bytes or self._replay_frames is not None) and self._recheck is None:
            self._pump()

    def _arm_expiry(self, when: float) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        self._expiry_at = when
        self._expiry = self._loop.call_at(when, self._expire)

    def _expire(self) -> None:
        """Fail the requests whose deadline passed; re-arm for the next."""
        self._expiry = None
        self._expiry_at = math.inf
        now = self._loop.time()
        nearest = math.inf
        for cid, (fut, verb, deadline, timeout) in list(self._pending.items()):
            if deadline <= now:
                del self._pending[cid]
                if not fut.done():
                    fut.set_exception(RequestTimeout(verb, self._who(), timeout))
            elif deadline < nearest:
                nearest = deadline
        if nearest < math.inf:
            self._arm_expiry(nearest)

    # -- acknowledgements ------------------------------------------------------

    def _acked(self, ack: int) -> None:
        """The peer has everything up to ``ack``: drop it from the window."""
        unacked = self._unacked
        n = ack - (self._out_seq - len(unacked))
        if n <= 0:
            return
        n = min(n, len(unacked))
        if n <= 0:
            return
        popleft = unacked.popleft
        totals = self._unacked_totals
        pop_total = totals.popleft
        for _ in range(n - 1):
            popleft()
            pop_total()
        popleft()
        # what is left in the window: everything put in minus the running
        # total after the last frame acknowledged
        self._acked_total = pop_total()
        if self._window_full and self._window_total - self._acked_total <= self._max_unacked_bytes \
                and len(unacked) <= self._max_unacked_msgs:
            self._window_full = False
            if self._queued_bytes and self._recheck is None and self.state == OPEN:
                self._recheck = self._loop.call_soon(self._pump)
        if not unacked and self._drain_waiters:
            self._wake_senders()

    def _send_ack_soon(self) -> None:
        if self._ack_timer is None and self.state == OPEN:
            self._ack_timer = self._loop.call_later(self._ack_delay, self._ack_due)

    def _ack_now(self) -> None:
        self._ack_soon = False
        if self._in_seq > self._ack_sent and self.state == OPEN:
            self._send_control(m.ACK)

    def _ack_due(self) -> None:
        self._ack_timer = None
        if self._in_seq > self._ack_sent and self.state == OPEN:
            self._send_control(m.ACK)

    # -- link events (through _Port) ----------------------------------------

    def _link_made(self, port: _Port) -> None:
        if port.outgoing:
            self.state = HANDSHAKE if self.state != OPEN else self.state
            self._ms._send_hello(self, port)
        else:
            self._port = port
            self._link = port.link
            self.address = port.link.peer_address if port.link else ""
            timeout = self._ms.config["limits"]["handshake_timeout"]
            self._timer = self._loop.call_later(timeout, self._handshake_timeout)

    def _link_lost(self, port: _Port, exc: BaseException | None) -> None:
        if isinstance(exc, ProtocolError | FrameTooLarge) or (exc is not None and self.state == ACCEPTING):
            # bad input, or a connection that broke before saying who it is
            # (a truncated frame, a reset): worth a line and a count
            log.warning("closing link with %s: %s: %s", self._who(), type(exc).__name__, exc)
            self._ms._count_error(type(exc).__name__)
        if port is not self._port:
            return  # an outgoing attempt's link; its task sees the failure
        self._port = None
        self._link = None
        self._credit = 0
        self._paused = False
        self._replay_frames = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        state = self.state
        if state == CLOSED:
            return
        reason = self.close_reason or (f"link lost: {exc}" if exc else "link closed")
        if state == ACCEPTING:
            st = port.auth
            if st is not None and not st.done and st.hello is not None and not self._rejected:
                # challenged, and gone instead of answering (a dialler with another key does that)
                self._ms._auth_failed(self, port, st.hello, "closed the link instead of proving it holds the key")
            self._reject("frame_too_large" if isinstance(exc, FrameTooLarge) else
                         "protocol_error" if isinstance(exc, ProtocolError) else "closed_in_handshake")
            self.state = CLOSED
            self._ms._forget(self)
            return
        if not self._lossless or self._stopping:
            self._reset(reason, notify=not self._stopping)
            return
        # lossless: keep the session, get a new link
        self.close_reason = ""
        self.state = STANDBY
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        log.debug("session with %s lost its link (%s); standby", self._who(), reason)
        self._backoff = 0.0
        self._kick()

    def _frame(self, port: _Port, frame: list[Buffer]) -> None:
        _receive(port, frame)

    def _delay_frame(self, port: _Port, frame: list[Buffer]) -> None:
        """[inject] delays: hold this frame (and, to keep order, every later
        one) for a random time up to ``inject.delay_max``."""
        if self._delayed is None:
            self._delayed = collections.deque()
            delay = self._rng.random() * self._ms.config["inject"]["delay_max"]
            self._loop.call_later(delay, self._release_delayed)
        self._delayed.append((port, frame))

    def _release_delayed(self) -> None:
        held, self._delayed = self._delayed, None
        for port, frame in held or ():
            if port.session is self:
                saved, self._delay_p = self._delay_p, 0.0
                try:
                    self._frame(port, frame)
                finally:
                    self._delay_p = saved

    # -- receiving internals -------------------------------------------------

    def _protocol_error(self, port: _Port, exc: ProtocolError) -> None:
        if self.state == ACCEPTING:
            self._reject("protocol_error")
        if not exc.peer:
            exc.peer = self._who()
            exc.args = (f"{exc.args[0]} (peer {exc.peer})",)
        log.warning("closing link with %s: %s: %s", self._who(), type(exc).__name__, exc)
        self._ms._count_error(type(exc).__name__)
        if port is self._port and not self._lossless:
            self.close_reason = str(exc)
        if port.link is not None:
            port.link.abort()

    def _goodbye(self) -> None:
        """The peer is stopping: its session is over, whatever the policy."""
        self.close_reason = "peer said goodbye"
        self._reset("peer said goodbye", notify=True)

    def _start_oneway(self, verb: str, result: Awaitable[Any]) -> None:
        """An async oneway handler's awaitable: run it as a task, or queue it."""
        if self._inflight < self._max_inflight:
            self._inflight += 1
            self._ms._spawn(self._run_oneway(verb, result))
        else:
            # at most limits.max_requests_in_flight handler tasks per
            # peer: later ones wait their turn, in order (no task yet)
            self._waiting_oneway.append((verb, result))

    async def _run_oneway(self, verb: str, aw: Awaitable[Any]) -> None:
        try:
            await aw
        except Exception:
            self.handler_errors += 1
            log.exception("oneway handler for %r raised (message from %s)", verb, self._who())
        finally:
            self._handler_done()

    def _handler_done(self) -> None:
        """A handler task ended: start a waiting oneway handler in its slot."""
        self._inflight -= 1
        if self._waiting_oneway and self.state != CLOSED and self._ms.running:
            verb, aw = self._waiting_oneway.popleft()
            self._inflight += 1
            self._ms._spawn(self._run_oneway(verb, aw))

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
        if result is not None and type(result) not in _PLAIN and inspect.isawaitable(result):
            if self._inflight >= self._max_inflight:
                # an async handler over the limit: its coroutine never starts
                # (plain handlers always run: they hold no task)
                if inspect.iscoroutine(result):
                    result.close()
                self.unhandled += 1
                self._reply_error(cid, verb, "PeerBusy", f"{self._ms.name} already runs {self._inflight} "
                                  f"requests from {self._who()} (limits.max_requests_in_flight)")
                return
            self._inflight += 1
            self._ms._spawn(self._run_request(cid, verb, priority, result))
        else:
            self._reply(cid, verb, priority, result)

    async def _run_request(self, cid: int, verb: str, priority: int, aw: Awaitable[Any]) -> None:
        try:
            result = await aw
        except Exception as exc:
            self._handler_failed(cid, verb, exc)
            return
        finally:
            self._handler_done()
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
        fut, verb = entry[0], entry[1]
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
        cls = UnknownVerb if etype == "UnknownVerb" else PeerBusy if etype == "PeerBusy" else RemoteError
        fut.set_exception(cls(verb, self._who(), etype, text))

    def _dispatch_oob(self, payload: Any) -> None:
        if not isinstance(payload, dict):
            return
        self.oob_in += 1
        handlers = self._ms._oob_handlers
        for op, value in payload.items():
            fn = handlers.get(op)
            try:
                if fn is not None:
                    fn(self, op, value)
                else:
                    self._ms._fire("msgr_dispatch_oob", conn=self, op=op, payload=value)
            except Exception:
                log.exception("OOB handler for %r raised (from %s)", op, self._who())

    # -- OOB timer -----------------------------------------------------------

    def _arm_oob(self) -> None:
        if self._oob_timer is not None:
            self._oob_timer.cancel()
            self._oob_timer = None
        if self._oob and self.state != CLOSED:
            due = min(e.due for e in self._oob.values())
            self._oob_timer = self._loop.call_at(due, self._oob_tick)

    def _oob_tick(self) -> None:
        self._oob_timer = None
        now = self._loop.time()
        payloads: dict[str, Any] = {}
        for e in list(self._oob.values()):
            if e.due <= now + 1e-9:
                e.due = max(e.due + e.interval, math.ceil(now / e.interval) * e.interval)
                if e.due <= now:
                    e.due += e.interval
                try:
                    value = e.callback()
                except Exception:
                    log.exception("OOB callback for %r raised", e.op)
                    continue
                if value is not None:
                    payloads[e.op] = value
        if payloads:
            self.send_oob_now(payloads)
        self._arm_oob()

    # -- handshake -------------------------------------------------------

    def _handshake_frame(self, port: _Port, mtype: int, payload: Any) -> None:
        if mtype == m.HELLO and not port.outgoing:
            self._ms._accept(self, port, payload)
        elif mtype == m.AUTH and not port.outgoing:
            self._ms._auth_proof(self, port, payload)
        elif mtype == m.AUTH and port.outgoing and port.done is not None and not port.done.done():
            self._ms._auth_challenge(self, port, payload)
        elif mtype == m.HELLO_OK and port.outgoing and port.done is not None and not port.done.done():
            problem = self._ms._check_peer_auth(port, payload)
            if problem:
                self._ms._dial_auth_failed(self, port, problem)
                return
            # Handled here, not in the dialling task: the peer's replay may
            # follow in the same read, and must find the session open.
            port.done.set_result(payload if isinstance(payload, dict) else {})
            self._ms._connected(self, port, payload)
        elif mtype == m.REFUSE and port.outgoing and port.done is not None and not port.done.done():
            reason = str(payload)[:1024]
            port.done.set_exception(_Refused(reason))
            port.done.exception()
            port.orphan()
        else:
            self._protocol_error(port, ProtocolError(f"message type {mtype} during handshake ({self.state})"))

    def _handshake_timeout(self) -> None:
        self._timer = None
        port = self._port
        if self.state == ACCEPTING and port is not None:
            self._reject("handshake_timeout")
            self._protocol_error(port, ProtocolError("handshake timed out (limits.handshake_timeout)"))

    def _reject(self, reason: str) -> None:
        """Count this accepting link as rejected, once, by ``reason``."""
        if not self._rejected:
            self._rejected = True
            self._ms._count_rejected(reason)

    def _refuse(self, port: _Port, reason: str, *, quiet: bool = False) -> None:
        (log.debug if quiet else log.warning)("refusing %s: %s", self.address or "peer", reason)
        if not quiet:
            self._reject("refused")
        if port.link is not None:
            self._send_control(m.REFUSE, reason, link=port.link)
            port.link.close()
        port.session = None
        if port is self._port:
            self._port = None
            self._link = None
            self._credit = 0
            if self.state == ACCEPTING:
                self.state = CLOSED
                self._ms._forget(self)

    def _adopt(self, port: _Port, hello: dict[str, Any], peer_in_seq: int) -> None:
        """Take ``port``'s link as this session's link and (re)open on it."""
        old = self._port
        if old is not None and old is not port:
            old.orphan()
        port.session = self
        self._port = port
        self._link = port.link
        if port.link is not None:
            port.link.limit_frames(None)
        self._paused = False
        self._credit = 0
        self.links += 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.peer_name = hello["name"]
        self.peer_type = hello["type"]
        self.peer_incarnation = hello["incarnation"]
        self.peer_sid = hello["sid"]
        inject = self._ms.config["inject"]
        self._blackhole = self.peer_type in inject["blackhole_types"]
        self._delay_p = inject["delay_probability"] if inject["delay_type"] in ("*", self.peer_type) else 0.0
        addrs = tuple(hello.get("addrs", ()))
        if addrs:
            self.peer_addrs = addrs
        was = self.state
        self.state = OPEN
        self._backoff = 0.0
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if was in (STANDBY, OPEN) or self.links > 1:
            self.reconnects += 1
        self._replay(peer_in_seq)
        if not self._opened.done():
            self._opened.set_result(None)
        self._notify_state()
        if self._queued_bytes or self._replay_frames is not None:
            self._pump()
        self._wake_senders()
        if self._oob:
            self._arm_oob()

    def _replay(self, peer_in_seq: int) -> None:
        """Resume: the peer has everything up to ``peer_in_seq``; send the
        rest of the window again, in order, before anything new."""
        self._acked(peer_in_seq)
        if self._unacked and self._link is not None:
            self._credit = 0
            self._replay_frames = list(self._unacked)
            self._replay_base = self._out_seq - len(self._unacked) + 1
            self._replay_next = 0
        else:
            self._replay_frames = None

    # -- dialling ----------------------------------------------------------

    def _kick(self) -> None:
        """A lossless session without a link: dial if this side should."""
        if self.state not in (STANDBY, CONNECTING) or self._attempt is not None or self._retry is not None:
            return
        if self._stopping or not self._ms.running:
            return
        pol = self.policy
        if pol is not None and pol.server:
            return  # the client comes back to us
        if pol is not None and pol.standby and not (self._queued_bytes or self._unacked or self._pending):
            return  # idle lossless peer: reconnect when there is something to send
        address = self._ms._dial_address(self)
        if not address:
            return  # nowhere to dial: wait for the peer
        delay = self._backoff
        if delay:
            self._retry = self._loop.call_later(delay, self._retry_now)
        else:
            self._attempt = self._ms._spawn(self._dial(address))

    def _retry_now(self) -> None:
        self._retry = None
        self._kick_now()

    def _kick_now(self) -> None:
        saved, self._backoff = self._backoff, 0.0
        self._kick()
        self._backoff = saved

    def _next_backoff(self) -> None:
        ses = self._ms.config["session"]
        self._backoff = min(ses["reconnect_max"], max(ses["reconnect_min"], self._backoff * 2))

    async def _dial(self, address: str) -> None:
        """One dial + handshake attempt (the session's one task while it
        runs); the HELLO_OK itself is handled by :meth:`_handshake_frame`.
        On failure, the policy decides what next."""
        port = _Port(self, outgoing=True)
        done = port.done = self._loop.create_future()
        failure: Exception | None = None
        try:
            if self.state != OPEN:
                self.state = CONNECTING if self.state != STANDBY else STANDBY
            await self._ms._connect(address, port)
            timeout = self._ms.config["limits"]["handshake_timeout"]
            await asyncio.wait_for(asyncio.shield(done), timeout)
        except asyncio.CancelledError:
            if not (done.done() and not done.cancelled() and done.exception() is None):
                port.orphan()
            raise
        except (_Refused, TimeoutError, PeerUnreachable, AuthenticationFailed, OSError) as exc:
            failure = exc
        except Exception as exc:  # a transport bug must not kill the session silently
            log.exception("connect to %s failed unexpectedly", address)
            failure = exc
        finally:
            if self._attempt is asyncio.current_task():
                self._attempt = None
        if failure is not None:
            port.orphan()
            self._dial_failed(address, failure)
        elif self.state == STANDBY:
            # the new link was adopted and lost again before this task
            # resumed; its _kick found this attempt still running
            self._kick()

    def _dial_failed(self, address: str, exc: Exception) -> None:
        if self.state in (OPEN, CLOSED):
            return  # the peer's link won meanwhile, or we were closed
        if isinstance(exc, AuthenticationFailed) or (isinstance(exc, _Refused) and exc.reason == AUTH_FAILED):
            # not transient: no retry, whatever the policy
            self.close_reason = (f"refused by peer: {AUTH_FAILED}" if isinstance(exc, _Refused)
                                 else f"{AUTH_FAILED}: {exc}")
            log.warning("authentication with %s failed: %s", address, self.close_reason)
            self._ms._count_error("AuthenticationFailed")
            if isinstance(exc, _Refused):
                self._ms._refused(self, exc.reason)
            self._reset(self.close_reason, notify=False, unreachable=True, auth=True)
            return
        if isinstance(exc, _Refused):
            if exc.reason.startswith(RACE):
                # The peer's own link wins; wait for it, but try again later
                # in case it never comes.
                self.state = STANDBY
                self._next_backoff()
                self._kick()
                return
            self.close_reason = f"refused by peer: {exc.reason}"
            self._ms._refused(self, exc.reason)
            self._reset(self.close_reason, notify=False, unreachable=True)
            return
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if not self._lossless or (self.policy is not None and self.policy.server):
            self._reset(reason, notify=False, unreachable=True)
            return
        log.debug("dial %s failed (%s); retrying in %.1f s", address, reason, self._backoff)
        if self.state == CONNECTING and not self.links:
            self.state = CONNECTING
        else:
            self.state = STANDBY
        self._next_backoff()
        self._kick()

    # -- teardown ------------------------------------------------------------

    def _undeliverable(self, items: Sequence[_Item], reason: str) -> None:
        """Report messages that will never be delivered (never silently)."""
        oneway = [it for it in items if it[0] == m.MSG]
        self.dropped += len(oneway)
        if oneway:
            self._ms._report_undeliverable(
                self, [(it[4], _unpackb(it[5]) if it[1] & m.PACKED else it[5]) for it in oneway], reason)

    def _reset(self, reason: str, *, notify: bool, unreachable: bool = False, auth: bool = False) -> None:
        """Close the session: fail what is pending, report what is undelivered."""
        if self.state == CLOSED:
            return
        was_open = self.state == OPEN or self.links > 0
        self.state = CLOSED
        self.close_reason = self.close_reason or reason
        port, self._port = self._port, None
        self._link = None
        self._credit = 0
        if port is not None:
            port.orphan()
        if self._attempt is not None:
            self._attempt.cancel()
            self._attempt = None
        for t in (self._recheck, self._timer, self._retry, self._ack_timer, self._oob_timer):
            if t is not None:
                t.cancel()
        self._recheck = self._timer = self._retry = self._ack_timer = self._oob_timer = None
        if not self._opened.done():
            self._opened.set_exception(PeerAuthenticationFailed(self._who(), reason) if auth
                                       else PeerUnreachable(self._who(), reason))
            self._opened.exception()  # retrieved: nobody may be waiting
        who = self._who()
        exc_factory: Callable[[], Exception] = (
            (lambda: PeerAuthenticationFailed(who, reason)) if auth else
            (lambda: PeerUnreachable(who, reason)) if unreachable else (lambda: ConnectionReset(who, reason)))
        lost = [_item_of(frame) for frame in self._unacked]
        for q in self._queues:
            lost.extend(q)
            q.clear()
        self._unacked.clear()
        self._unacked_totals.clear()
        self._acked_total = self._window_total
        self._replay_frames = None
        self._queued_bytes = 0
        self._undeliverable(lost, reason)
        pending, self._pending = self._pending, {}
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry, self._expiry_at = None, math.inf
        for fut, _verb, _deadline, _timeout in pending.values():
            if not fut.done():
                fut.set_exception(exc_factory())
        for w in self._space_waiters + self._drain_waiters:
            if not w.done():
                w.set_result(None)
        self._space_waiters.clear()
        self._drain_waiters.clear()
        waiting, self._waiting_oneway = self._waiting_oneway, collections.deque()
        for _verb, aw in waiting:
            if inspect.iscoroutine(aw):
                aw.close()  # never started: the session is gone
        self._notify_state()
        if lost:
            log.info("session with %s reset (%s): %d message(s) undelivered", who, reason, len(lost))
        self._ms._forget(self)
        if notify and was_open:
            self._ms._fire("msgr_handle_reset", conn=self, reason=reason)

    async def _close_gracefully(self, timeout: float, reason: str = "messenger stopped") -> None:
        """Flush, wait for acks (lossless), say goodbye, close; bounded by ``timeout``."""
        self._stopping = True
        if self.state in (CONNECTING, HANDSHAKE, STANDBY) and (self._queued_bytes or self._unacked):
            # messages are waiting for this session: let it come up first
            self._kick_now()
            with contextlib.suppress(TimeoutError, PeerUnreachable):
                await asyncio.wait_for(asyncio.shield(self._wait_open()), timeout)
        if self.state == OPEN:
            with contextlib.suppress(TimeoutError, ConnectionReset):
                await asyncio.wait_for(self.wait_acked() if self._lossless else self.drain(), timeout)
            port = self._port
            if self.state == OPEN and port is not None and port.link is not None:
                self.close_reason = reason
                self._send_control(m.GOODBYE)
                port.gone = self._loop.create_future()
                port.session = None  # what follows is ours to report, not a fault
                port.link.close()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(port.gone, timeout)
        self._reset(reason, notify=False)

    async def _wait_open(self) -> None:
        while self.state not in (OPEN, CLOSED):
            fut = self._loop.create_future()
            self._state_waiters.append(fut)
            await fut

    def _notify_state(self) -> None:
        waiters, self._state_waiters = self._state_waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def _discard(self) -> None:
        """An accepting placeholder whose link went to another session."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._port = None
        self._link = None
        self._credit = 0
        self.state = CLOSED


RACE = "race:"
#: All a peer that fails authentication is told.
AUTH_FAILED = "authentication failed"


class _Refused(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def random_seeded(seed: int) -> random.Random:
    """The RNG used for fault injection (seeded for reproducible chaos)."""
    return random.Random(seed or None)
