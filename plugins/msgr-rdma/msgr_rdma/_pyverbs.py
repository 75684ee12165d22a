"""The pyverbs backend of the verbs interface (:mod:`msgr_rdma.verbs`).

Every pyverbs call of msgr-rdma is in this module, behind the same
interface the emulation implements: :class:`PvContext` (device, protection
domain, port / GID, async events), :class:`PvMR`, :class:`PvCQ` (a CQ with
its own completion channel, the channel's descriptor non-blocking for the
event loop) and :class:`PvQP` (RC, every send WR signaled).

**Status: written against pyverbs 56.0rc1's API (read from the installed
package and rdma-core's sources) but never run against a device** -- the
machines it was written on have no RDMA support.  The parts that need no
device (attribute building, status / opcode / access / event mapping,
error translation) are unit-tested; the rest runs only in the ``rdma_hw``
tests.

Two things pyverbs 56 does not expose, and how they are obtained:

- the descriptors of a completion channel and of the device's async
  events (``ibv_comp_channel.fd``, ``ibv_context.async_fd``): found as the
  descriptor that appeared in ``/proc/self/fd`` while the object was
  created, whose target is the kernel's ``anon_inode:[infinibandevent]``
  (:func:`_new_event_fd`), then made non-blocking so that
  ``get_cq_event`` / ``get_async_event`` never block the loop;
- which QP an async event is about (``AsyncEvent`` has only
  ``event_type``): on a QP event every QP of the context is queried and
  those the device moved to the error state break.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import ipaddress
import logging
import mmap
import os
import random
from typing import Any, Literal

from .verbs import (
    Access,
    CompletionQueue,
    MemoryRegion,
    NoRdmaDevice,
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

__all__ = [
    "PvCQ",
    "PvContext",
    "PvMR",
    "PvQP",
    "async_event_action",
    "gid_bytes",
    "ibv_access",
    "rc_init_attr",
    "rc_rtr_attr",
    "rc_rts_attr",
    "verbs_error",
    "wc_opcode",
]

log = logging.getLogger("msgr_rdma.pyverbs")

# enum ibv_async_event_type (libibverbs' numbering; pyverbs.enums has the same)
EV_CQ_ERR, EV_QP_FATAL, EV_QP_REQ_ERR, EV_QP_ACCESS_ERR = 0, 1, 2, 3
EV_PATH_MIG_ERR, EV_DEVICE_FATAL, EV_PORT_ERR = 7, 8, 10
EVENT_NAMES = {
    0: "CQ_ERR",
    1: "QP_FATAL",
    2: "QP_REQ_ERR",
    3: "QP_ACCESS_ERR",
    4: "COMM_EST",
    5: "SQ_DRAINED",
    6: "PATH_MIG",
    7: "PATH_MIG_ERR",
    8: "DEVICE_FATAL",
    9: "PORT_ACTIVE",
    10: "PORT_ERR",
    11: "LID_CHANGE",
    12: "PKEY_CHANGE",
    13: "SM_CHANGE",
    14: "SRQ_ERR",
    15: "SRQ_LIMIT_REACHED",
    16: "QP_LAST_WQE_REACHED",
    17: "CLIENT_REREGISTER",
    18: "GID_CHANGE",
    19: "WQ_FATAL",
}
_PORT_ACTIVE_STATE = 4  # enum ibv_port_state IBV_PORT_ACTIVE
_EVENT_FD_TARGET = "anon_inode:[infinibandevent]"

#: RC timing: local ACK timeout 4.096 us * 2^14 (~67 ms), 7 transport retries;
#: rnr_retry 0 -- the protocol's credits guarantee a posted receive, so an
#: RNR is a bug to report, not to wait out
RC_TIMEOUT, RC_RETRY_CNT, RC_RNR_RETRY, RC_MIN_RNR_TIMER = 14, 7, 0, 12


def async_event_action(event_type: int) -> Literal["qp", "all", "none"]:
    """What an async event does: ``"qp"`` breaks the QPs the device moved
    to the error state, ``"all"`` every link of the context (the CQ or the
    device failed, or the port went down: which links it hit is not
    knowable), ``"none"`` is informational."""
    if event_type in (EV_QP_FATAL, EV_QP_REQ_ERR, EV_QP_ACCESS_ERR, EV_PATH_MIG_ERR):
        return "qp"
    if event_type in (EV_CQ_ERR, EV_DEVICE_FATAL, EV_PORT_ERR):
        return "all"
    return "none"


def ibv_access(access: Access) -> int:
    """``IBV_ACCESS_*`` bits of an :class:`~msgr_rdma.verbs.Access`."""
    out = 0
    if access & Access.LOCAL_WRITE:
        out |= 1  # IBV_ACCESS_LOCAL_WRITE
    if access & Access.REMOTE_WRITE:
        out |= 2  # IBV_ACCESS_REMOTE_WRITE
    if access & Access.REMOTE_READ:
        out |= 4  # IBV_ACCESS_REMOTE_READ
    return out


_WC_OPCODES = {0: Opcode.SEND, 1: Opcode.RDMA_WRITE, 2: Opcode.RDMA_READ, 128: Opcode.RECV}


def wc_opcode(raw: int) -> Opcode:
    """The interface's opcode of ``ibv_wc.opcode`` (only meaningful on a
    successful completion; anything else is :attr:`Opcode.UNKNOWN`)."""
    return _WC_OPCODES.get(raw, Opcode.UNKNOWN)


def gid_bytes(gid: str) -> bytes:
    """The 16 bytes of a GID as pyverbs prints it (``fe80:0000:...``)."""
    return ipaddress.IPv6Address(gid).packed


def gid_str(raw: bytes) -> str:
    """pyverbs' GID text (8 groups of 4 hex digits) of 16 bytes."""
    h = raw.hex()
    return ":".join(h[i : i + 4] for i in range(0, 32, 4))


