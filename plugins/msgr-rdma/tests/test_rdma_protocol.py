"""The msgr-rdma protocol over the strict emulation: credits keep a flood
free of RNR errors, large frames go by one RDMA READ, multi-buffer frames
are fragmented and reassembled, and verbs failures break links with their
status."""

from __future__ import annotations

import time
from typing import Any

import pytest
from msgr_rdma import RdmaLinkBroken, WcStatus

from msgr_core.errors import FrameTooLarge


async def test_credits_prevent_rnr_under_a_flood(rdma_pair: Any) -> None:
    """3 receive buffers a side (the minimum), 20,000 frames each way sent
    at once: any SEND without a posted receive would be an RNR error that
    breaks the link; all frames arrive in order instead."""
    link, c, srv_link, s = await rdma_pair(buffer_size=128, recv_count=3)
    n = 20_000
    for i in range(n):
        link.send([b"%d" % i])
        srv_link.send([b"r%d" % i])
    assert link.write_buffer_size() > 0  # most are queued, waiting for credits
    await s.wait_frames(n)
    await c.wait_frames(n)
    assert [bytes(f[0]) for f in s.frames] == [b"%d" % i for i in range(n)]
    assert [bytes(f[0]) for f in c.frames] == [b"r%d" % i for i in range(n)]
    assert not c.lost.done() and not s.lost.done()
    assert link.write_buffer_size() == 0
    assert 0 < link.credits <= 3


async def test_large_frame_goes_by_one_rdma_read(rdma_pair: Any) -> None:
    link, c, srv_link, s = await rdma_pair(buffer_size=4096, rendezvous_threshold=65536)
    big = bytes(range(256)) * (16 * 1024)  # 4 MiB
    sent_before = link.stats_messages_sent
    link.send([b"header", big, b"tail"])
    link.send([b"small after it"])
    await s.wait_frames(2)
    assert [bytes(b) for b in s.frames[0]] == [b"header", big, b"tail"]
    assert bytes(s.frames[1][0]) == b"small after it"  # order kept behind the read
    assert srv_link.stats_reads == 1
    assert link.stats_messages_sent - sent_before == 2  # one RTS, one small frame
    srv_link.send([b"reply"])  # goes out after the FIN
    await c.wait_frames(1)
    assert link.write_buffer_size() == 0


async def test_multi_buffer_frame_is_fragmented_and_reassembled(rdma_pair: Any) -> None:
    link, _c, _srv_link, s = await rdma_pair(buffer_size=1024, rendezvous_threshold=1 << 20)
    parts = [bytes([i]) * (3000 + i) for i in range(7)] + [b""]
    before = link.stats_messages_sent
    link.send(parts)
    await s.wait_frames(1)
    assert [bytes(b) for b in s.frames[0]] == parts
    sent = link.stats_messages_sent - before
    assert 20 <= sent <= 25, sent  # ~21 KiB in 1020-byte pieces


async def test_injected_qp_error_breaks_both_links_with_the_status(rdma_pair: Any) -> None:
    from msgr_rdma.emulation import EmuFabric

    link, c, srv_link, s = await rdma_pair()
    link.send([b"before"])
    await s.wait_frames(1)
    EmuFabric.shared().inject_error(srv_link.qp.qp_num)
    for rec in (s, c):
        exc = await rec.wait_lost()
        assert isinstance(exc, RdmaLinkBroken), exc
        assert exc.status == WcStatus.WR_FLUSH_ERR
        assert "WR_FLUSH_ERR" in str(exc)


async def test_cq_overrun_breaks_the_link(rdma_pair: Any) -> None:
    link, c, srv_link, s = await rdma_pair(recv_count=8)
    srv_link._cq.depth = 2  # type: ignore[attr-defined]  # shrink it under the protocol
    for i in range(6):
        link.send([b"%d" % i])
    exc = await s.wait_lost()
    assert isinstance(exc, RdmaLinkBroken) and "CQ overrun" in str(exc)
    await c.wait_lost()


async def test_oversize_rendezvous_is_refused_before_reading(rdma_pair: Any) -> None:
    link, c, srv_link, s = await rdma_pair(rendezvous_threshold=1024)
    srv_link._opts = type(srv_link._opts)(max_frame_bytes=2048)  # type: ignore[attr-defined]
    link.send([bytes(4096)])
    assert isinstance(await s.wait_lost(), FrameTooLarge)
    assert srv_link.stats_reads == 0
    assert isinstance(await c.wait_lost(), RdmaLinkBroken)


@pytest.mark.parametrize("size", [64, 4096, 1 << 20])
async def test_emulated_protocol_throughput(rdma_pair: Any, size: int) -> None:
    """Frames/s through the protocol logic on the emulated backend (the
    emulation's copies included); printed with ``-s``."""
    link, _c, _srv_link, s = await rdma_pair()
    n = {64: 50_000, 4096: 20_000, 1 << 20: 200}[size]
    payload = bytes(size)
    t0 = time.perf_counter()
    for _ in range(n):
        link.send([payload])
    await s.wait_frames(n, guard=60)
    dt = time.perf_counter() - t0
    print(f"\nemulated rdma, {size} B frames: {n / dt:,.0f} frames/s, {n * size / dt / 1e6:,.0f} MB/s")
