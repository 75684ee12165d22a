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


class _SimPlugins(PluginSet):
    """A plugin set that skips the entry-point scan once the names asked
    for are loaded (``PluginSet.load`` scans the installed distributions on
    every call, which dominated starting thousands of simulated nodes)."""

    def load(self, group: str, names: list[str]) -> None:
        if any(n not in self.loaded for n in names):
            super().load(group, names)


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
    plugins: PluginSet = field(default_factory=_SimPlugins)
    #: the last broadcast measured
    last: BroadcastResult | None = None
    #: virtual seconds :func:`paper_experiment` let the overlay form
    settle_time: float = 0.0
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _copies: dict[Any, int] = field(default_factory=dict)  # nodes that stored each message

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
        log.on_new.append(self._stored)

        def hop(_h: str, msg_id: Any, hops: int, sender: str, name: str = name) -> None:
            self.hops.setdefault(msg_id, {})[name] = hops
            self.parents.setdefault(msg_id, {})[name] = sender

        self.pt(name).on_deliver.append(hop)
        self.pt(name).on_ack.append(lambda _p: self._changed.set())
        return ms

    def _stored(self, msg_id: Any, _payload: Any) -> None:
        self._copies[msg_id] = self._copies.get(msg_id, 0) + 1
        self._changed.set()

    def install_view(self, members: list[str] | None = None) -> None:
        """Install ``members`` (default: the live nodes) as the view on every live node."""
        members = self.live() if members is None else members
        for n in self.live():
            self.nodes[n].install_view(members)

    async def crash(self, name: str) -> None:
        """Kill ``name`` as a crash would (links break, nothing said; its
        timers stop with it)."""
        self.network.kill_node(name)
        ms = self.nodes[name]
        for ext in ("hyparview", "plumtree"):
            obj = ms.extensions.get(ext)
            if obj is not None:
                obj.close()
        await ms.abort()

    def report_failed(self, victims: list[str], *, to: str = "neighbours") -> None:
        """Fire ``msgr_peer_failed`` for ``victims`` on the survivors that
        would notice: ``"neighbours"`` — those that hold a victim in
        HyParView's active view or Plumtree's members (a broken link is the
        detector, as in the paper); ``"all"`` — every live node (a
        membership service that tells everyone)."""
        dead = set(victims)
        for name in self.live():
            ms = self.nodes[name]
            if to == "all":
                seen = dead
            else:
                hv = ms.extensions.get("hyparview")
                near = set(self.pt(name).members) | (set(hv.active) if hv is not None else set())
                seen = near & dead
            for v in sorted(seen):
                ms.hook.msgr_peer_failed(messenger=ms, peer=v, reason="simulated detector")

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

    async def _acknowledged(self, timeout: float, every: float = 0.01) -> None:
        """Wait until no live node has an outstanding ``i_have`` to a live
        node, looking every ``every`` s of virtual time (each look visits
        every node: at every ack, that was most of a large simulation's CPU).
        :raises TimeoutError:"""
        done = asyncio.Event()
        handle: asyncio.TimerHandle | None = None

        def look() -> None:
            nonlocal handle
            if self.outstanding():
                handle = self.loop.call_later(every, look)
            else:
                done.set()

        look()
        try:
            async with asyncio.timeout(timeout):
                await done.wait()
        finally:
            if handle is not None:
                handle.cancel()

    async def broadcast(self, root: str, payload: Any = b"x", *, guard: float = 60.0,
                        among: list[str] | None = None) -> BroadcastResult:
        """Broadcast from ``root`` and measure it (see the module docs).
        ``among``: the nodes expected to deliver (default: the live ones)."""
        start = self.loop.time()
        m0, g0 = self.payload_total(), self.graft_total()
        msg_id = self.logs[root].broadcast(payload)
        expect = self.live() if among is None else among
        # (the count first: checking every node at every delivery made a
        # broadcast at N = 10,000 cost minutes)
        with contextlib.suppress(TimeoutError):
            await self.wait(lambda: self._copies.get(msg_id, 0) >= len(expect)
                            and not self.missing(msg_id, expect), guard)
        duration = self.loop.time() - start
        # the window ends when every lazy push to a live node was acknowledged
        with contextlib.suppress(TimeoutError):
            await self._acknowledged(guard)
        delivered = len(expect) - len(self.missing(msg_id, expect))
        hops = self.hops.get(msg_id, {})
        self.last = BroadcastResult(msg_id, root, len(expect), delivered, self.payload_total() - m0,
                                    max(hops.values(), default=0), self.graft_total() - g0, duration)
        return self.last

    async def settle(self, minimum: float, maximum: float) -> float:
        """Let the HyParView overlay form (virtual time): at least
        ``minimum`` s, then until no active view changed during a whole
        shuffle period — nodes short of neighbours keep asking passive
        members to join until none has room, and every link added later
        costs a duplicate in the next broadcast — or ``maximum`` s in all.
        Returns the seconds waited."""
        start = self.loop.time()
        await asyncio.sleep(minimum)
        period = min(self.nodes[n].extensions["hyparview"].shuffle_period for n in self.live())
        views = self.active_views()
        while self.loop.time() - start < maximum:
            await asyncio.sleep(min(period, maximum - (self.loop.time() - start)))
            now = self.active_views()
            if now == views:
                break
            views = now
        self.settle_time = self.loop.time() - start
        return self.settle_time

    async def stop(self) -> None:
        for ms in self.nodes.values():
            pt = ms.extensions.get("plumtree")
            if isinstance(pt, Plumtree):
                pt.close()
        for ms in self.nodes.values():
            if ms.running:
                await ms.abort()


