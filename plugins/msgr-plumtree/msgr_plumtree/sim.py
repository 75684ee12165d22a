"""Plumtree simulation: N messengers over ``loop://`` in one process, under
virtual time, with the paper's metrics.

Metrics, as Leitão et al. define them, per broadcast:

- *reliability*: the fraction of live nodes that deliver the message (the
  root counts as delivering it);
- *RMR* (relative message redundancy): ``m / (n - 1) - 1``, where ``m`` is
  the number of **payload** messages sent (``pt.broadcast``, eager pushes
  and graft answers; not ``i_have``/``graft``/``prune``/``ignored``) while
  the broadcast runs, and ``n`` the number of nodes that delivered it;
  0 means every node got it exactly once;
- *LDH* (last delivery hop): the largest hop count of a delivery.

A broadcast's window ends when every live node has it and no node still
has an outstanding ``i_have`` (every lazy push was acknowledged), or at
its guard timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from dataclasses import dataclass, field
from typing import Any

from msgr_core import Messenger
from msgr_core.config import Config
from msgr_core.registry import PluginSet

from .log import MessageLog
from .plumtree import Plumtree

__all__ = ["BroadcastResult", "Cluster", "make_cluster"]

_net_ids = itertools.count()


@dataclass
class BroadcastResult:
    """The metrics of one broadcast."""

    msg_id: Any
    root: str
    live: int
    delivered: int
    payload_msgs: int
    ldh: int
    grafts: int
    duration: float

    @property
    def reliability(self) -> float:
        return self.delivered / self.live if self.live else 1.0

    @property
    def rmr(self) -> float:
        return self.payload_msgs / (self.delivered - 1) - 1 if self.delivered > 1 else 0.0


@dataclass
class Cluster:
    """Simulated Plumtree nodes ``n0 ..`` of one network (see :func:`make_cluster`)."""

    loop: asyncio.AbstractEventLoop
    network: Any
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    nodes: dict[str, Messenger] = field(default_factory=dict)
    logs: dict[str, MessageLog] = field(default_factory=dict)
    hops: dict[Any, dict[str, int]] = field(default_factory=dict)
    parents: dict[Any, dict[str, str]] = field(default_factory=dict)
    plugins: PluginSet = field(default_factory=PluginSet)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def pt(self, name: str) -> Plumtree:
        p = self.nodes[name].extensions["plumtree"]
        if not isinstance(p, Plumtree):
            raise TypeError(f"{name} has no plumtree")
        return p

    def live(self) -> list[str]:
        return [n for n, ms in self.nodes.items() if ms.running]

    async def start_node(self, name: str) -> Messenger:
        self.network.revive_node(name)
        ms = Messenger(Config(self.configs[name]), plugins=self.plugins)
        await ms.start()
        self.nodes[name] = ms
        log = self.logs[name] = MessageLog(self.pt(name))
        log.on_new.append(lambda _i, _p: self._changed.set())

        def hop(_h: str, msg_id: Any, hops: int, sender: str, name: str = name) -> None:
            self.hops.setdefault(msg_id, {})[name] = hops
            self.parents.setdefault(msg_id, {})[name] = sender

        self.pt(name).on_deliver.append(hop)
        self.pt(name).on_ack.append(lambda _p: self._changed.set())
        return ms

    def install_view(self, members: list[str] | None = None) -> None:
        """Install ``members`` (default: the live nodes) as the view on every live node."""
        members = self.live() if members is None else members
        for n in self.live():
            self.nodes[n].install_view(members)

    async def crash(self, name: str) -> None:
        """Kill ``name`` as a crash would (links break, nothing said)."""
        self.network.kill_node(name)
        await self.nodes[name].abort()

    def children(self, msg_id: Any) -> dict[str, list[str]]:
        """``{node: [nodes that delivered msg_id from it]}`` (the delivery tree)."""
        out: dict[str, list[str]] = {}
        for node, parent in self.parents.get(msg_id, {}).items():
            out.setdefault(parent, []).append(node)
        return out

    def active_views(self) -> dict[str, set[str]]:
        """HyParView's active view of every live node."""
        return {n: set(self.nodes[n].extensions["hyparview"].active) for n in self.live()}

    def payload_total(self) -> int:
        return sum(self.pt(n).counters["payload_out"] for n in self.nodes)

    def graft_total(self) -> int:
        return sum(self.pt(n).counters["graft_out"] for n in self.nodes)

    def missing(self, msg_id: Any, among: list[str] | None = None) -> list[str]:
        return [n for n in (self.live() if among is None else among) if msg_id not in self.logs[n].messages]

    def outstanding(self) -> int:
        live = set(self.live())
        return sum(len(v) for n in live for p, v in self.pt(n).outstanding.items() if p in live)

    async def wait(self, predicate: Any, timeout: float) -> None:
        """Wait (virtual time) until ``predicate()`` holds; :raises TimeoutError:."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def broadcast(self, root: str, payload: Any = b"x", *, guard: float = 60.0,
                        among: list[str] | None = None) -> BroadcastResult:
        """Broadcast from ``root`` and measure it (see the module docs).
        ``among``: the nodes expected to deliver (default: the live ones)."""
        start = self.loop.time()
        m0, g0 = self.payload_total(), self.graft_total()
        msg_id = self.logs[root].broadcast(payload)
        expect = self.live() if among is None else among
        with contextlib.suppress(TimeoutError):
            await self.wait(lambda: not self.missing(msg_id, expect), guard)
        duration = self.loop.time() - start
        # the window ends when every lazy push to a live node was acknowledged
        with contextlib.suppress(TimeoutError):
            await self.wait(lambda: not self.outstanding(), guard)
        delivered = len(expect) - len(self.missing(msg_id, expect))
        hops = self.hops.get(msg_id, {})
        return BroadcastResult(msg_id, root, len(expect), delivered, self.payload_total() - m0,
                               max(hops.values(), default=0), self.graft_total() - g0, duration)

    async def stop(self) -> None:
        for ms in self.nodes.values():
            pt = ms.extensions.get("plumtree")
            if isinstance(pt, Plumtree):
                pt.close()
        for ms in self.nodes.values():
            if ms.running:
                await ms.abort()


async def make_cluster(nodes: int, *, seed: int = 0, delay: float = 0.001, jitter: float = 0.0,
                       plumtree: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> Cluster:
    """Start ``nodes`` messengers ``n0 ..`` with msgr-plumtree on a fresh
    ``SimNetwork`` of the running loop; every node knows every address and
    has the full view installed; with ``peer_sampling = "hyparview"``
    every node but ``n0`` joins through ``loop://n0`` instead (no view)."""
    from msgr_loopback import get_network

    loop = asyncio.get_running_loop()
    net_name = f"plumtree-sim-{next(_net_ids)}"
    net = get_network(net_name)
    net.reseed(seed)
    net.set_delay(None, None, delay, jitter=jitter)
    cluster = Cluster(loop, net)
    names = [f"n{i}" for i in range(nodes)]
    for name in names:
        cfg: dict[str, Any] = {
            "messenger": {"name": name, "listen": [f"loop://{name}"], "extensions": ["plumtree"]},
            "loop": {"network": net_name},
            "session": {"keepalive_interval": 60.0, "keepalive_timeout": 300.0},
            "plumtree": {"seed": seed, **(plumtree or {})},
        }
        if cfg["plumtree"].get("peer_sampling") == "hyparview" and name != "n0":
            cfg["plumtree"].setdefault("contacts", ["loop://n0"])
        for section, values in (extra or {}).items():
            cfg.setdefault(section, {}).update(values)
        cluster.configs[name] = cfg
        await cluster.start_node(name)
    if (plumtree or {}).get("peer_sampling") == "hyparview":
        return cluster  # HyParView: nodes joined through their contacts; no view
    for name in names:
        ms = cluster.nodes[name]
        for other in names:
            if other != name:
                ms.add_known_address(other, [f"loop://{other}"])
    cluster.install_view(names)
    return cluster


