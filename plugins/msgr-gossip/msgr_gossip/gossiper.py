"""The :class:`Gossiper`: one per messenger.

State
-----
Every endpoint (a messenger, named by its entity name) has an
:class:`EndpointState`: a *generation* (the messenger's incarnation: its
start time in ns, so a restart is a larger generation), a *heartbeat
version* bumped every round, and *application states* ``key -> (value,
version)``.  One counter per node numbers its heartbeats and its states
alike, so ``max_version`` orders everything a node ever said in one
generation.  Built-in keys: ``STATUS`` (joining, normal, leaving,
shutdown), ``ADDRS`` (the messenger's addresses: how peers reach it on
every transport they share), ``LOAD``; user keys through
:meth:`Gossiper.add_local_application_state`.

Round (every ``interval``)
--------------------------
Bump the heartbeat, then send ``gossip.syn`` (one digest ``(endpoint,
generation, max_version)`` per known endpoint) to ``fanout`` random live
peers, to one unreachable peer with probability ``unreachable / (live +
1)``, and to a random seed when no live target was a seed or there are
fewer live peers than seeds (with probability ``seeds / (live +
unreachable)`` once anyone is live) — Cassandra's rules.  Then check every
endpoint's phi and convict (mark dead) those over the threshold.

Exchange (ScyllaDB's asynchronous gossip)
-----------------------------------------
``gossip.syn``, ``gossip.ack`` and ``gossip.ack2`` are *oneway* verbs:
the round never waits for a reply, so a dead or slow peer never stretches
it.  The receiver of a SYN answers ACK with the states newer than the
sender's digests (and the endpoints the sender did not list) plus requests
for what it lacks; the initiator answers ACK2 with what was requested.
At most ``max_pending`` SYNs per peer wait for their ACK (older ones
expire after ``5 * interval``), and an ACK/ACK2 is dropped rather than
queued behind ``max_queued_bytes`` on a slow session.

Liveness
--------
A newer heartbeat feeds the endpoint's phi-accrual window
(:mod:`msgr_gossip.detector`).  A node that is new, restarted or was dead
becomes *alive* only after it answers ``gossip.echo``.  ``gossip.shutdown``
(sent to every live peer on a graceful stop) marks the sender down at once;
the ``shutdown`` status with a forced highest version then spreads by
gossip.  When rounds are late by more than ``max_local_pause`` (a GC, a
stopped process), convictions are suppressed for that long.  Dead
endpoints are removed after ``remove_after`` seconds (or by
:meth:`Gossiper.remove_endpoint`) and quarantined: their state is ignored
for ``quarantine`` seconds.

Callbacks and membership
------------------------
Subscribers (:class:`GossipSubscriber`) get ``on_join``, ``on_alive``,
``on_dead``, ``on_change``, ``on_restart`` and ``on_remove`` in order, from
a task of their own: never inside the round, so a callback that awaits for
10 s delays later notifications, never a round.  The live set (plus this
node) is installed as the messenger's view (``install_view``), and
``msgr_peer_failed`` / ``msgr_peer_recovered`` fire through
``messenger.hook`` — also scheduled off the round.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from msgr_core.errors import MsgrError

from .detector import ArrivalWindow

if TYPE_CHECKING:
    from msgr_core import Message, Messenger
    from msgr_core.connection import Connection

__all__ = [
    "ADDRS",
    "DEFAULTS",
    "LOAD",
    "STATUS",
    "EndpointState",
    "GossipSubscriber",
    "Gossiper",
]

log = logging.getLogger("msgr.gossip")

STATUS, ADDRS, LOAD = "STATUS", "ADDRS", "LOAD"
JOINING, NORMAL, LEAVING, SHUTDOWN = "joining", "normal", "leaving", "shutdown"
DEAD_STATES = frozenset({SHUTDOWN})

VERB_SYN, VERB_ACK, VERB_ACK2 = "gossip.syn", "gossip.ack", "gossip.ack2"
VERB_ECHO, VERB_SHUTDOWN, VERB_STATUS = "gossip.echo", "gossip.shutdown", "gossip.status"

#: a version no live node reaches: a shutdown mark must win over older gossip
FORCED_VERSION = 2**62

#: ``[gossip]`` config section and its defaults.
DEFAULTS: dict[str, Any] = {
    "seeds": [],  # addresses of seed nodes
    "interval": 1.0,  # seconds between rounds
    "phi_convict_threshold": 8.0,
    "fanout": 1,  # random live peers per round (ScyllaDB raises it for large clusters)
    "quarantine": 60.0,  # seconds the state of a removed endpoint is ignored
    "remove_after": 259200.0,  # seconds dead before an endpoint is removed (0: never)
    "max_local_pause": 5.0,  # a round this late means we paused: suppress convictions
    "max_pending": 2,  # SYNs per peer awaiting their ACK
    "max_queued_bytes": 1048576,  # ACK/ACK2 dropped when the session holds more
    "cluster": "msgr",  # nodes of other clusters are ignored
    "install_view": True,  # feed the live set to messenger.install_view
    "seed": -1,  # RNG seed of target choice (-1: random)
}


class EndpointState:
    """What this node knows of one endpoint.

    :ivar name: the endpoint's entity name.
    :ivar generation: its incarnation (grows on restart).
    :ivar version: its heartbeat version.
    :ivar states: application states ``key -> (value, version)``.
    :ivar alive: whether this node considers it alive.
    :ivar max_version: the largest version in it (heartbeat or state).
    :ivar dead_since: loop time it was marked dead (``None`` while alive).
    :ivar apps_version: the largest version among the application states
        (whoever changes ``states`` keeps it up to date).
    """

    __slots__ = ("alive", "apps_version", "dead_since", "generation", "max_version", "name", "states", "version")

    def __init__(self, name: str, generation: int, version: int = 0) -> None:
        self.name = name
        self.generation = generation
        self.version = version
        self.states: dict[str, tuple[Any, int]] = {}
        self.alive = False
        self.max_version = version
        self.apps_version = 0
        self.dead_since: float | None = None

    def get(self, key: str, default: Any = None) -> Any:
        """The value of application state ``key``."""
        vv = self.states.get(key)
        return default if vv is None else vv[0]

    @property
    def status(self) -> str:
        return str(self.get(STATUS, ""))

    @property
    def addrs(self) -> list[str]:
        value = self.get(ADDRS, [])
        return [a for a in value if isinstance(a, str)] if isinstance(value, list) else []

    def wire(self, from_version: int = 0) -> list[Any]:
        """``[name, generation, heartbeat, [[key, value, version], ...]]``
        with the states newer than ``from_version``."""
        if from_version >= self.apps_version:
            return [self.name, self.generation, self.version, ()]  # a heartbeat only: the common case
        apps = [[k, v, ver] for k, (v, ver) in self.states.items() if ver > from_version]
        return [self.name, self.generation, self.version, apps]

    def __repr__(self) -> str:
        return (f"<EndpointState {self.name} gen={self.generation} v={self.max_version} "
                f"{'up' if self.alive else 'down'} {self.status}>")


class GossipSubscriber:
    """Override the events you want.  Methods may be plain or ``async``;
    they run in order, one at a time, in the gossiper's notification task
    (never inside a round).  An exception is logged and skipped."""

    def on_join(self, endpoint: str, state: EndpointState) -> Any:
        """A new endpoint appeared (not yet alive: see :meth:`on_alive`)."""

    def on_alive(self, endpoint: str, state: EndpointState) -> Any:
        """The endpoint answered our echo and is alive (again)."""

    def on_dead(self, endpoint: str, state: EndpointState) -> Any:
        """The endpoint was convicted by phi, or said it shuts down."""

    def on_change(self, endpoint: str, key: str, value: Any) -> Any:
        """Application state ``key`` of the endpoint changed (also for new
        endpoints, once per key)."""

    def on_restart(self, endpoint: str, state: EndpointState) -> Any:
        """The endpoint restarted (a new generation); ``state`` is the old one."""

    def on_remove(self, endpoint: str) -> Any:
        """The endpoint was removed (dead for ``remove_after``, or
        :meth:`Gossiper.remove_endpoint`) and is quarantined."""


class Gossiper:
    """Gossip membership for one messenger (``messenger.extensions["gossip"]``).

    Created and started by the extension's ``msgr_messenger_started`` hook;
    stopped (with ``gossip.shutdown`` to live peers) by
    ``msgr_messenger_stopping``.
    """

    def __init__(self, messenger: Messenger, settings: dict[str, Any]) -> None:
        self.ms = messenger
        self.name = messenger.name
        self.cfg = {**DEFAULTS, **settings}
        self.interval = float(self.cfg["interval"])
        self.threshold = float(self.cfg["phi_convict_threshold"])
        self.fanout = max(1, int(self.cfg["fanout"]))
        self.generation = int(messenger.incarnation)
        seed = int(self.cfg["seed"])
        self.rng = random.Random(None if seed < 0 else f"{seed}:{self.name}")
        self._version = 0
        self.local = EndpointState(self.name, self.generation)
        self.local.alive = True
        self.endpoints: dict[str, EndpointState] = {self.name: self.local}
        self.live: set[str] = set()
        self.seeds: list[str] = list(self.cfg["seeds"])
        self._windows: dict[str, ArrivalWindow] = {}
        self._quarantine: dict[str, float] = {}
        self._pending: dict[str, deque[float]] = {}
        self._echoing: set[str] = set()
        self._failed: set[str] = set()  # convicted, for msgr_peer_recovered
        self._subscribers: list[GossipSubscriber] = []
        self._events: deque[tuple[str, tuple[Any, ...]]] = deque()
        self._wake: asyncio.Event | None = None
        self._notifier: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._view_due = False
        self._last_round: float | None = None
        self._last_pause = -1e18
        self._running = False
        # the round's target lists, rebuilt only when liveness changes (not
        # every round: sorting N names per node and round is O(N^2 log N) a
        # round across a simulated cluster)
        self._targets: tuple[list[str], list[str]] | None = None
        #: rounds run, messages sent by verb (bytes: ``messenger.stats``), and
        #: messages not sent (pending bound, queue bound, session closed)
        self.rounds = 0
        self.sent: dict[str, int] = {}
        self.dropped = 0

    # -- public API -------------------------------------------------------------

    def add_local_application_state(self, key: str, value: Any) -> None:
        """Set application state ``key`` of this node (msgpack-serialisable
        ``value``); it spreads with the next rounds."""
        self._version += 1
        self.local.states[key] = (value, self._version)
        self.local.max_version = self.local.apps_version = self._version

    def subscribe(self, subscriber: GossipSubscriber) -> None:
        """Receive membership events (see :class:`GossipSubscriber`)."""
        self._subscribers.append(subscriber)

    def unsubscribe(self, subscriber: GossipSubscriber) -> None:
        with contextlib.suppress(ValueError):
            self._subscribers.remove(subscriber)

    def is_alive(self, endpoint: str) -> bool:
        ep = self.endpoints.get(endpoint)
        return ep is not None and ep.alive

    @property
    def unreachable(self) -> set[str]:
        """Known endpoints (not this node) not alive."""
        return {n for n, ep in self.endpoints.items() if not ep.alive and n != self.name}

    def phi(self, endpoint: str) -> float:
        """The endpoint's current phi (``0.0`` if never heard from)."""
        w = self._windows.get(endpoint)
        return w.phi(self.ms.loop.time()) if w is not None else 0.0

    def remove_endpoint(self, endpoint: str) -> None:
        """Forget ``endpoint`` and quarantine it (Cassandra's removal): its
        gossip is ignored for ``quarantine`` seconds.  ``on_remove`` fires."""
        ep = self.endpoints.pop(endpoint, None)
        if ep is None or endpoint == self.name:
            if ep is not None:
                self.endpoints[endpoint] = ep
            return
        self._windows.pop(endpoint, None)
        self._quarantine[endpoint] = self.ms.loop.time() + float(self.cfg["quarantine"])
        self._targets = None
        if endpoint in self.live:
            self.live.discard(endpoint)
            self._view_changed()
        self._notify("on_remove", endpoint)

    def preload(self, states: list[Any]) -> None:
        """Take endpoint states (``EndpointState.wire()`` lists) as already
        gossiped *and* echoed: each becomes known and alive at once, with one
        heartbeat report in its window, and the usual ``on_join``,
        ``on_change`` and ``on_alive`` events.

        A simulation shortcut (``msgr sim gossip --preload``) for a cluster
        that has already converged: it skips the join phase, in which every
        node would echo every other (a session per pair: O(N^2) work before
        the first measurement).  Not for production membership, where a
        node is alive only after it answered ``gossip.echo``.  States of
        this node, of quarantined or already known endpoints are ignored.
        """
        now = self.ms.loop.time()
        for st in states:
            name, gen, hb, apps = st
            if name == self.name or name in self._quarantine or name in self.endpoints:
                continue
            ep = EndpointState(name, gen, hb)
            self._merge(ep, apps)
            self.endpoints[name] = ep
            self._report(name, now)
            self._notify("on_join", name, ep)
            for key, (value, _ver) in ep.states.items():
                self._notify("on_change", name, key, value)
            if ep.status not in DEAD_STATES:
                self._mark_alive(ep)
        self._targets = None

    def status(self) -> dict[str, Any]:
        """A snapshot for ``gossip.status`` / ``msgr gossip status``."""
        now = self.ms.loop.time()
        rows = []
        for name in sorted(self.endpoints):
            ep = self.endpoints[name]
            w = self._windows.get(name)
            rows.append({
                "endpoint": name,
                "generation": ep.generation,
                "version": ep.max_version,
                "heartbeat": ep.version,
                "status": ep.status,
                "alive": ep.alive,
                "phi": 0.0 if w is None or name == self.name else round(w.phi(now), 3),
                "addrs": ep.addrs,
                "load": ep.get(LOAD),
            })
        return {"name": self.name, "generation": self.generation, "rounds": self.rounds,
                "live": len(self.live), "unreachable": len(self.unreachable), "sent": dict(self.sent),
                "dropped": self.dropped, "endpoints": rows}

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Register the verbs and schedule the first round (after a random
        fraction of ``interval``: nodes started together do not gossip in
        lock-step)."""
        ms = self.ms
        ms.register_handler_oneway(VERB_SYN, self._on_syn)
        ms.register_handler_oneway(VERB_ACK, self._on_ack)
        ms.register_handler_oneway(VERB_ACK2, self._on_ack2)
        ms.register_handler_oneway(VERB_SHUTDOWN, self._on_shutdown)
        ms.register_handler(VERB_ECHO, lambda msg: self.generation)
        ms.register_handler(VERB_STATUS, lambda msg: self.status())
        own = set(ms.addresses)
        self.seeds = [s for s in self.seeds if s not in own]
        self.add_local_application_state(ADDRS, list(ms.addresses))
        self.add_local_application_state(LOAD, 0.0)
        self.add_local_application_state(STATUS, NORMAL)
        self._running = True
        self._wake = asyncio.Event()
        self._notifier = ms._spawn(self._notify_loop())  # cancelled by stop and abort too
        self._timer = ms.loop.call_later(self.rng.random() * self.interval, self._round)

    async def stop(self) -> None:
        """Announce the shutdown: ``STATUS = shutdown`` and ``gossip.shutdown``
        to every live peer (flushed, bounded by ``interval``), then stop."""
        if not self._running:
            return
        self._running = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.add_local_application_state(STATUS, SHUTDOWN)
        conns = []
        for name in list(self.live):
            conn = self._send(name, VERB_SHUTDOWN, [self.name, self.generation])
            if conn is not None:
                conns.append(conn)
        if conns:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.gather(*(c.drain() for c in conns), return_exceptions=True),
                                       self.interval)
        self._cancel_notifier()

    def abort(self) -> None:
        """Stop without a word (the process died)."""
        self._running = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._cancel_notifier()

    def _cancel_notifier(self) -> None:
        if self._notifier is not None:
            self._notifier.cancel()
            self._notifier = None

    # -- the round ---------------------------------------------------------------

    def _round(self) -> None:
        if not self._running or not self.ms.running:
            self.abort()
            return
        loop = self.ms.loop
        now = loop.time()
        self._timer = loop.call_at(now + self.interval, self._round)
        if self._last_round is not None and now - self._last_round > self.cfg["max_local_pause"]:
            log.warning("%s: gossip round %.1f s late: suppressing convictions for %.1f s",
                        self.name, now - self._last_round - self.interval, self.cfg["max_local_pause"])
            self._last_pause = now
        self._last_round = now
        self.rounds += 1
        self._version += 1
        self.local.version = self.local.max_version = self._version
        syn = [self.cfg["cluster"], self._digests()]
        live, unreachable = self._round_targets()
        to_seed = False
        if live:
            for name in self.rng.sample(live, min(self.fanout, len(live))):
                self._syn(name, syn)
                to_seed = to_seed or self._is_seed(name)
        if unreachable and self.rng.random() < len(unreachable) / (len(live) + 1):
            self._syn(self.rng.choice(unreachable), syn)
        if self.seeds and (not to_seed or len(live) < len(self.seeds)) and (
                not live or self.rng.random() <= len(self.seeds) / (len(live) + len(unreachable))):
            self._syn(self.rng.choice(self.seeds), syn)
        self._status_check(now)

    def _round_targets(self) -> tuple[list[str], list[str]]:
        """``(live, unreachable)`` names, sorted (the same choices whatever
        the hash seed); cached until liveness changes."""
        if self._targets is None:
            live = sorted(self.live)
            unreachable = sorted(n for n, ep in self.endpoints.items() if not ep.alive and n != self.name)
            self._targets = (live, unreachable)
        return self._targets

    def _digests(self) -> list[Any]:
        # flat [name, gen, max_version, name, gen, max_version, ...]: one msgpack
        # array for the whole digest list keeps the SYN compact at large N
        out: list[Any] = []
        for ep in self.endpoints.values():
            out += (ep.name, ep.generation, ep.max_version)
        return out

    def _is_seed(self, name: str) -> bool:
        ep = self.endpoints.get(name)
        return ep is not None and any(a in self.seeds for a in ep.addrs)

    def _syn(self, target: str, syn: list[Any]) -> None:
        now = self.ms.loop.time()
        pending = self._pending.get(target)
        if pending is None:
            pending = self._pending[target] = deque()
        while pending and pending[0] < now - 5 * self.interval:
            pending.popleft()
        if len(pending) >= self.cfg["max_pending"]:
            self.dropped += 1
            return
        if self._send(target, VERB_SYN, syn) is not None:
            pending.append(now)

    def _status_check(self, now: float) -> None:
        paused = now - self._last_pause < self.cfg["max_local_pause"]
        remove_after = self.cfg["remove_after"]
        threshold = self.threshold
        live, unreachable = self._round_targets()
        if not paused:
            windows = self._windows
            convicted = []
            for name in live:
                w = windows.get(name)
                if w is not None and w.phi(now) > threshold:
                    convicted.append((name, w.phi(now)))
            for name, phi in convicted:
                ep = self.endpoints.get(name)
                if ep is not None and ep.alive:
                    self._mark_dead(ep, f"phi {phi:.1f} > {threshold:g}")
        if remove_after:
            for name in unreachable:
                ep = self.endpoints.get(name)
                if ep is not None and ep.dead_since is not None and now - ep.dead_since > remove_after:
                    self.remove_endpoint(name)
        if self._quarantine:
            for name in [n for n, until in self._quarantine.items() if until <= now]:
                del self._quarantine[name]

    # -- sending -------------------------------------------------------------------

    def _connection(self, target: str) -> Connection | None:
        """A session to ``target`` (an endpoint name or a seed address)."""
        if "://" in target:
            addrs = [target]
        else:
            ep = self.endpoints.get(target)
            addrs = ep.addrs if ep is not None else []
        prefer = self.ms.config.transports
        if prefer:
            addrs = sorted(addrs, key=lambda a: next(
                (i for i, s in enumerate(prefer) if a.startswith(s + "://")), len(prefer)))
        for addr in addrs:
            try:
                return self.ms.get_connection(addr, policy="lossy_client")
            except MsgrError:
                continue
        return None

    def _send(self, target: str | Connection, verb: str, payload: Any) -> Connection | None:
        conn = self._connection(target) if isinstance(target, str) else target
        if conn is None:
            return None
        if verb in (VERB_ACK, VERB_ACK2) and conn.queued_bytes > self.cfg["max_queued_bytes"]:
            self.dropped += 1
            return None
        try:
            conn.send_nowait(verb, payload)
        except MsgrError:
            self.dropped += 1
            return None
        self.sent[verb] = self.sent.get(verb, 0) + 1
        return conn

    # -- the exchange --------------------------------------------------------------

    def _on_syn(self, msg: Message) -> None:
        p = msg.payload
        if not self._running or not isinstance(p, list) or len(p) != 2 or p[0] != self.cfg["cluster"]:
            return
        digests = p[1]
        if not isinstance(digests, list):
            return
        states: list[Any] = []
        requests: list[Any] = []
        endpoints = self.endpoints
        known = 0  # digests of endpoints we know: if fewer than ours, the sender lacks some
        for name, gen, maxv in zip(digests[0::3], digests[1::3], digests[2::3], strict=False):
            local = endpoints.get(name)
            if local is None:
                if name not in self._quarantine:
                    requests += (name, gen, 0)
                continue
            known += 1
            if local.generation == gen:
                if local.max_version > maxv:
                    states.append(local.wire(maxv))
                elif local.max_version < maxv:
                    requests += (name, gen, local.max_version)
            elif local.generation > gen:
                states.append(local.wire(0))
            else:
                requests += (name, gen, 0)
        if known < len(endpoints):
            seen = set(digests[0::3])
            states += [ep.wire(0) for n, ep in endpoints.items() if n not in seen]
        if states or requests:
            self._send(msg.conn, VERB_ACK, [states, requests])

    def _on_ack(self, msg: Message) -> None:
        conn = msg.conn
        pending = self._pending.get(conn.peer_name) or self._pending.get(conn.address)
        if pending:
            pending.popleft()
        p = msg.payload
        if not self._running or not isinstance(p, list) or len(p) != 2:
            return
        self._apply(p[0])
        requests = p[1]
        out = []
        for i in range(0, len(requests) - 2, 3):
            local = self.endpoints.get(requests[i])
            if local is None:
                continue
            from_version = requests[i + 2] if local.generation == requests[i + 1] else 0
            out.append(local.wire(from_version))
        if out:
            self._send(conn, VERB_ACK2, [out])

    def _on_ack2(self, msg: Message) -> None:
        p = msg.payload
        if self._running and isinstance(p, list) and len(p) == 1:
            self._apply(p[0])

    def _on_shutdown(self, msg: Message) -> None:
        p = msg.payload
        if not self._running or not isinstance(p, list) or len(p) != 2:
            return
        ep = self.endpoints.get(p[0])
        if ep is None or ep.generation != p[1]:
            return
        self._mark_shutdown(ep)

    def _mark_shutdown(self, ep: EndpointState) -> None:
        ep.states[STATUS] = (SHUTDOWN, FORCED_VERSION)
        ep.version = ep.max_version = ep.apps_version = FORCED_VERSION
        if ep.alive:
            self._mark_dead(ep, "shut down")
        self._notify("on_change", ep.name, STATUS, SHUTDOWN)

    def _apply(self, states: Any) -> None:
        """Apply remote endpoint states (Cassandra's ``applyStateLocally``)."""
        if not isinstance(states, list):
            return
        now = self.ms.loop.time()
        me, quarantine, endpoints = self.name, self._quarantine, self.endpoints
        for st in states:
            if not isinstance(st, list) or len(st) != 4:
                continue
            name, gen, hb, apps = st
            if name == me or not isinstance(name, str) or name in quarantine:
                continue
            local = endpoints.get(name)
            if local is None or gen > local.generation:
                self._major_change(name, gen, hb, apps, local, now)
                continue
            if gen != local.generation:
                continue
            beat = hb > local.version
            if beat:
                local.version = hb
                if hb > local.max_version:
                    local.max_version = hb
                self._report(name, now)
            changed = self._merge(local, apps) if apps else ()
            for key, value in changed:
                self._notify("on_change", name, key, value)
            # the status changes only with the states; an endpoint already
            # marked alive or dead keeps its mark until one of them changes
            if changed or (beat and not local.alive):
                if local.status in DEAD_STATES:
                    if local.alive:
                        self._mark_dead(local, f"status {local.status}")
                elif not local.alive:
                    self._echo(local)

    @staticmethod
    def _merge(ep: EndpointState, apps: Any) -> list[tuple[str, Any]]:
        changed = []
        for item in apps:
            key, value, ver = item
            cur = ep.states.get(key)
            if cur is None or ver > cur[1]:
                ep.states[key] = (value, ver)
                if ver > ep.max_version:
                    ep.max_version = ver
                if ver > ep.apps_version:
                    ep.apps_version = ver
                changed.append((key, value))
        return changed

    def _major_change(self, name: str, gen: int, hb: int, apps: Any, old: EndpointState | None,
                      now: float) -> None:
        ep = EndpointState(name, gen, hb)
        self._merge(ep, apps)
        ep.dead_since = now
        if old is not None:
            self._notify("on_restart", name, old)
            if old.alive:
                old.alive = False
                self.live.discard(name)
                self._view_changed()
            self._windows.pop(name, None)
        self.endpoints[name] = ep
        self._targets = None
        self._report(name, now)
        if old is None:
            self._notify("on_join", name, ep)
        for key, (value, _ver) in ep.states.items():
            self._notify("on_change", name, key, value)
        if ep.status not in DEAD_STATES:
            self._echo(ep)

    def _report(self, name: str, now: float) -> None:
        w = self._windows.get(name)
        if w is None:
            w = self._windows[name] = ArrivalWindow()
        # Cassandra: the first sample is the initial guess, and intervals
        # over the maximum (both twice the gossip interval) are ignored
        w.report(now, initial=2 * self.interval, max_interval=2 * self.interval)

    # -- alive / dead ----------------------------------------------------------------

    def _echo(self, ep: EndpointState) -> None:
        """Ask ``ep`` for ``gossip.echo``; mark it alive when it answers
        (one echo per endpoint at a time, in a task of its own)."""
        if ep.name in self._echoing or not self._running:
            return
        conn = self._connection(ep.name)
        if conn is None:
            return
        self._echoing.add(ep.name)
        task = self.ms._spawn(self._echo_task(ep, conn))
        del task

    async def _echo_task(self, ep: EndpointState, conn: Connection) -> None:
        try:
            reply = (await conn.request(VERB_ECHO, b"", timeout=max(2 * self.interval, 0.5))).payload
        except MsgrError as exc:
            log.debug("%s: no echo from %s: %s", self.name, ep.name, exc)
            return
        finally:
            self._echoing.discard(ep.name)
        current = self.endpoints.get(ep.name)
        if (self._running and current is ep and reply == ep.generation and not ep.alive
                and ep.status not in DEAD_STATES):
            self._mark_alive(ep)

    def _mark_alive(self, ep: EndpointState) -> None:
        was_dead = ep.dead_since is not None and ep.name in self._failed
        ep.alive = True
        ep.dead_since = None
        self.live.add(ep.name)
        self._targets = None
        self.ms.add_known_address(ep.name, ep.addrs)
        self._view_changed()
        self._notify("on_alive", ep.name, ep)
        if was_dead:
            self._failed.discard(ep.name)
            self._hook("msgr_peer_recovered", peer=ep.name)

    def _mark_dead(self, ep: EndpointState, reason: str) -> None:
        ep.alive = False
        ep.dead_since = self.ms.loop.time()
        self.live.discard(ep.name)
        self._targets = None
        self._failed.add(ep.name)
        log.info("%s: %s is down: %s", self.name, ep.name, reason)
        self._view_changed()
        self._notify("on_dead", ep.name, ep)
        self._hook("msgr_peer_failed", peer=ep.name, reason=reason)

    # -- off-round work: view, hooks, callbacks -----------------------------------------

    def _view_changed(self) -> None:
        if self.cfg["install_view"] and not self._view_due:
            self._view_due = True
            self.ms.loop.call_soon(self._install_view)

    def _install_view(self) -> None:
        self._view_due = False
        if self.ms.running:
            self.ms.install_view(self.live | {self.name})

    def _hook(self, hook_name: str, **kwargs: Any) -> None:
        def call() -> None:
            try:
                getattr(self.ms.hook, hook_name)(messenger=self.ms, **kwargs)
            except Exception:
                log.exception("%s hook raised", hook_name)

        self.ms.loop.call_soon(call)

    def _notify(self, event: str, *args: Any) -> None:
        if not self._subscribers:
            return
        self._events.append((event, args))
        if self._wake is not None:
            self._wake.set()

    async def _notify_loop(self) -> None:
        wake = self._wake
        if wake is None:
            return
        while True:
            await wake.wait()
            wake.clear()
            while self._events:
                event, args = self._events.popleft()
                for sub in list(self._subscribers):
                    fn: Callable[..., Any] | None = getattr(sub, event, None)
                    if fn is None:
                        continue
                    try:
                        result = fn(*args)
                        if inspect.isawaitable(result):
                            await result
                    except Exception:
                        log.exception("gossip subscriber %r failed in %s", sub, event)

