"""The Plumtree broadcast server of one messenger (Leitão et al., SRDS 2007,
in the production form of riak_core's ``riak_core_broadcast`` and Partisan's
``partisan_plumtree_broadcast``).

Every message travels as a oneway verb over the messenger:

``pt.broadcast``  ``[handler, msg_id, payload, hops, root]`` (eager push; the only *payload* message)
``pt.i_have``     ``[[handler, msg_id, hops, root], ...]`` (lazy push, batched per destination and lazy tick)
``pt.ignored``    ``[handler, msg_id, hops, root]`` (acknowledges an ``i_have`` for a message we have)
``pt.graft``      ``[handler, msg_id, hops, root]`` (asks for a missing message; the link becomes eager)
``pt.prune``      ``root`` (a duplicate arrived: the link becomes lazy for that root's tree)

and the request verb ``pt.peers`` (``root`` -> ``[eager, lazy]``) serves :meth:`Plumtree.get_tree`.

``hops`` is the number of hops the message has travelled when it reaches
the receiver (1 for the root's own neighbours): the paper's round, from
which LDH (the largest hop count of a delivery) is measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import math
import random
import zlib
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from msgr_core import Messenger
from msgr_core.errors import ConfigError, FrameTooLarge, MessengerError
from msgr_core.message import Message

__all__ = ["STALE", "BroadcastHandler", "Plumtree", "initial_counts", "overlay"]

log = logging.getLogger("msgr.plumtree")

V_BROADCAST = "pt.broadcast"
V_IHAVE = "pt.i_have"
V_IGNORED = "pt.ignored"
V_GRAFT = "pt.graft"
V_PRUNE = "pt.prune"
V_PEERS = "pt.peers"
V_TREE = "pt.tree"

#: The key of the one tree in ``eager_sets`` / ``lazy_sets`` with ``tree = "shared"``.
SHARED = "*"


class _Stale:
    """The type of :data:`STALE`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "STALE"


#: What a handler's ``graft`` returns when a newer message superseded the one asked for.
STALE = _Stale()


class BroadcastHandler(Protocol):
    """What an application registers with :meth:`Plumtree.register` (by name,
    the same name on every node).  ``msg_id`` must be msgpack-serialisable;
    lists arrive as tuples (ids are used as dict keys)."""

    def broadcast_data(self, message: Any) -> tuple[Any, Any]:
        """``(msg_id, payload)`` for a message being broadcast from this node."""
        ...

    def merge(self, msg_id: Any, payload: Any) -> bool:
        """Deliver a received message; ``False`` if it is stale (already
        seen, or superseded): the sender is then pruned."""
        ...

    def is_stale(self, msg_id: Any) -> bool:
        """``True`` if ``msg_id`` is already delivered (or superseded)."""
        ...

    def graft(self, msg_id: Any) -> Any:
        """The payload of ``msg_id`` for a peer that missed it; :data:`STALE`
        if superseded; raise if it cannot be served."""
        ...

    def exchange(self, peer: str) -> Any:
        """Anti-entropy with ``peer`` (may return an awaitable, which runs as
        a task; at most ``max_exchanges`` at once)."""
        ...


def _freeze(x: Any) -> Any:
    """A hashable form of a msgpack value (lists become tuples)."""
    if isinstance(x, list):
        return tuple(_freeze(i) for i in x)
    return x


def initial_counts(n: int) -> tuple[int, int]:
    """The number of initial eager and lazy peers in a cluster of ``n``
    members, as riak_core: 1: none; 2: the other; 3-4: 1 + 1; 5-9: 2 + 1;
    >= 10: round(ln n + 1) eager + 1 lazy."""
    if n <= 1:
        return 0, 0
    if n == 2:
        return 1, 0
    if n < 5:
        return 1, 1
    if n < 10:
        return 2, 1
    return round(math.log(n) + 1), 1


def overlay(members: Iterable[str], seed: int = 0) -> dict[str, tuple[set[str], set[str]]]:
    """See :func:`_overlay` (this returns a fresh copy of its cached result)."""
    got = _overlay(frozenset(members), seed)
    return {m: (set(e), set(lz)) for m, (e, lz) in got.items()}


