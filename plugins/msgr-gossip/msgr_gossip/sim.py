"""Gossip simulation: N messengers over ``loop://`` in one process, under
virtual time.

:func:`run` makes a ``looptime`` event loop (:func:`looptime.new_event_loop`:
the clock jumps to the next timer whenever the loop is idle, so a 1 s round
costs only the CPU it uses) and runs :func:`simulate` in it; tests that
already run under ``@pytest.mark.looptime`` await :func:`simulate` directly.

What it measures:

1. *warm-up*: time until every node sees every other alive (seeds only at
   start).  With ``preload=True`` the join phase is skipped instead: every
   node starts knowing every other node's state, alive
   (:meth:`Gossiper.preload`, as if the cluster had converged), then
   gossips ``settle`` rounds before the measurements — so large N runs
   without the O(N^2) join (an echo and a session per pair);
2. *dissemination*: ``trials`` times, a random node sets a new application
   state; the time until every other node has it, in rounds, against the
   push-pull bound ``log3(N) + ln ln N``.  One after the other, or with
   ``stagger > 0`` started ``stagger`` rounds apart without waiting for the
   previous one: an exchange carries every newer state, so one trial's
   spread does not wait for another's, but overlapping trials share the
   random gossip partners of the same rounds (they are not independent
   samples);
3. *traffic*: per node and round, gossip messages and bytes sent during the
   dissemination trials, and the size of one SYN;
4. *conviction* (``crash=True``): a random non-seed node is killed
   (``SimNetwork.kill_node`` + ``Messenger.abort``); the time until each
   live node convicts it, and the two terms that make it up: the *lag*
   from the crash to the last newer heartbeat an observer received, and
   the observer's mean heartbeat inter-arrival time (phi crosses the
   threshold ``threshold * ln 10`` mean intervals after that last arrival);
5. *cost*: wall clock, CPU seconds and peak RSS of the process.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import resource
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack

from msgr_core import Messenger
from msgr_core.registry import PluginSet

from .gossiper import EndpointState, Gossiper, GossipSubscriber

__all__ = ["SimResult", "Watcher", "bound", "format_table", "make_cluster", "run", "simulate"]


class _SimPlugins(PluginSet):
    """One plugin set shared by every simulated node, which skips the
    entry-point scan once the names asked for are loaded
    (``PluginSet.load`` scans the installed distributions on every call: a
    third of the CPU of starting 100 simulated messengers)."""

    def load(self, group: str, names: list[str]) -> None:
        if any(n not in self.loaded for n in names):
            super().load(group, names)

_net_ids = itertools.count()


def bound(n: int) -> float:
    """The push-pull dissemination bound ``log3(N) + ln ln N`` (in rounds)."""
    return math.log(n, 3) + (math.log(math.log(n)) if n > 2 else 0.0)


class Watcher(GossipSubscriber):
    """Counts what one node's gossiper reports, and wakes waiters."""

    def __init__(self, sim: Cluster, name: str) -> None:
        self.sim = sim
        self.name = name
        self.alive: set[str] = set()

    def _add(self, endpoint: str) -> None:
        if self.sim.watchers.get(self.name) is not self:
            return  # this node crashed since
        node = self.sim.nodes.get(endpoint)
        if endpoint not in self.alive and node is not None and node.running:
            self.alive.add(endpoint)
            self.sim.alive_pairs += 1

    def _discard(self, endpoint: str) -> None:
        if endpoint in self.alive:
            self.alive.discard(endpoint)
            if self.sim.watchers.get(self.name) is self:
                self.sim.alive_pairs -= 1

    def on_alive(self, endpoint: str, state: EndpointState) -> None:
        self._add(endpoint)
        self.sim._changed()

    def on_dead(self, endpoint: str, state: EndpointState) -> None:
        self._discard(endpoint)
        self.sim.dead_at.setdefault(endpoint, {})[self.name] = self.sim.loop.time()
        self.sim._changed()

    def on_restart(self, endpoint: str, state: EndpointState) -> None:
        self._discard(endpoint)  # alive again after its echo
        self.sim.restarts.setdefault(endpoint, set()).add(self.name)
        self.sim._changed()

    def on_change(self, endpoint: str, key: str, value: Any) -> None:
        if key == "sim" or key.startswith("sim."):
            self.sim.seen.setdefault(value, {})[self.name] = self.sim.loop.time()
            self.sim._changed()


