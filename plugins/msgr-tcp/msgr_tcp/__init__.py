"""msgr transport over asyncio streams: TCP (IPv4 and IPv6), mutual TLS, and unix sockets.

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

``tls://HOST:PORT``
    Like ``tcp://``, with mutual TLS (:class:`TlsTransport`, a subclass).
    The name a dialler expects in the listener's certificate is
    ``tls.server_name`` when set, else ``HOST`` as written in the address
    (an IP address is matched against the certificate's IP SANs, a name
    against its DNS SANs; names are also sent as SNI).

``tcp`` and ``unix`` are served by :class:`TcpTransport`, ``tls`` by
:class:`TlsTransport`.

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

``tls://`` links have their own section, ``[tls]``: every key above
except ``direct_send`` (TLS bytes never take the ``sendmsg`` path), and:

``certfile`` (``""``)
    PEM file with this node's certificate (and the chain up to, not
    including, the CA).  Required to listen; used as the client certificate
    when dialling.
``keyfile`` (``""``)
    PEM file with its private key (``""``: the key is in ``certfile``).
``cafile`` (``""``)
    PEM file with the CA certificate(s) peers' certificates must chain to
    (``""``: the system trust store, which is rarely what a cluster wants).
``require_client_cert`` (``true``)
    listeners refuse clients without a certificate signed by ``cafile``
    (mutual TLS).  ``false``: a client certificate is optional (verified
    when sent).
``check_hostname`` (``true``)
    a dialler checks the listener's certificate names the host it dialled
    (or ``server_name``).  ``false``: any certificate signed by ``cafile``
    is accepted.
``server_name`` (``""``)
    the name to expect in listeners' certificates (and send as SNI)
    instead of the address's host, e.g. one cluster-wide name.
``minimum_version`` (``"TLSv1.3"``)
    ``"TLSv1.3"`` or ``"TLSv1.2"``.
``ciphers`` (``""``)
    an OpenSSL cipher list for TLS 1.2 (TLS 1.3 suites are OpenSSL's).
``handshake_timeout`` (``10.0``)
    seconds a TLS handshake may take (a listener drops a client that
    connects and sends nothing; a dial also stays within ``connect_timeout``).

Files are read when the transport is created (at messenger start for a
listener): a missing, unreadable or malformed one is a
:class:`~msgr_core.errors.ConfigError` naming the key.  A failed handshake
ends that connection alone: the dialler's ``connect`` raises
:class:`~msgr_core.errors.LinkClosed` with OpenSSL's reason (or the link
ends with one, when TLS 1.3 refuses a client certificate after the
client's side of the handshake), and the listener logs it at WARNING with
the peer's address and counts it in ``TlsTransport.handshake_failures``.
Details in :mod:`msgr_tcp._tls`.

Entry points: ``[project.entry-points."msgr.transports"]`` ``tcp``,
``unix`` and ``tls``, all naming this module, which implements
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