async def make_cluster(nodes: int, *, seed: int = 0, delay: float = 0.001, jitter: float = 0.0,
                       plumtree: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
                       join_interval: float = 0.0) -> Cluster:
    """Start ``nodes`` messengers ``n0 ..`` with msgr-plumtree on a fresh
    ``SimNetwork`` of the running loop; every node knows every address and
    has the full view installed; with ``peer_sampling = "hyparview"``
    every node but ``n0`` joins through ``loop://n0`` instead (no view),
    one every ``join_interval`` s (virtual; 0: all at the same instant —
    a join storm, whose random walks run over an overlay of the last few
    joiners only)."""
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
        if join_interval and name != names[0]:
            await asyncio.sleep(join_interval)
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


#: ``[plumtree]`` settings of :func:`paper_experiment`'s clusters: HyParView
#: with the paper's sizes, one shared tree (the paper's), grafts at once, and
#: no anti-entropy (a delivery is the tree's and the lazy push's doing only)
PAPER_SETTINGS: dict[str, Any] = {"peer_sampling": "hyparview", "tree": "shared", "graft_mode": "partisan",
                                  "exchange_tick_period": 1e9}


async def paper_experiment(nodes: int, seed: int = 0, *, settle: float = 30.0, max_settle: float = 600.0,
                           broadcasts: int = 10,
                           fanout: int = 4, steady_cycles: int = 100, steady_rate: float = 0.005,
                           fail: tuple[float, ...] = (0.4, 0.6, 0.8), after_failure: int = 10,
                           pre_failure: int = 3, guard: float = 10.0, detector: str = "neighbours",
                           scenarios: tuple[str, ...] = ("baseline", "single", "random", "steady", "massive"),
                           plumtree: dict[str, Any] | None = None, on_cluster: Any = None,
                           on_row: Any = None, join_interval: float = 0.01) -> list[Row]:
    """Leitão et al.'s experiment over a HyParView overlay
    (:data:`PAPER_SETTINGS`, updated by ``plumtree``), one row per
    broadcast (``step`` numbers them within a scenario):

    - ``eager-gossip`` (``"baseline"``): a cluster running eager push
      gossip with ``fanout`` instead of Plumtree; ``broadcasts`` from random
      senders (RMR about ``fanout - 1``);
    - ``single``: ``broadcasts`` from ``n0``, on a fresh Plumtree cluster
      whose overlay is stable (:meth:`Cluster.settle`: at least ``settle``
      s, then until a shuffle period passes without a change of any active
      view, at most ``max_settle`` s);
    - ``random``: then ``broadcasts`` from random live senders;
    - ``steady``: then ``steady_cycles`` cycles, each: ``steady_rate`` of
      the initial nodes (at least 1) crash, the detector reports them, a
      random live node broadcasts;
    - ``pre-40%`` / ``fail-40%`` ... (``"massive"``): per fraction a fresh
      cluster, ``pre_failure`` broadcasts, then that fraction crashes at
      once, the detector reports them, and ``after_failure`` broadcasts
      from random survivors.

    Each cluster's overlay is built as the paper's were, one join at a time:
    node ``n{i}`` joins through ``n0`` ``join_interval`` s after ``n{i-1}``
    (the default, ten hop delays, lets each join's random walks end before
    the next begins; 0 makes every node join at once, whose overlay keeps
    the join order's locality and can come out partitioned).
    Failures are reported by ``detector`` (:meth:`Cluster.report_failed`).
    A broadcast's window closes when every live node delivered it and every
    lazy push was acknowledged, or after ``guard`` s (virtual).
    ``on_cluster(name, cluster)`` is awaited for each cluster before it
    stops (pictures, checks); ``on_row(row)`` is called with each row as
    it is measured (a long run can keep what it has).
    """
    import random

    rng = random.Random(seed)
    rows: list[Row] = []
    settings = {**PAPER_SETTINGS, **(plumtree or {})}

    def add(scenario: str, step: int, r: BroadcastResult) -> None:
        rows.append(_row(nodes, seed, scenario, step, [r]))
        if on_row is not None:
            on_row(rows[-1])

    async def fresh(extra: dict[str, Any] | None = None) -> Cluster:
        c = await make_cluster(nodes, seed=seed, plumtree={**settings, **(extra or {})},
                               join_interval=join_interval)
        await c.settle(settle, max_settle)  # virtual: joins' random walks, shuffles, fills
        return c

    async def finish(name: str, c: Cluster) -> None:
        try:
            if on_cluster is not None:
                await on_cluster(name, c)
        finally:
            await c.stop()

    if "baseline" in scenarios:
        c = await fresh({"eager_gossip_fanout": fanout})
        try:
            for i in range(broadcasts):
                add("eager-gossip", i + 1, await c.broadcast(rng.choice(c.live()), guard=guard))
        finally:
            await finish("eager-gossip", c)
    if {"single", "random", "steady"} & set(scenarios):
        c = await fresh()
        try:
            if "single" in scenarios:
                for i in range(broadcasts):
                    add("single", i + 1, await c.broadcast("n0", guard=guard))
                if on_cluster is not None:
                    await on_cluster("single", c)
            if "random" in scenarios:
                for i in range(broadcasts):
                    add("random", i + 1, await c.broadcast(rng.choice(c.live()), guard=guard))
            if "steady" in scenarios:
                per_cycle = max(1, round(nodes * steady_rate))
                for cycle in range(steady_cycles):
                    live = c.live()
                    if len(live) <= per_cycle + 1:
                        break
                    victims = rng.sample(live, per_cycle)
                    for v in victims:
                        await c.crash(v)
                    c.report_failed(victims, to=detector)
                    add("steady", cycle + 1, await c.broadcast(rng.choice(c.live()), guard=guard))
        finally:
            await finish("plumtree", c)
    if "massive" in scenarios:
        for frac in fail:
            label = f"{round(frac * 100)}%"
            c = await fresh()
            try:
                for i in range(pre_failure):
                    add(f"pre-{label}", i + 1, await c.broadcast(rng.choice(c.live()), guard=guard))
                victims = rng.sample(c.live(), min(nodes - 1, int(nodes * frac)))
                for v in victims:
                    await c.crash(v)
                c.report_failed(victims, to=detector)
                for step in range(after_failure):
                    add(f"fail-{label}", step + 1, await c.broadcast(rng.choice(c.live()), guard=guard))
            finally:
                await finish(f"fail-{label}", c)
    return rows


