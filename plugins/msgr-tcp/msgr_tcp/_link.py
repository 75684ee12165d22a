"""One asyncio stream connection speaking msgr stream framing: the :class:`StreamLink`.

The same object is the asyncio protocol (``BufferedProtocol``) and the msgr
:class:`~msgr_core.transport.Link`, so a received frame goes
``buffer_updated -> StreamDecoder -> handler.frame_received`` with no layer
in between, and a sent frame is two list appends.

Sending
    :meth:`StreamLink.send` appends the framing prefix and the caller's
    buffers to a pending list.  The first frame of a loop iteration is
    flushed at once (a request or a reply does not wait for the next
    iteration) when that cannot take the transport over its high watermark,
    and not on TLS links (``allow_direct`` off); it also schedules one flush
    (``loop.call_soon``) for the frames that follow in the same iteration.
    A flush hands everything to the medium at once, by one of three
    strategies chosen per connection:

    ``direct``
        asyncio's own selector socket transport (the default loop, plain
        TCP / unix): while asyncio's write buffer is empty, the buffers go
        straight to the kernel with ``socket.sendmsg`` (scatter/gather, no
        copy, one syscall per 1024 buffers; many small buffers, averaging
        under 512 bytes, are joined into one first).  Whatever the kernel does not
        take is handed to the asyncio transport, large buffers one by one
        with ``write()`` (Python 3.11's ``writelines`` would join them into
        one copy; ``write`` also runs asyncio's watermark check, which 3.12's
        ``writelines`` skips).
    ``writelines``
        uvloop: its ``writelines`` is already scatter/gather with no copy,
        but it writes each buffer with a syscall of its own when the socket
        is idle: small buffers (averaging under 512 bytes) go joined, with
        one ``write``.
    ``generic``
        any other transport (TLS, other loops): ``writelines`` for runs of
        small buffers, ``write`` for large ones and for the last one.

Receiving
    ``get_buffer`` / ``buffer_updated`` feed a
    :class:`~msgr_core.framing.StreamDecoder`; bodies of at least
    ``direct_receive_threshold`` bytes are received straight into a buffer
    of their own and delivered as views of it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
from collections.abc import Sequence
from typing import Any, Final
from urllib.parse import quote

from msgr_core.errors import FrameTooLarge, LinkClosed, ProtocolError
from msgr_core.framing import BANNER, StreamDecoder, encode_prefix
from msgr_core.transport import Buffer, Frame, Link, LinkHandler

__all__ = ["LinkSettings", "StreamLink", "format_address"]

logger = logging.getLogger("msgr.tcp")

try:
    _IOV_MAX: Final = max(16, min(os.sysconf("SC_IOV_MAX"), 1024))
except (AttributeError, ValueError, OSError):  # pragma: no cover - non-POSIX
    _IOV_MAX = 16  # type: ignore[misc]
_MSG_NOSIGNAL: Final = getattr(socket, "MSG_NOSIGNAL", 0)
_HAS_SENDMSG: Final = hasattr(socket.socket, "sendmsg")
_SELECTOR_TRANSPORT: Any = getattr(getattr(asyncio, "selector_events", None), "_SelectorSocketTransport", None)
_INET: Final = (socket.AF_INET, socket.AF_INET6)
_AF_UNIX: Final = getattr(socket, "AF_UNIX", None)

#: Buffers at least this large are handed to asyncio with ``write()`` one by
#: one rather than joined by ``writelines`` (the ``generic`` strategy).
_BIG_BUFFER: Final = 64 * 1024

_DIRECT, _WRITELINES, _GENERIC = 0, 1, 2

#: The ``direct`` strategy joins a flush's buffers into one (a copy) when
#: they average under this many bytes: many small frames.
_JOIN_AVG: Final = 512

# the framing prefix starts with the u32 body length
_body_length: Final = struct.Struct("!I").unpack_from
# the prefix of the usual two-buffer frame (msgr_core.framing's wire format)
_SEG2: Final = struct.Struct("!IHII")
_seg2_pack: Final = _SEG2.pack
_SEG2_SIZE: Final = _SEG2.size


def _nbytes(b: Buffer) -> int:
    return b.nbytes if type(b) is memoryview else len(b)


def format_address(scheme: str, family: int, addr: Any) -> str:
    """A socket address as a msgr URI (``tcp://[::1]:80``, ``unix:///x.sock``);
    ``""`` when there is none (an unnamed unix socket)."""
    if family == _AF_UNIX:
        path = os.fsdecode(addr) if addr else ""
        return f"unix://{quote(path)}" if path.startswith("/") else ""
    if not isinstance(addr, tuple) or len(addr) < 2:
        return ""
    host, port = addr[0], addr[1]
    if family == socket.AF_INET6:
        return f"{scheme}://[{host}]:{port}"
    return f"{scheme}://{host}:{port}"


class LinkSettings:
    """What every link of one transport shares (resolved once, not per link).

    :ivar scheme: the URI scheme of the links (``tcp``, ``unix``, ``tls``).
    :ivar allow_direct: the ``direct`` send strategy may be used (never for
        a transport that wraps the stream, like TLS).
    """

    __slots__ = (
        "allow_direct",
        "close_timeout",
        "direct_receive_threshold",
        "high_watermark",
        "keepalive",
        "low_watermark",
        "max_frame_bytes",
        "nodelay",
        "receive_buffer",
        "scheme",
    )

    def __init__(
        self,
        *,
        scheme: str,
        max_frame_bytes: int,
        high_watermark: int,
        low_watermark: int,
        nodelay: bool = True,
        keepalive: bool = True,
        receive_buffer: int = 256 * 1024,
        direct_receive_threshold: int = 64 * 1024,
        close_timeout: float = 10.0,
        allow_direct: bool = True,
    ) -> None:
        self.scheme = scheme
        self.max_frame_bytes = max_frame_bytes
        self.high_watermark = high_watermark
        self.low_watermark = low_watermark
        self.nodelay = nodelay
        self.keepalive = keepalive
        self.receive_buffer = receive_buffer
        self.direct_receive_threshold = direct_receive_threshold
        self.close_timeout = close_timeout
        self.allow_direct = allow_direct


class StreamLink(Link, asyncio.BufferedProtocol):
    """A :class:`~msgr_core.transport.Link` over an asyncio stream transport.

    Call order on the handler is the contract's state machine
    (``link_made [-> frame_received | pause_writing | resume_writing]* ->
    link_lost``); ``link_made`` is called from ``connection_made``.

    What ``link_lost`` receives:

    - ``None``: this side called :meth:`close` or :meth:`abort` (whatever
      happened after), or the peer closed the stream at a frame boundary
      (its orderly close; a peer process killed between frames looks the
      same on the wire);
    - :class:`~msgr_core.errors.LinkClosed`: the peer closed the stream in
      the middle of a frame (or of the banner);
    - :class:`~msgr_core.errors.ProtocolError` /
      :class:`~msgr_core.errors.FrameTooLarge` (carrying the peer): bad
      input, which is also logged at WARNING on ``msgr.tcp``;
    - the :class:`OSError` the socket reported (``ConnectionResetError``
      for a reset, ``BrokenPipeError``, ``TimeoutError`` for a keepalive
      timeout, ...);
    - the exception a handler callback raised (logged at ERROR): an
      exception escaping ``frame_received`` or ``link_made`` closes the link.

    After :meth:`close` / :meth:`abort` no more frames are delivered, and
    ``pause_writing`` / ``resume_writing`` are no longer forwarded (except
    a ``resume_writing`` never follows an unforwarded ``pause_writing``).
    Frames sent after the link broke but before ``link_lost`` ran are
    discarded; ``send`` raises :class:`~msgr_core.errors.LinkClosed` once
    the break is known.
    """

    def __init__(self, handler: LinkHandler, settings: LinkSettings) -> None:
        self._handler = handler
        self._settings = settings
        self._max = settings.max_frame_bytes
        self._high = settings.high_watermark
        self._decoder = StreamDecoder(
            handler.frame_received,  # straight to the handler; stop()ped when closing
            settings.max_frame_bytes,
            expect_banner=True,
            buffer_size=settings.receive_buffer,
            direct_threshold=settings.direct_receive_threshold,
        )
        # asyncio (and uvloop, which looks it up once, at transport creation)
        # calls get_buffer per read: go straight to the decoder.
        self.get_buffer = self._decoder.get_buffer  # type: ignore[method-assign]
        self._transport: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sock: socket.socket | None = None
        self._strategy = _GENERIC
        self._pending: list[Buffer] = []
        self._pending_bytes = 0
        self._hot = False  # a flush is scheduled for the end of this loop iteration
        self._write_now = False  # the first frame of an iteration is written at once
        self._closing = False
        self._lost = False
        self._lost_exc: BaseException | None = None
        self._paused = False
        self._close_called = False
        self._reading_paused = False
        self._linger: asyncio.TimerHandle | None = None
        self.scheme = settings.scheme

    def __repr__(self) -> str:
        state = "lost" if self._lost else "closing" if self._closing else "up"
        return f"<StreamLink {self.local_address or '?'} -> {self.peer_address or '?'} {state}>"

    # -- asyncio protocol side --------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        settings = self._settings
        sock = transport.get_extra_info("socket")
        if sock is not None:
            family = sock.family
            if family in _INET:
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(settings.nodelay))
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, int(settings.keepalive))
                except OSError as exc:  # pragma: no cover - exotic platforms
                    logger.debug("cannot set socket options: %s", exc)
            try:
                self.local_address = format_address(settings.scheme, family, sock.getsockname())
                self.peer_address = format_address(settings.scheme, family, sock.getpeername())
            except OSError:  # already reset by the peer: the read side will report it
                pass
        transport.set_write_buffer_limits(  # type: ignore[attr-defined]
            high=settings.high_watermark, low=settings.low_watermark
        )
        self._strategy, self._sock = self._choose_strategy(transport)
        self._write_now = settings.allow_direct and self._strategy != _GENERIC
        self._pending.append(BANNER)
        self._pending_bytes = len(BANNER)
        self._hot = True  # the handshake's first frame joins the banner
        self._loop.call_soon(self._cool)
        try:
            self._handler.link_made(self)
        except Exception as exc:
            logger.exception("link_made of %r raised; closing the link", self._handler)
            self._fail(exc)

    def _choose_strategy(self, transport: Any) -> tuple[int, socket.socket | None]:
        if type(transport).__module__.startswith("uvloop"):
            return _WRITELINES, None
        if (
            self._settings.allow_direct
            and _HAS_SENDMSG
            and _SELECTOR_TRANSPORT is not None
            and isinstance(transport, _SELECTOR_TRANSPORT)
            and transport.get_extra_info("sslcontext") is None
        ):
            ts = transport.get_extra_info("socket")
            # asyncio.trsock.TransportSocket keeps the real socket in ``_sock``;
            # without it we simply do not take the direct path.
            raw = ts if isinstance(ts, socket.socket) else getattr(ts, "_sock", None)
            if isinstance(raw, socket.socket):
                return _DIRECT, raw
        return _GENERIC, None

    def buffer_updated(self, nbytes: int) -> None:
        try:
            self._decoder.buffer_updated(nbytes)
        except (ProtocolError, FrameTooLarge) as exc:
            self._bad_input(exc)
        except Exception as exc:
            logger.exception("frame_received of %r raised; closing the link", self._handler)
            self._fail(exc)

    def eof_received(self) -> bool:
        self._closing = True
        self._decoder.stop()
        held = self._decoder.pending
        if held and not self._close_called and self._lost_exc is None:
            self._lost_exc = LinkClosed(f"{self._who()} closed the stream inside a frame ({held} bytes of it received)")
        return False  # asyncio closes the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost:  # pragma: no cover - asyncio calls it once
            return
        self._lost = True
        self._closing = True
        self._decoder.stop()
        self._pending = []
        self._pending_bytes = 0
        self._sock = None
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        if self._close_called:
            exc = None
        elif self._lost_exc is not None:
            exc = self._lost_exc  # type: ignore[assignment]
        self._handler.link_lost(exc)

    def pause_writing(self) -> None:
        if not self._closing:
            self._paused = True
            self._handler.pause_writing()

    def resume_writing(self) -> None:
        if self._paused:
            self._paused = False
            if not self._closing:
                self._handler.resume_writing()

    # -- the Link side ------------------------------------------------------

    def send(self, frame: Frame) -> None:
        """Queue one frame.  The first frame of a loop iteration is written
        at once; the others of that iteration leave together at its end.

        :raises FrameTooLarge: over ``max_frame_bytes`` (the link stays up).
        :raises ValueError: no buffer, or more than 1024.
        :raises LinkClosed: the link is closing or closed.
        """
        if self._closing:
            raise self._closed_error()
        if len(frame) == 2:
            h, b = frame
            hn = len(h) if type(h) is bytes else _nbytes(h)
            bn = len(b) if type(b) is bytes else _nbytes(b)
            total = hn + bn
            if total > self._max:
                raise FrameTooLarge(total, self._max, peer=self._who())
            pending = self._pending
            pending.append(_seg2_pack(total, 2, hn, bn))
            pending.append(h)
            pending.append(b)
            self._pending_bytes += total + _SEG2_SIZE
        else:
            try:
                prefix = encode_prefix(frame, self._max)
            except FrameTooLarge as exc:
                raise FrameTooLarge(exc.size, exc.limit, peer=self._who()) from None
            pending = self._pending
            pending.append(prefix)
            pending.extend(frame)
            self._pending_bytes += _body_length(prefix)[0] + len(prefix)
        if not self._hot:
            # first frame of this iteration: out now (a request or reply does
            # not wait for the next loop iteration); later ones are batched
            self._hot = True
            self._loop.call_soon(self._cool)  # type: ignore[union-attr]
            # only when the transport cannot pass its high watermark (its
            # pause_writing must not run inside send); not through TLS
            # (allow_direct off): its peer's alerts must arrive as errors, which
            # they do not when data races them
            if self._write_now and (
                    self._transport.get_write_buffer_size() + self._pending_bytes <= self._high):
                self._flush()

    def send_many(self, frames: Sequence[Frame]) -> None:
        """Queue several frames (like ``send`` for each, in order; a frame
        that raises is not queued, the ones before it are)."""
        if self._closing:
            raise self._closed_error()
        pending = self._pending
        if not self._hot and frames:
            self._hot = True
            self._loop.call_soon(self._cool)  # type: ignore[union-attr]
        limit = self._max
        append = pending.append
        extend = pending.extend
        size = 0
        try:
            for frame in frames:
                prefix = encode_prefix(frame, limit)
                append(prefix)
                extend(frame)
                size += _body_length(prefix)[0] + len(prefix)
        except FrameTooLarge as exc:
            raise FrameTooLarge(exc.size, exc.limit, peer=self._who()) from None
        finally:
            self._pending_bytes += size

    def limit_frames(self, max_bytes: int | None) -> None:
        """Receive no frame over ``max_bytes`` (``None``: the configured
        ``max_frame_bytes``); checked on the announced length, before the
        decoder allocates anything for the frame."""
        self._decoder.max_frame_bytes = self._max if max_bytes is None else min(max_bytes, self._max)

    def write_buffer_size(self) -> int:
        """Bytes queued here (this iteration's frames) and in the asyncio
        transport, not yet taken by the kernel."""
        tr = self._transport
        return self._pending_bytes + (0 if tr is None else tr.get_write_buffer_size())

    def close(self) -> None:
        """Flush what is queued, then close; ``link_lost(None)`` follows.
        Idempotent.

        The close is a lingering one, so that the peer gets every byte:
        after the flush the write side is shut down (``write_eof``) and
        what still arrives is read and dropped until the peer closes its
        side too (a msgr peer does so at once, on the EOF).  Closing the
        socket with unread input instead would make the kernel send a reset,
        which can destroy data the peer has not read yet.  If the queued
        bytes have not drained and the peer has not closed within the
        ``close_timeout`` setting, the link is aborted.
        """
        if self._closing:
            return
        self._closing = True
        self._decoder.stop()
        self._close_called = True
        self._flush()
        tr = self._transport
        if tr.is_closing():
            return
        self.resume_reading()  # the lingering close reads until the peer's EOF
        self._close_transport(tr)

    def _close_transport(self, tr: Any) -> None:
        """The end of :meth:`close`, once the frames are flushed: shut the
        write side down and linger (subclasses close their own way)."""
        if tr.can_write_eof():
            tr.write_eof()
            self._linger = self._loop.call_later(  # type: ignore[union-attr]
                self._settings.close_timeout, self._linger_expired
            )
        else:
            tr.close()

    def abort(self) -> None:
        """Close now, discarding what is queued; ``link_lost(None)`` follows.
        Idempotent (and turns a pending :meth:`close` into an abort)."""
        if self._lost:
            return
        self._close_called = True
        self._abort_transport()

    def is_closing(self) -> bool:
        return self._closing

    # -- beyond the Link contract -----------------------------------------

    def pause_reading(self) -> None:
        """Stop reading from the socket until :meth:`resume_reading`: frames
        wait in the kernel and, once its buffers fill, the peer's sends back
        up (its ``pause_writing`` fires).  No effect on a closing link."""
        if not self._closing and not self._reading_paused:
            self._reading_paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        """Read again after :meth:`pause_reading`."""
        if self._reading_paused:
            self._reading_paused = False
            if not self._transport.is_closing():
                self._transport.resume_reading()

    # -- internals ------------------------------------------------------------

    def _set_handler(self, handler: LinkHandler) -> None:
        """Hand the link to ``handler`` (before ``connection_made``: a TLS
        listener's link gets its handler only once TLS is up)."""
        self._handler = handler
        self._decoder.deliver_to(handler.frame_received)

    def _closed_error(self) -> LinkClosed:
        cause = self._lost_exc
        err = LinkClosed(f"the link with {self._who()} is closed", cause=cause)
        err.__cause__ = cause
        return err

    def _who(self) -> str:
        """The peer, for messages (an accepted unix link has no peer address)."""
        if self.peer_address:
            return self.peer_address
        if self.local_address:
            return f"a peer of {self.local_address}"
        return "an unknown peer"

    def _bad_input(self, exc: ProtocolError | FrameTooLarge) -> None:
        who = self._who()
        if isinstance(exc, FrameTooLarge):
            reason = f"frame of {exc.size} bytes exceeds limits.max_frame_bytes = {exc.limit}"
            if not exc.peer:
                exc = FrameTooLarge(exc.size, exc.limit, peer=who)
        else:
            reason = str(exc)
            if type(exc) is ProtocolError and not exc.peer:
                exc = ProtocolError(reason, peer=who)
        logger.warning("closing the link with %s on bad input: %s", who, reason)
        self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        if self._lost_exc is None:
            self._lost_exc = exc
        self._abort_transport()

    def _abort_transport(self) -> None:
        self._closing = True
        self._decoder.stop()
        self._pending = []
        self._pending_bytes = 0
        self._transport.abort()

    def _linger_expired(self) -> None:
        self._linger = None
        logger.debug(
            "%s did not close its side within %s s of close(); aborting the link",
            self._who(),
            self._settings.close_timeout,
        )
        self._abort_transport()

    def _cool(self) -> None:
        self._hot = False
        self._flush()

    def _flush(self) -> None:
        pending = self._pending
        if not pending:
            return
        self._pending = []
        nbytes = self._pending_bytes
        self._pending_bytes = 0
        tr = self._transport
        if tr.is_closing():
            return  # broken: connection_lost is on its way
        strategy = self._strategy
        if strategy == _WRITELINES:
            if len(pending) > 1 and nbytes < _JOIN_AVG * len(pending):
                tr.write(b"".join(pending))  # small buffers: one write (uvloop writes each one)
            else:
                tr.writelines(pending)
        elif strategy == _DIRECT and not tr.get_write_buffer_size():
            if len(pending) > 3 and nbytes < _JOIN_AVG * len(pending):
                # many small buffers: one copy into one buffer is cheaper for
                # the kernel than a long iovec (and the copy is small)
                pending = [b"".join(pending)]
            rest = self._send_direct(pending, nbytes)
            if rest:
                self._write_rest(rest)
        else:
            self._write_rest(pending)

    def _send_direct(self, pending: list[Buffer], nbytes: int) -> list[Buffer] | None:
        """sendmsg as much as the kernel takes; return what is left."""
        sendmsg = self._sock.sendmsg  # type: ignore[union-attr]
        n = len(pending)
        start = 0
        while start < n:
            chunk = pending if n <= _IOV_MAX else pending[start : start + _IOV_MAX]
            try:
                sent = sendmsg(chunk, (), _MSG_NOSIGNAL)
            except (BlockingIOError, InterruptedError):
                return pending[start:]
            except OSError as exc:
                self._fail(exc)
                return None
            if sent == nbytes:
                return None
            nbytes -= sent
            end = start + len(chunk)
            i = start
            while sent:  # skip the buffers the kernel took
                b = pending[i]
                ln = b.nbytes if type(b) is memoryview else len(b)
                if sent < ln:
                    pending[i] = memoryview(b).cast("B")[sent:]
                    return pending[i:]
                sent -= ln
                i += 1
            if i < end:  # the kernel took whole buffers, but not the whole chunk
                return pending[i:]
            start = end
        return None

    def _write_rest(self, rest: list[Buffer]) -> None:
        tr = self._transport
        run: list[Buffer] = []
        for b in rest:
            if (b.nbytes if type(b) is memoryview else len(b)) >= _BIG_BUFFER:
                if run:
                    tr.writelines(run)
                    run = []
                tr.write(b)
            else:
                run.append(b)
        if run:
            if len(run) > 1:
                tr.writelines(run[:-1])
            tr.write(run[-1])
