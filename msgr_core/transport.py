"""The transport contract: what a transport plugin implements.

A transport moves *frames* over *links*.  A frame is a non-empty sequence of
buffers (``bytes``, ``bytearray``, ``memoryview``); the receiver gets the same
number of buffers with the same lengths and contents, so the layer above can
put a header in the first buffer and zero-copy attachments in the others.

A link is one live channel to one peer: ordered and reliable while it is up,
and it may break at any moment.  Nothing above a link assumes it survives;
sessions (``msgr_core.session``) handle breaks.

Call order on a :class:`LinkHandler`, per link, is a state machine::

    link_made  [-> frame_received | pause_writing | resume_writing]*  -> link_lost

``link_made`` is called exactly once, before anything else; ``link_lost``
exactly once, last (with ``None`` for an orderly close by either side, or the
exception that broke the link).  ``pause_writing`` and ``resume_writing``
alternate, starting with ``pause_writing``.  All calls happen on the event
loop thread, never re-entrantly from inside :meth:`Link.send`, and
:meth:`Link.close` / :meth:`Link.abort` may be called from any callback.

Guarantees every transport gives (checked by ``msgr_core.testing``):

- frames arrive whole, in the order sent, with their buffer boundaries;
- received buffers belong to the receiver (the transport never reuses their
  memory), so they can be kept without copying;
- :meth:`Link.send` never blocks and never copies the caller's buffers where
  the medium allows; the caller must not modify them after the call;
- a frame larger than ``max_frame_bytes`` is refused by ``send`` with
  :class:`~msgr_core.errors.FrameTooLarge`, and one *received* over the
  limit, or any malformed input, closes that link alone with a
  :class:`~msgr_core.errors.FrameTooLarge` / :class:`~msgr_core.errors.ProtocolError`
  passed to ``link_lost``;
- a peer that dies or a path that is cut ends in ``link_lost``;
- buffered outgoing bytes are reported by :meth:`Link.write_buffer_size`,
  and crossing the high / low watermarks calls ``pause_writing`` /
  ``resume_writing``, so the session keeps messages in its own queues.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeAlias
from urllib.parse import urlsplit

from .errors import UnsupportedAddress

__all__ = [
    "Buffer",
    "Frame",
    "Link",
    "LinkHandler",
    "Listener",
    "Transport",
    "TransportOptions",
    "frame_size",
    "split_address",
]

Buffer: TypeAlias = bytes | bytearray | memoryview
"""One piece of a frame."""

Frame: TypeAlias = Sequence[Buffer]
"""A frame: one or more buffers, delivered with their boundaries."""

DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024
DEFAULT_HIGH_WATERMARK = 1024 * 1024
DEFAULT_LOW_WATERMARK = 256 * 1024


def frame_size(frame: Frame) -> int:
    """Total payload bytes in a frame."""
    return sum(b.nbytes if type(b) is memoryview else len(b) for b in frame)


def split_address(address: str, schemes: Sequence[str] = ()) -> tuple[str, str, int | None, str]:
    """Parse ``scheme://host:port`` or ``scheme:///path`` (IPv6 as ``[::1]``).

    :returns: ``(scheme, host, port, path)``; ``port`` is ``None`` when absent.
    :raises UnsupportedAddress: malformed, or the scheme is not in ``schemes``
        (when given).
    """
    try:
        parts = urlsplit(address)
        port = parts.port
    except ValueError as exc:
        raise UnsupportedAddress(address, str(exc)) from None
    if not parts.scheme or "://" not in address:
        raise UnsupportedAddress(address, "expected scheme://host:port or scheme:///path")
    if schemes and parts.scheme not in schemes:
        raise UnsupportedAddress(address, f"scheme {parts.scheme!r} is not one of {', '.join(schemes)}")
    return parts.scheme, parts.hostname or "", port, parts.path


@dataclass(frozen=True, slots=True)
class TransportOptions:
    """What the messenger passes to every transport it creates.

    :ivar max_frame_bytes: frames over this are refused / close the link.
    :ivar high_watermark: buffered bytes above which ``pause_writing`` fires.
    :ivar low_watermark: buffered bytes below which ``resume_writing`` fires.
    :ivar connect_timeout: seconds ``connect`` may take before it raises.
    :ivar settings: the transport plugin's own config section (already
        validated against the defaults the plugin declared).
    """

    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    high_watermark: int = DEFAULT_HIGH_WATERMARK
    low_watermark: int = DEFAULT_LOW_WATERMARK
    connect_timeout: float = 10.0
    settings: dict[str, Any] = field(default_factory=dict)


class LinkHandler(Protocol):
    """Receives a link's events; see the module docstring for the order."""

    def link_made(self, link: Link) -> None:
        """The link is up; called once, first."""

    def frame_received(self, frame: list[Buffer]) -> None:
        """A whole frame arrived; the buffers are the receiver's to keep."""

    def pause_writing(self) -> None:
        """Buffered outgoing bytes rose above the high watermark."""

    def resume_writing(self) -> None:
        """Buffered outgoing bytes fell below the low watermark."""

    def link_lost(self, exc: BaseException | None) -> None:
        """The link is gone; called once, last.  ``None`` for an orderly close."""


