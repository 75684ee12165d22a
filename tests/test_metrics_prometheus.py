"""Prometheus metrics: the collector reads live state at scrape time (in
process, under virtual time), and ``msgr run --metrics-port`` serves it over
HTTP (two real nodes, scraped with urllib, parsed with prometheus_client)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from msgr_core import Messenger
from msgr_core.metrics import MessengerCollector, families

EXT = ["heartbeat", "gossip", "plumtree"]
MSGR = [sys.executable, "-m", "msgr_core.cli"]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def scrape(registry: CollectorRegistry) -> Samples:
    return parse(generate_latest(registry).decode())


class _Log:
    """A minimal Plumtree handler; ``got`` resolves on the first delivery."""

    def __init__(self) -> None:
        self.messages: dict[Any, Any] = {}
        self.got: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def broadcast_data(self, message: Any) -> tuple[Any, Any]:
        return message[0], message[1]

    def merge(self, msg_id: Any, payload: Any) -> bool:
        if msg_id in self.messages:
            return False
        self.messages[msg_id] = payload
        if not self.got.done():
            self.got.set_result(msg_id)
        return True

    def is_stale(self, msg_id: Any) -> bool:
        return msg_id in self.messages

    def graft(self, msg_id: Any) -> Any:
        return self.messages[msg_id]


def _node(name: str, seeds: list[str]) -> Messenger:
    return Messenger.from_config({
        "messenger": {"name": name, "listen": [f"loop://m{name}"], "extensions": EXT},
        "heartbeat": {"interval": 1.0, "grace": 5.0},
        "gossip": {"interval": 1.0, "seeds": seeds},
    })


@pytest.mark.looptime
async def test_metrics_collector_reads_live_state_at_scrape_time() -> None:
    a, b = _node("a", []), _node("b", ["loop://ma"])
    a.register_handler("echo", lambda msg: msg.payload)
    await a.start()
    await b.start()
    try:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(MessengerCollector(a))
        assert scrape(registry)[("msgr_up", ())] == 1.0
        await asyncio.sleep(10)  # virtual: ten gossip and heartbeat rounds

        m = scrape(registry)
        assert m[("msgr_node_info", (("name", "a"), ("type", "node")))] == 1.0
        assert m[("msgr_view_members", ())] == 2.0  # gossip installed {a, b}
        assert ("msgr_gossip_phi", (("endpoint", "b"),)) in m
        assert m[("msgr_gossip_endpoint_alive", (("endpoint", "b"),))] == 1.0
        assert m[("msgr_gossip_rounds_total", ())] >= 8
        assert m[("msgr_gossip_sent_total", (("verb", "gossip.syn"),))] >= 1
        assert m[("msgr_heartbeat_peer_rtt_seconds", (("peer", "b"),))] >= 0.0
        assert m[("msgr_heartbeat_peer_pings_in_total", (("peer", "b"),))] >= 5
        assert m[("msgr_heartbeat_peer_failed", (("peer", "b"),))] == 0.0
        assert m[("msgr_heartbeat_grace_seconds", ())] == 5.0
        assert m[("msgr_plumtree_members", ())] == 1.0
        assert m[("msgr_sessions", ())] >= 1
        for name in ("msgr_msgs_out_total", "msgr_bytes_in_total", "msgr_resets_total", "msgr_undeliverable_total"):
            assert (name, ()) in m, name
        assert m[("msgr_session_queued_msgs", (("peer", "b"),))] == 0.0

        # traffic moves the counters, read at the next scrape (nothing counted here)
        before = m
        for i in range(10):
            assert await b.send_message("echo", "loop://ma", i, timeout=5) == i
        log_a, log_b = _Log(), _Log()
        a.extensions["plumtree"].register("t", log_a)
        b.extensions["plumtree"].register("t", log_b)
        a.extensions["plumtree"].broadcast("t", ("m1", b"hello"))
        assert await asyncio.wait_for(log_b.got, 5) == "m1"
        m = scrape(registry)
        assert m[("msgr_msgs_in_total", ())] >= before[("msgr_msgs_in_total", ())] + 10
        assert m[("msgr_bytes_in_total", ())] > before[("msgr_bytes_in_total", ())]
        assert m[("msgr_session_msgs_out_total", (("peer", "b"),))] >= (
            before[("msgr_session_msgs_out_total", (("peer", "b"),))] + 11)  # 10 replies + the broadcast
        assert m[("msgr_plumtree_payload_out_total", ())] == 1.0
    finally:
        await b.stop()
        await a.stop()
    assert scrape(registry) == {("msgr_up", ()): 0.0}


def test_metrics_families_are_generic_over_stats_keys() -> None:
    """A counter a later version adds to ``messenger.stats`` (or an
    unknown extension) is exported without a code change."""
    snap = {"name": "n", "type": "t", "view": None,
            "stats": {"msgs_out": 3, "auth_failures": 2, "rejected": {"bad_mac": 1, "no_key": 4},
                      "queued_msgs": 7, "sessions": 1},
            "sessions": [{"peer": "p", "state": "open", "msgs_out": 1, "unacked_msgs": 2},
                         {"peer": "p", "state": "open", "msgs_out": 2, "unacked_msgs": 0}],
            "extensions": {"mine": {"widgets": 5, "label": "x"}, "off": None}}
    registry = CollectorRegistry(auto_describe=False)

    class Fixed:
        def collect(self) -> Iterator[Any]:
            return iter(families(snap))

    registry.register(Fixed())  # type: ignore[arg-type]
    m = scrape(registry)
    assert m[("msgr_auth_failures_total", ())] == 2.0
    assert m[("msgr_rejected_total", (("kind", "bad_mac"),))] == 1.0
    assert m[("msgr_rejected_total", (("kind", "no_key"),))] == 4.0
    assert m[("msgr_queued_msgs", ())] == 7.0  # a depth is a gauge
    assert m[("msgr_session_msgs_out_total", (("peer", "p"),))] == 3.0  # summed per peer
    assert m[("msgr_session_unacked_msgs", (("peer", "p"),))] == 2.0
    assert m[("msgr_ext_value", (("extension", "mine"), ("key", "widgets")))] == 5.0
    text = generate_latest(registry).decode()
    assert "# TYPE msgr_auth_failures_total counter" in text and "# TYPE msgr_queued_msgs gauge" in text


# -- a real node, scraped over HTTP ------------------------------------------------------------


def _start(cfg: Path, *extra: str) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen([*MSGR, "run", "--config", str(cfg), *extra], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    lines = [proc.stdout.readline().strip()]
    if "--metrics-port" in extra:
        lines.append(proc.stdout.readline().strip())
    return proc, lines


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.terminate()
    try:
        return proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


def _config(path: Path, name: str, seeds: list[str] | None = None) -> Path:
    path.write_text(f'[messenger]\nname = "{name}"\nlisten = ["tcp://127.0.0.1:0"]\n'
                    f"extensions = {json.dumps(EXT)}\n"
                    "[heartbeat]\ninterval = 0.2\ngrace = 2.0\n"
                    f"[gossip]\ninterval = 0.2\nseeds = {json.dumps(seeds or [])}\n")
    return path


def _get(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        return parse(resp.read().decode())


def test_metrics_served_by_msgr_run_over_http(tmp_path: Path) -> None:
    a, a_lines = _start(_config(tmp_path / "a.toml", "a"), "--metrics-port", "0")
    b = None
    try:
        assert a_lines[0].startswith("a listening on tcp://127.0.0.1:"), a_lines
        address = a_lines[0].split()[3]
        assert a_lines[1].startswith("a metrics on http://127.0.0.1:") and a_lines[1].endswith("/metrics")
        url = a_lines[1].split()[3]
        m = _get(url)
        assert m[("msgr_up", ())] == 1.0 and m[("msgr_gossip_live", ())] == 0.0

        b, _ = _start(_config(tmp_path / "b.toml", "b", [address]))
        # Another process's state can only be observed from outside: scrape
        # until gossip and heartbeat have seen b (bounded).
        deadline = time.monotonic() + 30
        while True:
            m = _get(url)
            if (("msgr_gossip_phi", (("endpoint", "b"),)) in m
                    and ("msgr_heartbeat_peer_rtt_seconds", (("peer", "b"),)) in m) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert m[("msgr_gossip_endpoint_alive", (("endpoint", "b"),))] == 1.0
        assert 0.0 <= m[("msgr_gossip_phi", (("endpoint", "b"),))] < 8.0
        assert 0.0 < m[("msgr_heartbeat_peer_rtt_seconds", (("peer", "b"),))] < 1.0
        assert m[("msgr_view_members", ())] == 2.0

        before = m[("msgr_msgs_in_total", ())]
        out = subprocess.run([*MSGR, "ping", address, "-c", "20"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        m = _get(url)
        assert m[("msgr_msgs_in_total", ())] >= before + 21  # 20 pings + the probe
        assert m[("msgr_msgs_out_total", ())] >= 21
        assert m[("msgr_resets_total", ())] >= 1  # the ping client's session ended
        assert _stop(b) == 0
        b = None
        assert _stop(a) == 0
    finally:
        for p in (b, a):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()


def test_metrics_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = subprocess.run([*MSGR, "run", "--config", str(_config(tmp_path / "a.toml", "a")),
                              "--metrics-port", str(port)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert f"cannot serve metrics on 127.0.0.1:{port}" in out.stderr
