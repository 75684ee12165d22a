"""msgr-zmq: ZeroMQ links for msgr (``zmq+tcp://`` and ``zmq+ipc://``) via pyzmq.

Features
--------

- **One link per peer connection.**  A listener is one ROUTER socket; each
  ``connect`` makes a DEALER socket of its own, connected once.  A link is
  that one ZeroMQ connection, opened by a msgr-zmq hello the listener
  answers — so ``connect`` raises ``ConnectionRefusedError`` when nothing
  listens (or the listener is closed) and ``TimeoutError`` after
  ``connect_timeout`` when nothing answers, where ZeroMQ alone would wait
  forever.
- **Disconnects are link breaks, never silent.**  ZeroMQ hides
  disconnects and reconnects by itself, and what was queued in a dropped
  connection is lost in between.  So:

  * the DEALER has reconnection off (``ZMQ_RECONNECT_IVL = -1``): its one
    connection ends once, and the link with it.  (``ZMQ_IMMEDIATE`` is
    left off: with a single connection it would only make the hello wait
    in our queue instead of libzmq's.)
  * both ends watch their socket's monitor events: ``DISCONNECTED`` —
    the peer closed or crashed, or a path was cut and caught by the ZMTP
    heartbeats (``ZMQ_HEARTBEAT_IVL`` / ``_TIMEOUT`` / ``_TTL``) or TCP
    keepalive — ends the link with ``link_lost(LinkClosed)``, after
    delivering whatever the peer sent before it went.  The listener maps
    connections to links by descriptor (``ZMQ_SRCFD`` of the hello, the
    fd in the monitor events), checked against the event stream (accepts
    and disconnects arrive in order), so a reused descriptor is not taken
    for the connection it used to be;
  * the ROUTER's routing ids are libzmq's own, fresh for every
    connection, so nothing can continue an old link: a message from a
    routing id that is no link is dropped and that connection shut down,
    and so is a connection that sends no hello within ``connect_timeout``;
  * ``ZMQ_ROUTER_MANDATORY``: a message to a full or vanished peer is an
    error (``EAGAIN`` / ``EHOSTUNREACH``), never a silent drop.
- **No drops at the high-water mark.**  Frames wait in the link's own
  queue and go to libzmq with ``NOBLOCK``; when libzmq says "full"
  (per peer) they stay queued — ``write_buffer_size()`` counts them,
  ``pause_writing`` / ``resume_writing`` fire at the watermarks — and
  sending resumes when the socket is writable again.  libzmq's HWM counts
  messages, not bytes, so what it may hold is kept small: small frames
  travel in batches of at most 16 KiB, and a large frame counts in
  ``write_buffer_size()`` until libzmq has sent it (pyzmq dropping its
  reference to the frame wakes the loop; a ``MessageTracker`` confirms).
- **Batched, and zero-copy for large buffers.**  Small frames queued in one
  loop iteration go out as one ZeroMQ message and come in with one
  receive (like TCP coalescing writes; per-message pyzmq calls cost more
  than the bytes).  A frame with a buffer of ``copy_threshold`` bytes or
  more is a message of its own, one part per buffer: its large buffers go
  out with ``copy=False`` and arrive as ``zmq.Frame`` memoryviews, never
  copied.  The receiver learns the number of parts from the first one, so
  it never asks for ``RCVMORE`` (slow in pyzmq) — except that a ROUTER
  checks every message ends where its head says, so a hostile peer cannot
  shift message boundaries into another link.
- **On the event loop, no thread per link.**  Each socket's ``ZMQ_FD`` is
  on the loop (``add_reader``).  That descriptor only signals *changes*,
  so every wakeup reads until libzmq has nothing left (a bounded batch per
  turn, then ``call_soon``) and ``ZMQ_EVENTS`` is checked again after
  sending (a send can consume the signal).  No ``zmq.asyncio``, no task or
  future per message.
- **Limits.**  ``send`` refuses frames over ``max_frame_bytes``
  (``FrameTooLarge``, the link stays up).  Both ends announce their limit
  in the handshake: a frame over the *peer's* limit is not sent, the link
  ends with ``FrameTooLarge`` on both sides.  A receiver enforces its own
  limit too: ``ZMQ_MAXMSGSIZE`` bounds each part inside libzmq, and frame
  sizes are checked before anything is delivered.  Over the limit, or
  malformed: that link alone ends (``FrameTooLarge`` / ``ProtocolError``)
  and its connection is dropped.
- **CURVE** encryption and server authentication; keys or mechanisms that
  do not match make ``connect`` fail at once with
  :class:`ZmqAuthenticationFailed` (an ``AuthenticationFailed`` and a
  ``PermissionError``) naming the option to check.

The wire format is described in :mod:`msgr_zmq._wire`.

Address format
--------------

``zmq+tcp://host:port``
    ``host`` an IPv4 address, a hostname, ``*`` (all interfaces, to
    listen) or ``[IPv6]``; port 0 picks a free port (listen only), and
    ``Listener.address`` reports it.
``zmq+ipc:///absolute/path``
    a unix-domain socket.  Listening refuses a path where another listener
    answers or that is not a socket (libzmq would silently replace it).

Options
-------

Config section ``[zmq]``:

``sndhwm``, ``rcvhwm`` (int, default 64)
    ZeroMQ high-water marks, in *messages*, per connection: what libzmq
    itself holds beyond the link's queue (each way: up to ``sndhwm``
    messages at the sender and ``rcvhwm`` at the receiver; a message is a
    batch of small frames of at most 16 KiB, or one large frame — large
    frames count in ``write_buffer_size()`` until libzmq has sent them).
``linger`` (float seconds, default 1.0)
    how long a closed socket keeps delivering what it holds.
``close_timeout`` (float seconds, default 10.0)
    how long ``close()`` waits for the peer to answer before ending the
    link with ``LinkClosed``.
``heartbeat_ivl``, ``heartbeat_timeout`` (float seconds, default 1.0 / 5.0)
    ZMTP pings, and how long without traffic before the connection (and
    the link) is declared dead; ``heartbeat_ivl = 0`` turns them off.
``tcp_keepalive`` (bool, default true)
    TCP keepalive on the connections.
``ipv6`` (bool, default false)
    allow IPv6 for hostnames and ``*`` (IPv6 literals always work).
``copy_threshold`` (int, default 65536)
    buffers of at least this many bytes are sent and received without a copy.
``curve_server`` (bool, default false)
    listeners use CURVE, with ``curve_secretkey``.
``curve_secretkey``, ``curve_publickey`` (Z85 strings, default "")
    this node's keypair (the public key is derived when omitted; given,
    it must match).
``curve_serverkey`` (Z85 string, default "")
    the listeners' public key: set, outgoing links use CURVE (with this
    node's keypair, or an ephemeral one).  With ``curve_server = true`` it
    defaults to this node's own public key (one keypair for the cluster).
``curve_serverkeys`` (table, default empty)
    per listen address, exactly as dialled (``"zmq+tcp://10.0.0.5:6800"``),
    that listener's public key: links to it use CURVE with that key
    (addresses not in the table fall back to ``curve_serverkey``).

Keys come from ``zmq.curve_keypair()``; ``python -m msgr_zmq.keygen
[--server]`` prints a ready ``[zmq]`` section (:mod:`msgr_zmq.keygen`)::

    [zmq]
    curve_server = true
    curve_secretkey = "..."      # the cluster's secret key
"""

from __future__ import annotations

import msgr_core
from msgr_core.transport import Transport

from ._client import ZmqAuthenticationFailed, ZmqClientLink
from ._link import ZmqLink
from ._listener import ZmqListener, ZmqServerLink
from ._settings import DEFAULTS, ZmqSettings
from ._transport import ZmqTransport, parse_address

__version__ = "0.1.0"

__all__ = [
    "DEFAULTS",
    "ZmqAuthenticationFailed",
    "ZmqClientLink",
    "ZmqLink",
    "ZmqListener",
    "ZmqServerLink",
    "ZmqSettings",
    "ZmqTransport",
    "__version__",
    "msgr_register_transports",
    "parse_address",
]


@msgr_core.hookimpl
def msgr_register_transports() -> list[type[Transport]]:
    """Register :class:`ZmqTransport` for ``zmq+tcp`` and ``zmq+ipc``."""
    return [ZmqTransport]
