"""The verbs emulation enforces verbs semantics strictly: RNR, length, MR
bounds and access, flush on error, CQ overrun, QP state rules."""

from __future__ import annotations

import select

import pytest
from msgr_rdma.emulation import EmuContext, EmuFabric, EmuQP
from msgr_rdma.verbs import Access, CompletionQueue, Opcode, QPState, VerbsError, WcStatus


def _pair(ctx: EmuContext, depth: int = 16) -> tuple[EmuQP, CompletionQueue, EmuQP, CompletionQueue]:
    cqa, cqb = ctx.create_cq(depth), ctx.create_cq(depth)
    a, b = ctx.create_qp(cqa, 8, 8), ctx.create_qp(cqb, 8, 8)
    for qp in (a, b):
        qp.to_init()
    a.to_rtr(b.endpoint())
    b.to_rtr(a.endpoint())
    a.to_rts()
    b.to_rts()
    return a, cqa, b, cqb


@pytest.fixture
def ctx() -> EmuContext:
    return EmuFabric().open()


def test_send_lands_in_posted_receive(ctx: EmuContext) -> None:
    a, cqa, b, cqb = _pair(ctx)
    src = ctx.reg_mr(64, Access.LOCAL_WRITE)
    dst = ctx.reg_mr(64, Access.LOCAL_WRITE)
    src.view[:5] = b"hello"
    b.post_recv(7, dst, 0, 64)
    a.post_send(1, src, 0, 5)
    (wc,) = cqb.poll(8)
    assert (wc.wr_id, wc.status, wc.opcode, wc.byte_len) == (7, WcStatus.SUCCESS, Opcode.RECV, 5)
    assert bytes(dst.view[:5]) == b"hello"
    assert cqa.poll(8)[0].status == WcStatus.SUCCESS


def test_send_without_posted_receive_is_rnr_and_breaks_both_qps(ctx: EmuContext) -> None:
    a, cqa, b, _cqb = _pair(ctx)
    src = ctx.reg_mr(64, Access.LOCAL_WRITE)
    a.post_send(1, src, 0, 8)
    (wc,) = cqa.poll(8)
    assert wc.status == WcStatus.RNR_RETRY_EXC_ERR
    assert a.state == QPState.ERR and b.state == QPState.ERR


def test_send_longer_than_receive_buffer(ctx: EmuContext) -> None:
    a, cqa, b, cqb = _pair(ctx)
    mr = ctx.reg_mr(64, Access.LOCAL_WRITE)
    b.post_recv(7, mr, 0, 4)
    a.post_send(1, mr, 0, 8)
    assert cqb.poll(8)[0].status == WcStatus.LOC_LEN_ERR
    assert cqa.poll(8)[0].status == WcStatus.REM_INV_REQ_ERR


@pytest.mark.parametrize(
    ("offset", "length", "access"),
    [(60, 8, Access.LOCAL_WRITE), (-1, 4, Access.LOCAL_WRITE), (0, 4, Access.LOCAL_READ)],
    ids=["past-the-end", "negative-offset", "no-local-write"],
)
def test_receive_outside_mr_or_without_local_write(ctx: EmuContext, offset: int, length: int, access: Access) -> None:
    _a, _cqa, b, cqb = _pair(ctx)
    mr = ctx.reg_mr(64, access)
    b.post_recv(7, mr, offset, length)
    assert cqb.poll(8)[0].status == WcStatus.LOC_PROT_ERR
    assert b.state == QPState.ERR


def test_deregistered_mr_is_a_protection_error(ctx: EmuContext) -> None:
    a, cqa, _b, _cqb = _pair(ctx)
    mr = ctx.reg_mr(64, Access.LOCAL_WRITE)
    mr.dereg()
    a.post_send(1, mr, 0, 8)
    assert cqa.poll(8)[0].status == WcStatus.LOC_PROT_ERR


