"""The verbs emulation enforces verbs semantics strictly -- RNR, length, MR
bounds and access, flush on error, CQ overrun, QP state rules -- and does
so identically in-process (``emulated``) and with the two QPs on two
emulated NICs talking over a real TCP socket (``emulated-ipc``): every
semantic test runs in both modes."""

from __future__ import annotations

import asyncio
import select
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from msgr_rdma._oob import OobChannel
from msgr_rdma.emulation import EmuContext, EmuCQ, EmuFabric, EmuQP
from msgr_rdma.verbs import Access, Opcode, QPState, VerbsError, WcStatus, WorkCompletion


@dataclass
class Pair:
    """Two connected RC QPs: ``a`` on ``ctx_a``, ``b`` on ``ctx_b`` (the
    same fabric in-process; two NICs with their own MR tables over IPC)."""

    a: EmuQP
    cqa: EmuCQ
    ctx_a: EmuContext
    b: EmuQP
    cqb: EmuCQ
    ctx_b: EmuContext
    ipc: bool


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def take(cq: EmuCQ, n: int, guard: float = 10.0) -> list[WorkCompletion]:
    """Exactly the next ``n`` completions of ``cq``, waiting on its
    completion channel for those not there yet."""
    loop = asyncio.get_running_loop()
    out: list[WorkCompletion] = []
    async with asyncio.timeout(guard):
        while True:
            out += cq.poll(n - len(out))
            if len(out) == n:
                return out
            woke: asyncio.Future[None] = loop.create_future()
            loop.add_reader(cq.fileno(), _wake, woke)
            try:
                cq.req_notify()
                await woke
            finally:
                loop.remove_reader(cq.fileno())
            cq.ack_events()