def verbs_error(what: str, exc: BaseException) -> VerbsError:
    """A pyverbs failure as the interface's error, naming the operation
    (and the errno pyverbs reported, when it did)."""
    code = getattr(exc, "error_code", -1)
    err = VerbsError(f"{what}: {exc}")
    if isinstance(code, int) and code > 0:
        err.errno = code
    return err


def _pv() -> Any:
    """The pyverbs modules (imported on first use)."""
    import pyverbs.addr as addr  # type: ignore[import-untyped]
    import pyverbs.cq as cq  # type: ignore[import-untyped]
    import pyverbs.device as device  # type: ignore[import-untyped]
    import pyverbs.enums as enums  # type: ignore[import-untyped]
    import pyverbs.mr as mr  # type: ignore[import-untyped]
    import pyverbs.pd as pd  # type: ignore[import-untyped]
    import pyverbs.qp as qp  # type: ignore[import-untyped]
    import pyverbs.wr as wr  # type: ignore[import-untyped]
    from pyverbs.pyverbs_error import PyverbsError  # type: ignore[import-untyped]

    class NS:
        pass

    ns: Any = NS()
    ns.addr, ns.cq, ns.device, ns.e, ns.mr, ns.pd, ns.qp, ns.wr = addr, cq, device, enums, mr, pd, qp, wr
    ns.Error = PyverbsError
    return ns


def rc_init_attr(port: int) -> Any:
    """``QPAttr`` for RESET -> INIT of an RC QP: the port, pkey 0, and
    remote READ / WRITE allowed on the QP (the MRs still decide)."""
    pv = _pv()
    attr = pv.qp.QPAttr(qp_state=pv.e.IBV_QPS_INIT)
    attr.port_num = port
    attr.pkey_index = 0
    attr.qp_access_flags = ibv_access(Access.LOCAL_WRITE | Access.REMOTE_READ | Access.REMOTE_WRITE)
    return attr


