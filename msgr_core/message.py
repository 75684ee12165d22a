"""The message envelope: a fixed binary header, a payload, zero-copy attachments.

On a link, one message is one frame::

    [header, payload, attachment, ...]

``header`` is a fixed big-endian struct followed by the verb::

    u8 type | u8 flags | u8 priority | u64 seq | u64 ack | u64 cid | verb (UTF-8, the rest)

27 bytes plus the verb: packed and parsed with one precompiled
``struct.Struct`` (cheaper than msgpack, which protocol version 1 used).
``seq`` is the sender's sequence number (0 for unsequenced control frames),
``ack`` the last sequence number it received, ``cid`` the request/reply
correlation id (0 for oneway messages).
``payload`` is the caller's bytes as given (flag ``PACKED`` clear) or any
msgpack-serialisable object packed (flag set).  Attachments are extra buffers
that are never packed or copied.  :func:`pack_header` / :func:`unpack_header`
are the header's codec (the session inlines the same on its hot path).
"""

from __future__ import annotations

import enum
import struct
from typing import TYPE_CHECKING, Any

from .transport import Buffer

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["HEADER", "Message", "Priority", "Reply", "pack_header", "unpack_header"]

# message types
HELLO = 1
HELLO_OK = 2
REFUSE = 3
MSG = 4  # oneway verb
REQ = 5  # request verb
REP = 6  # reply
ERR = 7  # error reply
ACK = 8
KEEPALIVE = 9
KEEPALIVE_ACK = 10
GOODBYE = 11
OOB = 12
AUTH = 13  # handshake authentication step (msgr_core.auth)

# flags
PACKED = 1

PROTOCOL_VERSION = 2  # 2: fixed struct session header (1: msgpack)


class Priority(enum.IntEnum):
    """Send priority: each session drains ``OOB`` before ``HIGH`` before ``NORMAL``."""

    NORMAL = 0
    HIGH = 1
    OOB = 2


class Message:
    """A message as a handler receives it.

    :ivar verb: the verb it was sent with.
    :ivar payload: ``bytes`` (or a buffer) as sent, or the unpacked object
        when the sender passed a non-bytes payload.
    :ivar attachments: the extra buffers, as received (no copy).
    :ivar conn: the :class:`~msgr_core.connection.Connection` it came on.
    :ivar priority: the priority it was sent with.
    """

    __slots__ = ("attachments", "conn", "payload", "priority", "verb")

    def __init__(
        self,
        verb: str,
        payload: Any,
        attachments: list[Buffer],
        conn: Connection,
        priority: int = 0,
    ) -> None:
        self.verb = verb
        self.payload = payload
        self.attachments = attachments
        self.conn = conn
        self.priority = priority

    @property
    def peer(self) -> str:
        """The sender's entity name."""
        return self.conn.peer_name

    def __repr__(self) -> str:
        return f"<Message {self.verb!r} from {self.conn.peer_name} payload={self.payload!r:.60}>"


class Reply:
    """What a request handler returns to send attachments with its reply
    (returning a plain value sends just that value)."""

    __slots__ = ("attachments", "payload")

    def __init__(self, payload: Any, attachments: tuple[Buffer, ...] | list[Buffer] = ()) -> None:
        self.payload = payload
        self.attachments = tuple(attachments)


HEADER = struct.Struct("!BBBQQQ")
"""The fixed part of the session header: type, flags, priority, seq, ack,
cid (the verb's UTF-8 follows it)."""

_VERB_CACHE_MAX = 4096
# verb <-> UTF-8 (a messenger uses few verbs; bounded all the same)
_verb_bytes: dict[str, bytes] = {"": b""}
_verb_str: dict[bytes, str] = {b"": ""}


def encode_verb(verb: str) -> bytes:
    """``verb`` in UTF-8 (cached)."""
    vb = _verb_bytes.get(verb)
    if vb is None:
        vb = verb.encode()
        if len(_verb_bytes) < _VERB_CACHE_MAX:
            _verb_bytes[verb] = vb
    return vb


def decode_verb(vb: bytes) -> str:
    """A verb from its UTF-8 (cached).

    :raises UnicodeDecodeError: not UTF-8 (a ``ValueError``)."""
    verb = _verb_str.get(vb)
    if verb is None:
        verb = vb.decode()
        if len(_verb_str) < _VERB_CACHE_MAX:
            _verb_str[vb] = verb
    return verb


def pack_header(mtype: int, seq: int, ack: int, flags: int, priority: int, cid: int, verb: str) -> bytes:
    """The session header of one frame.

    :raises struct.error: a field out of its range (u8 / u64) or not an int.
    """
    vb = _verb_bytes.get(verb)
    return HEADER.pack(mtype, flags, priority, seq, ack, cid) + (vb if vb is not None else encode_verb(verb))


def unpack_header(head: Buffer) -> tuple[int, int, int, int, int, int, str]:
    """``(type, seq, ack, flags, priority, cid, verb)`` of a session header.

    :raises struct.error: shorter than the fixed part.
    :raises UnicodeDecodeError: the verb is not UTF-8.
    """
    mtype, flags, priority, seq, ack, cid = HEADER.unpack_from(head)
    return mtype, seq, ack, flags, priority, cid, decode_verb(bytes(head[HEADER.size :]))
