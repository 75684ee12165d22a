"""A strict in-process emulation of the verbs interface (:mod:`msgr_rdma.verbs`).

A test and development backend, selected explicitly (``[rdma] backend =
"emulated"``), never in place of hardware.  Work requests execute at once,
synchronously, against the peer QP in the same process; completions go to
the CQs and wake their completion channels (an ``eventfd``), so the code
above sees them through the event loop as it would with a device.

Enforced, as ibverbs does for RC with ``rnr_retry = 0``:

- a SEND with no receive posted at the peer: ``RNR_RETRY_EXC_ERR`` at the
  sender, both QPs to the error state;
- a SEND longer than the peer's receive buffer: ``LOC_LEN_ERR`` at the
  receiver, ``REM_INV_REQ_ERR`` at the sender, both QPs to error;
- a local range outside its MR, a deregistered MR, or a receive / RDMA READ
  target without ``LOCAL_WRITE``: ``LOC_PROT_ERR``; a remote range outside
  the rkey's MR or without ``REMOTE_WRITE`` / ``REMOTE_READ``:
  ``REM_ACCESS_ERR`` (both QPs to error);
- posting on a QP not in RTS (sends) or RESET (receives) raises
  :class:`~msgr_rdma.verbs.VerbsError`; a QP in error flushes every
  outstanding and new WR with ``WR_FLUSH_ERR``;
- more completions than a CQ's depth: CQ overrun, ``poll`` raises.

A destroyed QP moves its peer to the error state (standing in for the
connection manager's DISCONNECTED event), so a peer that goes away shows
up as flushed receives.  :meth:`EmuFabric.inject_error` breaks a QP on
purpose (chaos tests).
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections import deque
from typing import ClassVar

from .verbs import (
    Access,
    CompletionQueue,
    MemoryRegion,
    Opcode,
    QPState,
    QueuePair,
    VerbsContext,
    VerbsError,
    WcStatus,
    WorkCompletion,
)

__all__ = ["EmuCQ", "EmuContext", "EmuFabric", "EmuMR", "EmuQP"]


class EmuFabric:
    """The emulated network: keys and queue pairs by number."""

    default: ClassVar[EmuFabric | None] = None

    def __init__(self) -> None:
        self._keys = itertools.count(0x1000)
        self._qpns = itertools.count(0x100)
        self.mrs: dict[int, EmuMR] = {}
        self.qps: dict[int, EmuQP] = {}

    @classmethod
    def shared(cls) -> EmuFabric:
        """The process-wide fabric."""
        if cls.default is None:
            cls.default = cls()
        return cls.default

    def open(self, name: str = "emu0") -> EmuContext:
        return EmuContext(self, name)

    def inject_error(self, qp_num: int) -> None:
        """Move QP ``qp_num`` to the error state (as a fatal async event would)."""
        qp = self.qps.get(qp_num)
        if qp is not None:
            qp.to_error()


class EmuMR(MemoryRegion):
    def __init__(self, fabric: EmuFabric, length: int, access: Access) -> None:
        self._fabric = fabric
        self.length = length
        self.access = access
        self._buf = bytearray(length)
        self._view = memoryview(self._buf)
        self.lkey = self.rkey = next(fabric._keys)
        self.addr = 0x10_0000_0000 + self.lkey * 0x1_0000_0000
        self.valid = True
        fabric.mrs[self.rkey] = self

    @property
    def view(self) -> memoryview:
        return self._view

    def covers(self, addr: int, length: int) -> bool:
        return self.valid and self.addr <= addr and addr + length <= self.addr + self.length

    def dereg(self) -> None:
        if self.valid:
            self.valid = False
            self._fabric.mrs.pop(self.rkey, None)


class EmuCQ(CompletionQueue):
    def __init__(self, depth: int) -> None:
        self.depth = depth
        self._entries: deque[WorkCompletion] = deque()
        self._armed = False
        self.overrun = False
        self._fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._closed = False

    def fileno(self) -> int:
        return self._fd

    def req_notify(self) -> None:
        self._armed = True
        if self._entries:
            self._signal()

    def _signal(self) -> None:
        self._armed = False
        if not self._closed:
            os.eventfd_write(self._fd, 1)

    def ack_events(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._fd)

    def push(self, wc: WorkCompletion) -> None:
        if self._closed:
            return
        if len(self._entries) >= self.depth:
            self.overrun = True
        else:
            self._entries.append(wc)
        if self._armed or self.overrun:
            self._signal()

    def poll(self, max_entries: int) -> list[WorkCompletion]:
        if self.overrun:
            raise VerbsError(f"CQ overrun: more than {self.depth} completions outstanding")
        out: list[WorkCompletion] = []
        entries = self._entries
        while entries and len(out) < max_entries:
            out.append(entries.popleft())
        return out

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self._fd)


class EmuQP(QueuePair):
    def __init__(self, fabric: EmuFabric, cq: EmuCQ, max_send_wr: int, max_recv_wr: int) -> None:
        self._fabric = fabric
        self.cq = cq
        self.max_send_wr = max_send_wr
        self.max_recv_wr = max_recv_wr
        self.qp_num = next(fabric._qpns)
        self.state = QPState.RESET
        self.remote: int | None = None
        self.recvs: deque[tuple[int, EmuMR, int, int]] = deque()
        fabric.qps[self.qp_num] = self

    # -- state ---------------------------------------------------------------

    def _move(self, want: QPState, allowed: tuple[QPState, ...]) -> None:
        if self.state not in allowed:
            raise VerbsError(f"QP {self.qp_num}: cannot go from {self.state.name} to {want.name}")
        self.state = want

    def to_init(self) -> None:
        self._move(QPState.INIT, (QPState.RESET,))

    def to_rtr(self, remote_qp_num: int) -> None:
        self._move(QPState.RTR, (QPState.INIT,))
        self.remote = remote_qp_num

    def to_rts(self) -> None:
        self._move(QPState.RTS, (QPState.RTR,))

    def to_error(self) -> None:
        if self.state == QPState.ERR:
            return
        self.state = QPState.ERR
        while self.recvs:
            wr_id = self.recvs.popleft()[0]
            self.cq.push(WorkCompletion(wr_id, WcStatus.WR_FLUSH_ERR, Opcode.RECV))

    def destroy(self) -> None:
        if self._fabric.qps.pop(self.qp_num, None) is None:
            return
        self.recvs.clear()
        self.state = QPState.ERR
        peer = self._peer()
        if peer is not None:
            peer.to_error()

    def _peer(self) -> EmuQP | None:
        return None if self.remote is None else self._fabric.qps.get(self.remote)

    # -- work requests -------------------------------------------------------------

    def _local_ok(self, mr: MemoryRegion, offset: int, length: int, write: bool) -> bool:
        return (
            isinstance(mr, EmuMR)
            and mr.valid
            and mr._fabric is self._fabric
            and offset >= 0
            and offset + length <= mr.length
            and (not write or bool(mr.access & Access.LOCAL_WRITE))
        )

    def post_recv(self, wr_id: int, mr: MemoryRegion, offset: int, length: int) -> None:
        if self._fabric.qps.get(self.qp_num) is not self:
            raise VerbsError(f"QP {self.qp_num} is destroyed")
        if self.state == QPState.ERR:
            self.cq.push(WorkCompletion(wr_id, WcStatus.WR_FLUSH_ERR, Opcode.RECV))
            return
        if len(self.recvs) >= self.max_recv_wr:
            raise VerbsError(f"QP {self.qp_num}: receive queue full ({self.max_recv_wr} WRs)")
        if not self._local_ok(mr, offset, length, write=True):
            self._fail(wr_id, Opcode.RECV, WcStatus.LOC_PROT_ERR, None)
            return
        if not isinstance(mr, EmuMR):  # narrowed by _local_ok
            return
        self.recvs.append((wr_id, mr, offset, length))

    def _begin(self, wr_id: int, opcode: Opcode) -> EmuQP | None:
        """Checks common to every send-queue WR; the peer QP, or ``None``
        when the WR was completed (flushed) here."""
        if self._fabric.qps.get(self.qp_num) is not self:
            raise VerbsError(f"QP {self.qp_num} is destroyed")
        if self.state == QPState.ERR:
            self.cq.push(WorkCompletion(wr_id, WcStatus.WR_FLUSH_ERR, opcode))
            return None
        if self.state != QPState.RTS:
            raise VerbsError(f"QP {self.qp_num}: posting a send WR in state {self.state.name}")
        peer = self._peer()
        if peer is None or peer.state not in (QPState.RTR, QPState.RTS):
            # the peer is gone: the transport retries run out
            self._fail(wr_id, opcode, WcStatus.RETRY_EXC_ERR, None)
            return None
        return peer

    def _fail(self, wr_id: int, opcode: Opcode, status: WcStatus, peer: EmuQP | None) -> None:
        self.cq.push(WorkCompletion(wr_id, status, opcode))
        self.to_error()
        if peer is not None:
            peer.to_error()

    def post_send(self, wr_id: int, mr: MemoryRegion, offset: int, length: int, *, inline: bool = False) -> None:
        peer = self._begin(wr_id, Opcode.SEND)
        if peer is None:
            return
        if not self._local_ok(mr, offset, length, write=False):
            self._fail(wr_id, Opcode.SEND, WcStatus.LOC_PROT_ERR, None)
            return
        if not peer.recvs:
            self._fail(wr_id, Opcode.SEND, WcStatus.RNR_RETRY_EXC_ERR, peer)
            return
        rid, rmr, roff, rlen = peer.recvs.popleft()
        if length > rlen:
            peer.cq.push(WorkCompletion(rid, WcStatus.LOC_LEN_ERR, Opcode.RECV))
            self._fail(wr_id, Opcode.SEND, WcStatus.REM_INV_REQ_ERR, peer)
            return
        rmr.view[roff : roff + length] = mr.view[offset : offset + length]
        peer.cq.push(WorkCompletion(rid, WcStatus.SUCCESS, Opcode.RECV, length))
        self.cq.push(WorkCompletion(wr_id, WcStatus.SUCCESS, Opcode.SEND, length))

    def _remote(self, rkey: int, addr: int, length: int, need: Access) -> EmuMR | None:
        rmr = self._fabric.mrs.get(rkey)
        if rmr is None or not rmr.covers(addr, length) or not (rmr.access & need):
            return None
        return rmr

    def rdma_write(self, wr_id: int, mr: MemoryRegion, offset: int, length: int, remote_addr: int, rkey: int) -> None:
        peer = self._begin(wr_id, Opcode.RDMA_WRITE)
        if peer is None:
            return
        if not self._local_ok(mr, offset, length, write=False):
            self._fail(wr_id, Opcode.RDMA_WRITE, WcStatus.LOC_PROT_ERR, None)
            return
        rmr = self._remote(rkey, remote_addr, length, Access.REMOTE_WRITE)
        if rmr is None:
            self._fail(wr_id, Opcode.RDMA_WRITE, WcStatus.REM_ACCESS_ERR, peer)
            return
        at = remote_addr - rmr.addr
        rmr.view[at : at + length] = mr.view[offset : offset + length]
        self.cq.push(WorkCompletion(wr_id, WcStatus.SUCCESS, Opcode.RDMA_WRITE, length))

    def rdma_read(self, wr_id: int, mr: MemoryRegion, offset: int, length: int, remote_addr: int, rkey: int) -> None:
        peer = self._begin(wr_id, Opcode.RDMA_READ)
        if peer is None:
            return
        if not self._local_ok(mr, offset, length, write=True):
            self._fail(wr_id, Opcode.RDMA_READ, WcStatus.LOC_PROT_ERR, None)
            return
        rmr = self._remote(rkey, remote_addr, length, Access.REMOTE_READ)
        if rmr is None:
            self._fail(wr_id, Opcode.RDMA_READ, WcStatus.REM_ACCESS_ERR, peer)
            return
        at = remote_addr - rmr.addr
        mr.view[offset : offset + length] = rmr.view[at : at + length]
        self.cq.push(WorkCompletion(wr_id, WcStatus.SUCCESS, Opcode.RDMA_READ, length))


class EmuContext(VerbsContext):
    """An emulated device on an :class:`EmuFabric`."""

    def __init__(self, fabric: EmuFabric, name: str) -> None:
        self.fabric = fabric
        self.name = name

    def reg_mr(self, length: int, access: Access) -> EmuMR:
        if length <= 0:
            raise VerbsError(f"cannot register {length} bytes")
        return EmuMR(self.fabric, length, access)

    def create_cq(self, depth: int) -> EmuCQ:
        return EmuCQ(depth)

    def create_qp(self, cq: CompletionQueue, max_send_wr: int, max_recv_wr: int) -> EmuQP:
        if not isinstance(cq, EmuCQ):
            raise VerbsError("the CQ belongs to another device")
        return EmuQP(self.fabric, cq, max_send_wr, max_recv_wr)