def rc_rtr_attr(port: int, gid_index: int, local_mtu: int, remote: QPEndpoint, rd_atomic: int) -> Any:
    """``QPAttr`` for INIT -> RTR: the peer's QP number, PSN, LID and GID
    (a global route whenever the peer has a GID: always on RoCE), the path
    MTU both ports run, and how many RDMA READs the peer may have in flight
    against us."""
    pv = _pv()
    attr = pv.qp.QPAttr(qp_state=pv.e.IBV_QPS_RTR)
    mtus = [m for m in (local_mtu, remote.mtu) if m]
    attr.path_mtu = min(mtus) if mtus else pv.e.IBV_MTU_1024
    attr.dest_qp_num = remote.qp_num
    attr.rq_psn = remote.psn
    attr.max_dest_rd_atomic = rd_atomic
    attr.min_rnr_timer = RC_MIN_RNR_TIMER
    if any(remote.gid):
        gr = pv.addr.GlobalRoute(dgid=pv.addr.GID(gid_str(remote.gid)), sgid_index=gid_index)
        ah = pv.addr.AHAttr(port_num=port, is_global=1, gr=gr, dlid=remote.lid)
    else:
        ah = pv.addr.AHAttr(port_num=port, is_global=0, dlid=remote.lid)
    attr.ah_attr = ah
    return attr


def rc_rts_attr(psn: int, rd_atomic: int) -> Any:
    """``QPAttr`` for RTR -> RTS: our PSN, the retry policy (see
    ``RC_*``) and how many RDMA READs we may have in flight."""
    pv = _pv()
    attr = pv.qp.QPAttr(qp_state=pv.e.IBV_QPS_RTS)
    attr.sq_psn = psn
    attr.timeout = RC_TIMEOUT
    attr.retry_cnt = RC_RETRY_CNT
    attr.rnr_retry = RC_RNR_RETRY
    attr.max_rd_atomic = rd_atomic
    return attr


def _fds() -> set[int]:
    try:
        return {int(n) for n in os.listdir("/proc/self/fd")}
    except OSError:
        return set()


def _new_event_fd(before: set[int], what: str, exclude: tuple[int, ...] = ()) -> int:
    """The verbs event descriptor created since ``before`` was taken (see
    the module docstring), made non-blocking.

    :raises VerbsError: none, or more than one, could be told apart.
    """
    new = sorted(_fds() - before - set(exclude))
    events = []
    for fd in new:
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == _EVENT_FD_TARGET:
                events.append(fd)
        except OSError:
            continue
    if len(events) != 1:
        raise VerbsError(
            f"cannot find the descriptor of the {what} (new descriptors {new}, of which "
            f"{_EVENT_FD_TARGET}: {events}); pyverbs does not expose it"
        )
    fd = events[0]
    os.set_blocking(fd, False)
    return fd


class PvMR(MemoryRegion):
    """An MR over memory msgr-rdma owns (an anonymous ``mmap``, registered
    by address), so :attr:`view` never dangles, even after :meth:`dereg`."""

    def __init__(self, pv: Any, pd: Any, length: int, access: Access) -> None:
        self._mem = mmap.mmap(-1, length)
        self._cbuf = (ctypes.c_char * length).from_buffer(self._mem)
        self.addr = ctypes.addressof(self._cbuf)
        self.length = length
        self.access = access
        try:
            self._mr = pv.mr.MR(pd, length, ibv_access(access), address=self.addr)
        except pv.Error as exc:
            raise verbs_error(f"ibv_reg_mr({length} bytes, {access!r})", exc) from exc
        self.lkey = int(self._mr.lkey)
        self.rkey = int(self._mr.rkey)
        self._view = memoryview(self._cbuf).cast("B")
        self._pv = pv

    @property
    def view(self) -> memoryview:
        return self._view

    def dereg(self) -> None:
        mr, self._mr = self._mr, None
        if mr is not None:
            try:
                mr.close()
            except self._pv.Error as exc:
                log.warning("ibv_dereg_mr failed: %s", exc)