@dataclass
class Row:
    """One line of :func:`experiment`'s table (means over its broadcasts)."""

    nodes: int
    seed: int
    scenario: str
    step: int
    broadcasts: int
    reliability: float
    rmr: float
    ldh: float
    payload_msgs: float

    def as_dict(self) -> dict[str, Any]:
        return {"nodes": self.nodes, "seed": self.seed, "scenario": self.scenario, "step": self.step,
                "broadcasts": self.broadcasts, "reliability": self.reliability, "rmr": self.rmr,
                "ldh": self.ldh, "payload_msgs": self.payload_msgs}


def _row(nodes: int, seed: int, scenario: str, step: int, results: list[BroadcastResult]) -> Row:
    k = len(results)
    return Row(nodes, seed, scenario, step, k, sum(r.reliability for r in results) / k,
               sum(r.rmr for r in results) / k, sum(r.ldh for r in results) / k,
               sum(r.payload_msgs for r in results) / k)


async def experiment(nodes: int, seed: int = 0, *, broadcasts: int = 5, fail: tuple[float, ...] = (0.4,),
                     tree: str = "per_root", graft_mode: str = "partisan", after_failure: int = 10) -> list[Row]:
    """The scenarios this version reproduces, on one cluster per failure
    fraction: ``single`` (a first broadcast from ``n0``, then
    ``broadcasts`` more: their means), ``random`` (``broadcasts`` from
    random senders), and for each fraction in ``fail``, ``fail-40%``...:
    that fraction of nodes crashes at once, every survivor's failure
    detector reports them (``msgr_peer_failed``), then ``after_failure``
    broadcasts from ``n0`` (never crashed), one row each (``step`` = 1..).
    """
    import random

    rows: list[Row] = []
    rng = random.Random(seed)
    for i, frac in enumerate(fail or (0.0,)):
        c = await make_cluster(nodes, seed=seed, plumtree={"tree": tree, "graft_mode": graft_mode})
        try:
            if i == 0:
                first = await c.broadcast("n0")
                rows.append(_row(nodes, seed, "single-first", 0, [first]))
                rows.append(_row(nodes, seed, "single", 0, [await c.broadcast("n0") for _ in range(broadcasts)]))
                rand = [await c.broadcast(f"n{rng.randrange(nodes)}") for _ in range(broadcasts)]
                rows.append(_row(nodes, seed, "random", 0, rand))
            else:
                await c.broadcast("n0")
            if not fail:
                continue
            # n0 stays up and sends every broadcast after the failure, so the
            # rows show its tree repaired (and RMR back to 0): the paper's
            # "cycles until RMR returns to its pre-failure value"
            victims = rng.sample(sorted(set(c.nodes) - {"n0"}), min(nodes - 1, int(nodes * frac)))
            for v in victims:
                await c.crash(v)
            for name in c.live():
                ms = c.nodes[name]
                for v in victims:
                    ms.hook.msgr_peer_failed(messenger=ms, peer=v, reason="simulated detector")
            for step in range(1, after_failure + 1):
                r = await c.broadcast("n0", guard=30.0)
                rows.append(_row(nodes, seed, f"fail-{round(frac * 100)}%", step, [r]))
        finally:
            await c.stop()
    return rows


def format_rows(rows: list[Row]) -> str:
    """A plain-text table of ``rows``."""
    out = [f"{'N':>6} {'seed':>4} {'scenario':<13} {'step':>4} {'bcasts':>6} {'reliab.':>8} {'RMR':>7} "
           f"{'LDH':>5} {'payload':>8}"]
    for r in rows:
        out.append(f"{r.nodes:>6} {r.seed:>4} {r.scenario:<13} {r.step:>4} {r.broadcasts:>6} "
                   f"{r.reliability * 100:>7.1f}% {r.rmr:>7.3f} {r.ldh:>5.1f} {r.payload_msgs:>8.1f}")
    return "\n".join(out)


def run(nodes: int, seed: int = 0, **options: Any) -> list[Row]:
    """:func:`experiment` in a fresh ``looptime`` event loop (virtual time)."""
    import looptime

    loop = looptime.new_event_loop()
    try:
        return loop.run_until_complete(experiment(nodes, seed, **options))
    finally:
        loop.close()
