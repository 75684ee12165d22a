"""A strict emulation of the verbs interface (:mod:`msgr_rdma.verbs`), in one
process or across two.

A test and development backend, selected explicitly (``[rdma] backend =
"emulated"`` or ``"emulated-ipc"``), never in place of hardware.

Every QP is both a *requester* (it posts send-queue work requests: SEND,
RDMA WRITE, RDMA READ) and a *responder* (it executes its peer's requests
against its posted receives and its context's registered memory).  The
requester hands each request to a :class:`Wire`, which carries it to the
responder QP and brings the outcome back:

- :class:`InProcessWire` (``emulated``): the responder is in the same
  process, found by QP number on the shared :class:`EmuFabric`; requests
  execute at once, synchronously.
- :class:`IpcWire` (``emulated-ipc``): the responder is in another process
  (or another fabric of this one); requests travel over a socket (the
  connection's out-of-band channel, :mod:`msgr_rdma._oob`) and the
  responder's "NIC" -- its context's :class:`EmuFabric`, with its own MR
  table -- applies them and answers with the status (and, for a READ, the
  bytes).  Completions arrive asynchronously, as from a device.

Both wires end in the same responder code (:meth:`EmuQP.respond_send`,
:meth:`EmuQP.respond_write`, :meth:`EmuQP.respond_read`) and the same
requester completion code, so the two modes enforce identical semantics.
Completions go to the CQs and wake their completion channels (an
``eventfd``), so the code above sees them through the event loop as it
would with a device.

Enforced, as ibverbs does for RC with ``rnr_retry = 0``:

- a SEND with no receive posted at the peer: ``RNR_RETRY_EXC_ERR`` at the
  sender, both QPs to the error state;
- a SEND longer than the peer's receive buffer: ``LOC_LEN_ERR`` at the
  receiver, ``REM_INV_REQ_ERR`` at the sender, both QPs to error;
- a local range outside its MR, a deregistered MR, or a receive / RDMA READ
  target without ``LOCAL_WRITE``: ``LOC_PROT_ERR``; a remote range outside
  the rkey's MR (in the responder's MR table) or without ``REMOTE_WRITE`` /
  ``REMOTE_READ``: ``REM_ACCESS_ERR`` (both QPs to error);
- a responder that is gone or not ready: ``RETRY_EXC_ERR`` at the sender;
- an inline SEND over the QP's ``max_inline``, a full send or receive
  queue, posting sends on a QP not in RTS or receives on a QP in RESET:
  the post raises :class:`~msgr_rdma.verbs.VerbsError`;
- a QP in error completes every outstanding and newly posted WR with
  ``WR_FLUSH_ERR`` (send-queue WRs still in flight over the wire too);
- more completions than a CQ's depth: CQ overrun, ``poll`` raises.

A destroyed QP moves its peer to the error state (standing in for the
connection manager's DISCONNECTED event; across processes: the channel
closes, and a channel that closes -- a peer process killed -- does the
same), so a peer that goes away shows up as flushed receives.

Fault injection (chaos tests): :meth:`EmuFabric.inject_error` breaks a QP
on purpose; a context opened with ``qp_error_after=K`` moves each of its
QPs to the error state when it posts its K-th send-queue work request (that
one is flushed), as a fatal async event would.
"""

from __future__ import annotations

import abc
import contextlib
import itertools
import os
import struct
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from .verbs import (
    Access,
    CompletionQueue,
    MemoryRegion,
    Opcode,
    PeerChannel,
    QPEndpoint,
    QPState,
    QueuePair,
    VerbsContext,
    VerbsError,
    WcStatus,
    WorkCompletion,
)

if TYPE_CHECKING:
    from ._oob import OobChannel

__all__ = ["EmuCQ", "EmuContext", "EmuFabric", "EmuMR", "EmuQP", "InProcessWire", "IpcWire", "Wire"]

Bytes = bytes | bytearray | memoryview


class EmuFabric:
    """An emulated NIC: its memory registrations (by rkey) and its queue
    pairs (by number).  In-process (``emulated``) all contexts share
    :meth:`shared`; each ``emulated-ipc`` context has a fabric of its own."""

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

    def open(self, name: str = "emu0", *, qp_error_after: int = 0) -> EmuContext:
        """A context (device + protection domain) on this fabric.

        :param qp_error_after: fault injection; 0 = never (see the module docstring).
        """
        return EmuContext(self, name, qp_error_after=qp_error_after)

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