@dataclass
class Cluster:
    """Simulated nodes of one network (see :func:`make_cluster`)."""

    loop: asyncio.AbstractEventLoop
    network: Any
    nodes: dict[str, Messenger] = field(default_factory=dict)
    watchers: dict[str, Watcher] = field(default_factory=dict)
    seen: dict[Any, dict[str, float]] = field(default_factory=dict)
    dead_at: dict[str, dict[str, float]] = field(default_factory=dict)
    restarts: dict[str, set[str]] = field(default_factory=dict)
    alive_pairs: int = 0
    running: int = 0
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    plugins: PluginSet | None = None
    _cond: asyncio.Event = field(default_factory=asyncio.Event)

    def _changed(self) -> None:
        self._cond.set()

    def gossiper(self, name: str) -> Gossiper:
        return self.nodes[name].extensions["gossip"]  # type: ignore[no-any-return]

    async def wait(self, predicate: Any, timeout: float) -> None:
        """Wait (virtual time) until ``predicate()`` holds.

        :raises TimeoutError: not within ``timeout``.
        """
        async with asyncio.timeout(timeout):
            while not predicate():
                self._cond.clear()
                await self._cond.wait()

    def live_names(self) -> list[str]:
        return [n for n, ms in self.nodes.items() if ms.running]

    def all_alive(self) -> bool:
        """Every running node sees every other running node alive (O(1):
        the watchers keep a count of alive pairs among running nodes)."""
        n = self.running
        return self.alive_pairs == n * (n - 1)

    async def start_node(self, name: str) -> Messenger:
        """Start (or restart, after :meth:`crash`) node ``name``."""
        self.network.revive_node(name)
        ms = Messenger(_config(self.configs[name]), plugins=self.plugins)
        await ms.start()
        self.nodes[name] = ms
        self.running += 1
        old = self.watchers.get(name)
        if old is not None:
            self.alive_pairs -= len(old.alive)
        watcher = self.watchers[name] = Watcher(self, name)
        self.gossiper(name).subscribe(watcher)
        return ms

    async def crash(self, name: str) -> None:
        """Kill node ``name`` as a crash would (no goodbye)."""
        self.network.kill_node(name)
        await self.nodes[name].abort()
        self._gone(name)

    def _gone(self, name: str) -> None:
        """``name`` stopped running: drop its pairs from the count."""
        self.running -= 1
        watcher = self.watchers[name]
        self.alive_pairs -= len(watcher.alive)
        watcher.alive = set()
        for w in self.watchers.values():
            w._discard(name)

    async def graceful_stop(self, name: str) -> None:
        """Stop node ``name`` gracefully (peers hear ``gossip.shutdown``)."""
        await self.nodes[name].stop()
        self._gone(name)

    async def stop(self) -> None:
        for ms in self.nodes.values():
            if ms.running:
                await ms.abort()


def _config(cfg: dict[str, Any]) -> Any:
    from msgr_core.config import Config

    return Config(cfg)


async def make_cluster(nodes: int, seeds: int = 1, *, interval: float = 1.0, fanout: int = 1,
                       threshold: float = 8.0, rng_seed: int = 0, delay: float = 0.001,
                       extra: dict[str, Any] | None = None, preload: bool = False) -> Cluster:
    """Start ``nodes`` gossiping messengers ``n0 ...`` on a fresh
    ``SimNetwork`` of the running loop; ``n0 .. n{seeds-1}`` are the seeds.
    ``preload``: every node then knows every other alive at once
    (:meth:`Gossiper.preload`), without the join phase."""
    from msgr_loopback import get_network

    loop = asyncio.get_running_loop()
    net_name = f"gossip-sim-{next(_net_ids)}"
    net = get_network(net_name)
    net.reseed(rng_seed)
    net.set_delay(None, None, delay)
    cluster = Cluster(loop, net, plugins=_SimPlugins())
    seed_addrs = [f"loop://n{i}" for i in range(seeds)]
    for i in range(nodes):
        name = f"n{i}"
        cfg: dict[str, Any] = {
            "messenger": {"name": name, "listen": [f"loop://{name}"], "extensions": ["gossip"]},
            "loop": {"network": net_name},
            # gossip keeps a session to every peer it ever talked to; idle-link
            # keepalives over all of them would dominate a simulation's CPU
            "session": {"keepalive_interval": 60.0, "keepalive_timeout": 300.0},
            "gossip": {"seeds": seed_addrs, "interval": interval, "fanout": fanout,
                       "phi_convict_threshold": threshold, "seed": rng_seed},
        }
        for section, values in (extra or {}).items():
            cfg.setdefault(section, {}).update(values)
        cluster.configs[name] = cfg
        await cluster.start_node(name)
    if preload:
        states = [cluster.gossiper(n).local.wire(0) for n in cluster.nodes]
        for name in cluster.nodes:
            cluster.gossiper(name).preload(states)
    return cluster


