"""msgr-rdma: RDMA verbs links for msgr (``rdma://host:port``).

Features
--------

- **Layered.**  The protocol (:mod:`msgr_rdma._link`: credits, receive
  buffer pool, rendezvous, fragmentation, close and break handling) is
  written against a narrow verbs interface (:mod:`msgr_rdma.verbs`:
  register memory with access flags, post send / receive, RDMA READ /
  WRITE, poll a CQ, QP state transitions, a completion channel
  descriptor).  Implementations: pyverbs (:mod:`msgr_rdma._pyverbs`;
  not yet run on a device) and :mod:`msgr_rdma.emulation`, a strict
  emulation (RNR, MR bounds and access, flush on error, CQ overrun), in
  one process or across two (the verbs carried over a socket).
- **No RNR, ever.**  Receive buffers are pre-registered and pre-posted;
  credits travel in every message header, a receive buffer is reposted
  before its credit goes back, and the last credit is kept for credit
  returns so two starved sides cannot deadlock.
- **Small frames by SEND** (inline under ``inline_threshold``), split over
  a few buffers and reassembled when larger than one; **large frames by
  rendezvous** (at ``rendezvous_threshold``): the sender announces a
  registered region, the receiver RDMA-READs it and answers ``FIN`` —
  one read per frame, not thousands of sends.  Registered regions are
  pooled by size and the pool is bounded (``mr_cache_bytes``).
- **Completions on the event loop**: the CQ's completion channel
  descriptor is an ``add_reader``; each wakeup polls in batches
  (``poll_batch``) until empty, re-arms and polls once more.
- **Breaks carry the verbs status**: any error completion (RNR, flush,
  access, retry exceeded) or CQ overrun ends the link with
  :class:`~msgr_rdma._link.RdmaLinkBroken` (a ``LinkClosed``) whose
  ``status`` is the :class:`~msgr_rdma.verbs.WcStatus`.
- **Connection setup out of band over TCP** (:mod:`msgr_rdma._oob`): QP
  number, PSN, LID, GID and sizes exchanged with the listener at
  ``host:port``; the TCP connection stays as the disconnect signal.
- **The backend is chosen explicitly**: ``[rdma] backend = "verbs"``
  (default) needs an RDMA device; without one ``listen`` / ``connect``
  raise :class:`~msgr_rdma.verbs.NoRdmaDevice` (an ``OSError``) saying
  how to create a Soft-RoCE device.  ``"emulated"`` (in-process) and
  ``"emulated-ipc"`` (across processes) are the test backends; they are
  never picked silently.

Address format
--------------

``rdma://host:port``
    ``host`` an address or name, IPv6 as ``[::1]``; port 0 picks one
    (listen only).  With ``"verbs"`` and ``"emulated-ipc"`` it is the TCP
    address of the connection setup listener (for a device: an address on
    its netdev / IPoIB interface); with ``"emulated"``, a key in an
    in-process directory of listeners, so both ends must live in the same
    process.

Options
-------

Config section ``[rdma]``:

``backend`` (``"verbs"`` | ``"emulated"`` | ``"emulated-ipc"``, default ``"verbs"``)
``device`` (str, default ``""`` = the first device), ``port`` (int, 1), ``gid_index`` (int, 0)
    which device / port / GID the verbs backend uses.
``buffer_size`` (int, default 8192)
    bytes per receive buffer (and per SEND).
``recv_count`` (int >= 3, default 64)
    receive buffers posted per link = credits granted to the peer.
``inline_threshold`` (int, default 128)
    SENDs up to this size are posted inline.
``rendezvous_threshold`` (int, default 65536)
    frames this large go by RDMA READ.
``max_reads`` (int, default 8)
    RDMA READs in flight per link.
``mr_cache_bytes`` (int, default 64 MiB)
    registered memory kept for reuse per link and direction.
``poll_batch`` (int, default 64)
    completions taken per poll.
``emu_qp_error_after`` (int, default 0)
    emulated backends only (a ``ConfigError`` with ``"verbs"``): every QP
    moves to the error state at its N-th send work request; chaos tests.
"""

from __future__ import annotations

import msgr_core

from ._link import RdmaLink, RdmaLinkBroken
from ._transport import DEFAULTS, RdmaSettings, RdmaTransport, parse_address
from .verbs import NoRdmaDevice, VerbsError, WcStatus

__all__ = [
    "DEFAULTS",
    "NoRdmaDevice",
    "RdmaLink",
    "RdmaLinkBroken",
    "RdmaSettings",
    "RdmaTransport",
    "VerbsError",
    "WcStatus",
    "msgr_register_transports",
    "parse_address",
]


@msgr_core.hookimpl
def msgr_register_transports() -> list[type[RdmaTransport]]:
    return [RdmaTransport]
