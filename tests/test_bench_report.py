"""Ratios and target verdicts of the benchmark report (pure functions, no timing)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:  # benchmarks/ is a top-level directory, not an installed package
    sys.path.insert(0, ROOT)

from benchmarks.harness import Record  # noqa: E402
from benchmarks.report import compute_ratios, fmt  # noqa: E402


def _rec(case: str, impl: str, loop: str, metric: str, runs: list[float]) -> Record:
    return Record(case, impl, loop, metric, "x", runs)


def test_ratio_pairs_same_loop_and_loop_independent_peers() -> None:
    records = [
        _rec("oneway-64B", "msgr-tcp-lossy", "asyncio", "msgs_per_s", [100, 110, 90]),
        _rec("oneway-64B", "raw-asyncio", "asyncio", "msgs_per_s", [400, 400, 400]),
        _rec("oneway-64B", "msgr-tcp-lossy", "uvloop", "msgs_per_s", [300]),
        _rec("oneway-64B", "raw-asyncio", "uvloop", "msgs_per_s", [500]),
        _rec("oneway-64B", "raw-pyzmq", "none", "msgs_per_s", [200]),
    ]
    got = {(r.num, r.den): r for r in compute_ratios(records)}
    r = got[("msgr-tcp-lossy[asyncio]", "raw-asyncio[asyncio]")]
    assert r.ratio == 0.25 and r.met is False and r.target == ">= 0.5x"
    assert r.verdict.startswith("MISSED by 50%: needs 2.00x more")
    # same number of runs: the median of the per-run ratios, and their range
    assert (r.low, r.high) == (0.225, 0.275)
    assert got[("msgr-tcp-lossy[uvloop]", "raw-asyncio[uvloop]")].met is True
    # a loop-independent peer is compared with every loop (different run counts: ratio of medians)
    assert got[("msgr-tcp-lossy[asyncio]", "raw-pyzmq[none]")].ratio == 0.5
    assert got[("msgr-tcp-lossy[asyncio]", "raw-pyzmq[none]")].low is None
    assert got[("msgr-tcp-lossy[uvloop]", "raw-pyzmq[none]")].met is True
    assert ("msgr-tcp-lossy[asyncio]", "raw-asyncio[uvloop]") not in got


def test_lower_is_better_targets_and_absolute_targets() -> None:
    records = [
        _rec("reqrep-64B-1", "msgr-tcp-lossy", "asyncio", "p50", [60]),
        _rec("reqrep-64B-1", "raw-asyncio", "asyncio", "p50", [40]),
        _rec("scale-idle", "msgr-tcp-lossy", "asyncio", "idle_session_bytes", [10_000, 12_000, 11_000]),
    ]
    got = {(r.case, r.metric): r for r in compute_ratios(records)}
    p50 = got[("reqrep-64B-1", "p50")]
    assert p50.ratio == 1.5 and p50.met is False
    assert "needs 1.20x less" in p50.verdict
    mem = got[("scale-idle", "idle_session_bytes")]
    assert mem.met is True and mem.ratio == 11_000


def test_fmt() -> None:
    assert fmt(1234567.8) == "1,234,568"
    assert fmt(12.345) == "12.3"
    assert fmt(1.2345) == "1.23"
    assert fmt(0.012345) == "0.0123"