@functools.lru_cache(maxsize=4)
def _overlay(members: frozenset[str], seed: int) -> dict[str, tuple[frozenset[str], frozenset[str]]]:
    """The initial symmetric overlay every node computes alike from the same
    membership: ``{member: (eager, lazy)}``.

    Members are shuffled by a seed derived from ``seed`` and the membership;
    a ring through them is eager (so the first broadcast reaches everyone
    by eager push alone and the eager links are connected), then random
    chords are added, eager until each node has :func:`initial_counts`'
    eager count where possible, then lazy ones up to the lazy count.  Links
    are symmetric (the paper's requirement for shared trees); for 3-4
    members the ring makes 2 eager links, not riak_core's 1, and leaves
    room for a lazy link only with 4.
    """
    names = sorted(set(members))
    n = len(names)
    out: dict[str, tuple[set[str], set[str]]] = {m: (set(), set()) for m in names}
    if n <= 1:
        return {m: (frozenset(), frozenset()) for m in out}
    rng = random.Random(seed * 1_000_003 + zlib.crc32("\0".join(names).encode()))
    order = names[:]
    rng.shuffle(order)
    e, lz = initial_counts(n)

    def link(a: str, b: str, eager: bool) -> None:
        out[a][0 if eager else 1].add(b)
        out[b][0 if eager else 1].add(a)

    if n == 2:
        link(order[0], order[1], True)
        return {m: (frozenset(e_), frozenset(l_)) for m, (e_, l_) in out.items()}
    for i, a in enumerate(order):
        link(a, order[(i + 1) % n], True)
    for idx, want in ((0, e), (1, lz)):
        for a in order:
            while len(out[a][idx]) < want:
                b = _chord(a, order, out, idx, want, rng)
                if b is None:
                    break
                link(a, b, idx == 0)
    return {m: (frozenset(e_), frozenset(l_)) for m, (e_, l_) in out.items()}


def _chord(a: str, order: list[str], out: dict[str, tuple[set[str], set[str]]], idx: int, want: int,
           rng: random.Random) -> str | None:
    """A random non-neighbour of ``a``, one short of ``want`` links of kind
    ``idx`` if possible (a few random draws, then a scan)."""

    def free(b: str) -> bool:
        return b != a and b not in out[a][0] and b not in out[a][1]

    for _ in range(16):
        b = order[rng.randrange(len(order))]
        if free(b) and len(out[b][idx]) < want:
            return b
    cands = [b for b in order if free(b) and len(out[b][idx]) < want] or [b for b in order if free(b)]
    return rng.choice(cands) if cands else None


