"""Connection setup out of band, over TCP -- the choice msgr-rdma makes
instead of rdmacm (Ceph's async+rdma does the same).

``rdma://host:port`` names a TCP listener.  A connecting side opens a TCP
connection to it and the two exchange what each needs to connect its RC
QP to the other's (QP number, PSN, LID, GID, path MTU) plus the link's
sizes (receive credits, buffer size); then each moves its QP INIT -> RTR
-> RTS.  Why not rdmacm: the exchange is plain asyncio (timeouts,
cancellation, refusal with a reason are ordinary code), it runs the same
with the emulation, and the TCP connection then stays open as the
liveness signal rdmacm's DISCONNECTED event would give (its end moves the
QP to the error state) -- and, for ``emulated-ipc``, as the wire that
carries the emulated verbs between processes.

The exchange, over :class:`OobChannel` messages (``u32 length | u8 kind |
body``, the length counting the kind byte)::

    client -> server   INFO   (client's QP in INIT, its receives posted)
    server -> client   INFO   (server's QP already in RTS)   or REFUSE reason
    client -> server   READY  (client's QP in RTS)

The server starts its link only on ``READY``, so it never sends to a QP
that is not ready to receive; the client may send as soon as it is in
RTS.  ``INFO``::

    8s magic "MSGRRDMA" | u8 version | u8 backend kind | u8 path MTU | pad
    | u32 QP number | u32 PSN | u16 LID | u16 receive credits
    | u32 buffer size | 16s GID

Message kinds below 16 are connection setup; 16 and up belong to the
emulated wire (:class:`msgr_rdma.emulation.IpcWire`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from msgr_core.errors import ProtocolError

from .verbs import QPEndpoint

__all__ = [
    "KIND_EMU_IPC",
    "KIND_VERBS",
    "ConnInfo",
    "OobChannel",
    "decode_info",
    "encode_info",
    "open_channel",
]

MAGIC = b"MSGRRDMA"
VERSION = 1
#: backend kinds: both ends must use the same
KIND_VERBS, KIND_EMU_IPC = 1, 2
KIND_NAMES = {KIND_VERBS: "verbs", KIND_EMU_IPC: "emulated-ipc"}
M_INFO, M_READY, M_REFUSE = 1, 2, 3
WIRE_KINDS = 16

_INFO = struct.Struct("!8sBBBxIIHHI16s")
_LEN = struct.Struct("!IB")
#: setup messages are small; the emulated wire carries whole RDMA READ answers
SETUP_MAX = 4096


@dataclass(frozen=True, slots=True)
class ConnInfo:
    """One side's half of the exchange."""

    kind: int
    endpoint: QPEndpoint
    recv_count: int
    buffer_size: int


def encode_info(info: ConnInfo) -> bytes:
    """The ``INFO`` body.

    :raises ValueError: a field out of its wire range.
    """
    ep = info.endpoint
    if not (0 <= ep.qp_num < 1 << 24 and 0 <= ep.psn < 1 << 24 and 0 <= ep.lid < 1 << 16):
        raise ValueError(f"QP endpoint out of range: {ep}")
    if len(ep.gid) != 16:
        raise ValueError(f"a GID is 16 bytes, got {len(ep.gid)}")
    if not (0 < info.recv_count < 1 << 16 and 0 < info.buffer_size < 1 << 32 and 0 <= ep.mtu < 256):
        raise ValueError(f"link sizes out of range: {info}")
    return _INFO.pack(
        MAGIC, VERSION, info.kind, ep.mtu, ep.qp_num, ep.psn, ep.lid, info.recv_count, info.buffer_size, ep.gid
    )


