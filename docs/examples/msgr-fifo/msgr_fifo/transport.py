"""``fifo://``: msgr links over pairs of named pipes (FIFOs), between processes.

How a link is made (Linux semantics of FIFOs):

1. The listener owns one FIFO, its *accept* FIFO, at the address's path.
2. A client makes a private directory with two FIFOs, ``up`` (client to
   server) and ``down`` (server to client), opens ``down`` for reading, and
   writes one line, ``MSGRFIFO1 <up> <down>``, into the accept FIFO (one
   write shorter than ``PIPE_BUF``, so lines from many clients never mix).
3. The listener opens ``up`` for reading and ``down`` for writing, and sends
   the framing banner down: the link is up on its side.
4. The client, seeing the banner, opens ``up`` for writing, sends its own
   banner, and removes the directory (open FIFOs live on without names).

Frames use :mod:`msgr_core.framing` (a byte stream with a length prefix per
frame and per buffer), so all that is left to write is plumbing.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Sequence
from typing import Any, ClassVar

from msgr_core.errors import LinkClosed, ProtocolError
from msgr_core.framing import BANNER, StreamDecoder, encode_prefix
from msgr_core.transport import (
    Buffer,
    Frame,
    HandlerFactory,
    Link,
    LinkHandler,
    Listener,
    Transport,
    split_address,
)

__all__ = ["FifoLink", "FifoListener", "FifoTransport"]

log = logging.getLogger("msgr.fifo")

_HELLO = b"MSGRFIFO1"
_PIPE_BUF = 4096  # POSIX guarantees at least 512; Linux has 4096


def _open_fifo(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC)


class _ReadSide(asyncio.Protocol):
    """Reads one FIFO; holds data until the link has called ``link_made``."""

    def __init__(self) -> None:
        self.link: FifoLink | None = None
        self.held: list[bytes] = []
        self.arrived = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        self.arrived.set()
        if self.link is None or not self.link.started:
            self.held.append(data)
        else:
            self.link.data_received(data)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.arrived.set()
        if self.link is not None:
            self.link.read_side_lost(exc)


class _WriteSide(asyncio.Protocol):
    """Forwards the write FIFO's events to the link."""

    def __init__(self, link: FifoLink) -> None:
        self.link = link

    def pause_writing(self) -> None:
        self.link.defer("pause_writing")

    def resume_writing(self) -> None:
        self.link.defer("resume_writing")

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.write_side_lost(exc)