class Plumtree:
    """One messenger's broadcast server (``messenger.extensions["plumtree"]``).

    Membership comes from the installed view (:meth:`update`, called from
    ``msgr_view_changed``) and the failure detectors' events
    (:meth:`neighbor_down` / :meth:`neighbor_up`).  Peers are entity names;
    the messenger must know their addresses.
    """

    def __init__(self, messenger: Messenger, *, lazy_tick_period: float = 1.0, exchange_tick_period: float = 10.0,
                 graft_mode: str = "partisan", graft_timeout: float = 0.5, graft_retry_timeout: float = 0.25,
                 max_exchanges: int = 1, seed: int = 0, tree: str = "per_root", eager_gossip_fanout: int = 0) -> None:
        if lazy_tick_period <= 0:
            raise ConfigError("plumtree.lazy_tick_period", lazy_tick_period, "a number > 0")
        if exchange_tick_period <= 0:
            raise ConfigError("plumtree.exchange_tick_period", exchange_tick_period, "a number > 0")
        if graft_mode not in ("partisan", "paper"):
            raise ConfigError("plumtree.graft_mode", graft_mode, '"partisan" or "paper"')
        if graft_timeout <= 0 or graft_retry_timeout <= 0:
            raise ConfigError("plumtree.graft_timeout", graft_timeout, "timeouts > 0")
        if tree not in ("per_root", "shared"):
            raise ConfigError("plumtree.tree", tree, '"per_root" or "shared"')
        if max_exchanges < 0:
            raise ConfigError("plumtree.max_exchanges", max_exchanges, "an integer >= 0")
        if eager_gossip_fanout < 0:
            raise ConfigError("plumtree.eager_gossip_fanout", eager_gossip_fanout, "an integer >= 0")
        self.messenger = messenger
        self.name = messenger.name
        self.lazy_tick_period = lazy_tick_period
        self.exchange_tick_period = exchange_tick_period
        self.graft_mode = graft_mode
        self.graft_timeout = graft_timeout
        self.graft_retry_timeout = graft_retry_timeout
        self.max_exchanges = max_exchanges
        self.seed = seed
        #: one tree for every sender (the paper) instead of one per root (riak_core, Partisan)
        self.shared_tree = tree == "shared"
        #: > 0: not Plumtree but the paper's baseline, eager push gossip: a new
        #: message goes to this many random members (never the sender), with no
        #: lazy push, prune or graft
        self.eager_gossip_fanout = eager_gossip_fanout
        self.rng = random.Random(seed * 7919 + zlib.crc32(self.name.encode()))
        self.handlers: dict[str, BroadcastHandler] = {}
        self.members: set[str] = set()  # every member but this node
        self.common_eagers: set[str] = set()
        self.common_lazys: set[str] = set()
        self.eager_sets: dict[str, set[str]] = {}
        self.lazy_sets: dict[str, set[str]] = {}
        # destination -> {(handler, msg_id, root): [handler, msg_id, hops, root]}
        self.outstanding: dict[str, dict[tuple[str, Any, str], list[Any]]] = {}
        # paper mode: (handler, msg_id) -> announcers [(peer, hops, root)], timer
        self._missing: dict[tuple[str, Any], list[tuple[str, int, str]]] = {}
        self._graft_timers: dict[tuple[str, Any], asyncio.TimerHandle] = {}
        self._exchanges: dict[str, asyncio.Task[Any]] = {}
        #: called as ``fn(handler, msg_id, hops, sender)`` for every message merged as new
        self.on_deliver: list[Callable[[str, Any, int, str], None]] = []
        #: called as ``fn(peer)`` when an outstanding ``i_have`` to ``peer`` was acknowledged
        self.on_ack: list[Callable[[str], None]] = []
        self.counters = {"payload_out": 0, "payload_in": 0, "i_have_out": 0, "i_have_entries_out": 0,
                         "ignored_out": 0, "graft_out": 0, "prune_out": 0, "delivered": 0,
                         "duplicates": 0, "send_failures": 0, "exchanges": 0}
        self._lazy_timer: asyncio.TimerHandle | None = None
        self._exchange_timer: asyncio.TimerHandle | None = None
        self._closed = False

    # -- lifecycle -------------------------------------------------------------

    def start(self, *, use_view: bool = True) -> None:
        """Register the verbs and start the lazy and exchange ticks
        (``use_view``: take the members from an installed view now)."""
        ms = self.messenger
        ms.register_handler_oneway(V_BROADCAST, self._on_broadcast)
        ms.register_handler_oneway(V_IHAVE, self._on_i_have)
        ms.register_handler_oneway(V_IGNORED, self._on_ignored)
        ms.register_handler_oneway(V_GRAFT, self._on_graft)
        ms.register_handler_oneway(V_PRUNE, self._on_prune)
        ms.register_handler(V_PEERS, lambda msg: self._peers_reply(msg.payload))
        ms.register_handler(V_TREE, self._tree_reply)
        loop = ms.loop
        self._lazy_timer = loop.call_later(self.lazy_tick_period, self._lazy_tick)
        self._exchange_timer = loop.call_later(self.exchange_tick_period, self._exchange_tick)
        if use_view and ms.view is not None:
            self.update(ms.view)

    def close(self) -> None:
        """Stop the ticks, graft timers and running exchanges."""
        self._closed = True
        for t in (self._lazy_timer, self._exchange_timer, *self._graft_timers.values()):
            if t is not None:
                t.cancel()
        self._graft_timers.clear()
        for task in self._exchanges.values():
            task.cancel()
        self._exchanges.clear()

    def register(self, name: str, handler: BroadcastHandler) -> None:
        """Handle broadcasts of handler ``name`` with ``handler`` (every node
        registers the same names)."""
        self.handlers[name] = handler

    # -- membership -------------------------------------------------------------

    def update(self, members: Iterable[str]) -> None:
        """Install the full membership (this node may be included).

        Departed members leave every set and the outstanding lists.  New
        members are linked as the initial overlay of the new membership
        says (:func:`overlay`); a node whose neighbours dropped below the
        initial counts takes lazy links from that overlay (the trees
        already repaired by grafts keep their shape).
        """
        new = set(members) - {self.name}
        gone = self.members - new
        added = new - self.members
        first = not self.members
        self.members = new
        for peer in gone:
            self._drop(peer)
        if not added and not gone:
            return
        plan = self._plan()
        e, lz = initial_counts(len(new) + 1)
        short = len(self.common_eagers) + len(self.common_lazys) < e + lz
        for peer in sorted(plan[0] | plan[1]):
            if first or peer in added:
                self._link(peer, eager=peer in plan[0])
            elif short and peer not in self.common_eagers and peer not in self.common_lazys:
                # a top-up after losses: lazy, so the repaired tree keeps its shape
                self._link(peer, eager=False)

    def _plan(self) -> tuple[frozenset[str], frozenset[str]]:
        """This node's links in the initial overlay of the current membership."""
        return _overlay(frozenset(self.members | {self.name}), self.seed).get(self.name, (frozenset(), frozenset()))

    def neighbor_down(self, peer: str) -> None:
        """A failure detector says ``peer`` failed: drop it from every tree."""
        if peer in self.members:
            self.members.discard(peer)
            self._drop(peer)
            e, lz = initial_counts(len(self.members) + 1)
            if len(self.common_eagers) + len(self.common_lazys) < e + lz:
                plan = self._plan()
                for p in sorted(plan[0] | plan[1]):
                    if p not in self.common_eagers and p not in self.common_lazys:
                        self._link(p, eager=False)

    def neighbor_up(self, peer: str) -> None:
        """``peer`` recovered: if it is in the view (or no view is installed),
        it is a member again and linked as an eager peer."""
        view = self.messenger.view
        if peer == self.name or peer in self.members or (view is not None and peer not in view):
            return
        self.members.add(peer)
        self._link(peer, eager=True)

    def add_neighbor(self, peer: str) -> None:
        """Peer sampling (HyParView) made ``peer`` a neighbour: it is a
        member and an eager peer of every tree (the paper's NeighborUp)."""
        if peer != self.name and peer not in self.members:
            self.members.add(peer)
            self._link(peer, eager=True)

    def remove_neighbor(self, peer: str) -> None:
        """Peer sampling dropped ``peer`` (the paper's NeighborDown)."""
        self.members.discard(peer)
        self._drop(peer)

    def _link(self, peer: str, *, eager: bool) -> None:
        (self.common_eagers if eager else self.common_lazys).add(peer)
        for root in self.eager_sets:
            if peer not in self.eager_sets[root] and peer not in self.lazy_sets[root]:
                (self.eager_sets[root] if eager else self.lazy_sets[root]).add(peer)

    def _drop(self, peer: str) -> None:
        self.common_eagers.discard(peer)
        self.common_lazys.discard(peer)
        for s in (*self.eager_sets.values(), *self.lazy_sets.values()):
            s.discard(peer)
        self.outstanding.pop(peer, None)
        self.eager_sets.pop(peer, None)
        self.lazy_sets.pop(peer, None)

    # -- introspection ---------------------------------------------------------------

    def get_peers(self, root: str | None = None) -> tuple[set[str], set[str]]:
        """``(eager, lazy)`` of this node for the tree rooted at ``root``
        (the shared defaults if ``root`` is ``None`` or never seen; the one
        tree whatever ``root`` with ``tree = "shared"``)."""
        if self.shared_tree and root is not None:
            root = SHARED
        if root is None or root not in self.eager_sets:
            return set(self.common_eagers), set(self.common_lazys)
        return set(self.eager_sets[root]), set(self.lazy_sets[root])

    def _peers_reply(self, root: Any) -> list[list[str]]:
        eager, lazy = self.get_peers(root if isinstance(root, str) else None)
        return [sorted(eager), sorted(lazy)]

    async def _tree_reply(self, msg: Message) -> dict[str, Any]:
        """``pt.tree`` (``msgr plumtree tree``): ``root`` -> :meth:`get_tree`
        as ``{"root": ..., "node": ..., "tree": {node: [eager, lazy] | "down"}}``."""
        root = msg.payload if isinstance(msg.payload, str) and msg.payload else self.name
        tree = await self.get_tree(root, timeout=3.0)
        return {"root": root, "node": self.name,
                "tree": {n: (v if isinstance(v, str) else [sorted(v[0]), sorted(v[1])]) for n, v in tree.items()}}

    async def get_tree(self, root: str, *, timeout: float = 5.0) -> dict[str, tuple[set[str], set[str]] | str]:
        """The tree rooted at ``root`` as every member sees it:
        ``{node: (eager, lazy)}``, or ``"down"`` for a member that did not
        answer within ``timeout``."""
        out: dict[str, tuple[set[str], set[str]] | str] = {self.name: self.get_peers(root)}

        async def ask(peer: str) -> None:
            try:
                e, lz = await self.messenger.send_message(V_PEERS, peer, root, timeout=timeout)
                out[peer] = (set(e), set(lz))
            except Exception:
                out[peer] = "down"

        await asyncio.gather(*(ask(p) for p in sorted(self.members)))
        return out

    def stats(self) -> dict[str, Any]:
        """Counters, set sizes and outstanding lazy pushes."""
        return {**self.counters, "members": len(self.members), "eager": len(self.common_eagers),
                "lazy": len(self.common_lazys), "trees": len(self.eager_sets),
                "outstanding": sum(len(v) for v in self.outstanding.values()),
                "exchanges_running": len(self._exchanges)}

    # -- broadcasting ------------------------------------------------------------------

    def broadcast(self, handler_name: str, message: Any) -> Any:
        """Broadcast ``message`` through handler ``handler_name`` from this
        node (the root).  The handler's ``broadcast_data`` gives the id and
        payload; the message is *not* merged locally (the caller has it).
        Delivered at least once to every live member reachable through the
        overlay (eager push, lazy ``i_have`` plus graft, and anti-entropy).

        :returns: the message id.
        :raises KeyError: no handler of that name is registered.
        """
        handler = self.handlers[handler_name]
        msg_id, payload = handler.broadcast_data(message)
        msg_id = _freeze(msg_id)
        self._eager_push(handler_name, msg_id, payload, 1, self.name, self.name)
        self._schedule_lazy(handler_name, msg_id, 1, self.name, self.name)
        return msg_id

    def _ensure_root(self, root: str) -> tuple[set[str], set[str]]:
        if self.shared_tree:
            root = SHARED
        eager = self.eager_sets.get(root)
        if eager is None:
            eager = self.eager_sets[root] = set(self.common_eagers)
            self.lazy_sets[root] = set(self.common_lazys)
        return eager, self.lazy_sets[root]

    def _add_eager(self, peer: str, root: str) -> None:
        if peer not in self.members:
            return
        eager, lazy = self._ensure_root(root)
        eager.add(peer)
        lazy.discard(peer)

    def _add_lazy(self, peer: str, root: str) -> None:
        if peer not in self.members:
            return
        eager, lazy = self._ensure_root(root)
        lazy.add(peer)
        eager.discard(peer)

    def _send(self, verb: str, peer: str, payload: Any) -> bool:
        try:
            self.messenger.get_connection(peer).send_nowait(verb, payload)
            return True
        except (MessengerError, FrameTooLarge) as exc:
            self.counters["send_failures"] += 1
            log.debug("%s: %s to %s not sent: %s", self.name, verb, peer, exc)
            return False

    def _eager_push(self, hname: str, msg_id: Any, payload: Any, hops: int, root: str, sender: str) -> None:
        frame = [hname, msg_id, payload, hops, root]
        if self.eager_gossip_fanout:
            members = sorted(self.members - {sender})
            for peer in self.rng.sample(members, min(self.eager_gossip_fanout, len(members))):
                if self._send(V_BROADCAST, peer, frame):
                    self.counters["payload_out"] += 1
            return
        eager, _ = self._ensure_root(root)
        for peer in sorted(eager):  # sorted: runs are reproducible whatever the hash seed
            if peer != sender and peer != root and self._send(V_BROADCAST, peer, frame):
                self.counters["payload_out"] += 1

    def _schedule_lazy(self, hname: str, msg_id: Any, hops: int, root: str, sender: str) -> None:
        if self.eager_gossip_fanout:
            return
        _, lazy = self._ensure_root(root)
        entry = [hname, msg_id, hops, root]
        key = (hname, msg_id, root)
        for peer in sorted(lazy):
            if peer != sender and peer != root:
                self.outstanding.setdefault(peer, {})[key] = entry

    # -- receiving ------------------------------------------------------------------------

    def _on_broadcast(self, msg: Message) -> None:
        sender = msg.peer
        hname, msg_id, payload, hops, root = msg.payload
        msg_id = _freeze(msg_id)
        self.counters["payload_in"] += 1
        handler = self.handlers.get(hname)
        if handler is None:
            log.warning("%s: broadcast for unknown handler %r from %s", self.name, hname, sender)
            return
        self._cancel_graft(hname, msg_id)
        if handler.merge(msg_id, payload):
            self.counters["delivered"] += 1
            for fn in self.on_deliver:
                fn(hname, msg_id, hops, sender)
            self._add_eager(sender, root)
            self._eager_push(hname, msg_id, payload, hops + 1, root, sender)
            self._schedule_lazy(hname, msg_id, hops + 1, root, sender)
        else:
            self.counters["duplicates"] += 1
            if self.eager_gossip_fanout:
                return  # eager gossip: duplicates are its cost, not a signal
            self._add_lazy(sender, root)
            if self._send(V_PRUNE, sender, root):
                self.counters["prune_out"] += 1

    def _on_prune(self, msg: Message) -> None:
        root = msg.payload
        if isinstance(root, str):
            self._add_lazy(msg.peer, root)

    def _on_i_have(self, msg: Message) -> None:
        sender = msg.peer
        for hname, msg_id, hops, root in msg.payload:
            msg_id = _freeze(msg_id)
            handler = self.handlers.get(hname)
            if handler is None:
                continue
            if handler.is_stale(msg_id):
                if self._send(V_IGNORED, sender, [hname, msg_id, hops, root]):
                    self.counters["ignored_out"] += 1
            elif self.graft_mode == "partisan":
                self._send_graft(sender, hname, msg_id, hops, root)
            else:
                key = (hname, msg_id)
                self._missing.setdefault(key, []).append((sender, hops, root))
                if key not in self._graft_timers:
                    self._graft_timers[key] = self.messenger.loop.call_later(
                        self.graft_timeout, self._graft_timer, key)

    def _send_graft(self, peer: str, hname: str, msg_id: Any, hops: int, root: str) -> None:
        if self._send(V_GRAFT, peer, [hname, msg_id, hops, root]):
            self.counters["graft_out"] += 1
        self._add_eager(peer, root)

    def _graft_timer(self, key: tuple[str, Any]) -> None:
        """Paper mode: the message announced by ``i_have`` did not arrive in
        time: graft it from the first announcer, and try the next one after
        ``graft_retry_timeout``."""
        self._graft_timers.pop(key, None)
        announcers = self._missing.get(key)
        if self._closed or not announcers:
            self._missing.pop(key, None)
            return
        handler = self.handlers.get(key[0])
        if handler is None or handler.is_stale(key[1]):
            self._missing.pop(key, None)
            return
        peer, hops, root = announcers.pop(0)
        self._send_graft(peer, key[0], key[1], hops, root)
        if not announcers:
            self._missing.pop(key, None)
        else:
            self._graft_timers[key] = self.messenger.loop.call_later(
                self.graft_retry_timeout, self._graft_timer, key)

    def _cancel_graft(self, hname: str, msg_id: Any) -> None:
        key = (hname, msg_id)
        if self._missing.pop(key, None) is not None:
            t = self._graft_timers.pop(key, None)
            if t is not None:
                t.cancel()

    def _on_ignored(self, msg: Message) -> None:
        hname, msg_id, _hops, root = msg.payload
        self._ack_outstanding(msg.peer, hname, _freeze(msg_id), root)

    def _ack_outstanding(self, peer: str, hname: str, msg_id: Any, root: str) -> None:
        pending = self.outstanding.get(peer)
        if pending is not None and pending.pop((hname, msg_id, root), None) is not None:
            if not pending:
                del self.outstanding[peer]
            for fn in self.on_ack:
                fn(peer)

    def _on_graft(self, msg: Message) -> None:
        sender = msg.peer
        hname, msg_id, hops, root = msg.payload
        msg_id = _freeze(msg_id)
        handler = self.handlers.get(hname)
        if handler is None:
            return
        try:
            result = handler.graft(msg_id)
        except Exception as exc:
            log.warning("%s: graft of %r for %s failed: %s", self.name, msg_id, sender, exc)
            return
        if result is STALE:
            # a newer message superseded it; its own outstanding entry stands
            self._ack_outstanding(sender, hname, msg_id, root)
            return
        # not acked here: the i_have is sent once more and its ignore is the ack
        self._add_eager(sender, root)
        if self._send(V_BROADCAST, sender, [hname, msg_id, result, hops, root]):
            self.counters["payload_out"] += 1

    # -- ticks ----------------------------------------------------------------------------

    def _lazy_tick(self) -> None:
        """Every ``lazy_tick_period``: send every outstanding ``i_have``,
        one message per destination (kept until acknowledged)."""
        if self._closed:
            return
        self.flush_lazy()
        self._lazy_timer = self.messenger.loop.call_later(self.lazy_tick_period, self._lazy_tick)

    def flush_lazy(self) -> None:
        """Send the outstanding ``i_have`` entries now."""
        for peer, pending in list(self.outstanding.items()):
            if peer not in self.members:
                del self.outstanding[peer]
                continue
            if pending and self._send(V_IHAVE, peer, list(pending.values())):
                self.counters["i_have_out"] += 1
                self.counters["i_have_entries_out"] += len(pending)

    def _exchange_tick(self) -> None:
        if self._closed:
            return
        try:
            self.exchange_now()
        finally:
            self._exchange_timer = self.messenger.loop.call_later(self.exchange_tick_period, self._exchange_tick)

    def exchange_now(self, peer: str | None = None) -> list[str]:
        """Start anti-entropy exchanges (every handler with ``exchange``)
        with ``peer`` or a random member (favouring members outside the
        eager and lazy sets), unless ``max_exchanges`` are running.

        :returns: the handler names an exchange was started for.
        """
        if len(self._exchanges) >= self.max_exchanges or not self.members:
            return []
        if peer is None:
            others = sorted(self.members - self.common_eagers - self.common_lazys)
            peer = self.rng.choice(others or sorted(self.members))
        started = []
        for hname, handler in self.handlers.items():
            fn = getattr(handler, "exchange", None)
            if fn is None or len(self._exchanges) >= self.max_exchanges:
                continue
            key = f"{hname}@{peer}"
            if key in self._exchanges:
                continue
            self.counters["exchanges"] += 1
            started.append(hname)
            # the handler is called inside the task: a task cancelled before
            # it runs leaves no coroutine behind that was never awaited
            task = self.messenger.loop.create_task(self._run_exchange(hname, fn, peer))
            self._exchanges[key] = task
            task.add_done_callback(lambda _t, k=key: self._exchanges.pop(k, None))
        return started

    async def _run_exchange(self, hname: str, fn: Callable[[str], Any], peer: str) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            try:
                result = fn(peer)
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                log.info("%s: exchange %s with %s failed: %s", self.name, hname, peer, exc)
