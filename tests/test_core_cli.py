"""The msgr command, run as a user runs it (a subprocess)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

MSGR = [sys.executable, "-m", "msgr_core.cli"]


def msgr(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MSGR, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_plugins_json_lists_the_transports() -> None:
    out = msgr("plugins", "--json")
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    for name, dist in (("loop", "msgr-loopback"), ("tcp", "msgr-tcp"), ("unix", "msgr-tcp")):
        assert rows[name]["kind"] == "transport"
        assert rows[name]["distribution"] == dist
        assert rows[name]["status"] == "ok"


def test_plugins_table_and_blocking_by_env() -> None:
    out = msgr("plugins", env={"MSGR_DISABLE_PLUGINS": "loop"})
    assert out.returncode == 0
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("loop "))
    assert "blocked" in line


def test_config_check(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[messenger]\nname = "n1"\nlisten = ["tcp://127.0.0.1:0"]\n[tcp]\n')
    out = msgr("config", "check", str(good))
    assert out.returncode == 0, out.stderr
    assert "ok" in out.stdout and "n1" in out.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[messenger]\nlisten = ["tcp://127.0.0.1:0"]\n[limits]\nmax_frame_bytes = "lots"\n')
    out = msgr("config", "check", str(bad))
    assert out.returncode == 1
    assert str(bad) in out.stderr and "limits.max_frame_bytes" in out.stderr and "'lots'" in out.stderr
    missing = tmp_path / "sctp.toml"
    missing.write_text('[messenger]\nlisten = ["sctp://0.0.0.0:1"]\n')
    out = msgr("config", "check", str(missing))
    assert out.returncode == 1 and "unknown transport 'sctp' (installed: " in out.stderr and "tcp" in out.stderr


def test_run_and_ping_then_graceful_sigterm(tmp_path: Path) -> None:
    cfg = tmp_path / "node.toml"
    cfg.write_text('[messenger]\nname = "pinged"\nlisten = ["tcp://127.0.0.1:0"]\n')
    node = subprocess.Popen([*MSGR, "run", "--config", str(cfg)], stdout=subprocess.PIPE, text=True)
    try:
        assert node.stdout is not None
        first = node.stdout.readline().split()
        assert first[:3] == ["pinged", "listening", "on"]
        address = first[3]
        out = msgr("ping", address, "-c", "3")
        assert out.returncode == 0, out.stderr
        assert "connected to pinged" in out.stdout
        assert out.stdout.count("rtt=") == 3 and "min/median/max" in out.stdout
        node.send_signal(signal.SIGTERM)
        assert node.wait(timeout=30) == 0
        assert "pinged stopping" in node.stdout.read()
    finally:
        if node.poll() is None:
            node.kill()
        if node.stdout:
            node.stdout.close()


def test_ping_unreachable_fails_clearly() -> None:
    out = msgr("ping", "tcp://127.0.0.1:1", "-c", "1")
    assert out.returncode == 1
    assert "unreachable" in out.stderr


def _ext_config(path: Path, name: str, seeds: list[str] | None = None) -> Path:
    path.write_text(f'[messenger]\nname = "{name}"\nlisten = ["tcp://127.0.0.1:0"]\n'
                    'extensions = ["heartbeat", "gossip", "plumtree"]\n'
                    "[heartbeat]\ninterval = 0.2\ngrace = 2.0\n"
                    f"[gossip]\ninterval = 0.2\nseeds = {json.dumps(seeds or [])}\n")
    return path


def _run(cfg: Path) -> tuple[subprocess.Popen[str], str]:
    node = subprocess.Popen([*MSGR, "run", "--config", str(cfg)], stdout=subprocess.PIPE, text=True)
    assert node.stdout is not None
    first = node.stdout.readline().split()
    assert first[1:3] == ["listening", "on"], first
    return node, first[3]


def test_status_of_a_running_node(tmp_path: Path) -> None:
    import asyncio

    from msgr_core.status import fetch_status

    a, address = _run(_ext_config(tmp_path / "a.toml", "alpha"))
    b = None
    try:
        b, _ = _run(_ext_config(tmp_path / "b.toml", "beta", [address]))
        # wait (bounded) until gossip has put beta in alpha's view: only
        # alpha can tell, so ask it
        deadline = time.monotonic() + 30
        while True:
            st = asyncio.run(fetch_status(address))
            if st["view"] == ["alpha", "beta"] or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert st["view"] == ["alpha", "beta"]

        out = msgr("status", address, "--json")
        assert out.returncode == 0, out.stderr
        st = json.loads(out.stdout)
        assert st["name"] == "alpha" and st["addresses"] == [address] and st["view"] == ["alpha", "beta"]
        peers = {s["peer"] for s in st["sessions"]}
        assert "beta" in peers and st["client"] in peers
        assert st["stats"]["msgs_in"] > 0 and st["stats"]["sessions"] >= 2
        assert set(st["extensions"]) == {"heartbeat", "gossip", "plumtree"}
        endpoints = {e["endpoint"]: e for e in st["extensions"]["gossip"]["endpoints"]}
        assert endpoints["beta"]["alive"] is True and endpoints["beta"]["phi"] < 8
        assert st["extensions"]["heartbeat"]["grace"] == 2.0
        assert st["extensions"]["plumtree"]["members"] == 1

        out = msgr("status", address)
        assert out.returncode == 0, out.stderr
        text = out.stdout
        assert text.startswith("node alpha (type node, incarnation ")
        assert "  view: alpha, beta (2 members)" in text
        assert "sessions (" in text and "(this client)" in text
        session_line = next(ln for ln in text.splitlines() if ln.strip().startswith("beta "))
        policy = next(s["policy"] for s in st["sessions"] if s["peer"] == "beta")
        assert session_line.split()[1:3] == ["open", policy]
        assert "extensions (3):" in text and "  gossip: name=alpha" in text and "    endpoints:" in text
        assert "  heartbeat: interval=0.2 grace=2" in text and "  plumtree: payload_out=" in text
    finally:
        for p in (b, a):
            if p is not None:
                p.send_signal(signal.SIGTERM)
                if p.wait(timeout=30) != 0:
                    pytest.fail("msgr run did not stop cleanly")
                if p.stdout:
                    p.stdout.close()


def test_status_falls_back_to_the_core_verb(tmp_path: Path) -> None:
    """A messenger not started by `msgr run` answers only msgr.status:
    no extension state, and the text says so."""
    script = tmp_path / "plain.py"
    script.write_text(
        "import asyncio, sys\n"
        "from msgr_core import Messenger\n"
        "async def main():\n"
        "    ms = Messenger.from_config({'messenger': {'name': 'plain', 'listen': ['tcp://127.0.0.1:0']}})\n"
        "    async with ms:\n"
        "        print(ms.addresses[0], flush=True)\n"
        "        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)\n"
        "asyncio.run(main())\n")
    node = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert node.stdout is not None and node.stdin is not None
        address = node.stdout.readline().strip()
        out = msgr("status", address)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("node plain ") and "view: none installed" in out.stdout
        assert "extensions: (not reported: the node does not serve msgr.node_status" in out.stdout
        node.stdin.close()
        assert node.wait(timeout=30) == 0
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
        if node.stdout:
            node.stdout.close()


def test_status_unreachable_fails_clearly() -> None:
    out = msgr("status", "tcp://127.0.0.1:1")
    assert out.returncode == 1
    assert out.stderr.startswith("status tcp://127.0.0.1:1: ") and "unreachable" in out.stderr
