"""The simulated network behind ``loop://`` links.

A :class:`SimNetwork` belongs to one event loop.  Every
:class:`~msgr_loopback.transport.LoopTransport` of that loop that names the
same network (config ``[loop] network``, default ``"default"``) shares it:
its listener names are the addresses ``loop://name`` resolves to, and its
rules shape every frame that crosses it.

Nodes
    Rules are set between *nodes*.  A transport's node name is its config
    ``[loop] node`` when set, otherwise the name of its first listener,
    otherwise (a transport that connects before it listens) a generated
    ``node-N``.  Wherever a method takes a node name, the name of one of the
    node's listeners (or a ``loop://`` address) is accepted too.

What the network can do to traffic (all per *ordered* pair of nodes, with
``None`` as a wildcard):

- **delay** frames by a fixed time plus uniform random jitter; a frame
  never overtakes an earlier frame of the same link, so jitter delays but
  never reorders;
- **drop** a frame with some probability.  A link is reliable while it is
  up (the transport contract), so a dropped frame is never lost silently:
  the link breaks when that frame would have arrived; frames sent before
  it arrive, it and everything after it are lost, and both ends get
  ``link_lost(LinkClosed("... dropped by simulated network ..."))`` — the
  same thing TCP reports after it gives up retransmitting;
- **partition** groups of nodes: links across the cut break at once, and
  connecting across it raises ``OSError(EHOSTUNREACH)`` until :meth:`heal`;
- **kill** the links between two nodes, or a whole node (its links break,
  its listeners go away, and it cannot listen, connect or be reached until
  :meth:`~SimNetwork.revive_node`);
- **stall** a node: frames to it are held, not delivered, so the sending
  side's buffered bytes grow and back-pressure (``pause_writing``) builds —
  a peer that stopped reading.

Only ``loop.call_soon`` / ``loop.call_at`` drive it (no threads, no wall
clock, no task per link or per frame), so it runs unchanged under virtual
time (``looptime``) with thousands of nodes in one process.  Randomness
(jitter, drops) comes from one :class:`random.Random` per network, seeded
with ``0`` unless :meth:`SimNetwork.reseed` says otherwise: a simulation is
reproducible as long as its own scheduling is.
"""

from __future__ import annotations

import asyncio
import errno
import random
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple, TypeVar

if TYPE_CHECKING:
    from .transport import LoopLink, LoopListener

__all__ = ["NetworkStats", "PairStats", "PathRules", "SimNetwork", "get_network"]

SCHEME_PREFIX = "loop://"

_Key = tuple[str | None, str | None]
_T = TypeVar("_T")


@dataclass(slots=True)
class PairStats:
    """Traffic from one node to another (live counters).

    :ivar frames: frames delivered.
    :ivar bytes: payload bytes delivered.
    :ivar dropped: frames the network dropped (each broke its link).
    """

    frames: int = 0
    bytes: int = 0
    dropped: int = 0


@dataclass(slots=True)
class NetworkStats:
    """Counters of a :class:`SimNetwork` (live; read them any time).

    :ivar links_made: links established.
    :ivar links_closed: links ended by ``close``/``abort`` of one end.
    :ivar links_broken: links broken by the network (drop, partition,
        kill) or by a failing handler.
    :ivar connects_refused: connects that raised (nothing listening,
        partitioned, node down, timed out).
    :ivar frames_sent: frames accepted by ``Link.send``.
    :ivar frames_delivered: frames handed to a receiver.
    :ivar bytes_delivered: payload bytes handed to a receiver.
    :ivar frames_dropped: frames dropped (see :meth:`SimNetwork.set_drop`).
    :ivar pairs: per ordered ``(src_node, dst_node)`` pair.
    """

    links_made: int = 0
    links_closed: int = 0
    links_broken: int = 0
    connects_refused: int = 0
    frames_sent: int = 0
    frames_delivered: int = 0
    bytes_delivered: int = 0
    frames_dropped: int = 0
    pairs: dict[tuple[str, str], PairStats] = field(default_factory=dict)


