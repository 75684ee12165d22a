"""Membership under virtual time over loop://: dissemination, conviction,
restart, partition, slow callbacks, graceful shutdown, removal, status,
and the view/peer hooks."""

from __future__ import annotations

import asyncio
import statistics
from typing import Any

import pytest
from msgr_gossip import EndpointState, GossipSubscriber
from msgr_gossip.cli import format_status
from msgr_gossip.sim import bound

import msgr_core

from .conftest import MakeCluster

pytestmark = pytest.mark.looptime(noop_cycles=1)


async def test_new_application_state_reaches_everyone(cluster: MakeCluster) -> None:
    c = await cluster(30, seeds=2)
    await c.wait(c.all_alive, 60)
    loop = asyncio.get_running_loop()
    rounds = []
    for trial in range(10):
        origin = f"n{(trial * 7) % 30}"
        t0 = loop.time()
        c.gossiper(origin).add_local_application_state("sim", trial)
        await c.wait(lambda trial=trial: len(c.seen.get(trial, ())) == 29, 30)
        rounds.append(max(c.seen[trial].values()) - t0)
    assert statistics.fmean(rounds) <= bound(30) + 1
    assert max(rounds) <= 2 * bound(30)
    # every node holds the same value with the same version
    for name in c.nodes:
        st = c.gossiper(name).endpoints["n0"]
        assert st.get("sim") == c.gossiper("n0").local.get("sim")


async def test_crash_is_convicted_by_every_live_node_after_about_20_rounds(cluster: MakeCluster) -> None:
    c = await cluster(30, seeds=2)
    await c.wait(c.all_alive, 60)
    await asyncio.sleep(60)  # a minute of heartbeats: the windows hold real samples, not the initial guess
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await c.crash("n17")
    await c.wait(lambda: len(c.dead_at.get("n17", {})) == 29, 60)
    took = [t - t0 for t in c.dead_at["n17"].values()]
    # phi 8 = 18.4 mean heartbeat intervals after the last heartbeat a node
    # heard, which lags the crash by up to a few rounds of dissemination
    assert min(took) >= 17.0 and max(took) <= 30.0, took
    assert 18.4 <= statistics.fmean(took) <= 25.0, took
    await asyncio.sleep(0)  # the view is installed off the round
    for name in c.live_names():
        view = c.nodes[name].view
        assert view is not None and "n17" not in view and len(view) == 29


async def test_restart_is_detected_as_a_restart(cluster: MakeCluster) -> None:
    c = await cluster(6, seeds=1)
    await c.wait(c.all_alive, 30)
    old = c.gossiper("n4").generation
    await c.crash("n4")
    await c.start_node("n4")
    assert c.gossiper("n4").generation > old
    others = {f"n{i}" for i in range(6)} - {"n4"}
    await c.wait(lambda: c.restarts.get("n4", set()) >= others, 30)
    await c.wait(c.all_alive, 30)
    for name in others:
        ep = c.gossiper(name).endpoints["n4"]
        assert ep.generation == c.gossiper("n4").generation and ep.alive
    assert "n4" not in c.dead_at  # restarted before phi convicted it: a restart, not a death


async def test_partition_of_100_nodes_marks_each_side_down_and_heals(cluster: MakeCluster) -> None:
    c = await cluster(100, seeds=2)  # n0 on one side, n1 on the other
    await c.wait(c.all_alive, 60)
    side_a = [f"n{i}" for i in range(0, 100, 2)]
    side_b = [f"n{i}" for i in range(1, 100, 2)]
    c.network.partition(side_a, side_b)

    def split() -> bool:
        return (all(c.watchers[n].alive == set(side_a) - {n} for n in side_a)
                and all(c.watchers[n].alive == set(side_b) - {n} for n in side_b))

    await c.wait(split, 60)
    for n in side_a:
        assert c.gossiper(n).unreachable == set(side_b)
    c.network.heal()
    await c.wait(c.all_alive, 60)
    assert all(c.gossiper(n).unreachable == set() for n in c.nodes)


class Slow(GossipSubscriber):
    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.done = asyncio.Event()
        self.changes: list[str] = []

    async def on_change(self, endpoint: str, key: str, value: Any) -> None:
        self.changes.append(key)
        if key == "slow":
            self.started.set()
            await asyncio.sleep(10)
            self.done.set()


async def test_a_blocking_callback_delays_no_round(cluster: MakeCluster) -> None:
    c = await cluster(5, seeds=1)
    await c.wait(c.all_alive, 30)
    slow = Slow()
    g = c.gossiper("n1")
    g.subscribe(slow)
    loop = asyncio.get_running_loop()
    c.gossiper("n0").add_local_application_state("slow", 1)
    await asyncio.wait_for(slow.started.wait(), 10)
    t0, rounds0 = loop.time(), g.rounds
    c.gossiper("n2").add_local_application_state("later", 2)
    # while the callback blocks (and holds n1's later notifications), n1
    # keeps its rounds and learns new state: look at it once per round
    while c.gossiper("n1").endpoints["n2"].get("later") != 2:
        assert loop.time() - t0 < 8
        await asyncio.sleep(g.interval)
    assert not slow.done.is_set()
    await asyncio.wait_for(slow.done.wait(), 11)
    assert g.rounds - rounds0 >= 9  # one round per second throughout
    assert "later" in slow.changes  # delivered in order, after the slow one


