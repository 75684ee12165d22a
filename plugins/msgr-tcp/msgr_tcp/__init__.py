"""msgr transport over asyncio streams: TCP (IPv4 and IPv6) and unix sockets.

Features
========

- asyncio ``BufferedProtocol`` receive through
  :class:`msgr_core.framing.StreamDecoder`: small frames are copied out of
  one reused buffer, bodies of 64 KiB and more are received straight into a
  buffer of their own and delivered as views of it (no copy at all).
- Sends are coalesced per event-loop iteration: ``Link.send`` appends the
  framing prefix and the caller's buffers to a list, and one flush per
  iteration hands the lot to the kernel.  On the default asyncio loop the
  flush is a ``socket.sendmsg`` of the caller's own buffers (scatter/gather,
  no copy) whenever asyncio's write buffer is empty; on uvloop it is
  ``transport.writelines`` (uvloop's is scatter/gather too).  Details in
  :mod:`msgr_tcp._link`.
- Back-pressure: the asyncio write buffer limits are the messenger's
  ``high_watermark`` / ``low_watermark``; ``pause_writing`` /
  ``resume_writing`` are forwarded to the link handler, and
  ``Link.write_buffer_size()`` counts the bytes of this iteration's
  not-yet-flushed frames too.
- ``TCP_NODELAY`` and ``SO_KEEPALIVE`` by default.
- Bad input (wrong banner, oversize frame, inconsistent lengths) closes that
  link alone with a :class:`~msgr_core.errors.ProtocolError` /
  :class:`~msgr_core.errors.FrameTooLarge` naming the peer, logged at
  WARNING on the ``msgr.tcp`` logger.
- Runs on the default event loop and on uvloop (``pip install msgr-tcp[uvloop]``).

Address format
==============

``tcp://HOST:PORT``
    IPv4 (``tcp://127.0.0.1:6800``), IPv6 in brackets (``tcp://[::1]:6800``)
    or a host name (connect uses every address it resolves to, in order;
    listen binds the first).  Port ``0`` in ``listen`` picks a free port;
    the listener's ``address`` is the one actually bound.  ``tcp://:6800``
    listens on the wildcard address.
``unix:///ABSOLUTE/PATH``
    A unix stream socket (``unix:///run/osd.3.sock``; percent-encode odd
    characters).  ``listen`` removes a socket file left by a dead listener
    (it refuses a live one with ``EADDRINUSE``) and ``Listener.aclose``
    removes the file again.

Both schemes are served by :class:`TcpTransport` (``tls://`` will join
them, as a subclass).

Options
=======

From :class:`msgr_core.transport.TransportOptions`: ``max_frame_bytes``,
``high_watermark`` / ``low_watermark`` (asyncio write buffer limits) and
``connect_timeout``.  The plugin's own config section is ``[tcp]`` (it also
applies to ``unix://`` links):

``nodelay`` (``true``)
    set ``TCP_NODELAY``: frames leave at once (writes are already coalesced
    per loop iteration, so there is nothing for Nagle to gain).
``keepalive`` (``true``)
    set ``SO_KEEPALIVE`` (dead peers behind a silent network are eventually
    detected even without session keepalives).
``backlog`` (``1024``)
    ``listen()`` backlog.
``receive_buffer`` (``262144``)
    bytes in each link's reused receive buffer.
``direct_receive_threshold`` (``65536``)
    frame bodies this large are received into their own buffer, no copy.
``direct_send`` (``true``)
    on the default asyncio loop, send with ``socket.sendmsg`` of the
    caller's buffers while asyncio's write buffer is empty (set ``false``
    to always go through the asyncio transport).
``close_timeout`` (``10.0``)
    seconds ``Link.close()`` waits for queued bytes to drain and for the
    peer to close its side (the close is a lingering one, so that the peer
    reads every frame) before it aborts the link.

Entry points: ``[project.entry-points."msgr.transports"]`` ``tcp`` and
``unix``, both naming this module, which implements
``msgr_register_transports``.
"""

from __future__ import annotations

import msgr_core
from msgr_core.transport import Transport

from ._link import StreamLink
from ._tls import KitCertificates, TlsLink, TlsTransport
from ._transport import StreamListener, TcpTransport

__version__ = "0.1.0"

__all__ = [
    "KitCertificates",
    "StreamLink",
    "StreamListener",
    "TcpTransport",
    "TlsLink",
    "TlsTransport",
    "__version__",
    "msgr_register_transports",
]


@msgr_core.hookimpl
def msgr_register_transports() -> list[type[Transport]]:
    """The transports this plugin provides: :class:`TcpTransport` and
    :class:`TlsTransport`."""
    return [TcpTransport, TlsTransport]