class PathRules(NamedTuple):
    """The rules in force from one node to another (see :meth:`SimNetwork.path`)."""

    delay: float
    jitter: float
    drop: float
    partitioned: bool


def _name(name: str) -> str:
    return name[len(SCHEME_PREFIX) :] if name.startswith(SCHEME_PREFIX) else name


class SimNetwork:
    """A simulated network for the ``loop://`` links of one event loop.

    Get the shared one with :func:`get_network`; a network made directly is
    used by transports that receive it as ``settings["network"]``.

    Every control method acts at once: links it breaks get ``link_lost``
    (scheduled, never from inside the call), and rules apply to frames sent
    from then on (frames already in flight keep the delay they were given).

    :param loop: the event loop the network belongs to (default: the
        running loop).
    :param seed: seed of the network's random generator (jitter, drops).
    :param name: a label for ``repr`` and error messages.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        seed: int | None = 0,
        name: str = "",
    ) -> None:
        self.loop = loop if loop is not None else asyncio.get_running_loop()
        self.name = name
        self.stats = NetworkStats()
        self._rng = random.Random(seed)
        # rules: (src, dst) with None as wildcard -> value
        self._delay: dict[_Key, tuple[float, float]] = {}
        self._drop: dict[_Key, float] = {}
        self._partitions: list[tuple[frozenset[str], frozenset[str] | None]] = []
        self._version = 0  # bumped on every rule change; links re-read rules lazily
        self._listeners: dict[str, LoopListener] = {}
        self._nodes: set[str] = set()
        self._down: set[str] = set()
        self._stalled: set[str] = set()
        self._links: dict[str, set[LoopLink]] = {}  # node -> its live link ends
        self._counter = 0

    def __repr__(self) -> str:
        label = f" {self.name!r}" if self.name else ""
        return f"<SimNetwork{label} listeners={len(self._listeners)} links={sum(map(len, self._links.values())) // 2}>"

    # -- randomness -------------------------------------------------------

    def reseed(self, seed: int | None) -> None:
        """Restart the random generator (jitter and drops) from ``seed``."""
        self._rng.seed(seed)

    # -- rules --------------------------------------------------------------

    def set_delay(
        self,
        a: str | None,
        b: str | None,
        seconds: float,
        jitter: float = 0.0,
        *,
        one_way: bool = False,
    ) -> None:
        """Delay frames between ``a`` and ``b`` by ``seconds`` plus a uniform
        random ``[0, jitter)``.

        ``None`` for either node matches every node (``set_delay(None, None,
        0.001)`` sets the default).  Both directions are set unless
        ``one_way`` (then only ``a -> b``).  The most specific rule wins:
        ``(a, b)``, then ``(a, *)``, then ``(*, b)``, then ``(*, *)``.
        Connecting also takes one round trip (without jitter).

        :raises ValueError: a negative time.
        """
        if seconds < 0 or jitter < 0:
            raise ValueError(f"delay and jitter must be >= 0, got {seconds!r}, {jitter!r}")
        value = (float(seconds), float(jitter))
        for key in self._keys(a, b, one_way):
            self._delay[key] = value
        self._version += 1

    def set_drop(self, a: str | None, b: str | None, probability: float, *, one_way: bool = False) -> None:
        """Drop each frame between ``a`` and ``b`` with ``probability``.

        A dropped frame breaks its link (see the module docstring): nothing
        is ever lost silently on a link that stays up.  Wildcards and
        precedence as in :meth:`set_delay`.

        :raises ValueError: ``probability`` outside ``[0, 1]``.
        """
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"drop probability must be in [0, 1], got {probability!r}")
        for key in self._keys(a, b, one_way):
            self._drop[key] = float(probability)
        self._version += 1

    def clear_rules(self) -> None:
        """Remove every delay and drop rule (partitions, stalls and dead
        nodes stay; see :meth:`heal`, :meth:`unstall`, :meth:`revive_node`)."""
        self._delay.clear()
        self._drop.clear()
        self._version += 1

    def path(self, a: str, b: str) -> PathRules:
        """The rules that apply to frames from ``a`` to ``b`` now."""
        src, dst = self.node_of(a), self.node_of(b)
        delay, jitter, drop = self._rules(src, dst)
        return PathRules(delay, jitter, drop, self._blocked(src, dst))

    # -- partitions -----------------------------------------------------------

    def partition(self, group_a: Iterable[str], group_b: Iterable[str] | None = None) -> int:
        """Cut ``group_a`` off from ``group_b`` (default: from every other node).

        Links across the cut break now with :class:`~msgr_core.errors.LinkClosed`; connects
        across it raise ``OSError(EHOSTUNREACH)`` until :meth:`heal`.
        Partitions add up: several may be in force.

        :returns: the number of links broken.
        """
        side_a = frozenset(self.node_of(n) for n in group_a)
        side_b = None if group_b is None else frozenset(self.node_of(n) for n in group_b)
        self._partitions.append((side_a, side_b))
        self._version += 1
        broken = 0
        for node in side_a:
            for end in list(self._links.get(node, ())):
                other = end.peer.node
                if (other not in side_a) if side_b is None else (other in side_b):
                    end._fail(f"partitioned from {other} by simulated network")
                    broken += 1
        return broken

    def heal(self) -> None:
        """Remove every partition (links broken by them stay broken)."""
        self._partitions.clear()
        self._version += 1

    # -- killing ----------------------------------------------------------------

    def kill_link(self, a: str, b: str) -> int:
        """Break every link between nodes ``a`` and ``b`` (both ends get
        :class:`~msgr_core.errors.LinkClosed`).  New connects are not affected.

        :returns: the number of links broken.
        """
        src, dst = self.node_of(a), self.node_of(b)
        broken = 0
        for end in list(self._links.get(src, ())):
            if end.peer.node == dst and not end._ended:
                end._fail(f"link {src} <-> {dst} killed by simulated network")
                broken += 1
        return broken

    def kill_node(self, name: str) -> int:
        """Crash a node: break all its links, close its listeners, and keep it
        down (no listen, connect or incoming connect) until
        :meth:`revive_node`.

        :returns: the number of links broken.
        """
        node = self.node_of(name)
        self._down.add(node)
        for listener in [lst for lst in self._listeners.values() if lst.node == node]:
            listener._closed = True
            del self._listeners[listener.name]
        broken = 0
        for end in list(self._links.get(node, ())):
            if not end._ended:
                end._fail(f"node {node} killed by simulated network")
                broken += 1
        return broken

    def revive_node(self, name: str) -> None:
        """Let a node killed by :meth:`kill_node` listen and connect again
        (its listeners are not reopened: the "restarted" node listens anew)."""
        self._down.discard(self.node_of(name))

    def is_down(self, name: str) -> bool:
        """True while the node is killed."""
        return self.node_of(name) in self._down

    # -- stalling ---------------------------------------------------------------

    def stall(self, name: str) -> None:
        """Stop delivering frames *to* a node (it stops reading); they wait in
        the senders' links, whose buffered bytes grow until
        ``pause_writing``.  The node still sends and accepts links."""
        self._stalled.add(self.node_of(name))

    def unstall(self, name: str) -> None:
        """Deliver what a stalled node was sent, in order, and resume."""
        node = self.node_of(name)
        if node not in self._stalled:
            return
        self._stalled.discard(node)
        for end in list(self._links.get(node, ())):
            end.peer._kick()

    def is_stalled(self, name: str) -> bool:
        """True while the node is stalled."""
        return self.node_of(name) in self._stalled

    # -- introspection ------------------------------------------------------------

    def node_of(self, name: str) -> str:
        """The node a name means: a node name as is, a listener name (or
        ``loop://`` address) as the node that listens there."""
        name = _name(name)
        if name in self._nodes:
            return name
        listener = self._listeners.get(name)
        return listener.node if listener is not None else name

    def listeners(self) -> list[str]:
        """The listening addresses, sorted."""
        return sorted(SCHEME_PREFIX + n for n in self._listeners)

    def links(self, name: str | None = None) -> list[LoopLink]:
        """The live link ends of a node (both ends of every link if ``None``)."""
        if name is None:
            return [end for ends in self._links.values() for end in ends]
        return list(self._links.get(self.node_of(name), ()))

    def pair_stats(self, a: str, b: str) -> PairStats:
        """Traffic counters from node ``a`` to node ``b``."""
        return self._pair(self.node_of(a), self.node_of(b))

    # -- used by the transport -------------------------------------------------------

    def _keys(self, a: str | None, b: str | None, one_way: bool) -> Iterator[_Key]:
        src = None if a is None else self.node_of(a)
        dst = None if b is None else self.node_of(b)
        yield (src, dst)
        if not one_way:
            yield (dst, src)

    def _rules(self, src: str, dst: str) -> tuple[float, float, float]:
        delay, jitter = self._lookup(self._delay, src, dst, (0.0, 0.0))
        return delay, jitter, self._lookup(self._drop, src, dst, 0.0)

    @staticmethod
    def _lookup(table: dict[_Key, _T], src: str, dst: str, default: _T) -> _T:
        if not table:
            return default
        for key in ((src, dst), (src, None), (None, dst), (None, None)):
            value = table.get(key)
            if value is not None:
                return value
        return default

    def _blocked(self, a: str, b: str) -> bool:
        for side_a, side_b in self._partitions:
            if side_b is None:
                if (a in side_a) != (b in side_a):
                    return True
            elif (a in side_a and b in side_b) or (b in side_a and a in side_b):
                return True
        return False

    def _pair(self, src: str, dst: str) -> PairStats:
        stats = self.stats.pairs.get((src, dst))
        if stats is None:
            stats = self.stats.pairs[(src, dst)] = PairStats()
        return stats

    def _unique(self, prefix: str) -> str:
        while True:
            self._counter += 1
            name = f"{prefix}-{self._counter}"
            if name not in self._nodes and name not in self._listeners:
                return name

    def _reachable(self, src: str, name: str) -> LoopListener:
        """The listener ``src`` may connect to at ``name``, or the OSError."""
        if src in self._down:
            raise OSError(errno.ENETDOWN, f"node {src} is down (SimNetwork.kill_node)")
        listener = self._listeners.get(name)
        if listener is None:
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"nothing listens at {SCHEME_PREFIX}{name}")
        if self._partitions and self._blocked(src, listener.node):
            raise OSError(
                errno.EHOSTUNREACH,
                f"{SCHEME_PREFIX}{name} is unreachable from {src}: partitioned by simulated network",
            )
        return listener

    def _add_link(self, end: LoopLink) -> None:
        ends = self._links.get(end.node)
        if ends is None:
            ends = self._links[end.node] = set()
        ends.add(end)

    def _forget_link(self, end: LoopLink) -> None:
        ends = self._links.get(end.node)
        if ends is not None:
            ends.discard(end)
            if not ends:
                del self._links[end.node]


_networks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, SimNetwork]] = weakref.WeakKeyDictionary()


def get_network(name: str = "default", *, loop: asyncio.AbstractEventLoop | None = None) -> SimNetwork:
    """The network called ``name`` of ``loop`` (default: the running loop),
    made on first use; this is what ``[loop] network = "<name>"`` selects.

    :raises RuntimeError: no ``loop`` given and no loop is running.
    """
    if loop is None:
        loop = asyncio.get_running_loop()
    per_loop = _networks.get(loop)
    if per_loop is None:
        per_loop = _networks[loop] = {}
    net = per_loop.get(name)
    if net is None:
        net = per_loop[name] = SimNetwork(loop, name=name)
    return net