def test_rdma_read_and_write_need_remote_access_and_bounds(ctx: EmuContext) -> None:
    a, cqa, b, cqb = _pair(ctx)
    local = ctx.reg_mr(64, Access.LOCAL_WRITE)
    readable = ctx.reg_mr(64, Access.REMOTE_READ)
    readable.view[:4] = b"data"
    a.rdma_read(1, local, 0, 4, readable.addr, readable.rkey)
    assert cqa.poll(8)[0].status == WcStatus.SUCCESS
    assert bytes(local.view[:4]) == b"data"
    assert not cqb.poll(8), "the responder of an RDMA READ sees no completion"
    # write into a region that only allows reads: remote access error
    a.rdma_write(2, local, 0, 4, readable.addr, readable.rkey)
    assert cqa.poll(8)[0].status == WcStatus.REM_ACCESS_ERR
    assert a.state == QPState.ERR and b.state == QPState.ERR


def test_rdma_read_past_the_remote_region(ctx: EmuContext) -> None:
    a, cqa, _b, _cqb = _pair(ctx)
    local = ctx.reg_mr(128, Access.LOCAL_WRITE)
    remote = ctx.reg_mr(64, Access.REMOTE_READ | Access.REMOTE_WRITE)
    a.rdma_read(1, local, 0, 65, remote.addr, remote.rkey)
    assert cqa.poll(8)[0].status == WcStatus.REM_ACCESS_ERR


def test_rdma_write_into_remote_region(ctx: EmuContext) -> None:
    a, cqa, _b, _cqb = _pair(ctx)
    local = ctx.reg_mr(64, Access.LOCAL_WRITE)
    remote = ctx.reg_mr(64, Access.REMOTE_WRITE | Access.LOCAL_WRITE)
    local.view[:3] = b"abc"
    a.rdma_write(1, local, 0, 3, remote.addr + 10, remote.rkey)
    assert cqa.poll(8)[0].status == WcStatus.SUCCESS
    assert bytes(remote.view[10:13]) == b"abc"


def test_qp_in_error_flushes_outstanding_and_new_work_requests(ctx: EmuContext) -> None:
    _a, _cqa, b, cqb = _pair(ctx)
    mr = ctx.reg_mr(256, Access.LOCAL_WRITE)
    for i in range(3):
        b.post_recv(i, mr, 64 * i, 64)
    b.to_error()
    b.post_recv(9, mr, 192, 64)
    wcs = cqb.poll(16)
    assert [(wc.wr_id, wc.status) for wc in wcs] == [(i, WcStatus.WR_FLUSH_ERR) for i in (0, 1, 2, 9)]
    b.post_send(10, mr, 0, 4)
    assert cqb.poll(16)[0].status == WcStatus.WR_FLUSH_ERR


def test_destroyed_peer_moves_qp_to_error(ctx: EmuContext) -> None:
    a, _cqa, b, cqb = _pair(ctx)
    mr = ctx.reg_mr(64, Access.LOCAL_WRITE)
    b.post_recv(1, mr, 0, 64)
    a.destroy()
    assert b.state == QPState.ERR
    assert cqb.poll(8)[0].status == WcStatus.WR_FLUSH_ERR


def test_cq_overrun_is_an_error(ctx: EmuContext) -> None:
    a, cqa, b, _cqb = _pair(ctx, depth=2)
    mr = ctx.reg_mr(64, Access.LOCAL_WRITE)
    for i in range(3):
        b.post_recv(i, mr, 0, 64)
        a.post_send(i, mr, 0, 4)
    with pytest.raises(VerbsError, match="CQ overrun"):
        cqa.poll(8)


def test_state_transitions_are_checked(ctx: EmuContext) -> None:
    cq = ctx.create_cq(4)
    qp = ctx.create_qp(cq, 4, 4)
    mr = ctx.reg_mr(64, Access.LOCAL_WRITE)
    with pytest.raises(VerbsError, match="RESET to RTS"):
        qp.to_rts()
    qp.to_init()
    with pytest.raises(VerbsError, match="posting a send WR in state INIT"):
        qp.post_send(1, mr, 0, 4)
    with pytest.raises(VerbsError, match="receive queue full"):
        for i in range(5):
            qp.post_recv(i, mr, 0, 64)


def test_completion_channel_fd_wakes_when_armed(ctx: EmuContext) -> None:
    a, cqa, b, cqb = _pair(ctx)
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