@dataclass
class SimResult:
    """What :func:`simulate` measured (times in seconds of virtual time)."""

    nodes: int
    seeds: int
    interval: float
    fanout: int
    warmup: float = 0.0
    rounds: list[float] = field(default_factory=list)
    msgs_per_node_round: float = 0.0
    bytes_per_node_round: float = 0.0
    syn_bytes: int = 0
    conviction: list[float] = field(default_factory=list)
    #: per observer of the crash: last newer heartbeat received - crash time
    lag: list[float] = field(default_factory=list)
    #: per observer of the crash: its mean heartbeat inter-arrival time of the victim
    hb_interval: list[float] = field(default_factory=list)
    threshold: float = 8.0
    preload: bool = False
    rng_seed: int = 0
    wall: float = 0.0
    cpu: float = 0.0
    max_rss_mb: float = 0.0

    @property
    def bound(self) -> float:
        return bound(self.nodes)

    @property
    def predicted(self) -> float:
        """Mean conviction time the phi model predicts from the measured
        terms: ``lag + threshold * ln 10 * mean inter-arrival`` per observer."""
        k = self.threshold * math.log(10.0)
        return statistics.fmean(lag + k * m for lag, m in zip(self.lag, self.hb_interval, strict=True))

    def as_dict(self) -> dict[str, Any]:
        return {
            "nodes": self.nodes, "seeds": self.seeds, "interval": self.interval, "fanout": self.fanout,
            "warmup_s": self.warmup, "trials": len(self.rounds),
            "rounds_mean": statistics.fmean(self.rounds) if self.rounds else None,
            "rounds_max": max(self.rounds) if self.rounds else None,
            "bound": self.bound,
            "msgs_per_node_round": self.msgs_per_node_round,
            "bytes_per_node_round": self.bytes_per_node_round,
            "syn_bytes": self.syn_bytes,
            "conviction_min_s": min(self.conviction) if self.conviction else None,
            "conviction_mean_s": statistics.fmean(self.conviction) if self.conviction else None,
            "conviction_max_s": max(self.conviction) if self.conviction else None,
            "lag_mean_s": statistics.fmean(self.lag) if self.lag else None,
            "hb_interval_mean_s": statistics.fmean(self.hb_interval) if self.hb_interval else None,
            "predicted_conviction_mean_s": self.predicted if self.lag else None,
            "preload": self.preload,
            "wall_s": self.wall, "cpu_s": self.cpu, "max_rss_mb": self.max_rss_mb,
        }