def decode_info(body: bytes | memoryview, peer: str = "") -> ConnInfo:
    """Parse an ``INFO`` body.

    :raises ProtocolError: not msgr-rdma's, another version, or malformed.
    """
    if len(body) != _INFO.size:
        raise ProtocolError(f"rdma connection setup: INFO of {len(body)} bytes, expected {_INFO.size}", peer=peer)
    magic, version, kind, mtu, qp_num, psn, lid, recv_count, buffer_size, gid = _INFO.unpack(body)
    if magic != MAGIC:
        raise ProtocolError("rdma connection setup: not an msgr-rdma peer (bad magic)", peer=peer)
    if version != VERSION:
        raise ProtocolError(f"rdma connection setup: version {version}, this side speaks {VERSION}", peer=peer)
    if kind not in KIND_NAMES:
        raise ProtocolError(f"rdma connection setup: unknown backend kind {kind}", peer=peer)
    if qp_num >= 1 << 24 or psn >= 1 << 24 or recv_count < 3 or buffer_size < 64:
        raise ProtocolError("rdma connection setup: QP number, PSN or link sizes out of range", peer=peer)
    return ConnInfo(kind, QPEndpoint(qp_num, psn, lid, gid, mtu), recv_count, buffer_size)


class OobChannel(asyncio.Protocol):
    """The out-of-band TCP connection of one QP pair: length-prefixed
    messages.  Setup messages (kind < 16) queue up for :meth:`recv`;
    wire messages go to :attr:`on_message`.

    :ivar on_message: ``(kind, body)`` for wire messages; ``body`` is only
        valid during the call.  Unset: a wire message closes the channel.
    :ivar on_lost: called once when the connection ends other than by
        :meth:`close` (peer gone: EOF, reset).
    """

    def __init__(self, max_message: int = 1 << 31) -> None:
        self.transport: asyncio.Transport | None = None
        self.on_message: Callable[[int, memoryview], None] | None = None
        self.on_lost: Callable[[], None] | None = None
        self.peer = ""
        self.closed = False
        self._max = max_message
        self._buf = bytearray()
        self._setup: deque[tuple[int, bytes]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closing = False
        self.on_made: Callable[[OobChannel], None] | None = None
        #: resolved once the connection is gone (closed by either side)
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not isinstance(transport, asyncio.Transport):
            raise TypeError("OobChannel runs over a stream transport")
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        name = transport.get_extra_info("peername")
        self.peer = f"{name[0]}:{name[1]}" if isinstance(name, tuple) else str(name)
        if self.on_made is not None:
            self.on_made(self)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos, end = 0, len(buf)
        while end - pos >= _LEN.size and not self.closed:
            length, kind = _LEN.unpack_from(buf, pos)
            limit = self._max if kind >= WIRE_KINDS else SETUP_MAX
            if length < 1 or length > limit:
                self._abort()
                return
            if end - pos < 4 + length:
                break
            start = pos + _LEN.size
            pos += 4 + length
            if kind < WIRE_KINDS:
                self._setup.append((kind, bytes(buf[start:pos])))
                self._wake()
            elif self.on_message is None:
                self._abort()
                return
            else:
                with memoryview(buf) as view:
                    self.on_message(kind, view[start:pos])
        if pos:
            try:
                del buf[:pos]
            except BufferError:  # a handler kept a view: leave the old buffer to it
                self._buf = bytearray(buf[pos:])

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._wake()
        if not self.done.done():
            self.done.set_result(None)
        on_lost, self.on_lost = self.on_lost, None
        if on_lost is not None and not self._closing:
            on_lost()

    # -- use ---------------------------------------------------------------------

    def send(self, kind: int, *parts: bytes | bytearray | memoryview) -> None:
        """Queue one message (dropped once the channel is closed)."""
        t = self.transport
        if t is None or self.closed or self._closing or t.is_closing():
            return
        t.write(_LEN.pack(1 + sum(len(p) for p in parts), kind))
        for p in parts:
            t.write(p)

    async def recv(self) -> tuple[int, bytes]:
        """The next setup message.

        :raises ConnectionResetError: the connection ended first.
        """
        while not self._setup:
            if self.closed:
                raise ConnectionResetError(f"rdma connection setup: {self.peer or 'the peer'} closed the connection")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._setup.popleft()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _abort(self) -> None:
        """The peer broke the framing: drop the connection (``on_lost`` runs)."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        """Close (queued messages are still written); ``on_lost`` is not called."""
        self._closing = True
        self.on_lost = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self._wake()


async def open_channel(host: str, port: int) -> OobChannel:
    """A TCP connection to an rdma listener's setup port.

    :raises OSError: refused, unreachable, ...
    """
    loop = asyncio.get_running_loop()
    _t, ch = await loop.create_connection(OobChannel, host, port)
    return ch
