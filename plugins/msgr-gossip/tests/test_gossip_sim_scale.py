"""What the large-N simulation relies on, at small N: a preloaded
(converged) cluster without the join's echo sessions, overlapping trials,
the conviction time explained by its two measured terms, and the CSV."""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path

import pytest
from msgr_gossip.sim import bound, simulate

from msgr_core.cli import main

from .conftest import MakeCluster

pytestmark = pytest.mark.looptime(noop_cycles=1)


async def test_preload_starts_converged_without_a_session_per_pair(cluster: MakeCluster) -> None:
    n = 40
    c = await cluster(n, seeds=2, preload=True)
    await c.wait(c.all_alive, 1)  # the events run in the notifier tasks: no round needed
    for name in c.nodes:
        g = c.gossiper(name)
        assert g.live == set(c.nodes) - {name}
        assert c.nodes[name].view == frozenset(c.nodes)
        assert all(g._windows[p].last is not None for p in g.live)
    # no echo went out: the only sessions so far are none at all
    assert sum(len(ms._by_addr) for ms in c.nodes.values()) == 0
    # and it gossips as usual: a new state reaches everyone within the bound
    c.gossiper("n7").add_local_application_state("sim", "x")
    t0 = c.loop.time()
    await c.wait(lambda: len(c.seen.get("x", ())) == n - 1, 30)
    assert max(c.seen["x"].values()) - t0 <= 2 * bound(n)
    # sessions grow with the rounds (random targets), not with N^2
    assert sum(len(ms._by_addr) for ms in c.nodes.values()) < n * n // 2


async def test_staggered_trials_and_conviction_terms() -> None:
    res = await simulate(30, 2, trials=10, stagger=1.3, preload=True, settle=20, rng_seed=3)
    assert len(res.rounds) == 10 and all(0 < r <= 2 * bound(30) for r in res.rounds)
    assert statistics.fmean(res.rounds) <= bound(30) + 1
    assert len(res.conviction) == 29 == len(res.lag) == len(res.hb_interval)
    # a node hears a newer heartbeat of a peer at most once a round, often
    # less: the mean inter-arrival is over the 1 s interval (one observer's
    # may dip under it: intervals over the 2 s cut-off are not counted)
    assert 1.0 < statistics.fmean(res.hb_interval) < 1.5, res.hb_interval
    assert all(0.8 <= m <= 2.0 for m in res.hb_interval), res.hb_interval
    # conviction = lag + threshold * ln 10 * mean interval, checked once a round
    k = res.threshold * math.log(10)
    for took, lag, m in zip(res.conviction, res.lag, res.hb_interval, strict=True):
        assert 0 <= took - (lag + k * m) <= 1.0 + 1e-6, (took, lag, m)
    assert res.cpu > 0 and res.max_rss_mb > 0


def test_sim_gossip_runs_and_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "g.csv"
    assert main(["sim", "gossip", "--nodes", "10", "--runs", "2", "--trials", "10", "--preload", "--settle", "5",
                 "--stagger", "1.5", "--csv", str(out)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1 + 2 + 1  # head, two runs, legend
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert [r["rng_seed"] for r in rows] == ["0", "1"]
    assert all(r["preload"] == "True" and len(r["rounds_all"].split()) == 10 for r in rows)
    assert all(float(r["predicted_conviction_mean_s"]) > 18.4 for r in rows)