class FifoLink(Link):
    """One link: a FIFO to read and a FIFO to write.

    ``link_lost`` receives ``None`` after an orderly close by either side
    (and when the peer process went away between frames: a FIFO cannot tell
    the difference), a :class:`~msgr_core.errors.ProtocolError` /
    :class:`~msgr_core.errors.FrameTooLarge` for bad input or a frame cut
    short, or the ``OSError`` that broke a FIFO.
    """

    def __init__(self, transport: FifoTransport, handler: LinkHandler, reader: _ReadSide) -> None:
        self._transport = transport
        self._handler = handler
        self._read_side = reader
        reader.link = self
        self._reader: asyncio.ReadTransport | None = None
        self._writer: asyncio.WriteTransport | None = None
        self._loop = asyncio.get_running_loop()
        self._max = transport.options.max_frame_bytes
        self._decoder = StreamDecoder(self._frame, self._max)
        self.started = False
        self._closing = False  # close()/abort() called, or the link broke
        self._closed_by_us = False
        self._peer_eof = False
        self._writer_done = False
        self._lost = False
        self._close_timer: asyncio.TimerHandle | None = None

    # -- set-up, by the transport -------------------------------------------

    def attach(self, reader: asyncio.ReadTransport, writer: asyncio.WriteTransport) -> None:
        self._reader = reader
        self._writer = writer
        opts = self._transport.options
        writer.set_write_buffer_limits(high=opts.high_watermark, low=opts.low_watermark)
        writer.write(BANNER)

    def start(self) -> None:
        """Call ``link_made``, then deliver what arrived meanwhile."""
        self.started = True
        self._handler.link_made(self)
        held, self._read_side.held = self._read_side.held, []
        for data in held:
            self.data_received(data)

    # -- Link -------------------------------------------------------------------

    def send(self, frame: Frame) -> None:
        if self._closing or self._writer is None:
            raise LinkClosed(f"fifo link to {self.peer_address or 'a client'} is closed")
        prefix = encode_prefix(frame, self._max)  # raises FrameTooLarge, link stays up
        self._writer.writelines([prefix, *frame])

    def send_many(self, frames: Sequence[Frame]) -> None:
        for frame in frames:
            self.send(frame)

    def write_buffer_size(self) -> int:
        if self._writer is None or self._writer.is_closing():
            return 0
        return self._writer.get_write_buffer_size()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = self._closed_by_us = True
        if self._writer is not None:
            self._writer.close()  # flushes, then closes: the peer reads EOF and closes its end
        timeout = float(self._transport.options.settings.get("close_timeout", 10.0))
        self._close_timer = self._loop.call_later(timeout, self.abort)

    def abort(self) -> None:
        self._finish(None)

    def is_closing(self) -> bool:
        return self._closing

    def pause_reading(self) -> None:
        """Stop reading (the peer's sends back up behind the FIFO)."""
        if self._reader is not None and not self._reader.is_closing():
            self._reader.pause_reading()

    def resume_reading(self) -> None:
        if self._reader is not None and not self._reader.is_closing():
            self._reader.resume_reading()

    # -- events ------------------------------------------------------------------

    def _frame(self, frame: list[Buffer]) -> None:
        if not self._closing:
            self._handler.frame_received(frame)

    def data_received(self, data: bytes) -> None:
        if self._lost:
            return
        try:
            self._decoder.feed(data)
        except (ProtocolError, ValueError) as exc:
            log.warning("fifo link %s: bad input: %s", self.peer_address or self.local_address, exc)
            self._finish(exc)
        except Exception as exc:  # FrameTooLarge is not a ProtocolError
            log.warning("fifo link %s: %s", self.peer_address or self.local_address, exc)
            self._finish(exc)

    def read_side_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self._finish(exc)
        elif self._decoder.pending:
            self._finish(ProtocolError(f"the peer's stream ended inside a frame ({self._decoder.pending} bytes)"))
        else:
            self._peer_eof = True
            if self._closed_by_us or self._writer_done:
                self._finish(None)
            elif self._writer is not None:
                # The peer closed: flush what we have queued, then we are done.
                self._closing = True
                self._writer.close()

    def write_side_lost(self, exc: Exception | None) -> None:
        self._writer_done = True
        if exc is not None:
            self._finish(exc)
        elif self._peer_eof:
            self._finish(None)
        # else: we closed first and wait for the peer's EOF (bounded by close_timeout)

    def defer(self, event: str) -> None:
        # Never call the handler from inside send(): asyncio pauses the
        # protocol from within write().
        self._loop.call_soon(self._forward, event)

    def _forward(self, event: str) -> None:
        if not self._lost:
            getattr(self._handler, event)()

    def _finish(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._lost = self._closing = True
        if self._close_timer is not None:
            self._close_timer.cancel()
        if self._reader is not None:
            self._reader.close()
        if self._writer is not None and not self._writer_done:
            self._writer.abort()
        self._read_side.held.clear()
        if self.started:
            self._loop.call_soon(self._handler.link_lost, exc)


class FifoListener(Listener):
    """The accept FIFO of one ``fifo://`` address."""

    def __init__(self, transport: FifoTransport, path: str, factory: HandlerFactory, own_dir: str | None) -> None:
        self.address = f"fifo://{path}"
        self._transport = transport
        self._path = path
        self._factory = factory
        self._own_dir = own_dir
        self._reader: asyncio.ReadTransport | None = None
        self._keepalive_fd = -1
        self._pending = b""
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        fd = _open_fifo(self._path, os.O_RDONLY)
        # Our own writer, so that the accept FIFO never reads EOF between clients.
        self._keepalive_fd = _open_fifo(self._path, os.O_WRONLY)
        self._reader, _ = await loop.connect_read_pipe(lambda: _AcceptSide(self), os.fdopen(fd, "rb", buffering=0))

    def lines_received(self, data: bytes) -> None:
        self._pending += data
        *lines, self._pending = self._pending.split(b"\n")
        for line in lines:
            task = asyncio.get_running_loop().create_task(self._accept(line))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _accept(self, line: bytes) -> None:
        parts = line.split(b" ")
        if len(parts) != 3 or parts[0] != _HELLO:
            log.warning("fifo listener %s: ignored a malformed request %r", self.address, line[:80])
            return
        up, down = os.fsdecode(parts[1]), os.fsdecode(parts[2])
        try:
            link = await self._transport.open_link(self._factory(), read_path=up, write_path=down)
        except OSError as exc:  # the client gave up meanwhile
            log.info("fifo listener %s: client at %s went away: %s", self.address, down, exc)
            return
        link.local_address = self.address
        link.start()

    async def aclose(self) -> None:
        if self._reader is None:
            return
        self._reader.close()
        self._reader = None
        os.close(self._keepalive_fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path)
        if self._own_dir:
            shutil.rmtree(self._own_dir, ignore_errors=True)
        for task in list(self._tasks):
            task.cancel()


class _AcceptSide(asyncio.Protocol):
    def __init__(self, listener: FifoListener) -> None:
        self.listener = listener

    def data_received(self, data: bytes) -> None:
        self.listener.lines_received(data)


class FifoTransport(Transport):
    """``fifo:///PATH``: links over pairs of named pipes on one host."""

    schemes: ClassVar[tuple[str, ...]] = ("fifo",)
    distribution: ClassVar[str] = "msgr-fifo"
    config_section: ClassVar[str] = "fifo"
    config_defaults: ClassVar[dict[str, Any]] = {"close_timeout": 10.0, "tmpdir": ""}
    # The kit listens on fresh paths in a private temporary directory.
    test_addresses: ClassVar[dict[str, str]] = {"fifo": "fifo://{tmp}/l{n}"}

    def _path(self, address: str) -> str:
        _scheme, host, port, path = split_address(address, self.schemes)
        if host or port is not None:
            from msgr_core.errors import UnsupportedAddress

            raise UnsupportedAddress(address, "expected fifo:///ABSOLUTE/PATH (or fifo:// to pick one)")
        return path

    async def listen(self, address: str, handler_factory: HandlerFactory) -> Listener:
        path = self._path(address)
        own_dir = None
        if not path:  # "pick one", like port 0
            own_dir = tempfile.mkdtemp(prefix="msgr-fifo-", dir=self.options.settings.get("tmpdir") or None)
            path = os.path.join(own_dir, "accept")
        try:
            os.mkfifo(path, 0o600)
        except FileExistsError:
            if not stat.S_ISFIFO(os.stat(path).st_mode):
                raise
            try:  # a live listener has a reader: then opening for writing works
                os.close(_open_fifo(path, os.O_WRONLY))
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
                os.unlink(path)  # left behind by a dead listener
                os.mkfifo(path, 0o600)
            else:
                raise OSError(errno.EADDRINUSE, f"{address}: a listener is already there") from None
        listener = FifoListener(self, path, handler_factory, own_dir)
        await listener.start()
        return listener

    async def connect(self, address: str, handler: LinkHandler) -> Link:
        accept = self._path(address)
        if not accept:
            from msgr_core.errors import UnsupportedAddress

            raise UnsupportedAddress(address, "connect needs a path")
        workdir = tempfile.mkdtemp(prefix="msgr-fifo-c-", dir=self.options.settings.get("tmpdir") or None)
        up, down = os.path.join(workdir, "up"), os.path.join(workdir, "down")
        try:
            os.mkfifo(up, 0o600)
            os.mkfifo(down, 0o600)
            reader = _ReadSide()
            loop = asyncio.get_running_loop()
            read_t, _ = await loop.connect_read_pipe(lambda: reader, os.fdopen(_open_fifo(down, os.O_RDONLY), "rb", 0))
            try:
                request = b" ".join([_HELLO, os.fsencode(up), os.fsencode(down)]) + b"\n"
                if len(request) > _PIPE_BUF:
                    raise OSError(errno.ENAMETOOLONG, f"temporary directory path too long: {workdir}")
                try:
                    fd = _open_fifo(accept, os.O_WRONLY)  # ENXIO: nobody listens, ENOENT: no such listener
                except OSError as exc:
                    if exc.errno == errno.ENXIO:
                        raise ConnectionRefusedError(errno.ECONNREFUSED, f"{address}: nobody listens") from None
                    raise
                try:
                    os.write(fd, request)
                finally:
                    os.close(fd)
                # The listener's banner says both of its ends are open.
                await asyncio.wait_for(reader.arrived.wait(), self.options.connect_timeout)
                if not reader.held:
                    raise ConnectionRefusedError(errno.ECONNREFUSED, f"{address}: the listener closed the link")
                link = FifoLink(self, handler, reader)
                write_t, _ = await loop.connect_write_pipe(
                    lambda: _WriteSide(link), os.fdopen(_open_fifo(up, os.O_WRONLY), "wb", 0)
                )
            except BaseException:
                read_t.close()
                raise
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        link.peer_address = address
        link.attach(read_t, write_t)
        link.start()
        return link

    async def open_link(self, handler: LinkHandler, *, read_path: str, write_path: str) -> FifoLink:
        """The listener's side of step 3: open both FIFOs of a client."""
        loop = asyncio.get_running_loop()
        reader = _ReadSide()
        read_t, _ = await loop.connect_read_pipe(lambda: reader, os.fdopen(_open_fifo(read_path, os.O_RDONLY), "rb", 0))
        try:
            link = FifoLink(self, handler, reader)
            write_fd = _open_fifo(write_path, os.O_WRONLY)
            write_t, _ = await loop.connect_write_pipe(lambda: _WriteSide(link), os.fdopen(write_fd, "wb", 0))
        except BaseException:
            read_t.close()
            raise
        link.attach(read_t, write_t)
        return link