@dataclass(slots=True)
class _Pending:
    """A send-queue WR handed to the wire, waiting for its outcome."""

    wr_id: int
    opcode: Opcode
    length: int
    mr: EmuMR | None = None  # RDMA READ: where the bytes land
    offset: int = 0


class Wire(abc.ABC):
    """Carries a requester QP's send-queue WRs to the responder QP; each
    outcome comes back, in posting order, through ``qp._complete``."""

    @abc.abstractmethod
    def send(self, data: memoryview) -> None: ...

    @abc.abstractmethod
    def write(self, rkey: int, addr: int, data: memoryview) -> None: ...

    @abc.abstractmethod
    def read(self, rkey: int, addr: int, length: int) -> None: ...

    @abc.abstractmethod
    def close(self) -> None:
        """The requester QP is destroyed: the responder QP goes to error."""


class EmuQP(QueuePair):
    def __init__(
        self, fabric: EmuFabric, cq: EmuCQ, max_send_wr: int, max_recv_wr: int, max_inline: int, error_after: int
    ) -> None:
        self._fabric = fabric
        self.cq = cq
        self.max_send_wr = max_send_wr
        self.max_recv_wr = max_recv_wr
        self.max_inline = max_inline
        self._error_after = error_after
        self.posted = 0  # send-queue WRs posted (fault injection counts these)
        self.qp_num = next(fabric._qpns)
        self.state = QPState.RESET
        self.remote: int | None = None
        self.recvs: deque[tuple[int, EmuMR, int, int]] = deque()
        self._outstanding: deque[_Pending] = deque()
        self.wire: Wire | None = None
        self._channel: OobChannel | None = None
        fabric.qps[self.qp_num] = self

    @property
    def destroyed(self) -> bool:
        return self._fabric.qps.get(self.qp_num) is not self

    # -- state ---------------------------------------------------------------

    def _move(self, want: QPState, allowed: tuple[QPState, ...]) -> None:
        if self.state not in allowed:
            raise VerbsError(f"QP {self.qp_num}: cannot go from {self.state.name} to {want.name}")
        self.state = want

    def endpoint(self) -> QPEndpoint:
        return QPEndpoint(self.qp_num)

    def attach(self, channel: PeerChannel) -> None:
        """``emulated-ipc``: the out-of-band channel (an
        :class:`~msgr_rdma._oob.OobChannel`) becomes this QP's wire."""
        from ._oob import OobChannel

        if not isinstance(channel, OobChannel):
            raise VerbsError("an emulated QP's channel must be an OobChannel")
        self._channel = channel
        self.wire = IpcWire(self, channel)

    def to_init(self) -> None:
        self._move(QPState.INIT, (QPState.RESET,))

    def to_rtr(self, remote: QPEndpoint) -> None:
        self._move(QPState.RTR, (QPState.INIT,))
        self.remote = remote.qp_num
        if self.wire is None:
            self.wire = InProcessWire(self, remote.qp_num)

    def to_rts(self) -> None:
        self._move(QPState.RTS, (QPState.RTR,))

    def to_error(self) -> None:
        if self.state == QPState.ERR:
            return
        self.state = QPState.ERR
        push = self.cq.push
        while self._outstanding:
            p = self._outstanding.popleft()
            push(WorkCompletion(p.wr_id, WcStatus.WR_FLUSH_ERR, p.opcode))
        while self.recvs:
            push(WorkCompletion(self.recvs.popleft()[0], WcStatus.WR_FLUSH_ERR, Opcode.RECV))

    def destroy(self) -> None:
        if self._fabric.qps.pop(self.qp_num, None) is None:
            return
        self.recvs.clear()
        self._outstanding.clear()
        self.state = QPState.ERR
        wire, self.wire = self.wire, None
        if wire is not None:
            wire.close()

    # -- local checks ------------------------------------------------------------

    def _local_ok(self, mr: MemoryRegion | None, offset: int, length: int, write: bool) -> bool:
        return (
            isinstance(mr, EmuMR)
            and mr.valid
            and mr._fabric is self._fabric
            and offset >= 0
            and length >= 0
            and offset + length <= mr.length
            and (not write or bool(mr.access & Access.LOCAL_WRITE))
        )

    # -- the requester -------------------------------------------------------------

    def post_recv(self, wr_id: int, mr: MemoryRegion, offset: int, length: int) -> None:
        if self.destroyed:
            raise VerbsError(f"QP {self.qp_num} is destroyed")
        if self.state == QPState.RESET:
            raise VerbsError(f"QP {self.qp_num}: posting a receive WR in state RESET")
        if self.state == QPState.ERR:
            self.cq.push(WorkCompletion(wr_id, WcStatus.WR_FLUSH_ERR, Opcode.RECV))
            return
        if len(self.recvs) >= self.max_recv_wr:
            raise VerbsError(f"QP {self.qp_num}: receive queue full ({self.max_recv_wr} WRs)")
        if not isinstance(mr, EmuMR) or not self._local_ok(mr, offset, length, write=True):
            self.cq.push(WorkCompletion(wr_id, WcStatus.LOC_PROT_ERR, Opcode.RECV))
            self.to_error()
            return
        self.recvs.append((wr_id, mr, offset, length))

    def _begin(self, wr_id: int, opcode: Opcode) -> Wire | None:
        """Checks common to every send-queue WR; the wire to hand it to, or
        ``None`` when the WR was completed (flushed) here."""
        if self.destroyed:
            raise VerbsError(f"QP {self.qp_num} is destroyed")
        if self.state == QPState.ERR:
            self.cq.push(WorkCompletion(wr_id, WcStatus.WR_FLUSH_ERR, opcode))
            return None
        if self.state != QPState.RTS or self.wire is None:
            raise VerbsError(f"QP {self.qp_num}: posting a send WR in state {self.state.name}")
        if len(self._outstanding) >= self.max_send_wr:
            raise VerbsError(f"QP {self.qp_num}: send queue full ({self.max_send_wr} WRs)")
        self.posted += 1
        if self._error_after and self.posted >= self._error_after:
            self.to_error()  # injected: as a fatal async event would
            self.cq.push(WorkCompletion(wr_id, WcStatus.WR_FLUSH_ERR, opcode))
            return None
        return self.wire

    def _fail_local(self, wr_id: int, opcode: Opcode) -> None:
        self.cq.push(WorkCompletion(wr_id, WcStatus.LOC_PROT_ERR, opcode))
        self.to_error()

    def post_send(self, wr_id: int, mr: MemoryRegion, offset: int, length: int, *, inline: bool = False) -> None:
        if inline and length > self.max_inline:
            raise VerbsError(f"QP {self.qp_num}: inline SEND of {length} bytes over max_inline {self.max_inline}")
        wire = self._begin(wr_id, Opcode.SEND)
        if wire is None:
            return
        if not isinstance(mr, EmuMR) or not self._local_ok(mr, offset, length, write=False):
            self._fail_local(wr_id, Opcode.SEND)
            return
        self._outstanding.append(_Pending(wr_id, Opcode.SEND, length))
        wire.send(mr.view[offset : offset + length])

    def rdma_write(self, wr_id: int, mr: MemoryRegion, offset: int, length: int, remote_addr: int, rkey: int) -> None:
        wire = self._begin(wr_id, Opcode.RDMA_WRITE)
        if wire is None:
            return
        if not isinstance(mr, EmuMR) or not self._local_ok(mr, offset, length, write=False):
            self._fail_local(wr_id, Opcode.RDMA_WRITE)
            return
        self._outstanding.append(_Pending(wr_id, Opcode.RDMA_WRITE, length))
        wire.write(rkey, remote_addr, mr.view[offset : offset + length])

    def rdma_read(self, wr_id: int, mr: MemoryRegion, offset: int, length: int, remote_addr: int, rkey: int) -> None:
        wire = self._begin(wr_id, Opcode.RDMA_READ)
        if wire is None:
            return
        if not isinstance(mr, EmuMR) or not self._local_ok(mr, offset, length, write=True):
            self._fail_local(wr_id, Opcode.RDMA_READ)
            return
        self._outstanding.append(_Pending(wr_id, Opcode.RDMA_READ, length, mr, offset))
        wire.read(rkey, remote_addr, length)

    def _complete(self, status: WcStatus, data: Bytes | None = None) -> None:
        """The outcome of the oldest outstanding send-queue WR (from the wire)."""
        if not self._outstanding:
            return  # flushed meanwhile (QP in error or destroyed): a late answer
        p = self._outstanding.popleft()
        if status == WcStatus.SUCCESS and p.opcode == Opcode.RDMA_READ:
            # the landing region may have been deregistered while the read was in flight
            if data is None or len(data) != p.length or not self._local_ok(p.mr, p.offset, p.length, write=True):
                status = WcStatus.LOC_PROT_ERR
            elif p.mr is not None:
                p.mr.view[p.offset : p.offset + p.length] = data
        if status == WcStatus.SUCCESS:
            self.cq.push(WorkCompletion(p.wr_id, status, p.opcode, p.length))
        else:
            self.cq.push(WorkCompletion(p.wr_id, status, p.opcode))
            self.to_error()

    # -- the responder (shared by both wires) ------------------------------------------

    def ready(self) -> bool:
        """Can this QP answer its peer's requests (RTR or RTS, not destroyed)?"""
        return self.state in (QPState.RTR, QPState.RTS) and not self.destroyed

    def respond_send(self, data: Bytes) -> WcStatus:
        """Land a peer's SEND in the oldest posted receive; the status the
        requester completes with."""
        if not self.ready():
            return WcStatus.RETRY_EXC_ERR  # nobody answers: the transport retries run out
        if not self.recvs:
            self.to_error()
            return WcStatus.RNR_RETRY_EXC_ERR
        rid, rmr, roff, rlen = self.recvs.popleft()
        length = len(data)
        if length > rlen:
            self.cq.push(WorkCompletion(rid, WcStatus.LOC_LEN_ERR, Opcode.RECV))
            self.to_error()
            return WcStatus.REM_INV_REQ_ERR
        if not self._local_ok(rmr, roff, length, write=True):  # deregistered since it was posted
            self.cq.push(WorkCompletion(rid, WcStatus.LOC_PROT_ERR, Opcode.RECV))
            self.to_error()
            return WcStatus.REM_OP_ERR
        rmr.view[roff : roff + length] = data
        self.cq.push(WorkCompletion(rid, WcStatus.SUCCESS, Opcode.RECV, length))
        return WcStatus.SUCCESS

    def _remote_mr(self, rkey: int, addr: int, length: int, need: Access) -> EmuMR | None:
        rmr = self._fabric.mrs.get(rkey)
        if rmr is None or not rmr.covers(addr, length) or not (rmr.access & need):
            return None
        return rmr

    def respond_write(self, rkey: int, addr: int, data: Bytes) -> WcStatus:
        if not self.ready():
            return WcStatus.RETRY_EXC_ERR
        rmr = self._remote_mr(rkey, addr, len(data), Access.REMOTE_WRITE)
        if rmr is None:
            self.to_error()
            return WcStatus.REM_ACCESS_ERR
        at = addr - rmr.addr
        rmr.view[at : at + len(data)] = data
        return WcStatus.SUCCESS

    def respond_read(self, rkey: int, addr: int, length: int) -> tuple[WcStatus, memoryview | None]:
        if not self.ready():
            return WcStatus.RETRY_EXC_ERR, None
        rmr = self._remote_mr(rkey, addr, length, Access.REMOTE_READ)
        if rmr is None:
            self.to_error()
            return WcStatus.REM_ACCESS_ERR, None
        at = addr - rmr.addr
        return WcStatus.SUCCESS, rmr.view[at : at + length]