async def test_graceful_stop_is_marked_down_at_once(cluster: MakeCluster) -> None:
    c = await cluster(8, seeds=1)
    await c.wait(c.all_alive, 30)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await c.graceful_stop("n5")
    await c.wait(lambda: len(c.dead_at.get("n5", {})) == 7, 30)
    assert max(c.dead_at["n5"].values()) - t0 < 0.1
    for name in c.live_names():
        assert c.gossiper(name).endpoints["n5"].status == "shutdown"


async def test_removed_endpoint_is_quarantined(cluster: MakeCluster) -> None:
    c = await cluster(4, seeds=1, extra={"gossip": {"remove_after": 30.0, "quarantine": 20.0}})
    await c.wait(c.all_alive, 30)
    removed: list[str] = []

    class OnRemove(GossipSubscriber):
        def on_remove(self, endpoint: str) -> None:
            removed.append(endpoint)
            c._changed()

    c.gossiper("n0").subscribe(OnRemove())
    await c.crash("n3")
    await c.wait(lambda: removed == ["n3"], 120)
    g = c.gossiper("n0")
    assert "n3" not in g.endpoints
    # n1 still gossips n3's old state: quarantine keeps n0 from taking it back
    c.gossiper("n1").endpoints["n3"].dead_since = None  # (n1 would re-spread it)
    await asyncio.sleep(5)
    assert "n3" not in g.endpoints


class Hooks:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    @msgr_core.hookimpl
    def msgr_peer_failed(self, messenger: Any, peer: str, reason: str) -> None:
        self.events.append((messenger.name, "failed", peer))

    @msgr_core.hookimpl
    def msgr_peer_recovered(self, messenger: Any, peer: str) -> None:
        self.events.append((messenger.name, "recovered", peer))


async def test_hooks_and_status(cluster: MakeCluster) -> None:
    c = await cluster(4, seeds=1)
    hooks = Hooks()
    assert c.plugins is not None
    c.plugins.register(hooks, "test-hooks")
    await c.wait(c.all_alive, 30)
    c.network.partition(["n3"])
    await c.wait(lambda: len(c.dead_at.get("n3", {})) == 3, 60)
    c.network.heal()
    await c.wait(c.all_alive, 60)
    await asyncio.sleep(0)
    assert ("n0", "failed", "n3") in hooks.events and ("n0", "recovered", "n3") in hooks.events
    assert ("n3", "failed", "n0") in hooks.events
    # the admin verb and its table
    status = await c.nodes["n1"].send_message("gossip.status", "loop://n0", b"", timeout=5)
    assert [e["endpoint"] for e in status["endpoints"]] == ["n0", "n1", "n2", "n3"]
    assert all(e["alive"] and e["status"] == "normal" for e in status["endpoints"])
    table = format_status(status)
    assert "n0 *" in table and "generation" in table and len(table.splitlines()) == 6
    # names resolve through the gossiped addresses
    assert await c.nodes["n2"].send_message("msgr.ping", "n3", b"x", timeout=5) == b"x"


def test_endpoint_state_wire() -> None:
    ep = EndpointState("a", 5, 3)
    ep.states = {"STATUS": ("normal", 1), "X": (1, 4)}
    ep.apps_version = 4  # kept by whoever changes the states
    assert ep.wire(0) == ["a", 5, 3, [["STATUS", "normal", 1], ["X", 1, 4]]]
    assert ep.wire(3) == ["a", 5, 3, [["X", 1, 4]]]
    assert list(ep.wire(4)[3]) == []  # a heartbeat only


async def test_no_conviction_right_after_a_local_pause(cluster: MakeCluster) -> None:
    c = await cluster(5, seeds=1)
    await c.wait(c.all_alive, 30)
    g = c.gossiper("n2")
    # n2 "freezes" for 60 s: no rounds, and nothing it is sent gets read
    assert g._timer is not None
    g._timer.cancel()
    c.network.stall("n2")
    await asyncio.sleep(60)
    assert all(g.phi(n) > g.threshold for n in ("n0", "n1", "n3", "n4")), [g.phi(n) for n in g.live]
    c.network.unstall("n2")
    g._round()  # the first round after the pause sees stale heartbeats...
    assert g.live == {"n0", "n1", "n3", "n4"}  # ...and convicts no one
    await asyncio.sleep(10)
    assert g.live == {"n0", "n1", "n3", "n4"} and "n2" not in c.dead_at.get("n0", {})
