"""The per-messenger failure detector (:class:`Heartbeat`).

Every session carries one OOB payload ``op`` per ``interval`` (registered
with :meth:`Messenger.register_oob_message
<msgr_core.messenger.Messenger.register_oob_message>`, so it shares its
frame with every other OOB payload of the same interval).  The payload is a
map::

    {"t": <sender's loop.time() when sent>, "s": <per-peer sequence number>,
     "e": <the last "t" the sender received from us>,          # optional
     "h": <seconds the sender held that "t" before echoing it>} # optional

Times are only ever compared with the clock that produced them, so the two
processes' clocks need not agree: the round trip is ``now - e - h``.

A peer is *alive* while the newest of our own pings it has echoed was sent
less than ``grace`` ago.  Judging by echoes rather than by what arrives
means a peer whose receive path is blocked (it stopped reading its socket,
but still writes) is detected too: its pings keep coming, their echoes go
stale.  A ping is echoed in the peer's next ping, so the newest echo is
up to two intervals plus a round trip old on a healthy path; checks run
every ``interval``.  A peer that died at time *K* is therefore declared
failed at some time in ``(K + grace - 2 * interval - rtt, K + grace +
interval]``, and ``grace`` must exceed ``2 * interval`` plus the worst
round trip (Ceph's 6 s / 20 s leave 8 s for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from msgr_core.errors import ConfigError, MsgrError

if TYPE_CHECKING:
    from msgr_core import Messenger
    from msgr_core.connection import Connection

__all__ = ["Heartbeat", "PeerState"]

log = logging.getLogger("msgr.heartbeat")

#: Close reasons after which an unwatched peer is forgotten instead of failed.
_GRACEFUL = ("peer said goodbye", "messenger stopped", "left the view")
# RTT moving average weight of a new sample.
_EWMA = 0.125


class PeerState:
    """What the detector knows about one peer (read it, do not modify it).

    :ivar name: the peer's entity name (``""`` until a session tells it).
    :ivar target: the ``watch`` entry (name or address) if watched, else ``""``.
    :ivar since: when tracking began (loop time).
    :ivar confirmed: send time of the newest ping of ours the peer echoed
        (``since`` until one is).
    :ivar last_seen: when its last heartbeat arrived (``None``: never).
    :ivar rtt: the last round-trip time sample (``None``: no sample yet).
    :ivar failed: currently declared failed.
    """

    __slots__ = (
        "confirmed", "conn", "detections", "echo", "failed", "failed_at", "heard", "last_echo",
        "last_seen", "misses", "name", "pings_in", "pings_out", "probe", "recoveries", "rtt", "rtt_avg",
        "rtt_max", "rtt_min", "since", "target",
    )

    def __init__(self, name: str, target: str, now: float) -> None:
        self.name = name
        self.target = target
        self.since = now
        self.confirmed = now
        self.last_echo = 0.0
        self.last_seen: float | None = None
        self.heard = False
        self.echo: tuple[float, float, int] | None = None  # (peer's t, our receive time, its incarnation)
        self.pings_in = self.pings_out = 0
        self.misses = 0
        self.rtt: float | None = None
        self.rtt_avg: float | None = None
        self.rtt_min: float | None = None
        self.rtt_max: float | None = None
        self.failed = False
        self.failed_at: float | None = None
        self.detections = self.recoveries = 0
        self.conn: Connection | None = None
        self.probe: asyncio.Task[None] | None = None

    @property
    def label(self) -> str:
        """How events name this peer: its entity name, else the watch entry."""
        return self.name or self.target

    @property
    def judged(self) -> bool:
        """Whether it can be declared failed: watched, or it has sent us a
        heartbeat (a peer that never did may not run msgr-heartbeat)."""
        return bool(self.target) or self.last_seen is not None


class Heartbeat:
    """Failure detection for one messenger (``messenger.extensions["heartbeat"]``).

    Created and started by the extension's ``msgr_messenger_started`` hook;
    :meth:`close` is called from ``msgr_messenger_stopping``.  Everything runs
    on the messenger's event loop: one OOB callback per session per
    interval, one OOB handler call per received ping, one check timer.

    Events go through ``messenger.hook``: ``msgr_peer_failed(messenger,
    peer, reason)`` once when a peer is declared failed, then
    ``msgr_peer_recovered(messenger, peer)`` once when it answers again.

    :param interval: seconds between pings on each session, and between checks.
    :param grace: a peer whose newest echoed ping is older than this is failed.
    :param watch: names or addresses to watch (sessions are opened to them);
        empty: judge every peer that sends heartbeats.
    :param op: the OOB op the pings travel as.
    :raises ConfigError: ``interval`` or ``grace`` is not > 0.
    """

    def __init__(self, messenger: Messenger, *, interval: float = 6.0, grace: float = 20.0,
                 watch: list[str] | None = None, op: str = "hb") -> None:
        if interval <= 0:
            raise ConfigError("heartbeat.interval", interval, "a value > 0")
        if grace <= 0:
            raise ConfigError("heartbeat.grace", grace, "a value > 0")
        if not op:
            raise ConfigError("heartbeat.op", op, "a non-empty OOB op name")
        self.messenger = messenger
        self.interval = float(interval)
        self.grace = float(grace)
        self.op = op
        self._watch: list[str] = list(dict.fromkeys(watch or ()))
        self._peers: dict[str, PeerState] = {}  # by name, or by watch address until the name is known
        self._unnamed: set[str] = set()  # keys of watched addresses whose name is not known yet
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self.detections = 0
        self.recoveries = 0
        #: the last 1000 events: ``(loop time, "failed"|"recovered", peer, reason)``.
        self.history: deque[tuple[float, str, str, str]] = deque(maxlen=1000)

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Register the ping on every session, its handler, open sessions to
        watched peers, and start checking."""
        ms = self.messenger
        ms.register_oob_handler(self.op, self._on_ping)
        ms.register_oob_message(self.op, self._ping_for, self.interval)
        for target in self._watch:
            self._track_target(target)
        self._timer = ms.loop.call_later(self.interval, self._check)

    def close(self) -> None:
        """Stop checking and probing (idempotent).  No events fire after it."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for st in self._peers.values():
            if st.probe is not None and not st.probe.done():
                st.probe.cancel()

    # -- public API --------------------------------------------------------------

    def watch(self, peer: str) -> None:
        """Watch ``peer`` (entity name or address): open a session to it if
        none exists and declare it failed if it does not answer within
        ``grace``.  The peer must run msgr-heartbeat too."""
        if peer not in self._watch:
            self._watch.append(peer)
            self._track_target(peer)

    def unwatch(self, peer: str) -> None:
        """Stop watching ``peer``; it is still judged while it sends heartbeats."""
        if peer in self._watch:
            self._watch.remove(peer)
            for key, st in list(self._peers.items()):
                if st.target == peer:
                    if key in self._unnamed:
                        self._unnamed.discard(key)
                        del self._peers[key]
                    else:
                        st.target = ""

    def forget_except(self, members: frozenset[str] | set[str]) -> None:
        """Stop tracking unwatched peers whose name is not in ``members``
        (called when a view is installed)."""
        for key, st in list(self._peers.items()):
            if not st.target and st.name not in members:
                del self._peers[key]

    def register_payload(self, op: str, callback: Callable[[Connection], Any]) -> None:
        """Add your own OOB payload ``op`` to the heartbeat frame of every
        session: ``callback(conn)`` is called once per interval per session
        and its result (``None``: skip this time) travels in the same frame
        as the ping.  The receiver handles it with
        ``messenger.register_oob_handler(op, fn)``.

        This is exactly ``messenger.register_oob_message(op, callback,
        heartbeat.interval)``: any OOB payload registered with the same
        interval shares the frame.
        """
        self.messenger.register_oob_message(op, callback, self.interval)

    def peer(self, peer: str) -> PeerState | None:
        """The state of ``peer`` (entity name or watch entry), if tracked."""
        st = self._peers.get(peer)
        if st is None:
            for s in self._peers.values():
                if s.target == peer:
                    return s
        return st

    def is_failed(self, peer: str) -> bool:
        """Whether ``peer`` is currently declared failed."""
        st = self.peer(peer)
        return st is not None and st.failed

    def stats(self) -> dict[str, Any]:
        """A snapshot: settings, totals, and per peer RTT (last, average,
        min, max), pings in/out, misses (checks with no ping from the peer
        since the previous check), detections and recoveries."""
        now = self.messenger.loop.time() if self.messenger.running else None
        peers = {}
        for st in self._peers.values():
            peers[st.label] = {
                "watched": bool(st.target),
                "failed": st.failed,
                "rtt": st.rtt,
                "rtt_avg": st.rtt_avg,
                "rtt_min": st.rtt_min,
                "rtt_max": st.rtt_max,
                "last_seen_ago": None if now is None or st.last_seen is None else now - st.last_seen,
                "confirmed_ago": None if now is None else now - st.confirmed,
                "pings_in": st.pings_in,
                "pings_out": st.pings_out,
                "misses": st.misses,
                "detections": st.detections,
                "recoveries": st.recoveries,
            }
        return {
            "interval": self.interval,
            "grace": self.grace,
            "op": self.op,
            "watch": list(self._watch),
            "detections": self.detections,
            "recoveries": self.recoveries,
            "misses": sum(st.misses for st in self._peers.values()),
            "peers": peers,
        }

    # -- pings -----------------------------------------------------------------------

    def _lookup(self, conn: Connection, *, create: bool) -> PeerState | None:
        name = conn.peer_name
        st = self._peers.get(name) if name else None
        if self._unnamed:
            # a watched address (or name) this session may turn out to be
            for key in list(self._unnamed):
                s = self._peers[key]
                if s.target not in (conn.address, name) and s.target not in conn.peer_addrs:
                    continue
                if not name:
                    return s
                self._unnamed.discard(key)
                del self._peers[key]
                if st is None:
                    s.name = name
                    st = self._peers[name] = s
                else:
                    st.target = s.target  # it was already known by name: merge
                break
        if st is not None or not create or not name:
            return st
        st = self._peers[name] = PeerState(name, "", self.messenger.loop.time())
        return st

    def _ping_for(self, conn: Connection) -> dict[str, Any] | None:
        """The OOB callback: this interval's ping on ``conn``."""
        if self._closed:
            return None
        st = self._lookup(conn, create=True)
        if st is None:
            return None
        now = self.messenger.loop.time()
        st.conn = conn
        st.pings_out += 1
        ping: dict[str, Any] = {"t": now, "s": st.pings_out}
        echo = st.echo
        if echo is not None and echo[2] == conn.peer_incarnation:
            ping["e"] = echo[0]
            ping["h"] = now - echo[1]
        return ping

    def _on_ping(self, conn: Connection, op: str, value: Any) -> None:
        """The OOB handler: a ping from ``conn``'s peer."""
        if self._closed or not isinstance(value, dict):
            return
        st = self._lookup(conn, create=True)
        if st is None:
            return
        now = self.messenger.loop.time()
        if st.last_seen is None and not st.target:
            # first contact with an unwatched peer: judged from now on
            st.since = st.confirmed = now
        st.last_seen = now
        st.heard = True
        st.pings_in += 1
        st.conn = conn
        t = value.get("t")
        if isinstance(t, int | float):
            st.echo = (float(t), now, conn.peer_incarnation)
        e, h = value.get("e"), value.get("h", 0.0)
        if not isinstance(e, int | float) or not isinstance(h, int | float) or not 0.0 < e <= now:
            return
        if e > st.last_echo:
            st.last_echo = e
            rtt = max(0.0, now - e - max(0.0, h))
            st.rtt = rtt
            st.rtt_avg = rtt if st.rtt_avg is None else st.rtt_avg + _EWMA * (rtt - st.rtt_avg)
            st.rtt_min = rtt if st.rtt_min is None else min(st.rtt_min, rtt)
            st.rtt_max = rtt if st.rtt_max is None else max(st.rtt_max, rtt)
        if e > st.confirmed:
            st.confirmed = e
        if st.failed and now - st.confirmed <= self.grace:
            self._recovered(st)

    # -- checks -----------------------------------------------------------------------

    def _check(self) -> None:
        self._timer = None
        ms = self.messenger
        if self._closed or not ms.running:
            return
        now = ms.loop.time()
        for target in self._watch:
            self._ensure_session(target)
        for key, st in list(self._peers.items()):
            if not st.target and st.conn is not None and st.conn.is_closed and (
                    not st.judged or any(r in st.conn.close_reason for r in _GRACEFUL)):
                # it left cleanly, or never ran heartbeats: nothing to detect
                del self._peers[key]
                continue
            if not st.judged:
                continue
            if st.heard:
                st.heard = False
            else:
                st.misses += 1
            age = now - st.confirmed
            if age > self.grace and not st.failed:
                if st.last_seen is None:
                    reason = f"no heartbeat from {st.label} in {age:.1f} s (grace {self.grace:g} s)"
                else:
                    reason = (f"no heartbeat reply from {st.label} for {age:.1f} s "
                              f"(grace {self.grace:g} s, last heard {now - st.last_seen:.1f} s ago)")
                self._failed(st, reason)
        if not self._closed and ms.running:
            self._timer = ms.loop.call_later(self.interval, self._check)

    def _failed(self, st: PeerState, reason: str) -> None:
        now = self.messenger.loop.time()
        st.failed = True
        st.failed_at = now
        st.detections += 1
        self.detections += 1
        self.history.append((now, "failed", st.label, reason))
        log.warning("%s: peer %s failed: %s", self.messenger.name, st.label, reason)
        try:
            self.messenger.hook.msgr_peer_failed(messenger=self.messenger, peer=st.label, reason=reason)
        except Exception:
            log.exception("msgr_peer_failed hook raised")

    def _recovered(self, st: PeerState) -> None:
        now = self.messenger.loop.time()
        st.failed = False
        st.recoveries += 1
        self.recoveries += 1
        self.history.append((now, "recovered", st.label, ""))
        log.info("%s: peer %s recovered", self.messenger.name, st.label)
        try:
            self.messenger.hook.msgr_peer_recovered(messenger=self.messenger, peer=st.label)
        except Exception:
            log.exception("msgr_peer_recovered hook raised")

    # -- watched peers ---------------------------------------------------------------

    def _track_target(self, target: str) -> None:
        st = self.peer(target)
        if st is None:
            st = PeerState("" if "://" in target else target, target, self.messenger.loop.time())
            key = st.name or target
            self._peers[key] = st
            if not st.name:
                self._unnamed.add(key)
        else:
            if not st.judged:  # judged from now on
                st.since = st.confirmed = self.messenger.loop.time()
            st.target = target
        self._ensure_session(target)

    def _ensure_session(self, target: str) -> None:
        """Keep a session to a watched peer.  One without a link gets a
        ``msgr.ping`` request queued (at most one at a time): an idle
        ``lossless_peer`` session redials only when it has something to
        send, and a dead peer's lossy session must be dialled anew."""
        st = self.peer(target)
        if st is None:
            return
        try:
            conn = self.messenger.get_connection(target)
        except MsgrError as exc:
            log.debug("%s: cannot reach watched peer %s yet: %s", self.messenger.name, target, exc)
            return
        if conn.is_open or conn.queued_bytes or (st.probe is not None and not st.probe.done()):
            return
        st.probe = self.messenger.loop.create_task(self._probe(conn))

    async def _probe(self, conn: Connection) -> None:
        with contextlib.suppress(MsgrError, TimeoutError):
            await conn.request("msgr.ping", b"", timeout=self.grace)