class PvCQ(CompletionQueue):
    """A CQ with its own completion channel."""

    def __init__(self, ctx: PvContext, depth: int) -> None:
        pv = ctx.pv
        self._pv = pv
        before = _fds()
        try:
            self.channel = pv.cq.CompChannel(ctx.ctx)
        except pv.Error as exc:
            raise verbs_error("ibv_create_comp_channel", exc) from exc
        try:
            self._fd = _new_event_fd(before, "completion channel")
            self.cq = pv.cq.CQ(ctx.ctx, depth, None, self.channel, 0)
        except BaseException as exc:
            self.channel.close()
            if isinstance(exc, pv.Error):
                raise verbs_error(f"ibv_create_cq({depth})", exc) from exc
            raise
        self.depth = depth
        self._closed = False

    def fileno(self) -> int:
        return self._fd

    def req_notify(self) -> None:
        try:
            self.cq.req_notify()
        except self._pv.Error as exc:
            raise verbs_error("ibv_req_notify_cq", exc) from exc

    def ack_events(self) -> None:
        n = 0
        while True:
            try:
                self.channel.get_cq_event(self.cq)
            except self._pv.Error as exc:
                if getattr(exc, "error_code", -1) in (errno.EAGAIN, errno.EWOULDBLOCK):
                    break
                raise verbs_error("ibv_get_cq_event", exc) from exc
            n += 1
        if n:
            self.cq.ack_events(n)

    def poll(self, max_entries: int) -> list[WorkCompletion]:
        try:
            _n, wcs = self.cq.poll(max_entries)
        except self._pv.Error as exc:
            raise verbs_error("ibv_poll_cq", exc) from exc
        return [
            WorkCompletion(
                int(wc.wr_id),
                WcStatus.from_raw(int(wc.status)),
                wc_opcode(int(wc.opcode)),
                int(wc.byte_len),
                int(wc.vendor_err),
            )
            for wc in wcs
        ]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for obj in (self.cq, self.channel):
            try:
                obj.close()
            except self._pv.Error as exc:
                log.warning("closing a CQ: %s", exc)