def summarize(rows: list[Row], tolerance: float = 0.05) -> list[dict[str, Any]]:
    """:func:`paper_experiment`'s rows reduced per scenario (over seeds and
    steps): broadcasts, reliability mean and min, RMR mean (and of the first
    broadcast), LDH mean and max, payload messages per broadcast; for
    ``fail-X%``: per step too, ``pre_rmr`` — the pre-failure RMR of the
    stable overlay: the mean RMR of the ``single`` broadcasts after the
    first (the tree built), or without them of the last ``pre-X%``
    broadcast — and ``recovered_at``, the first step whose mean RMR is back
    within ``tolerance`` of it."""
    by: dict[str, list[Row]] = {}
    for r in rows:
        by.setdefault(r.scenario, []).append(r)
    out: list[dict[str, Any]] = []

    def stats(name: str, rs: list[Row], **more: Any) -> dict[str, Any]:
        first = [r for r in rs if r.step == min(x.step for x in rs)]
        return {"scenario": name, "nodes": rs[0].nodes, "seeds": len({r.seed for r in rs}), "broadcasts": len(rs),
                "reliability_mean": _mean([r.reliability for r in rs]),
                "reliability_min": min(r.reliability for r in rs),
                "rmr_mean": _mean([r.rmr for r in rs]), "rmr_first": _mean([r.rmr for r in first]),
                "ldh_mean": _mean([r.ldh for r in rs]), "ldh_max": max(r.ldh for r in rs),
                "payload_mean": _mean([r.payload_msgs for r in rs]), **more}

    for name, rs in by.items():
        if not name.startswith("fail-"):
            out.append(stats(name, rs))
            continue
        stable = [r.rmr for r in by.get("single", []) if r.step > 1]
        pre_rows = by.get("pre-" + name[5:], [])
        last = max((r.step for r in pre_rows), default=0)
        pre_rmr = (_mean(stable) if stable else
                   _mean([r.rmr for r in pre_rows if r.step == last]) if pre_rows else 0.0)
        steps = sorted({r.step for r in rs})
        recovered = next((st for st in steps
                          if _mean([r.rmr for r in rs if r.step == st]) <= pre_rmr + tolerance), None)
        out.append(stats(name, rs, pre_rmr=pre_rmr, recovered_at=recovered))
        for st in steps:
            out.append(stats(f"{name}#{st}", [r for r in rs if r.step == st]))
    return out