async def _connect_ipc(a: EmuQP, b: EmuQP) -> list[OobChannel]:
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[OobChannel] = loop.create_future()

    def make() -> OobChannel:
        ch = OobChannel()
        ch.on_made = accepted.set_result
        return ch

    server = await loop.create_server(make, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _t, ch_a = await loop.create_connection(OobChannel, "127.0.0.1", port)
    ch_b = await accepted
    server.close()
    a.attach(ch_a)
    b.attach(ch_b)
    return [ch_a, ch_b]


@pytest.fixture(params=["in-process", "ipc"])
async def make_pair(request: pytest.FixtureRequest) -> AsyncIterator[object]:
    made: list[Pair] = []

    async def make(depth: int = 16, max_send_wr: int = 8, max_inline: int = 0, error_after: int = 0) -> Pair:
        ipc = request.param == "ipc"
        if ipc:
            ctx_a, ctx_b = EmuFabric().open("a", qp_error_after=error_after), EmuFabric().open("b")
        else:
            ctx_a = ctx_b = EmuFabric().open(qp_error_after=error_after)
        cqa, cqb = ctx_a.create_cq(depth), ctx_b.create_cq(depth)
        a = ctx_a.create_qp(cqa, max_send_wr, 8, max_inline)
        b = ctx_b.create_qp(cqb, max_send_wr, 8, max_inline)
        if ipc:
            await _connect_ipc(a, b)
        for qp in (a, b):
            qp.to_init()
        a.to_rtr(b.endpoint())
        b.to_rtr(a.endpoint())
        a.to_rts()
        b.to_rts()
        pair = Pair(a, cqa, ctx_a, b, cqb, ctx_b, ipc)
        made.append(pair)
        return pair

    yield make
    for p in made:
        p.a.destroy()
        p.b.destroy()
        p.cqa.close()
        p.cqb.close()


async def test_send_lands_in_posted_receive(make_pair: object) -> None:
    p: Pair = await make_pair()  # type: ignore[operator]
    src = p.ctx_a.reg_mr(64, Access.LOCAL_WRITE)
    dst = p.ctx_b.reg_mr(64, Access.LOCAL_WRITE)
    src.view[:5] = b"hello"
    p.b.post_recv(7, dst, 0, 64)
    p.a.post_send(1, src, 0, 5)
    (wc,) = await take(p.cqb, 1)
    assert (wc.wr_id, wc.status, wc.opcode, wc.byte_len) == (7, WcStatus.SUCCESS, Opcode.RECV, 5)
    assert bytes(dst.view[:5]) == b"hello"
    (wc,) = await take(p.cqa, 1)
    assert (wc.wr_id, wc.status, wc.opcode) == (1, WcStatus.SUCCESS, Opcode.SEND)


async def test_send_without_posted_receive_is_rnr_and_breaks_both_qps(make_pair: object) -> None:
    p: Pair = await make_pair()  # type: ignore[operator]
    src = p.ctx_a.reg_mr(64, Access.LOCAL_WRITE)
    p.a.post_send(1, src, 0, 8)
    (wc,) = await take(p.cqa, 1)
    assert wc.status == WcStatus.RNR_RETRY_EXC_ERR
    assert p.a.state == QPState.ERR and p.b.state == QPState.ERR


async def test_send_longer_than_receive_buffer(make_pair: object) -> None:
    p: Pair = await make_pair()  # type: ignore[operator]
    mr_a = p.ctx_a.reg_mr(64, Access.LOCAL_WRITE)
    mr_b = p.ctx_b.reg_mr(64, Access.LOCAL_WRITE)
    p.b.post_recv(7, mr_b, 0, 4)
    p.a.post_send(1, mr_a, 0, 8)
    assert (await take(p.cqa, 1))[0].status == WcStatus.REM_INV_REQ_ERR
    assert (await take(p.cqb, 1))[0].status == WcStatus.LOC_LEN_ERR
    assert p.a.state == QPState.ERR and p.b.state == QPState.ERR


@pytest.mark.parametrize(
    ("offset", "length", "access"),
    [(60, 8, Access.LOCAL_WRITE), (-1, 4, Access.LOCAL_WRITE), (0, 4, Access.LOCAL_READ)],
    ids=["past-the-end", "negative-offset", "no-local-write"],
)
async def test_receive_outside_mr_or_without_local_write(
    make_pair: object, offset: int, length: int, access: Access
) -> None:
    p: Pair = await make_pair()  # type: ignore[operator]
    mr = p.ctx_b.reg_mr(64, access)
    p.b.post_recv(7, mr, offset, length)
    assert (await take(p.cqb, 1))[0].status == WcStatus.LOC_PROT_ERR
    assert p.b.state == QPState.ERR


async def test_deregistered_mr_is_a_protection_error(make_pair: object) -> None:
    p: Pair = await make_pair()  # type: ignore[operator]
    mr = p.ctx_a.reg_mr(64, Access.LOCAL_WRITE)
    mr.dereg()
    p.a.post_send(1, mr, 0, 8)
    assert (await take(p.cqa, 1))[0].status == WcStatus.LOC_PROT_ERR


async def test_rdma_read_and_write_need_remote_access_and_bounds(make_pair: object) -> None:
    p: Pair = await make_pair()  # type: ignore[operator]
    local = p.ctx_a.reg_mr(64, Access.LOCAL_WRITE)
    readable = p.ctx_b.reg_mr(64, Access.REMOTE_READ)
    readable.view[:4] = b"data"
    p.a.rdma_read(1, local, 0, 4, readable.addr, readable.rkey)
    (wc,) = await take(p.cqa, 1)
    assert (wc.status, wc.opcode, wc.byte_len) == (WcStatus.SUCCESS, Opcode.RDMA_READ, 4)
    assert bytes(local.view[:4]) == b"data"
    assert not p.cqb.poll(8), "the responder of an RDMA READ sees no completion"
    # write into a region that only allows reads: remote access error
    p.a.rdma_write(2, local, 0, 4, readable.addr, readable.rkey)
    assert (await take(p.cqa, 1))[0].status == WcStatus.REM_ACCESS_ERR
    assert p.a.state == QPState.ERR and p.b.state == QPState.ERR


async def test_rdma_read_past_the_remote_region(make_pair: object) -> None:
    p: Pair = await make_pair()  # type: ignore[operator]
    local = p.ctx_a.reg_mr(128, Access.LOCAL_WRITE)
    remote = p.ctx_b.reg_mr(64, Access.REMOTE_READ | Access.REMOTE_WRITE)
    p.a.rdma_read(1, local, 0, 65, remote.addr, remote.rkey)
    assert (await take(p.cqa, 1))[0].status == WcStatus.REM_ACCESS_ERR


async def test_rdma_write_into_remote_region(make_pair: object) -> None:
    p: Pair = await make_pair()  # type: ignore[operator]
    local = p.ctx_a.reg_mr(64, Access.LOCAL_WRITE)
    remote = p.ctx_b.reg_mr(64, Access.REMOTE_WRITE | Access.LOCAL_WRITE)
    local.view[:3] = b"abc"
    p.a.rdma_write(1, local, 0, 3, remote.addr + 10, remote.rkey)
    assert (await take(p.cqa, 1))[0].status == WcStatus.SUCCESS
    assert bytes(remote.view[10:13]) == b"abc"


async def test_deregistered_remote_region_is_a_remote_access_error(make_pair: object) -> None:
    p: Pair = await make_pair()  # type: ignore[operator]
    local = p.ctx_a.reg_mr(64, Access.LOCAL_WRITE)
    remote = p.ctx_b.reg_mr(64, Access.REMOTE_READ)
    remote.dereg()
    p.a.rdma_read(1, local, 0, 4, remote.addr, remote.rkey)
    assert (await take(p.cqa, 1))[0].status == WcStatus.REM_ACCESS_ERR


async def test_qp_in_error_flushes_outstanding_and_new_work_requests(make_pair: object) -> None:
    p: Pair = await make_pair()  # type: ignore[operator]
    mr = p.ctx_b.reg_mr(256, Access.LOCAL_WRITE)
    for i in range(3):
        p.b.post_recv(i, mr, 64 * i, 64)
    p.b.to_error()
    p.b.post_recv(9, mr, 192, 64)
    wcs = await take(p.cqb, 4)
    assert [(wc.wr_id, wc.status) for wc in wcs] == [(i, WcStatus.WR_FLUSH_ERR) for i in (0, 1, 2, 9)]
    p.b.post_send(10, mr, 0, 4)
    assert (await take(p.cqb, 1))[0].status == WcStatus.WR_FLUSH_ERR


async def test_destroyed_peer_moves_qp_to_error(make_pair: object) -> None:
    p: Pair = await make_pair()  # type: ignore[operator]
    mr = p.ctx_b.reg_mr(64, Access.LOCAL_WRITE)
    p.b.post_recv(1, mr, 0, 64)
    p.a.destroy()
    (wc,) = await take(p.cqb, 1)  # over IPC: once the channel's end arrives
    assert wc.status == WcStatus.WR_FLUSH_ERR
    assert p.b.state == QPState.ERR


async def test_cq_overrun_is_an_error(make_pair: object) -> None:
    p: Pair = await make_pair(depth=2)  # type: ignore[operator]
    mr_a = p.ctx_a.reg_mr(64, Access.LOCAL_WRITE)
    mr_b = p.ctx_b.reg_mr(64, Access.LOCAL_WRITE)
    for i in range(3):
        p.b.post_recv(i, mr_b, 0, 64)
        p.a.post_send(i, mr_a, 0, 4)
    with pytest.raises(VerbsError, match="CQ overrun"):
        await take(p.cqa, 3)


async def test_inline_send_over_max_inline_is_refused(make_pair: object) -> None:
    p: Pair = await make_pair(max_inline=16)  # type: ignore[operator]
    mr = p.ctx_a.reg_mr(64, Access.LOCAL_WRITE)
    with pytest.raises(VerbsError, match="over max_inline 16"):
        p.a.post_send(1, mr, 0, 17, inline=True)


async def test_qp_error_after_k_work_requests(make_pair: object) -> None:
    """The fault-injection knob: the K-th send WR finds the QP in error."""
    p: Pair = await make_pair(error_after=3)  # type: ignore[operator]
    mr_a = p.ctx_a.reg_mr(64, Access.LOCAL_WRITE)
    mr_b = p.ctx_b.reg_mr(256, Access.LOCAL_WRITE)
    for i in range(4):
        p.b.post_recv(i, mr_b, 64 * i, 64)
    for i in range(2):
        p.a.post_send(i, mr_a, 0, 4)
    assert [wc.status for wc in await take(p.cqa, 2)] == [WcStatus.SUCCESS] * 2
    p.a.post_send(2, mr_a, 0, 4)
    assert (await take(p.cqa, 1))[0].status == WcStatus.WR_FLUSH_ERR
    assert p.a.state == QPState.ERR


async def test_state_transitions_are_checked(make_pair: object) -> None:
    p: Pair = await make_pair()  # type: ignore[operator]
    cq = p.ctx_a.create_cq(4)
    qp = p.ctx_a.create_qp(cq, 4, 4)
    mr = p.ctx_a.reg_mr(64, Access.LOCAL_WRITE)
    with pytest.raises(VerbsError, match="RESET to RTS"):
        qp.to_rts()
    with pytest.raises(VerbsError, match="receive WR in state RESET"):
        qp.post_recv(1, mr, 0, 64)
    qp.to_init()
    with pytest.raises(VerbsError, match="posting a send WR in state INIT"):
        qp.post_send(1, mr, 0, 4)
    with pytest.raises(VerbsError, match="receive queue full"):
        for i in range(5):
            qp.post_recv(i, mr, 0, 64)
    qp.destroy()
    cq.close()


# -- what only the IPC mode can show ---------------------------------------------------


@pytest.mark.parametrize("make_pair", ["ipc"], indirect=True)
async def test_ipc_send_queue_wrs_in_flight_are_flushed(make_pair: object) -> None:
    """Posted but not yet answered by the other NIC when the QP errors:
    flushed, in order (the late answers are dropped)."""
    p: Pair = await make_pair()  # type: ignore[operator]
    mr_a = p.ctx_a.reg_mr(64, Access.LOCAL_WRITE)
    mr_b = p.ctx_b.reg_mr(256, Access.LOCAL_WRITE)
    for i in range(2):
        p.b.post_recv(i, mr_b, 64 * i, 64)
        p.a.post_send(10 + i, mr_a, 0, 4)
    p.a.to_error()
    wcs = await take(p.cqa, 2)
    assert [(wc.wr_id, wc.status) for wc in wcs] == [(10, WcStatus.WR_FLUSH_ERR), (11, WcStatus.WR_FLUSH_ERR)]
    assert not p.cqa.poll(8)


@pytest.mark.parametrize("make_pair", ["ipc"], indirect=True)
async def test_ipc_rkeys_are_per_nic(make_pair: object) -> None:
    """An rkey of this NIC means nothing to the other one's MR table."""
    p: Pair = await make_pair()  # type: ignore[operator]
    local = p.ctx_a.reg_mr(64, Access.LOCAL_WRITE)
    mine = p.ctx_a.reg_mr(64, Access.REMOTE_READ)
    p.a.rdma_read(1, local, 0, 4, mine.addr, mine.rkey)
    assert (await take(p.cqa, 1))[0].status == WcStatus.REM_ACCESS_ERR


@pytest.mark.parametrize("make_pair", ["ipc"], indirect=True)
async def test_ipc_send_queue_is_bounded(make_pair: object) -> None:
    p: Pair = await make_pair(max_send_wr=2)  # type: ignore[operator]
    mr = p.ctx_a.reg_mr(64, Access.LOCAL_WRITE)
    remote = p.ctx_b.reg_mr(64, Access.REMOTE_WRITE)
    p.a.rdma_write(1, mr, 0, 4, remote.addr, remote.rkey)
    p.a.rdma_write(2, mr, 0, 4, remote.addr, remote.rkey)
    with pytest.raises(VerbsError, match="send queue full"):
        p.a.rdma_write(3, mr, 0, 4, remote.addr, remote.rkey)
    assert [wc.status for wc in await take(p.cqa, 2)] == [WcStatus.SUCCESS] * 2


def test_completion_channel_fd_wakes_when_armed() -> None:
    ctx = EmuFabric().open()
    cqa, cqb = ctx.create_cq(16), ctx.create_cq(16)
    a, b = ctx.create_qp(cqa, 8, 8), ctx.create_qp(cqb, 8, 8)
    for qp in (a, b):
        qp.to_init()
    a.to_rtr(b.endpoint())
    b.to_rtr(a.endpoint())
    a.to_rts()
    b.to_rts()
    mr = ctx.reg_mr(64, Access.LOCAL_WRITE)
    b.post_recv(1, mr, 0, 64)
    b.post_recv(2, mr, 0, 64)
    a.post_send(1, mr, 0, 4)  # not armed: no wakeup
    assert select.select([cqb.fileno()], [], [], 0)[0] == []
    cqb.req_notify()  # armed with a completion waiting: wakes at once
    assert select.select([cqb.fileno()], [], [], 0)[0] == [cqb.fileno()]
    cqb.ack_events()
    assert len(cqb.poll(8)) == 1
    cqb.req_notify()
    assert select.select([cqb.fileno()], [], [], 0)[0] == []
    a.post_send(2, mr, 0, 4)
    assert select.select([cqb.fileno()], [], [], 0)[0] == [cqb.fileno()]
    cqb.close()
    cqa.close()
