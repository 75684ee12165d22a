"""The paper's scenarios at small N over HyParView, under virtual time: the
eager-gossip baseline's RMR, steady failures, massive failures with
recovery, the summary, the CLI's CSV/plot/SVG, and the SVG of a tree."""

from __future__ import annotations

import asyncio
import csv
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from msgr_plumtree.cli import write_tree_svg
from msgr_plumtree.sim import PAPER_SETTINGS, paper_experiment, summarize
from msgr_plumtree.svg import eager_tree, tree_svg

from msgr_core.cli import main

pytestmark = pytest.mark.looptime(noop_cycles=1)

SVG = "{http://www.w3.org/2000/svg}"


async def test_pt_eager_gossip_baseline_rmr_about_fanout_minus_one(cluster: Any) -> None:
    n = 40
    c = await cluster(n, plumtree={**PAPER_SETTINGS, "eager_gossip_fanout": 4})
    await asyncio.sleep(30)
    rs = [await c.broadcast(f"n{i}", guard=10) for i in (3, 17, 29)]
    for r in rs:
        assert r.reliability == 1.0
        # every node pushes to 4 of its <= 5 active neighbours: about 4 n payload messages
        assert 2.4 <= r.rmr <= 3.2, r
    assert sum(c.pt(x).counters["prune_out"] + c.pt(x).counters["i_have_out"] for x in c.nodes) == 0


async def test_pt_paper_scenarios_small() -> None:
    n = 40
    rows = await paper_experiment(n, 1, broadcasts=4, steady_cycles=8, steady_rate=0.025, fail=(0.4,),
                                  after_failure=6, settle=30)
    by: dict[str, list[Any]] = {}
    for r in rows:
        by.setdefault(r.scenario, []).append(r)
    assert set(by) == {"eager-gossip", "single", "random", "steady", "pre-40%", "fail-40%"}
    assert all(2.4 <= r.rmr <= 3.2 for r in by["eager-gossip"])
    single = by["single"]
    assert all(r.reliability == 1.0 for r in single)
    assert single[0].rmr > 1  # every link eager, pruned by the first broadcast
    assert all(r.rmr == 0.0 and r.payload_msgs == n - 1 for r in single[1:])  # the tree, on a stable overlay
    assert all(r.reliability == 1.0 and r.payload_msgs <= 1.2 * (n - 1) for r in by["random"])
    steady = by["steady"]
    assert len(steady) == 8 and all(r.reliability == 1.0 for r in steady)
    fail = by["fail-40%"]
    assert [r.step for r in fail] == [1, 2, 3, 4, 5, 6]
    assert fail[-1].reliability == 1.0
    summary = {d["scenario"]: d for d in summarize(rows)}
    assert summary["fail-40%"]["recovered_at"] is not None
    assert summary["fail-40%#1"]["broadcasts"] == 1
    assert summary["eager-gossip"]["reliability_min"] == 1.0


async def test_pt_tree_svg_from_get_tree(cluster: Any, tmp_path: Path) -> None:
    c = await cluster(12)
    await c.broadcast("n0")
    await c.broadcast("n0")  # pruned: the eager links now form n0's tree
    tree = await c.pt("n3").get_tree("n0")
    children, unlinked, down = eager_tree(tree, "n0")
    assert unlinked == [] and down == []
    assert sum(len(v) for v in children.values()) == 11  # a spanning tree of 12 nodes
    path = tmp_path / "t.svg"
    write_tree_svg({"root": "n0", "node": "n3", "tree": {k: v if isinstance(v, str) else [sorted(v[0]), sorted(v[1])]
                                                          for k, v in tree.items()}}, str(path))
    root = ET.parse(path).getroot()
    assert root.tag == f"{SVG}svg"
    assert len(root.findall(f"{SVG}line")) == 11
    titles = [e.findtext(f"{SVG}title") for e in root.findall(f"{SVG}circle")]
    assert sorted(t.split()[0] for t in titles if t) == sorted(c.nodes)
    # the delivery tree of the broadcast draws the same way
    svg = tree_svg(c.children(c.last.msg_id), "n0") if c.last is not None else ""
    assert svg.count("<line") == 11


def test_pt_sim_paper_command_csv_plot_svg(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    out, png, svg = tmp_path / "p.csv", tmp_path / "p.png", tmp_path / "p.svg"
    assert main(["sim", "plumtree", "--paper", "--nodes", "20", "--scenarios", "single", "massive",
                 "--broadcasts", "3", "--fail", "0.5", "--after", "3", "--csv", str(out), "--plot", str(png),
                 "--svg", str(svg)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["scenario", "N"] and any(x.startswith("fail-50%#3") for x in lines)
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert [r["scenario"] for r in rows] == ["single"] * 3 + ["pre-50%"] * 3 + ["fail-50%"] * 3
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert ET.parse(svg).getroot().tag == f"{SVG}svg"
    # the same summary again from the CSV alone
    assert main(["sim", "plumtree", "--paper", "--from-csv", str(out)]) == 0
    assert capsys.readouterr().out.splitlines() == lines
