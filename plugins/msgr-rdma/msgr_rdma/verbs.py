"""The narrow verbs interface the msgr-rdma protocol is written against.

Only what a reliable-connected (RC) messaging protocol needs: memory
registration with access flags, one completion queue with a completion
channel descriptor, and a queue pair with ``post_recv``, ``post_send``,
``rdma_write``, ``rdma_read`` and state transitions.  Implementations:
:mod:`msgr_rdma.emulation` (strict; in-process or across processes) and
the pyverbs backend (:func:`open_verbs_device`, :mod:`msgr_rdma._pyverbs`).

Semantics every implementation keeps (those of ibverbs, RC service):

- a work request completes exactly once, in posting order per queue, with a
  :class:`WorkCompletion` on the CQ (every send is signaled here);
- a SEND consumes exactly one receive WR posted by the peer; none posted is
  an RNR error (``rnr_retry = 0``: no retries), a message longer than the
  receive buffer is a length error; either moves both QPs to the error state;
- local buffers need a registered MR covering them (``LOCAL_WRITE`` to be
  written: receives, RDMA READ targets); remote ones an ``rkey`` with
  ``REMOTE_WRITE`` / ``REMOTE_READ`` covering the range;
- a QP in the error state completes every outstanding and newly posted WR
  with :attr:`WcStatus.WR_FLUSH_ERR`;
- more completions than the CQ holds is a CQ overrun: the CQ is in error
  and :meth:`CompletionQueue.poll` raises :class:`VerbsError`.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from msgr_core.errors import TransportError

__all__ = [
    "Access",
    "CompletionQueue",
    "MemoryRegion",
    "NoRdmaDevice",
    "Opcode",
    "QPEndpoint",
    "QPState",
    "QueuePair",
    "VerbsContext",
    "VerbsError",
    "WcStatus",
    "WorkCompletion",
    "open_verbs_device",
]


class Access(enum.IntFlag):
    """Memory region access flags (``IBV_ACCESS_*``)."""

    LOCAL_READ = 0  # always granted
    LOCAL_WRITE = 1
    REMOTE_WRITE = 2
    REMOTE_READ = 4


class Opcode(enum.IntEnum):
    """Completion opcodes (``IBV_WC_*``, same numbers); ``UNKNOWN`` for what a
    device reports that is none of these (an error completion's opcode is
    not defined by verbs)."""

    SEND = 0
    RDMA_WRITE = 1
    RDMA_READ = 2
    RECV = 128
    UNKNOWN = 255


class WcStatus(enum.IntEnum):
    """Completion status (``enum ibv_wc_status``, same numbers)."""

    SUCCESS = 0
    LOC_LEN_ERR = 1
    LOC_QP_OP_ERR = 2
    LOC_EEC_OP_ERR = 3
    LOC_PROT_ERR = 4
    WR_FLUSH_ERR = 5
    MW_BIND_ERR = 6
    BAD_RESP_ERR = 7
    LOC_ACCESS_ERR = 8
    REM_INV_REQ_ERR = 9
    REM_ACCESS_ERR = 10
    REM_OP_ERR = 11
    RETRY_EXC_ERR = 12
    RNR_RETRY_EXC_ERR = 13
    LOC_RDD_VIOL_ERR = 14
    REM_INV_RD_REQ_ERR = 15
    REM_ABORT_ERR = 16
    INV_EECN_ERR = 17
    INV_EEC_STATE_ERR = 18
    FATAL_ERR = 19
    RESP_TIMEOUT_ERR = 20
    GENERAL_ERR = 21

    @classmethod
    def from_raw(cls, value: int) -> WcStatus:
        """The status a device reported; a number this enum does not know
        (a newer or vendor status) is :attr:`GENERAL_ERR` -- never success."""
        try:
            return cls(value)
        except ValueError:
            return cls.GENERAL_ERR


class QPState(enum.IntEnum):
    RESET = 0
    INIT = 1
    RTR = 2
    RTS = 3
    ERR = 6


@dataclass(frozen=True, slots=True)
class WorkCompletion:
    """One completion: the WR's id, its status, what it was, bytes moved
    (and the device's vendor error code, 0 when none)."""

    wr_id: int
    status: WcStatus
    opcode: Opcode
    byte_len: int = 0
    vendor_err: int = 0


@dataclass(frozen=True, slots=True)
class QPEndpoint:
    """What a peer needs to connect its RC QP to ours (exchanged out of band):
    QP number, initial packet sequence number, port LID (InfiniBand; 0 on
    RoCE) and GID (16 bytes; zeros when the fabric is not routed)."""

    qp_num: int
    psn: int = 0
    lid: int = 0
    gid: bytes = bytes(16)
    #: the path MTU the sender's port runs (``enum ibv_mtu``: 1=256 ... 5=4096); 0 = unknown
    mtu: int = 0


class VerbsError(TransportError, OSError):
    """A verbs operation failed, or a completion carried an error status.

    :ivar status: the completion status, or ``None`` for a failed call.
    """

    def __init__(self, message: str, status: WcStatus | None = None) -> None:
        self.status = status
        super().__init__(f"{message} (status {status.name})" if status is not None else message)


SOFT_ROCE_HINT = (
    "on a host whose kernel has RDMA support (CONFIG_RDMA_RXE), create a Soft-RoCE device with "
    "`rdma link add rxe0 type rxe netdev eth0` (rdma-core's iproute2 `rdma` tool), or select the "
    'test backend explicitly with [rdma] backend = "emulated" (or "emulated-ipc" across processes)'
)


class NoRdmaDevice(TransportError, OSError):
    """No usable RDMA device: the verbs backend cannot run here.

    :ivar device: the device asked for (``""`` = the first one).
    :ivar reason: what the verbs library said.
    """

    def __init__(self, device: str, reason: str) -> None:
        self.device = device
        self.reason = reason
        which = f"no RDMA device {device!r}" if device else "no RDMA device"
        super().__init__(f"{which}: {reason}; {SOFT_ROCE_HINT}")


class MemoryRegion(abc.ABC):
    """Registered memory the MR owns: :attr:`view` is its bytes."""

    length: int
    access: Access
    lkey: int
    rkey: int
    #: The address a peer uses with :attr:`rkey`.
    addr: int

    @property
    @abc.abstractmethod
    def view(self) -> memoryview:
        """The registered bytes (writable)."""

    @abc.abstractmethod
    def dereg(self) -> None:
        """Deregister; the keys stop working.  Idempotent."""


class CompletionQueue(abc.ABC):
    """A CQ of :attr:`depth` entries with a completion channel."""

    depth: int

    @abc.abstractmethod
    def fileno(self) -> int:
        """The completion channel's descriptor: readable once an armed CQ got
        a completion (put it on the event loop)."""

    @abc.abstractmethod
    def req_notify(self) -> None:
        """Arm: the next completion makes :meth:`fileno` readable."""

    @abc.abstractmethod
    def ack_events(self) -> None:
        """Consume the channel's pending events (clears readability)."""

    @abc.abstractmethod
    def poll(self, max_entries: int) -> list[WorkCompletion]:
        """Up to ``max_entries`` completions, oldest first.

        :raises VerbsError: the CQ overran (it is unusable).
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Destroy the CQ and its channel.  Idempotent."""


class PeerChannel(Protocol):
    """The out-of-band connection to the peer QP's host (connection setup;
    for ``emulated-ipc`` also the wire).  The QP owns it once attached."""

    def close(self) -> None: ...


class QueuePair(abc.ABC):
    """An RC queue pair; every WR completes on its CQ.

    :ivar on_async_error: set by the QP's user: called once with a
        description when the device reports the QP broken asynchronously
        (a fatal async event), before its WRs flush.
    """

    qp_num: int
    state: QPState
    on_async_error: Callable[[str], None] | None = None

    @abc.abstractmethod
    def attach(self, channel: PeerChannel) -> None:
        """Give the QP its out-of-band connection: :meth:`destroy` closes it."""

    @abc.abstractmethod
    def to_init(self) -> None: ...

    @abc.abstractmethod
    def endpoint(self) -> QPEndpoint:
        """This QP's connection data, for the peer's :meth:`to_rtr`."""

    @abc.abstractmethod
    def to_rtr(self, remote: QPEndpoint) -> None:
        """Ready to receive, connected to the peer QP (its number, PSN, LID
        and GID, exchanged out of band)."""

    @abc.abstractmethod
    def to_rts(self) -> None: ...

    @abc.abstractmethod
    def to_error(self) -> None:
        """Move to the error state: outstanding WRs flush."""

    @abc.abstractmethod
    def post_recv(self, wr_id: int, mr: MemoryRegion, offset: int, length: int) -> None: ...

    @abc.abstractmethod
    def post_send(self, wr_id: int, mr: MemoryRegion, offset: int, length: int, *, inline: bool = False) -> None: ...

    @abc.abstractmethod
    def rdma_write(
        self, wr_id: int, mr: MemoryRegion, offset: int, length: int, remote_addr: int, rkey: int
    ) -> None: ...

    @abc.abstractmethod
    def rdma_read(
        self, wr_id: int, mr: MemoryRegion, offset: int, length: int, remote_addr: int, rkey: int
    ) -> None: ...

    @abc.abstractmethod
    def destroy(self) -> None:
        """Destroy the QP (its peer sees a disconnect).  Idempotent."""


class VerbsContext(abc.ABC):
    """An opened device with one protection domain."""

    name: str

    @abc.abstractmethod
    def reg_mr(self, length: int, access: Access) -> MemoryRegion: ...

    @abc.abstractmethod
    def create_cq(self, depth: int) -> CompletionQueue: ...

    @abc.abstractmethod
    def create_qp(self, cq: CompletionQueue, max_send_wr: int, max_recv_wr: int, max_inline: int = 0) -> QueuePair:
        """An RC QP in RESET, both queues on ``cq``, every send WR signaled;
        SENDs up to ``max_inline`` bytes may be posted inline."""

    def close(self) -> None:  # noqa: B027 - optional
        """Release the device."""


# -- the pyverbs backend --------------------------------------------------------


def list_verbs_devices(wanted: str = "") -> list[str]:
    """Names of the RDMA devices pyverbs sees (``wanted``: the device the
    caller is after, named in the error).

    :raises NoRdmaDevice: pyverbs is missing or the device list cannot be
        read (no kernel RDMA support: ``ENOSYS``).
    """
    try:
        from pyverbs import device as pv_device  # type: ignore[import-untyped]
        from pyverbs.pyverbs_error import PyverbsError  # type: ignore[import-untyped]
    except ImportError as exc:
        raise NoRdmaDevice(wanted, f"pyverbs is not importable ({exc}); pip install msgr-rdma installs it") from None
    try:
        devices = pv_device.get_device_list()
    except PyverbsError as exc:
        raise NoRdmaDevice(wanted, f"pyverbs: {exc}") from None
    return [d.name.decode() if isinstance(d.name, bytes) else str(d.name) for d in devices]


def open_verbs_device(name: str = "", port: int = 1, gid_index: int = 0) -> VerbsContext:
    """Open RDMA device ``name`` (``""``: the first) through pyverbs, on
    ``port`` with GID ``gid_index`` (:class:`msgr_rdma._pyverbs.PvContext`).

    :raises NoRdmaDevice: no such device, no RDMA support at all (with how
        to set up Soft-RoCE), or its port is not active.
    :raises VerbsError: the device refused something else (named).
    """
    names = list_verbs_devices(name)
    if not names:
        raise NoRdmaDevice(name, "the device list is empty")
    if name and name not in names:
        raise NoRdmaDevice(name, f"not among the devices present ({', '.join(names)})")
    from ._pyverbs import PvContext

    return PvContext(name or names[0], port, gid_index)
