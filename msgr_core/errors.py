"""The exceptions msgr raises: one small, typed hierarchy.

Every error carries the thing a user needs to act on it (the peer, the verb,
the config key) as attributes, and says it in its message too.

::

    MsgrError
    ├── ConfigError                 bad config: file, dotted key, value, expected
    ├── PluginError
    │   └── PluginNotInstalled      a selected transport/extension is not installed
    ├── TransportError
    │   ├── UnsupportedAddress      malformed URI or unknown scheme
    │   ├── LinkClosed              the link is closed (cause in ``__cause__``)
    │   └── FrameTooLarge           a frame over ``max_frame_bytes``
    ├── ProtocolError               malformed input or a handshake violation
    │   └── AuthenticationFailed    a peer failed authentication
    ├── MessengerError
    │   ├── MessengerStopped        the messenger is not running
    │   ├── PeerUnreachable         could not connect / handshake refused
    │   │   └── PeerAuthenticationFailed   (also an AuthenticationFailed)
    │   ├── ConnectionReset         the session was reset with messages pending
    │   ├── Backpressure            a non-blocking send found the window full
    │   ├── RequestTimeout          ``send_message`` timed out
    │   └── RemoteError             the remote handler raised
    │       ├── UnknownVerb         the peer has no handler for the verb
    │       └── PeerBusy            the peer has too many of our requests in flight
"""

from __future__ import annotations

__all__ = [
    "AuthenticationFailed",
    "Backpressure",
    "ConfigError",
    "ConnectionReset",
    "FrameTooLarge",
    "LinkClosed",
    "MessengerError",
    "MessengerStopped",
    "MsgrError",
    "PeerAuthenticationFailed",
    "PeerBusy",
    "PeerUnreachable",
    "PluginError",
    "PluginNotInstalled",
    "ProtocolError",
    "RemoteError",
    "RequestTimeout",
    "TransportError",
    "UnknownVerb",
    "UnsupportedAddress",
]


class MsgrError(Exception):
    """Base of every exception msgr raises on purpose."""


# -- configuration and plugins ------------------------------------------------


class ConfigError(MsgrError, ValueError):
    """A configuration value is wrong.

    :ivar key: the dotted key (``"limits.max_frame_bytes"``), or ``""`` for
        the whole document.
    :ivar value: the offending value.
    :ivar expected: what would have been accepted.
    :ivar source: the file it came from, or ``"<dict>"``.
    """

    def __init__(
        self,
        key: str,
        value: object,
        expected: str,
        *,
        source: str = "<dict>",
        hint: str = "",
    ) -> None:
        self.key = key
        self.value = value
        self.expected = expected
        self.source = source
        self.hint = hint
        where = f"{source}: {key}" if key else source
        msg = f"{where} = {value!r}: expected {expected}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)


class PluginError(MsgrError):
    """A plugin failed to load or misbehaved while registering."""


class PluginNotInstalled(PluginError, LookupError):
    """A transport or extension was selected but no installed plugin provides it.

    :ivar kind: ``"transport"`` or ``"extension"``.
    :ivar name: what was asked for (a scheme or an extension name).
    :ivar installed: the names that are installed.
    :ivar distribution: the distribution that would provide it, if known.
    """

    def __init__(
        self, kind: str, name: str, installed: list[str], distribution: str | None = None
    ) -> None:
        self.kind = kind
        self.name = name
        self.installed = sorted(installed)
        self.distribution = distribution
        have = ", ".join(self.installed) or "none"
        msg = f"unknown {kind} {name!r} (installed: {have})"
        if distribution:
            msg += f"; install {distribution}"
        super().__init__(msg)


# -- transports ---------------------------------------------------------------


class TransportError(MsgrError):
    """Base of the errors a transport raises."""


class UnsupportedAddress(TransportError, ValueError):
    """An address is malformed or names a scheme the transport cannot serve."""

    def __init__(self, address: str, reason: str) -> None:
        self.address = address
        self.reason = reason
        super().__init__(f"bad address {address!r}: {reason}")


class LinkClosed(TransportError, ConnectionError):
    """The link is closed; ``__cause__`` (or ``cause``) says why, when known."""

    def __init__(self, message: str = "link closed", *, cause: BaseException | None = None) -> None:
        self.cause = cause
        super().__init__(message)