class PvQP(QueuePair):
    """An RC QP; both queues on one CQ; every send WR signaled."""

    def __init__(self, ctx: PvContext, cq: PvCQ, max_send_wr: int, max_recv_wr: int, max_inline: int) -> None:
        pv = ctx.pv
        self._pv = pv
        self._ctx = ctx
        cap = pv.qp.QPCap(
            max_send_wr=max_send_wr, max_recv_wr=max_recv_wr, max_send_sge=1, max_recv_sge=1, max_inline_data=max_inline
        )
        init = pv.qp.QPInitAttr(qp_type=pv.e.IBV_QPT_RC, scq=cq.cq, rcq=cq.cq, cap=cap, sq_sig_all=1)
        try:
            self.qp = pv.qp.QP(ctx.pd, init)
        except pv.Error as exc:
            what = f"ibv_create_qp(RC, send {max_send_wr}, recv {max_recv_wr}, inline {max_inline})"
            raise verbs_error(what, exc) from exc
        self.qp_num = int(self.qp.qp_num)
        self.state = QPState.RESET
        self.psn = random.getrandbits(24)
        self._channel: PeerChannel | None = None
        self._dead = False
        ctx.qps[self.qp_num] = self

    def _call(self, what: str, fn: Any, *args: Any) -> None:
        if self._dead:
            raise VerbsError(f"QP {self.qp_num} is destroyed")
        try:
            fn(*args)
        except self._pv.Error as exc:
            raise verbs_error(f"QP {self.qp_num}: {what}", exc) from exc

    def endpoint(self) -> QPEndpoint:
        c = self._ctx
        return QPEndpoint(self.qp_num, self.psn, c.lid, c.gid, c.mtu)

    def attach(self, channel: PeerChannel) -> None:
        """The setup connection stays open: its end (the peer destroyed its
        QP or died) moves this QP to the error state, as rdmacm's
        DISCONNECTED would; it carries nothing else."""
        from ._oob import OobChannel

        self._channel = channel
        if isinstance(channel, OobChannel):
            channel.on_lost = self._peer_gone

    def _peer_gone(self) -> None:
        if not self._dead:
            try:
                self.to_error()
            except VerbsError as exc:
                log.warning("%s", exc)

    def to_init(self) -> None:
        self._call("to INIT", self.qp.to_init, rc_init_attr(self._ctx.port))
        self.state = QPState.INIT

    def to_rtr(self, remote: QPEndpoint) -> None:
        c = self._ctx
        self._call("to RTR", self.qp.to_rtr, rc_rtr_attr(c.port, c.gid_index, c.mtu, remote, c.rd_atomic))
        self.state = QPState.RTR

    def to_rts(self) -> None:
        self._call("to RTS", self.qp.to_rts, rc_rts_attr(self.psn, self._ctx.rd_atomic))
        self.state = QPState.RTS

    def to_error(self) -> None:
        if self.state == QPState.ERR or self._dead:
            return
        pv = self._pv
        self._call("to ERR", self.qp.modify, pv.qp.QPAttr(qp_state=pv.e.IBV_QPS_ERR), pv.e.IBV_QP_STATE)
        self.state = QPState.ERR

    def device_state(self) -> QPState | None:
        """The state the device reports (``None``: unknown / not one of ours)."""
        pv = self._pv
        try:
            attr, _init = self.qp.query(pv.e.IBV_QP_STATE)
        except pv.Error:
            return None
        raw = int(attr.qp_state)
        if raw == int(pv.e.IBV_QPS_SQE):
            return QPState.ERR
        try:
            return QPState(raw)
        except ValueError:
            return None

    def async_error(self, description: str) -> None:
        """The device reported this QP (or its CQ / port / device) broken."""
        cb = self.on_async_error
        if cb is not None:
            self.on_async_error = None
            cb(description)
        self._peer_gone()

    def _sge(self, mr: MemoryRegion, offset: int, length: int) -> Any:
        if not isinstance(mr, PvMR) or mr._mr is None:
            raise VerbsError(f"QP {self.qp_num}: not a registered pyverbs MR")
        if offset < 0 or offset + length > mr.length:
            raise VerbsError(f"QP {self.qp_num}: [{offset}, {offset + length}) is outside the MR of {mr.length} bytes")
        return self._pv.wr.SGE(mr.addr + offset, length, mr.lkey)

    def post_recv(self, wr_id: int, mr: MemoryRegion, offset: int, length: int) -> None:
        wr = self._pv.wr.RecvWR(wr_id=wr_id, num_sge=1, sg=[self._sge(mr, offset, length)])
        self._call("post_recv", self.qp.post_recv, wr)

    def _post(self, what: str, wr_id: int, opcode: int, sge: Any, flags: int, rdma: tuple[int, int] | None) -> None:
        wr = self._pv.wr.SendWR(wr_id=wr_id, opcode=opcode, num_sge=1, sg=[sge], send_flags=flags)
        if rdma is not None:
            wr.set_wr_rdma(rdma[0], rdma[1])
        self._call(what, self.qp.post_send, wr)

    def post_send(self, wr_id: int, mr: MemoryRegion, offset: int, length: int, *, inline: bool = False) -> None:
        e = self._pv.e
        flags = e.IBV_SEND_SIGNALED | (e.IBV_SEND_INLINE if inline else 0)
        self._post("post_send(SEND)", wr_id, e.IBV_WR_SEND, self._sge(mr, offset, length), flags, None)

    def rdma_write(self, wr_id: int, mr: MemoryRegion, offset: int, length: int, remote_addr: int, rkey: int) -> None:
        e = self._pv.e
        sge = self._sge(mr, offset, length)
        self._post("post_send(RDMA_WRITE)", wr_id, e.IBV_WR_RDMA_WRITE, sge, e.IBV_SEND_SIGNALED, (rkey, remote_addr))

    def rdma_read(self, wr_id: int, mr: MemoryRegion, offset: int, length: int, remote_addr: int, rkey: int) -> None:
        e = self._pv.e
        sge = self._sge(mr, offset, length)
        self._post("post_send(RDMA_READ)", wr_id, e.IBV_WR_RDMA_READ, sge, e.IBV_SEND_SIGNALED, (rkey, remote_addr))

    def destroy(self) -> None:
        if self._dead:
            return
        self._dead = True
        self.state = QPState.ERR
        self._ctx.qps.pop(self.qp_num, None)
        ch, self._channel = self._channel, None
        if ch is not None:
            ch.close()
        try:
            self.qp.close()
        except self._pv.Error as exc:
            log.warning("ibv_destroy_qp: %s", exc)