def format_summary(summary: list[dict[str, Any]]) -> str:
    """:func:`summarize`'s output as a text table."""
    lines = [f"{'scenario':<14} {'N':>6} {'seeds':>5} {'bcasts':>6} {'reliab. mean/min':>17} {'RMR mean':>9} "
             f"{'RMR 1st':>8} {'LDH mean/max':>13} {'payload':>8} {'recovered at':>12}"]
    for d in summary:
        rec = d.get("recovered_at", "")
        lines.append(f"{d['scenario']:<14} {d['nodes']:>6} {d['seeds']:>5} {d['broadcasts']:>6} "
                     f"{d['reliability_mean'] * 100:>9.2f}/{d['reliability_min'] * 100:>6.1f}% {d['rmr_mean']:>9.3f} "
                     f"{d['rmr_first']:>8.3f} {d['ldh_mean']:>8.1f}/{d['ldh_max']:>4.0f} {d['payload_mean']:>8.1f} "
                     f"{'-' if rec is None else rec!s:>12}")
    return "\n".join(lines)


def plot(rows: list[Row], path: str) -> None:
    """Reliability, RMR and LDH per broadcast after the massive failures
    (top) and for the other scenarios (bottom; steady: per cycle), means
    over seeds, as a PNG at ``path`` (needs matplotlib: ``pip install
    msgr-plumtree[sim]``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    fails = sorted({r.scenario for r in rows if r.scenario.startswith("fail-")})
    metrics = (("reliability", "reliability (%)", 100.0), ("rmr", "RMR", 1.0), ("ldh", "LDH", 1.0))

    def series(sc: str, attr: str, scale: float) -> tuple[list[int], list[float]]:
        steps = sorted({r.step for r in rows if r.scenario == sc})
        return steps, [scale * _mean([getattr(r, attr) for r in rows if r.scenario == sc and r.step == st])
                       for st in steps]

    for col, (attr, label, scale) in enumerate(metrics):
        ax = axes[0][col]
        for sc in fails:
            ax.plot(*series(sc, attr, scale), marker="o", label=sc)
        ax.set_xlabel("broadcast after the failure")
        ax.set_ylabel(label)
        ax.set_title(f"massive failures: {label}")
        if fails:
            ax.legend()
        ax = axes[1][col]
        for sc in ("steady", "eager-gossip", "single", "random"):
            xs, ys = series(sc, attr, scale)
            if xs:
                ax.plot(xs, ys, marker="." if sc == "steady" else "o", label=sc)
        ax.set_xlabel("broadcast (steady: cycle)")
        ax.set_ylabel(label)
        if attr == "reliability":  # all at ~100 %: no offset notation, a readable range
            ax.ticklabel_format(axis="y", useOffset=False)
            ax.set_ylim(min(99.0, ax.get_ylim()[0]), 100.2)
        ax.set_title(f"stable and steady failures: {label}")
        ax.legend()
    sizes = ", ".join(str(n) for n in sorted({r.nodes for r in rows}))
    fig.suptitle(f"msgr-plumtree over HyParView, N = {sizes}, {len({r.seed for r in rows})} seed(s)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def read_rows(path: str) -> list[Row]:
    """The rows of a CSV written by ``msgr sim plumtree --csv``."""
    import csv

    with open(path, newline="") as f:
        return [Row(int(d["nodes"]), int(d["seed"]), d["scenario"], int(d["step"]), int(d["broadcasts"]),
                    float(d["reliability"]), float(d["rmr"]), float(d["ldh"]), float(d["payload_msgs"]))
                for d in csv.DictReader(f)]


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def run_paper(nodes: int, seed: int = 0, **options: Any) -> list[Row]:
    """:func:`paper_experiment` in a fresh ``looptime`` event loop."""
    import logging

    import looptime

    # crashed nodes make sends to them undeliverable: expected, not news
    msgr_log = logging.getLogger("msgr")
    level = msgr_log.level
    msgr_log.setLevel(logging.ERROR)
    loop = looptime.new_event_loop(noop_cycles=1)
    try:
        return loop.run_until_complete(paper_experiment(nodes, seed, **options))
    finally:
        loop.close()
        msgr_log.setLevel(level)


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
