"""``msgr demo`` run as a user runs it: a subprocess, over each transport,
plus Ctrl-C in the middle.  Each run takes 7-16 s (most of it is gossip
convicting the killed node, about 4-5 s with the demo's 0.2 s rounds)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

MSGR = [sys.executable, "-m", "msgr_core.cli"]

PHASES = ["== start:", "== membership:", "== broadcast:", "== steady state", "== kill:", "== conviction:",
          "== tree repair:", "== nothing lost:", "== clean stop:", "== summary =="]
CHECKS = ["start", "membership", "broadcast reaches every node",
          "broadcast right after the kill reaches every survivor", "heartbeat conviction", "gossip conviction",
          "view change", "broadcast after the view change reaches every survivor", "nothing lost", "clean stop"]


def _alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie does not count: it is only waiting to be reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _pids(out: str) -> list[int]:
    return [int(p) for p in re.findall(r"up \(pid (\d+)\) listening on", out)]


def _run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MSGR, "demo", *args], capture_output=True, text=True, timeout=120)


def _assert_all_phases_passed(out: subprocess.CompletedProcess[str], nodes: int) -> None:
    text = out.stdout
    assert out.returncode == 0, text + out.stderr
    positions = [text.index(p) for p in PHASES]  # ValueError names a missing phase
    assert positions == sorted(positions), "phases out of order"
    for name in CHECKS:
        assert f"[PASS] {name}:" in text, name
    assert "FAIL" not in text
    assert f"demo ok: {len(CHECKS)}/{len(CHECKS)} checks passed" in text
    assert f"heartbeat conviction: {nodes - 1}/{nodes - 1} survivors raised peer_failed(node-{nodes})" in text
    assert f"gossip conviction: {nodes - 1}/{nodes - 1} survivors ran on_dead(node-{nodes})" in text
    # the shortened timers are announced
    assert "demo timers: gossip every 0.2 s (default 1 s)" in text
    m = re.search(r"checks passed in ([\d.]+) s", text)
    assert m is not None and float(m.group(1)) < 60


@pytest.mark.parametrize("transport", ["tcp", "zmq+tcp"])
def test_demo_processes_over_transport(transport: str) -> None:
    out = _run_demo("--transport", transport, "--duration", "0.5")
    _assert_all_phases_passed(out, 5)
    pids = _pids(out.stdout)
    assert len(pids) == 5 and os.getpid() not in pids
    assert out.stdout.count(f"listening on {transport}://127.0.0.1:") == 5
    assert re.search(r"node-5 killed \(pid \d+\)", out.stdout)
    assert not [p for p in pids if _alive(p)], "leftover node processes"


def test_demo_loop_runs_in_process_with_three_nodes() -> None:
    out = _run_demo("--transport", "loop", "--nodes", "3", "--duration", "0")
    _assert_all_phases_passed(out, 3)
    assert "in this process on the simulated loop:// network" in out.stdout
    assert out.stdout.count("up (pid in-process) listening on loop://node-") == 3
    assert _pids(out.stdout) == []


def test_demo_ctrl_c_leaves_no_process_behind() -> None:
    demo = subprocess.Popen([*MSGR, "demo", "--duration", "60"], stdout=subprocess.PIPE, text=True)
    seen: list[str] = []
    try:
        assert demo.stdout is not None
        for line in demo.stdout:
            seen.append(line)
            if line.startswith("== steady state"):
                break
        pids = _pids("".join(seen))
        assert len(pids) == 5, "".join(seen)
        assert all(_alive(p) for p in pids)
        pgid = os.getpgid(pids[0])
        assert pgid != os.getpgid(0) and all(os.getpgid(p) == pgid for p in pids)
        demo.send_signal(signal.SIGINT)
        rest = demo.stdout.read()
        assert demo.wait(timeout=30) == 130
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        if demo.stdout:
            demo.stdout.close()
    assert "interrupted" in rest
    assert not [p for p in pids if _alive(p)], "leftover node processes"
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)  # the whole group is gone


def test_demo_options_are_checked() -> None:
    out = _run_demo("--nodes", "2")
    assert out.returncode == 2 and "--nodes must be 3 to 16" in out.stderr
    out = _run_demo("--transport", "rdma")
    assert out.returncode == 2 and "invalid choice: 'rdma'" in out.stderr
    out = subprocess.run([*MSGR, "demo", "--help"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0
    assert "loop: every node in this process on msgr-loopback's simulated network (loop:// cannot cross" in out.stdout


def test_demo_nodes_exit_when_the_demo_itself_is_killed() -> None:
    """SIGKILL gives the demo no chance to clean up: each node sees its
    stdin close and exits on its own."""
    import time

    demo = subprocess.Popen([*MSGR, "demo", "--duration", "60"], stdout=subprocess.PIPE, text=True)
    seen: list[str] = []
    try:
        assert demo.stdout is not None
        for line in demo.stdout:
            seen.append(line)
            if line.startswith("== steady state"):
                break
        pids = _pids("".join(seen))
        assert len(pids) == 5 and all(_alive(p) for p in pids)
        demo.kill()
        demo.wait()
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        if demo.stdout:
            demo.stdout.close()
    # Orphans are not our children: nothing to wait on but their pids (bounded).
    deadline = time.monotonic() + 30
    while [p for p in pids if _alive(p)] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in pids if _alive(p)], "node processes outlived the demo"
