"""The narrow verbs interface the msgr-rdma protocol is written against.

Only what a reliable-connected (RC) messaging protocol needs: memory
registration with access flags, one completion queue with a completion
channel descriptor, and a queue pair with ``post_recv``, ``post_send``,
``rdma_write``, ``rdma_read`` and state transitions.  Two implementations:
:mod:`msgr_rdma.emulation` (strict, in-process) and the pyverbs backend
(:func:`open_verbs_device`).

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
from dataclasses import dataclass

from msgr_core.errors import TransportError

__all__ = [
    "Access",
    "CompletionQueue",
    "MemoryRegion",
    "NoRdmaDevice",
    "Opcode",
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
    SEND = 0
    RDMA_WRITE = 1
    RDMA_READ = 2
    RECV = 128


class WcStatus(enum.IntEnum):
    """Completion status (``IBV_WC_*``, same numbers)."""

    SUCCESS = 0
    LOC_LEN_ERR = 1
    LOC_QP_OP_ERR = 2
    LOC_PROT_ERR = 4
    WR_FLUSH_ERR = 5
    REM_INV_REQ_ERR = 9
    REM_ACCESS_ERR = 10
    REM_OP_ERR = 11
    RETRY_EXC_ERR = 12
    RNR_RETRY_EXC_ERR = 13


class QPState(enum.IntEnum):
    RESET = 0
    INIT = 1
    RTR = 2
    RTS = 3
    ERR = 6


@dataclass(frozen=True, slots=True)
class WorkCompletion:
    """One completion: the WR's id, its status, what it was, bytes moved."""

    wr_id: int
    status: WcStatus
    opcode: Opcode
    byte_len: int = 0


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
    'test backend explicitly with [rdma] backend = "emulated"'
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


class QueuePair(abc.ABC):
    """An RC queue pair; every WR completes on its CQ."""

    qp_num: int
    state: QPState

    @abc.abstractmethod
    def to_init(self) -> None: ...

    @abc.abstractmethod
    def to_rtr(self, remote_qp_num: int) -> None:
        """Ready to receive, connected to the peer QP (its number, and in a
        real fabric its GID/LID, exchanged out of band)."""

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
    def create_qp(self, cq: CompletionQueue, max_send_wr: int, max_recv_wr: int) -> QueuePair: ...

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


def open_verbs_device(name: str = "") -> VerbsContext:
    """Open RDMA device ``name`` (``""``: the first) through pyverbs.

    :raises NoRdmaDevice: no such device, or no RDMA support at all, with
        how to set up Soft-RoCE.
    """
    names = list_verbs_devices(name)
    if not names:
        raise NoRdmaDevice(name, "the device list is empty")
    if name and name not in names:
        raise NoRdmaDevice(name, f"not among the devices present ({', '.join(names)})")
    # A device exists: the pyverbs data path (rdmacm connection setup, QPs,
    # CQ on the event loop) is not written yet; say so instead of guessing.
    raise NotImplementedError(
        f"RDMA device {name or names[0]!r} found, but the pyverbs data path of msgr-rdma is not "
        "implemented yet (see plugins/msgr-rdma/README.md)"
    )
