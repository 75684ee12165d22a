"""The benchmark suite runs and writes the JSON it promises.

Performance is never judged here: these tests check that ``python -m
benchmarks`` works end to end (worker processes, rounds, the message-count
check, table, ratios, JSON shape), not how fast anything is.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECORD_KEYS = {"case", "impl", "loop", "metric", "unit", "median", "min", "max", "runs"}
HAVE_TCP = importlib.util.find_spec("msgr_tcp") is not None


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_quick_run_writes_json_with_positive_figures(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = _run("--quick", "--loop", "asyncio", "--only", "oneway-64B", "--only", "reqrep-64B-1",
                "--impl", "msgr-tcp", "--impl", "raw-asyncio", "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text(encoding="utf-8"))

    machine = doc["machine"]
    assert machine["cpu_count"] >= 1
    assert machine["cpu_model"] and machine["python"] and machine["platform"]
    for dist in ("msgr-core", "pyzmq", "grpcio", "uvloop"):
        assert dist in doc["versions"]
    assert doc["failures"] == []

    records = doc["records"]
    seen = {(r["case"], r["impl"]) for r in records}
    expected = {("oneway-64B", "raw-asyncio"), ("reqrep-64B-1", "raw-asyncio")}
    if HAVE_TCP:
        expected |= {("oneway-64B", "msgr-tcp-lossy"), ("reqrep-64B-1", "msgr-tcp-lossy")}
    assert expected <= seen
    keys = set()
    for r in records:
        assert set(r) >= RECORD_KEYS, r
        assert r["loop"] == "asyncio"
        assert len(r["runs"]) == 3
        for v in (r["median"], r["min"], r["max"], *r["runs"]):
            assert isinstance(v, int | float) and math.isfinite(v), r
            # time spent waiting for a CPU held by other processes may be nil
            assert v >= 0 if r["metric"].endswith("_wait") else v > 0, r
        assert r["min"] <= r["median"] <= r["max"]
        keys.add((r["case"], r["impl"], r["loop"], r["metric"]))
    assert len(keys) == len(records), "records are unique by case, impl, loop and metric"
    metrics = {(r["case"], r["metric"]) for r in records}
    assert {("oneway-64B", "msgs_per_s"), ("reqrep-64B-1", "p50"), ("reqrep-64B-1", "p99"),
            ("reqrep-64B-1", "req_per_s")} <= metrics

    if HAVE_TCP:
        pairs = {(x["case"], x["metric"], x["num"], x["den"]) for x in doc["ratios"]}
        assert ("reqrep-64B-1", "p50", "msgr-tcp-lossy[asyncio]", "raw-asyncio[asyncio]") in pairs
    assert "case" in proc.stdout and "median" in proc.stdout  # the table


def test_unknown_selection_is_an_error() -> None:
    proc = _run("--only", "no-such-case", "--json", "/dev/null", timeout=60)
    assert proc.returncode == 2
    assert "no case matches" in proc.stderr


@pytest.mark.parametrize("args", [["--list"], ["--help"]])
def test_list_and_help(args: list[str]) -> None:
    proc = _run(*args, timeout=60)
    assert proc.returncode == 0
    assert "oneway-64B" in proc.stdout or "--only" in proc.stdout
