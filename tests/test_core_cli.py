"""The msgr command, run as a user runs it (a subprocess)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
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