async def simulate(nodes: int, seeds: int = 1, *, rounds: int = 60, trials: int = 10, interval: float = 1.0,
                   fanout: int = 1, threshold: float = 8.0, rng_seed: int = 0, crash: bool = True,
                   delay: float = 0.001, preload: bool = False, settle: int = 10,
                   stagger: float = 0.0) -> SimResult:
    """Run the measurements of the module docstring on the running loop
    (which must be under virtual time: the run spans minutes of it).

    :param rounds: the most rounds any phase may take before it is reported
        as not converging (:class:`TimeoutError`).
    :param preload: skip the join (see the module docs); ``settle`` rounds
        of gossip then fill the detectors' windows before the trials.
    """
    wall = time.perf_counter()
    cpu = time.process_time()
    rng = random.Random(rng_seed)
    res = SimResult(nodes, seeds, interval, fanout, threshold=threshold, preload=preload, rng_seed=rng_seed)
    cluster = await make_cluster(nodes, seeds, interval=interval, fanout=fanout, threshold=threshold,
                                 rng_seed=rng_seed, delay=delay, preload=preload)
    loop = cluster.loop
    try:
        t0 = loop.time()
        await cluster.wait(cluster.all_alive, rounds * interval)
        res.warmup = loop.time() - t0
        if preload:
            await asyncio.sleep(settle * interval)
        names = cluster.live_names()
        before = _traffic(cluster)
        start = loop.time()
        started: list[float] = []
        for trial in range(trials):
            origin = rng.choice(names)
            started.append(loop.time())
            # a key per trial: two trials from one origin must not replace each other
            cluster.gossiper(origin).add_local_application_state(f"sim.{trial}", trial)
            if stagger > 0:
                await asyncio.sleep(stagger * interval)
                continue
            await cluster.wait(lambda trial=trial: len(cluster.seen.get(trial, ())) >= nodes - 1,
                               rounds * interval)
            # let the next trial start at another phase of the rounds
            await asyncio.sleep(rng.random() * interval)
        await cluster.wait(lambda: all(len(cluster.seen.get(t, ())) >= nodes - 1 for t in range(trials)),
                           rounds * interval)
        res.rounds = [(max(cluster.seen[t].values()) - started[t]) / interval for t in range(trials)]
        after = _traffic(cluster)
        node_rounds = nodes * (loop.time() - start) / interval
        res.msgs_per_node_round = (after[0] - before[0]) / node_rounds
        res.bytes_per_node_round = (after[1] - before[1]) / node_rounds
        g = cluster.gossiper(names[0])
        res.syn_bytes = len(msgpack.packb([g.cfg["cluster"], g._digests()], use_bin_type=True))
        if crash and nodes > seeds + 1:
            victim = rng.choice(names[seeds:])
            t_crash = loop.time()
            await cluster.crash(victim)
            others = [n for n in names if n != victim]
            await cluster.wait(lambda: len(cluster.dead_at.get(victim, {})) >= len(others), rounds * interval)
            res.conviction = [cluster.dead_at[victim][n] - t_crash for n in others]
            for n in others:
                w = cluster.gossiper(n)._windows.get(victim)
                if w is not None and w.last is not None:
                    res.lag.append(w.last - t_crash)
                    res.hb_interval.append(w.mean())
    finally:
        await cluster.stop()
    res.wall = time.perf_counter() - wall
    res.cpu = time.process_time() - cpu
    res.max_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return res


def _traffic(cluster: Cluster) -> tuple[int, int]:
    msgs = nbytes = 0
    for ms in cluster.nodes.values():
        s = ms.stats
        msgs += s["msgs_out"]
        nbytes += s["bytes_out"]
    return msgs, nbytes


def run(nodes: int, seeds: int = 1, **kwargs: Any) -> SimResult:
    """:func:`simulate` in a fresh virtual-time event loop."""
    import logging

    import looptime

    # a crashed node makes every SYN to it undeliverable: not news in a simulation
    msgr_log = logging.getLogger("msgr")
    level = msgr_log.level
    msgr_log.setLevel(logging.ERROR)
    # noop_cycles=1: loop:// does no I/O, so time may jump as soon as the loop is idle
    loop = looptime.new_event_loop(start=0.0, noop_cycles=1)
    try:
        return loop.run_until_complete(simulate(nodes, seeds, **kwargs))
    finally:
        loop.close()
        msgr_log.setLevel(level)


def format_table(results: list[SimResult]) -> str:
    """The results as a text table, one row per run."""
    head = ("N", "seeds", "fanout", "warmup s", "trials", "rounds mean", "rounds max", "log3N+lnlnN",
            "msgs/node/round", "bytes/node/round", "SYN bytes", "convict min/mean/max s", "wall s")
    rows = [head]
    for r in results:
        d = r.as_dict()
        conv = ("-" if not r.conviction else
                f"{d['conviction_min_s']:.1f}/{d['conviction_mean_s']:.1f}/{d['conviction_max_s']:.1f}")
        rows.append((str(r.nodes), str(r.seeds), str(r.fanout), f"{r.warmup:.1f}", str(len(r.rounds)),
                     f"{d['rounds_mean']:.2f}" if r.rounds else "-", f"{d['rounds_max']:.2f}" if r.rounds else "-",
                     f"{r.bound:.2f}", f"{r.msgs_per_node_round:.2f}", f"{r.bytes_per_node_round:.0f}",
                     str(r.syn_bytes), conv, f"{r.wall:.1f}"))
    widths = [max(len(row[c]) for row in rows) for c in range(len(head))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)