class Link(abc.ABC):
    """One live channel to one peer, created by a :class:`Transport`."""

    #: The address this end is bound to (a URI), or ``""`` if unknown.
    local_address: str = ""
    #: The peer's address (a URI) as seen from here, or ``""`` if unknown.
    peer_address: str = ""

    @abc.abstractmethod
    def send(self, frame: Frame) -> None:
        """Queue one frame for sending; never blocks.

        :raises FrameTooLarge: the frame exceeds ``max_frame_bytes`` (the
            link stays up).
        :raises LinkClosed: the link is closing or closed.
        """

    def send_many(self, frames: Sequence[Frame]) -> None:
        """Queue several frames at once (transports may batch the syscall)."""
        for frame in frames:
            self.send(frame)

    def limit_frames(self, max_bytes: int | None) -> None:
        """From now on, end the link with :class:`FrameTooLarge` on a
        received frame announcing more than ``max_bytes`` — *before*
        allocating anything for it; ``None`` restores the transport's
        ``max_frame_bytes``.

        The session calls it with twice ``limits.max_header_bytes`` (a
        handshake frame's header and body) when a link is made and with
        ``None`` once the handshake (and authentication) is done, so an
        unauthenticated peer cannot make a listener reserve
        ``max_frame_bytes`` per pending link.  Transports that size a
        receive buffer from a frame's announced length (streams) must
        honour it; for others (whole messages handed over by the medium,
        in-process objects) the default, doing nothing, is right: the
        session still refuses a large frame before the handshake.
        """
        return None  # optional: see above

    @abc.abstractmethod
    def write_buffer_size(self) -> int:
        """Bytes queued in the transport and not yet handed to the medium."""

    @abc.abstractmethod
    def close(self) -> None:
        """Flush what is queued, then close; ``link_lost(None)`` follows.
        Idempotent."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Close now, discarding what is queued; ``link_lost`` follows.
        Idempotent."""

    @abc.abstractmethod
    def is_closing(self) -> bool:
        """True once ``close``/``abort`` was called or the link broke."""


class Listener(abc.ABC):
    """A bound, accepting endpoint."""

    #: The address actually bound (port 0 resolved), as a URI.
    address: str

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Stop accepting.  Links already made stay up."""


HandlerFactory: TypeAlias = Callable[[], LinkHandler]


class Transport(abc.ABC):
    """A transport plugin's entry: serves one or more URI schemes.

    A messenger creates one instance per scheme it uses, with its
    :class:`TransportOptions`.  Register the class from the plugin module::

        @msgr_core.hookimpl
        def msgr_register_transports():
            return [MyTransport]
    """

    #: URI schemes this class serves (``("tcp", "unix")``).
    schemes: ClassVar[tuple[str, ...]] = ()
    #: Distribution name, used in "install X" hints.
    distribution: ClassVar[str] = ""
    #: Config section of its own settings (``[tcp]``), and their defaults.
    config_section: ClassVar[str] = ""
    config_defaults: ClassVar[dict[str, Any]] = {}
    #: Per scheme, a listen address template for the conformance kit:
    #: ``{tmp}`` becomes a private temporary directory and ``{n}`` a counter
    #: (``{"tcp": "tcp://127.0.0.1:0", "unix": "unix://{tmp}/s{n}.sock"}``).
    #: Without one, the kit listens on ``scheme://127.0.0.1:0``.
    test_addresses: ClassVar[dict[str, str]] = {}
    #: Per scheme, the plugin settings (its config section) the conformance
    #: kit runs with, e.g. a test backend selected explicitly
    #: (``{"rdma": {"backend": "emulated"}}``); missing keys take the defaults.
    test_settings: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, scheme: str, options: TransportOptions) -> None:
        self.scheme = scheme
        self.options = options

    @abc.abstractmethod
    async def listen(self, address: str, handler_factory: HandlerFactory) -> Listener:
        """Bind ``address`` (port 0 = pick one) and accept links; each new
        link gets ``handler_factory()`` as its handler.

        :raises UnsupportedAddress: the address is malformed.
        :raises OSError: the address cannot be bound.
        """

    @abc.abstractmethod
    async def connect(self, address: str, handler: LinkHandler) -> Link:
        """Open a link to ``address``; ``handler.link_made`` has been called
        when this returns.

        :raises UnsupportedAddress: the address is malformed.
        :raises OSError: the peer cannot be reached (refused, timed out, ...).
        """

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release transport-wide resources (called once, at messenger stop)."""