class InProcessWire(Wire):
    """``emulated``: the responder QP is on the same fabric; requests run
    synchronously."""

    def __init__(self, qp: EmuQP, remote_qp_num: int) -> None:
        self._qp = qp
        self._fabric = qp._fabric
        self._remote = remote_qp_num

    def _responder(self) -> EmuQP | None:
        peer = self._fabric.qps.get(self._remote)
        return peer if peer is not None and peer.ready() else None

    def send(self, data: memoryview) -> None:
        peer = self._responder()
        self._qp._complete(WcStatus.RETRY_EXC_ERR if peer is None else peer.respond_send(data))

    def write(self, rkey: int, addr: int, data: memoryview) -> None:
        peer = self._responder()
        self._qp._complete(WcStatus.RETRY_EXC_ERR if peer is None else peer.respond_write(rkey, addr, data))

    def read(self, rkey: int, addr: int, length: int) -> None:
        peer = self._responder()
        if peer is None:
            self._qp._complete(WcStatus.RETRY_EXC_ERR)
            return
        status, data = peer.respond_read(rkey, addr, length)
        self._qp._complete(status, data)

    def close(self) -> None:
        peer = self._fabric.qps.get(self._remote)
        if peer is not None:
            peer.to_error()


# -- across processes -----------------------------------------------------------------

