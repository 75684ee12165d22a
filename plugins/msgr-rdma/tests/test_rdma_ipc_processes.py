"""``emulated-ipc`` between real processes: a messenger in a child process
(``rdma_peer_node.py``) and one here, their RC QPs' verbs carried over the
setup socket; lossless traffic, large frames by RDMA READ across the
processes, injected QP errors, and a killed peer."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from msgr_rdma import RdmaLinkBroken, RdmaTransport, WcStatus

from msgr_core import Messenger
from msgr_core.transport import TransportOptions

from .conftest import Rec

PEER = Path(__file__).with_name("rdma_peer_node.py")
PAD = b"." * 56


class Peer:
    """A ``rdma_peer_node.py`` process; ``address`` is where it listens."""

    def __init__(self, name: str, config: dict[str, Any] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(PEER), name, json.dumps(config or {})],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.address = self.proc.stdout.readline().strip()
        if not self.address.startswith("rdma://"):
            self.kill()
            raise RuntimeError(f"peer {name} failed to start (exit {self.proc.poll()})")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            if f and not f.closed:
                f.close()

    def stop(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            return self.proc.wait(timeout=30)
        finally:
            self.kill()


def seq(i: int) -> bytes:
    return i.to_bytes(8, "big") + PAD


def _config(name: str, **rdma: Any) -> dict[str, Any]:
    return {
        "messenger": {"name": name, "transports": ["rdma"]},
        "rdma": {"backend": "emulated-ipc", **rdma},
    }


async def _stream(conn: Any, total: int) -> None:
    for i in range(total):
        await conn.send("seq", seq(i))
        if i % 16 == 0:
            await asyncio.sleep(0)  # let the links move


async def test_lossless_stream_and_large_frames_between_two_processes() -> None:
    peer = Peer("rdma-peer")
    try:
        async with asyncio.timeout(120), Messenger.from_config(_config("rdma-here")) as ms:
            conn = ms.get_connection(peer.address)
            big = bytes(range(256)) * 4096  # 1 MiB: one RDMA READ from the other process's MR
            assert (await conn.request("echo", big, timeout=30)).payload == big
            total = 20_000
            await _stream(conn, total)
            report = (await conn.request("report", b"", timeout=60)).payload
            assert report == {"count": total, "disorder": 0, "next": total}
            assert conn.stats["reconnects"] == 0
        assert peer.stop() == 0
    finally:
        peer.kill()


@pytest.mark.parametrize("error_after", [100])
async def test_injected_qp_errors_lose_nothing_between_two_processes(error_after: int) -> None:
    """Every QP, on both sides, is moved to the error state at its
    ``error_after``-th send WR (as a fatal async event would): each link
    dies with flushed WRs mid-stream, the lossless session reconnects and
    replays -- 20,000 messages arrive once each, in order."""
    chaos = {"emu_qp_error_after": error_after, "buffer_size": 1024, "recv_count": 8}
    peer = Peer("rdma-peer-chaos", {"rdma": chaos})
    try:
        async with asyncio.timeout(240), Messenger.from_config(_config("rdma-chaos", **chaos)) as ms:
            conn = ms.get_connection(peer.address)
            total = 20_000
            await _stream(conn, total)
            report = (await conn.request("report", b"", timeout=120)).payload
            assert report == {"count": total, "disorder": 0, "next": total}
            assert conn.stats["reconnects"] >= 10, conn.stats
        assert peer.stop() == 0
    finally:
        peer.kill()


async def test_killed_peer_process_breaks_the_link_with_flushed_work_requests() -> None:
    """A raw link here to the other process's listener: SIGKILL the process
    and the setup socket's end moves our QP to the error state (as rdmacm's
    DISCONNECTED would): the link ends with WR_FLUSH_ERR."""
    peer = Peer("rdma-peer-killed")
    t = RdmaTransport("rdma", TransportOptions(settings={"backend": "emulated-ipc"}))
    try:
        rec = Rec()
        await t.connect(peer.address, rec)
        peer.kill()
        exc = await rec.wait_lost(guard=30)
        assert isinstance(exc, RdmaLinkBroken), exc
        assert exc.status == WcStatus.WR_FLUSH_ERR
    finally:
        peer.kill()
        await t.aclose()
