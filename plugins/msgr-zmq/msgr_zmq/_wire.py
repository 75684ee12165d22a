"""The msgr-zmq wire format: how frames become ZeroMQ message parts.

Every message starts with a *head* part that says what follows, so the
receiver never asks libzmq whether more parts follow (pyzmq's ``RCVMORE``
costs more than receiving a part).  A ROUTER puts the routing id in front
of it; a DEALER never sees one.  The head's first byte:

``0x01`` batch of small frames, all in the head
    ``u32 w | u32 table[w] | bytes`` where the table lists, per frame, its
    buffer count then its buffer lengths.  Frames smaller than
    ``copy_threshold`` queued in one loop iteration go out together (up to
    16 KiB a batch): one ZeroMQ message, one copy into libzmq, one
    receive — like TCP coalescing writes.
``0x02`` one frame in parts
    ``u32 n | u32 length[n]``, then ``n`` parts, one per buffer; buffers of
    ``copy_threshold`` bytes or more go with ``copy=False`` and are
    received with ``copy=False`` (``zmq.Frame`` memoryviews, no copy).
``H`` / ``A`` + ``magic | version | max_frame_bytes`` (``!8sBQ``)
    hello (client → server) and accept (server → client).
``R`` + reason
    refusal (server → client): ``connect`` raises ``ConnectionRefusedError``.
``C``, ``X``
    close (answered with ``C``), abort.
``T`` + ``!Q`` size
    "my next frame has this many bytes, over the ``max_frame_bytes`` you
    announced": the link ends with ``FrameTooLarge`` on both ends and the
    frame never crosses the wire.

All integers are big-endian.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Sequence
from typing import Any

from msgr_core.errors import FrameTooLarge, ProtocolError
from msgr_core.transport import Buffer, Frame

__all__ = [
    "HEAD_SLACK",
    "K_BATCH",
    "K_PARTS",
    "MAX_BUFFERS",
    "QEntry",
    "batch",
    "entry",
    "hello",
    "parse_hello",
    "parts_lengths",
    "unbatch",
]

K_BATCH = 1
K_PARTS = 2
C_HELLO = ord("H")
C_ACCEPT = ord("A")
C_REFUSE = ord("R")
C_CLOSE = ord("C")
C_ABORT = ord("X")
C_TOOBIG = ord("T")

MAGIC = b"msgr-zmq"
VERSION = 1
HELLO = struct.Struct("!8sBQ")
U64 = struct.Struct("!Q")
U32 = struct.Struct("!I")

#: Most buffers one frame may have.
MAX_BUFFERS = 16384
#: Most bytes (frames + table) one batch carries: small enough that
#: libzmq's queues (``sndhwm`` / ``rcvhwm`` messages) hold little.
BATCH_BYTES = 16384
#: What a head adds to a frame's bytes, at most (libzmq's per-part limit
#: is ``max_frame_bytes`` plus this).
HEAD_SLACK = 5 + 4 * (MAX_BUFFERS + 1)

_SWAP = sys.byteorder == "little"
_PARTS1 = struct.Struct("!BII")
_BATCH = struct.Struct("!BI")

# A queued frame: (buffer or buffers, bytes, kind, lengths / parts head)
SMALL1 = 0  # one buffer, batched
SMALLN = 1  # several buffers, batched
PARTS = 2  # its own message, in parts
RAW = 3  # a control message (its head), sent as it is
QEntry = tuple[Any, int, int, Any]


def _nbytes(b: Any) -> int:
    t = type(b)
    if t is bytes or t is bytearray:
        return len(b)
    if t is memoryview:
        return int(b.nbytes)
    if isinstance(b, bytes | bytearray | memoryview):
        return memoryview(b).nbytes
    raise TypeError(f"frame buffers are bytes, bytearray or memoryview, not {t.__qualname__}")


def _plain(b: Buffer) -> Buffer:
    """A buffer libzmq and ``bytes.join`` take: C-contiguous."""
    if type(b) is memoryview and not b.c_contiguous:
        return b.tobytes()
    return b


def entry(frame: Frame, threshold: int) -> QEntry:
    """The queue entry for ``frame`` (its size is ``entry[1]``).

    :raises TypeError: a buffer that is not bytes-like.
    :raises ValueError: no buffer, or more than :data:`MAX_BUFFERS`.
    """
    n = len(frame)
    if n == 1:
        b = frame[0]
        if type(b) is bytes:
            size = len(b)
        else:
            size = _nbytes(b)
            b = _plain(b)
        if size < threshold:
            return (b, size, SMALL1, None)
        return ([b], size, PARTS, _PARTS1.pack(K_PARTS, 1, size))
    if n == 0 or n > MAX_BUFFERS:
        raise ValueError(f"a frame has 1 to {MAX_BUFFERS} buffers, got {n}")
    lengths = [_nbytes(b) for b in frame]
    size = sum(lengths)
    bufs = [_plain(b) for b in frame]
    if size < threshold:
        return (bufs, size, SMALLN, lengths)
    return (bufs, size, PARTS, struct.pack(f"!BI{n}I", K_PARTS, n, *lengths))


def batch(entries: Sequence[QEntry]) -> bytes:
    """One batch head carrying the frames of small ``entries``."""
    table: list[int] = []
    bufs: list[Any] = []
    for obj, size, kind, lengths in entries:
        if kind == SMALL1:
            table.append(1)
            table.append(size)
            bufs.append(obj)
        else:
            table.append(len(lengths))
            table.extend(lengths)
            bufs.extend(obj)
    words = array("I", table)
    if _SWAP:
        words.byteswap()
    return b"".join([_BATCH.pack(K_BATCH, len(table)), words, *bufs])


def unbatch(head: bytes, limit: int, peer: str) -> tuple[list[list[Buffer]], Exception | None]:
    """The frames of a batch head, and the error that stopped the parse
    (``None`` if none); the frames before an error are good.
    """
    hl = len(head)
    if hl < 5:
        return [], ProtocolError("truncated batch", peer=peer)
    (w,) = U32.unpack_from(head, 1)
    pos = 5 + 4 * w
    if w < 2 or pos > hl:
        return [], ProtocolError(f"batch announcing {w} table words in {hl} bytes", peer=peer)
    table = array("I")
    table.frombytes(head[5:pos])
    if _SWAP:
        table.byteswap()
    frames: list[list[Buffer]] = []
    i = 0
    while i < w:
        n = table[i]
        i += 1
        end = i + n
        if n == 0 or end > w:
            return frames, ProtocolError("malformed batch table", peer=peer)
        if n == 1:
            ln = table[i]
            if ln > limit:
                return frames, FrameTooLarge(ln, limit, peer=peer)
            nxt = pos + ln
            if nxt > hl:
                break
            frames.append([head[pos:nxt]])
            pos = nxt
        else:
            size = 0
            frame: list[Buffer] = []
            for j in range(i, end):
                ln = table[j]
                frame.append(head[pos : pos + ln])
                pos += ln
                size += ln
            if size > limit:
                return frames, FrameTooLarge(size, limit, peer=peer)
            if pos > hl:
                break
            frames.append(frame)
        i = end
    if pos != hl:
        return frames, ProtocolError(f"batch table and bytes disagree ({pos} vs {hl} bytes)", peer=peer)
    return frames, None


def parts_lengths(head: bytes, peer: str) -> Sequence[int]:
    """The buffer lengths an in-parts head announces.

    :raises ProtocolError: a malformed head.
    """
    if len(head) < 5:
        raise ProtocolError("truncated frame head", peer=peer)
    (n,) = U32.unpack_from(head, 1)
    if n == 0 or n > MAX_BUFFERS or len(head) != 5 + 4 * n:
        raise ProtocolError(f"frame head announcing {n} buffers in {len(head)} bytes", peer=peer)
    return struct.unpack_from(f"!{n}I", head, 5)


def hello(kind: int, max_frame_bytes: int) -> bytes:
    return bytes((kind,)) + HELLO.pack(MAGIC, VERSION, max_frame_bytes)


def parse_hello(head: bytes, peer: str) -> int:
    """The peer's ``max_frame_bytes`` from a hello / accept head.

    :raises ProtocolError: not a msgr-zmq hello of our version.
    """
    payload = head[1:]
    if len(payload) != HELLO.size:
        raise ProtocolError(f"bad msgr-zmq hello of {len(payload)} bytes (not a msgr peer?)", peer=peer)
    magic, version, max_bytes = HELLO.unpack(payload)
    if magic != MAGIC:
        raise ProtocolError(f"bad msgr-zmq hello magic {magic!r} (not a msgr peer?)", peer=peer)
    if version != VERSION:
        raise ProtocolError(f"msgr-zmq protocol version {version} (this side speaks {VERSION})", peer=peer)
    return int(max_bytes)