class FrameTooLarge(TransportError):
    """A frame exceeds the configured maximum size.

    :ivar size: the frame's size in bytes.
    :ivar limit: the configured maximum (``limits.max_frame_bytes``).
    """

    def __init__(self, size: int, limit: int, *, peer: str = "") -> None:
        self.size = size
        self.limit = limit
        self.peer = peer
        src = f" from {peer}" if peer else ""
        super().__init__(f"frame of {size} bytes{src} exceeds limits.max_frame_bytes = {limit}")


class ProtocolError(MsgrError):
    """The peer sent something the protocol does not allow.

    Raised (and logged) when a link is closed because of malformed input:
    garbage bytes, truncated or inconsistent frames, bad msgpack, a handshake
    violation.  :ivar peer: the peer's address, when known.
    """

    def __init__(self, message: str, *, peer: str = "") -> None:
        self.peer = peer
        super().__init__(f"{message} (peer {peer})" if peer else message)


class AuthenticationFailed(ProtocolError):
    """Authentication in a handshake failed (a peer did not prove it holds
    the key, or refused ours)."""


# -- messenger ----------------------------------------------------------------


class MessengerError(MsgrError):
    """Base of the errors raised by the messenger API."""


class MessengerStopped(MessengerError):
    """The messenger is not started, or is stopping."""


class PeerUnreachable(MessengerError, ConnectionError):
    """No session could be established with a peer.

    :ivar peer: the address or entity name asked for.
    :ivar reason: what went wrong (connect error, refusal text).
    """

    def __init__(self, peer: str, reason: str) -> None:
        self.peer = peer
        self.reason = reason
        super().__init__(f"peer {peer} unreachable: {reason}")


class PeerAuthenticationFailed(PeerUnreachable, AuthenticationFailed):
    """No session: authentication with the peer failed, on either side.

    What a dialling application sees (pending requests, waiting sends):
    the peer refused our credentials (it says only "authentication
    failed"), or it could not prove it holds the key.  Both a
    :class:`PeerUnreachable` and an :class:`AuthenticationFailed`.
    """

    def __init__(self, peer: str, reason: str) -> None:
        PeerUnreachable.__init__(self, peer, reason)


class ConnectionReset(MessengerError, ConnectionError):
    """A session was reset (link fault under a lossy policy, ``mark_down``,
    the peer left the view) while a message or request was pending."""

    def __init__(self, peer: str, reason: str) -> None:
        self.peer = peer
        self.reason = reason
        super().__init__(f"session with {peer} reset: {reason}")


class Backpressure(MessengerError):
    """The non-blocking send found the session's queue full; await the
    blocking form or slow down.  :ivar peer: the peer; :ivar queued: bytes
    queued; :ivar limit: the configured bound."""

    def __init__(self, peer: str, queued: int, limit: int) -> None:
        self.peer = peer
        self.queued = queued
        self.limit = limit
        super().__init__(f"send queue to {peer} full: {queued} bytes queued, limit {limit}")


class RequestTimeout(MessengerError, TimeoutError):
    """``send_message`` got no reply in time."""

    def __init__(self, verb: str, peer: str, timeout: float) -> None:
        self.verb = verb
        self.peer = peer
        self.timeout = timeout
        super().__init__(f"request {verb!r} to {peer} timed out after {timeout:g} s")


class RemoteError(MessengerError):
    """The remote handler raised.

    :ivar verb: the verb called.
    :ivar peer: who answered.
    :ivar remote_type: the exception's class name on the remote side.
    :ivar remote_message: its ``str()``.
    """

    def __init__(self, verb: str, peer: str, remote_type: str, remote_message: str) -> None:
        self.verb = verb
        self.peer = peer
        self.remote_type = remote_type
        self.remote_message = remote_message
        super().__init__(f"{verb!r} on {peer} raised {remote_type}: {remote_message}")


class UnknownVerb(RemoteError):
    """The peer has no handler registered for the verb."""


class PeerBusy(RemoteError):
    """The peer refused the request: it already runs
    ``limits.max_requests_in_flight`` asynchronous handlers for us.  The
    handler did not start (a coroutine handler is never resumed); retry
    later.  Plain (synchronous) handlers hold no task and are never refused."""
