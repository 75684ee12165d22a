"""``msgr sim gossip`` and ``msgr gossip status`` through the msgr CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from msgr_gossip.sim import run

from msgr_core.cli import main

NODE = Path(__file__).parent / "gossip_node.py"


def test_sim_gossip_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "gossip", "--nodes", "12", "--seeds", "2", "--trials", "10"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["N", "seeds", "fanout"] and "log3N+lnlnN" in out[0]
    row = out[1].split()
    assert row[:2] == ["12", "2"] and row[4] == "10"
    assert main(["sim", "gossip", "--nodes", "8", "--trials", "10", "--no-crash", "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["nodes"] == 8 and result["trials"] == 10 and result["conviction_mean_s"] is None
    assert 0 < result["rounds_mean"] <= result["rounds_max"] <= 2 * result["bound"]


def test_sim_100_nodes() -> None:
    res = run(100, 5, trials=10, crash=False)
    assert len(res.rounds) == 10
    assert sum(res.rounds) / len(res.rounds) <= res.bound + 1
    assert 2 <= res.msgs_per_node_round <= 5  # SYN + ACK + ACK2, seeds and echoes aside


def test_gossip_status_of_a_tcp_node(capsys: pytest.CaptureFixture[str]) -> None:
    proc = subprocess.Popen([sys.executable, str(NODE), "solo", json.dumps({"gossip": {"interval": 0.2}})],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        addr = proc.stdout.readline().split()[1]
        assert main(["gossip", "status", addr]) == 0
        out = capsys.readouterr().out
        assert out.startswith("solo: 0 live, 0 unreachable")
        assert "solo *" in out and "normal" in out and addr in out
        assert main(["gossip", "status", addr, "--json"]) == 0
        status = json.loads(capsys.readouterr().out)
        assert status["endpoints"][0]["endpoint"] == "solo"
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
        if proc.stdout is not None:
            proc.stdout.close()