# wire messages (each one message on the OOB channel: u8 kind | body)
W_SEND, W_WRITE, W_READ, W_ACK, W_READ_RESP = 16, 17, 18, 19, 20
_RADDR = struct.Struct("!IQ")  # rkey, addr
_RREAD = struct.Struct("!IQI")  # rkey, addr, length
_STATUS = struct.Struct("!B")


class IpcWire(Wire):
    """``emulated-ipc``: requests and answers travel over the connection's
    out-of-band channel; this side's QP answers the peer's requests.

    Messages: ``SEND data`` / ``WRITE rkey addr data`` / ``READ rkey addr
    length`` from the requester; ``ACK status`` / ``READ_RESP status data``
    back, in order (one socket, processed in order), which is what RC
    guarantees for completions.  The channel closing (the peer destroyed
    its QP, or its process died) moves this QP to the error state.
    """

    def __init__(self, qp: EmuQP, channel: OobChannel) -> None:
        self._qp = qp
        self._ch = channel
        channel.on_message = self._on_message
        channel.on_lost = self._on_lost

    def send(self, data: memoryview) -> None:
        self._ch.send(W_SEND, data)

    def write(self, rkey: int, addr: int, data: memoryview) -> None:
        self._ch.send(W_WRITE, _RADDR.pack(rkey, addr), data)

    def read(self, rkey: int, addr: int, length: int) -> None:
        self._ch.send(W_READ, _RREAD.pack(rkey, addr, length))

    def close(self) -> None:
        self._ch.on_lost = None
        self._ch.close()

    def _on_lost(self) -> None:
        self._qp.to_error()

    def _on_message(self, kind: int, body: memoryview) -> None:
        qp = self._qp
        if kind == W_SEND:
            self._ch.send(W_ACK, _STATUS.pack(qp.respond_send(body)))
        elif kind == W_WRITE:
            rkey, addr = _RADDR.unpack_from(body)
            self._ch.send(W_ACK, _STATUS.pack(qp.respond_write(rkey, addr, body[_RADDR.size :])))
        elif kind == W_READ:
            status, data = qp.respond_read(*_RREAD.unpack_from(body))
            if data is None:
                self._ch.send(W_READ_RESP, _STATUS.pack(status))
            else:
                self._ch.send(W_READ_RESP, _STATUS.pack(status), data)
        elif kind == W_ACK:
            qp._complete(WcStatus.from_raw(body[0]))
        elif kind == W_READ_RESP:
            qp._complete(WcStatus.from_raw(body[0]), body[1:])
        else:
            # a peer speaking something else: the connection is unusable
            self._ch.close()
            qp.to_error()


class EmuContext(VerbsContext):
    """An emulated device on an :class:`EmuFabric`."""

    def __init__(self, fabric: EmuFabric, name: str, *, qp_error_after: int = 0) -> None:
        self.fabric = fabric
        self.name = name
        self.qp_error_after = qp_error_after

    def reg_mr(self, length: int, access: Access) -> EmuMR:
        if length <= 0:
            raise VerbsError(f"cannot register {length} bytes")
        return EmuMR(self.fabric, length, access)

    def create_cq(self, depth: int) -> EmuCQ:
        return EmuCQ(depth)

    def create_qp(self, cq: CompletionQueue, max_send_wr: int, max_recv_wr: int, max_inline: int = 0) -> EmuQP:
        if not isinstance(cq, EmuCQ):
            raise VerbsError("the CQ belongs to another device")
        return EmuQP(self.fabric, cq, max_send_wr, max_recv_wr, max_inline, self.qp_error_after)