class PvContext(VerbsContext):
    """An opened device: context, protection domain, one port and GID, and
    the device's async events on the event loop."""

    def __init__(self, name: str, port: int, gid_index: int) -> None:
        try:
            pv = _pv()
        except ImportError as exc:
            raise NoRdmaDevice(name, f"pyverbs is not importable ({exc}); pip install msgr-rdma installs it") from None
        self.pv = pv
        self.name = name
        self.port = port
        self.gid_index = gid_index
        self.qps: dict[int, PvQP] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        before = _fds()
        try:
            self.ctx = pv.device.Context(name=name)
        except pv.Error as exc:
            raise NoRdmaDevice(name, f"pyverbs: cannot open it: {exc}") from None
        try:
            self.async_fd: int | None = _new_event_fd(before, "async event channel", exclude=(int(self.ctx.cmd_fd),))
        except VerbsError as exc:
            log.warning("%s: async events will not be watched (%s)", name, exc)
            self.async_fd = None
        try:
            self.pd = pv.pd.PD(self.ctx)
            pattr = self.ctx.query_port(port)
            dattr = self.ctx.query_device()
            gid = self.ctx.query_gid(port, gid_index)
        except pv.Error as exc:
            self.ctx.close()
            raise verbs_error(f"{name}: opening port {port}, GID index {gid_index}", exc) from exc
        if int(pattr.state) != _PORT_ACTIVE_STATE:
            self.ctx.close()
            raise NoRdmaDevice(name, f"port {port} is not active (state {int(pattr.state)})")
        self.lid = int(pattr.lid)
        self.mtu = int(pattr.active_mtu)
        self.gid = gid_bytes(str(gid.gid))
        self.rd_atomic = max(1, min(16, int(dattr.max_qp_rd_atom), int(dattr.max_qp_init_rd_atom)))

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Put the async event descriptor on ``loop`` (once)."""
        if self._loop is None and self.async_fd is not None:
            self._loop = loop
            loop.add_reader(self.async_fd, self._on_async)

    def _on_async(self) -> None:
        while True:
            try:
                ev = self.ctx.get_async_event()
            except self.pv.Error as exc:
                if getattr(exc, "error_code", -1) not in (errno.EAGAIN, errno.EWOULDBLOCK):
                    log.warning("%s: ibv_get_async_event: %s", self.name, exc)
                return
            etype = int(ev.event_type)
            ev.ack()
            self.handle_event(etype)

    def handle_event(self, etype: int) -> None:
        """Act on one async event (see :func:`async_event_action`)."""
        name = EVENT_NAMES.get(etype, str(etype))
        action = async_event_action(etype)
        log.info("%s: async event %s", self.name, name)
        if action == "none":
            return
        for qp in list(self.qps.values()):
            if action == "all" or qp.device_state() == QPState.ERR:
                qp.async_error(f"async event {name} on {self.name}")

    def reg_mr(self, length: int, access: Access) -> PvMR:
        if length <= 0:
            raise VerbsError(f"cannot register {length} bytes")
        return PvMR(self.pv, self.pd, length, access)

    def create_cq(self, depth: int) -> PvCQ:
        return PvCQ(self, depth)

    def create_qp(self, cq: CompletionQueue, max_send_wr: int, max_recv_wr: int, max_inline: int = 0) -> PvQP:
        if not isinstance(cq, PvCQ):
            raise VerbsError("the CQ belongs to another device")
        return PvQP(self, cq, max_send_wr, max_recv_wr, max_inline)

    def close(self) -> None:
        if self._loop is not None and self.async_fd is not None:
            self._loop.remove_reader(self.async_fd)
            self._loop = None
        for qp in list(self.qps.values()):
            qp.destroy()
        for obj in (self.pd, self.ctx):
            try:
                obj.close()
            except self.pv.Error as exc:
                log.warning("%s: close: %s", self.name, exc)
