"""The conformance checks: plain coroutines, usable with or without pytest.

Each ``check_*`` takes a :class:`~msgr_core.testing.TransportHarness`, runs
real listeners and links of that transport on the running event loop, and
either returns (the transport kept the contract), raises
:class:`ConformanceError` (it did not; the message names the rule and what
happened) or raises :class:`~msgr_core.testing.NotSupported` (the harness
lacks a capability the check needs)::

    import asyncio
    from msgr_core.testing import TransportHarness, check_ordered_delivery, run_check

    run_check(check_ordered_delivery, TransportHarness(MyTransport, "my://127.0.0.1:0"))
    # or, inside a coroutine:  await check_ordered_delivery(harness)

Every handler the checks give a transport is a :class:`RecordingHandler`,
which also checks the call order of :mod:`msgr_core.transport` on every
call: ``link_made`` once and first, ``link_lost`` once and last,
``pause_writing`` / ``resume_writing`` alternating, all on the loop thread
and never from inside ``Link.send``.  At the end of each check every link
still up is aborted and must report ``link_lost``.

Waits are bounded by ``harness.timeout``; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import random
import struct
import threading
from array import array
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

from ..errors import FrameTooLarge, LinkClosed, PluginError, ProtocolError, UnsupportedAddress
from ..transport import Buffer, Frame, Link, Listener, Transport, frame_size, split_address
from .harness import NotSupported, TransportHarness, load_transport_class

__all__ = [
    "ALL_CHECKS",
    "ConformanceError",
    "RecordingHandler",
    "check_any_port",
    "check_backpressure",
    "check_bad_address",
    "check_bidirectional",
    "check_break_detection",
    "check_close",
    "check_close_from_callback",
    "check_dead_address",
    "check_frame_size_limit",
    "check_link_made_first",
    "check_listen_connect",
    "check_listener_close",
    "check_malformed_input",
    "check_many_links",
    "check_messenger_roundtrip",
    "check_multi_buffer",
    "check_ordered_delivery",
    "check_oversize_received",
    "check_received_buffers_owned",
    "check_send_after_close",
    "run_check",
]

T = TypeVar("T")
Check = Callable[[TransportHarness], Coroutine[Any, Any, None]]


class ConformanceError(AssertionError):
    """The transport broke its contract; the message says which rule and how.

    An ``AssertionError``, so test runners report it as a failure.
    """


def run_check(check: Check, harness: TransportHarness) -> None:
    """Run one check to completion in a new event loop (``harness.loop_factory``).

    :raises ConformanceError: the transport failed the check.
    :raises NotSupported: the harness cannot run it.
    """
    # Always a factory: then the runner leaves the current event loop
    # (``asyncio.set_event_loop``) as it found it.
    with asyncio.Runner(loop_factory=harness.loop_factory or asyncio.new_event_loop) as runner:
        runner.run(check(harness))


# -- data ---------------------------------------------------------------------

_BLOB = random.Random(0x6D736772).randbytes(1 << 20)
_SEQ = struct.Struct("!Q")
_BUFFER_TYPES = (bytes, bytearray, memoryview)


def _nbytes(b: Buffer) -> int:
    return b.nbytes if type(b) is memoryview else len(b)


def _pattern(n: int, shift: int = 0) -> bytes:
    """``n`` deterministic pseudo-random bytes (``shift`` picks the stream)."""
    shift %= len(_BLOB)
    if n + shift <= len(_BLOB):
        return _BLOB[shift : shift + n]
    reps = (n + shift) // len(_BLOB) + 1
    return (_BLOB * reps)[shift : shift + n]


def _numbered(seq: int, *payload: bytes) -> list[bytes]:
    return [_SEQ.pack(seq), *payload]


def _random_frames(count: int, seed: int, max_payload: int = 1500) -> list[list[bytes]]:
    """Numbered frames of 1 to 3 buffers, payloads of 0..max_payload bytes."""
    rng = random.Random(seed)
    frames = []
    for i in range(count):
        shape = rng.random()
        if shape < 0.6:
            frames.append(_numbered(i, _pattern(rng.randrange(max_payload), rng.randrange(1 << 20))))
        elif shape < 0.9:
            frames.append(_numbered(i))
        else:
            frames.append(_numbered(i, _pattern(rng.randrange(64), i), b"", _pattern(rng.randrange(max_payload), i)))
    return frames


def _describe(frame: Sequence[Buffer]) -> str:
    return "[" + ", ".join(f"{_nbytes(b)} B" for b in frame) + "]"


def _expect_frames(got: Sequence[Sequence[bytes]], want: Sequence[Sequence[bytes]], path: str) -> None:
    """``got`` (contents as delivered) must be exactly ``want``: count,
    order, buffer boundaries, bytes."""
    index: dict[tuple[bytes, ...], int] | None = None
    for i, (g, w) in enumerate(zip(got, want, strict=False)):
        if list(g) == list(w):
            continue
        if len(g) != len(w) and b"".join(g) == b"".join(w):
            raise ConformanceError(
                f"{path}: frame {i} was sent as {len(w)} buffers {_describe(w)} and arrived as "
                f"{len(g)} buffers {_describe(g)}: buffer boundaries must be kept"
            )
        if index is None:
            index = {}
            for k, frame in enumerate(want):
                index.setdefault(tuple(frame), k)
        k = index.get(tuple(g), -1)
        if k >= 0:
            again = " again" if k < i else ""
            raise ConformanceError(
                f"{path}: frame {k} arrived{again} in position {i}, where frame {i} was expected: "
                "frames must arrive in the order sent, each exactly once"
            )
        if len(g) != len(w):
            raise ConformanceError(
                f"{path}: frame {i} was sent as {len(w)} buffers {_describe(w)} and arrived as "
                f"{len(g)} buffers {_describe(g)}: buffer boundaries must be kept"
            )
        for j, (gb, wb) in enumerate(zip(g, w, strict=True)):
            if len(gb) != len(wb):
                raise ConformanceError(
                    f"{path}: frame {i} buffer {j} was sent with {len(wb)} bytes and arrived with "
                    f"{len(gb)}: buffer boundaries must be kept"
                )
            if gb != wb:
                raise ConformanceError(f"{path}: frame {i} buffer {j} arrived with different bytes")
    if len(got) != len(want):
        raise ConformanceError(f"{path}: {len(want)} frames sent, {len(got)} arrived")


# -- recording handler --------------------------------------------------------


class _Monitor:
    """State shared by the handlers of one check run."""

    def __init__(self) -> None:
        self.violations: list[str] = []
        self.in_send = 0
        self.thread = threading.get_ident()
        self._tick: asyncio.Future[None] | None = None

    def violation(self, message: str) -> None:
        if message not in self.violations and len(self.violations) < 50:
            self.violations.append(message)

    def poke(self) -> None:
        tick = self._tick
        if tick is not None and not tick.done():
            tick.set_result(None)

    def next_tick(self) -> asyncio.Future[None]:
        if self._tick is None or self._tick.done():
            self._tick = asyncio.get_running_loop().create_future()
        return self._tick


class RecordingHandler:
    """A :class:`~msgr_core.transport.LinkHandler` that records every call
    and checks the contract's call order as it goes.

    Violations (a call out of order, from another thread, or from inside
    ``Link.send``) are collected, not raised — raising into a transport's
    callback would test the transport's error handling instead — and the
    check run reports them at its end.

    :param on_made: called as ``on_made(handler, link)`` after ``link_made``.
    :param on_frame: called as ``on_frame(handler, frame)`` for each frame.
    :param keep: keep every received frame in :attr:`frames`.
    """

    def __init__(
        self,
        name: str,
        *,
        monitor: _Monitor | None = None,
        on_made: Callable[[RecordingHandler, Link], None] | None = None,
        on_frame: Callable[[RecordingHandler, list[Buffer]], None] | None = None,
        keep: bool = True,
    ) -> None:
        self.name = name
        self.monitor = monitor or _Monitor()
        self.link: Link | None = None
        self.made = False
        self.frames: list[list[Buffer]] = []
        self.contents: list[list[bytes]] = []
        self.frame_count = 0
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        self.paused = False
        self.pause_count = 0
        self.resume_count = 0
        self.buffer_at_pause: int | None = None
        self.buffer_at_resume: int | None = None
        self._on_made = on_made
        self._on_frame = on_frame
        self._keep = keep

    # -- LinkHandler --

    def link_made(self, link: Link) -> None:
        self._enter("link_made")
        if self.made:
            self.monitor.violation(f"{self.name}: link_made called more than once")
        self.made = True
        self.link = link
        if not isinstance(link, Link):
            self.monitor.violation(
                f"{self.name}: link_made got {type(link).__qualname__}, not a msgr_core.transport.Link"
            )
        self._call(self._on_made, link)
        self.monitor.poke()

    def frame_received(self, frame: list[Buffer]) -> None:
        self._enter("frame_received")
        if type(frame) is not list or not frame:
            self.monitor.violation(
                f"{self.name}: frame_received got {frame!r:.60}; a frame is a non-empty list of buffers"
            )
            frame = list(frame) if isinstance(frame, Sequence) else [frame]
        elif not all(isinstance(b, _BUFFER_TYPES) for b in frame):
            kinds = sorted({type(b).__qualname__ for b in frame})
            self.monitor.violation(f"{self.name}: frame_received got buffers of types {kinds}")
        self.frame_count += 1
        if self._keep:
            self.frames.append(frame)
            self.contents.append([bytes(b) if isinstance(b, _BUFFER_TYPES) else b"" for b in frame])
        self._call(self._on_frame, frame)
        self.monitor.poke()

    def pause_writing(self) -> None:
        self._enter("pause_writing")
        if self.paused:
            self.monitor.violation(f"{self.name}: pause_writing called twice without resume_writing")
        self.paused = True
        self.pause_count += 1
        if self.link is not None:
            self.buffer_at_pause = self.link.write_buffer_size()
        self.monitor.poke()

    def resume_writing(self) -> None:
        self._enter("resume_writing")
        if not self.paused:
            self.monitor.violation(f"{self.name}: resume_writing called without pause_writing first")
        self.paused = False
        self.resume_count += 1
        if self.link is not None:
            self.buffer_at_resume = self.link.write_buffer_size()
        self.monitor.poke()

    def link_lost(self, exc: BaseException | None) -> None:
        if self.lost.done():
            self.monitor.violation(f"{self.name}: link_lost called more than once")
            return
        self._enter("link_lost")
        if exc is not None and not isinstance(exc, BaseException):
            self.monitor.violation(f"{self.name}: link_lost got {exc!r}, not None or an exception")
        self.lost.set_result(exc)
        self.monitor.poke()

    # -- helpers --

    @property
    def is_lost(self) -> bool:
        """Whether ``link_lost`` was called."""
        return self.lost.done()

    @property
    def lost_with(self) -> BaseException | None:
        """The exception ``link_lost`` got (``None`` if none, or not yet)."""
        return self.lost.result() if self.lost.done() else None

    def _enter(self, what: str) -> None:
        mon = self.monitor
        if threading.get_ident() != mon.thread:
            mon.violation(f"{self.name}: {what} called from a thread other than the event loop's")
        if mon.in_send:
            mon.violation(f"{self.name}: {what} called from inside Link.send (re-entrant call)")
        if self.lost.done():
            mon.violation(f"{self.name}: {what} called after link_lost")
        elif not self.made and what != "link_made":
            mon.violation(f"{self.name}: {what} called before link_made")

    def _call(self, fn: Callable[[RecordingHandler, Any], None] | None, arg: Any) -> None:
        if fn is None:
            return
        try:
            fn(self, arg)
        except Exception as exc:  # keep the transport's callback clean; report it
            self.monitor.violation(f"{self.name}: the kit's callback raised {exc!r}")


# -- one check run ----------------------------------------------------------------


@dataclass
class _Served:
    """A listener and the handlers its links got, in order of creation."""

    run: _Run
    listener: Listener
    handlers: list[RecordingHandler] = field(default_factory=list)

    @property
    def address(self) -> str:
        return self.listener.address

    async def accepted(self, n: int) -> list[RecordingHandler]:
        """Wait until ``n`` links were made on this listener; the first ``n``."""
        await self.run.until(
            lambda: sum(h.made for h in self.handlers) >= n,
            f"{n} link(s) to be made on the listener at {self.address}",
        )
        return [h for h in self.handlers if h.made][:n]


@dataclass
class _Pair:
    link: Link
    client: RecordingHandler
    server: RecordingHandler
    served: _Served

    @property
    def server_link(self) -> Link:
        if self.server.link is None:
            raise ConformanceError("server handler has no link")  # unreachable after accepted()
        return self.server.link


class _Run:
    """Creates transports, listeners and links for one check, and cleans up:
    aborts what is still up (which must end in ``link_lost``), closes the
    listeners and transports, and reports call-order violations."""

    def __init__(self, harness: TransportHarness) -> None:
        self.h = harness
        self.timeout = harness.timeout
        self.mon = _Monitor()
        self.recorders: list[RecordingHandler] = []
        self.transports: list[Transport] = []
        self.listeners: list[Listener] = []
        self.closed_listeners: set[int] = set()

    async def __aenter__(self) -> _Run:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._teardown()
        self._check_ownership()
        if exc is None:
            self.verify()
        elif self.mon.violations and isinstance(exc, AssertionError):
            exc.add_note(self._violations_text())

    def _violations_text(self) -> str:
        return "contract violations seen by the handlers:\n" + "\n".join(f"  - {v}" for v in self.mon.violations)

    def verify(self) -> None:
        """Raise :class:`ConformanceError` for any call-order violation so far."""
        if self.mon.violations:
            raise ConformanceError(self._violations_text())

    def _check_ownership(self) -> None:
        for rec in self.recorders:
            for i, (frame, content) in enumerate(zip(rec.frames, rec.contents, strict=True)):
                if any(bytes(b) != c for b, c in zip(frame, content, strict=True)):
                    self.mon.violation(
                        f"{rec.name}: frame {i} changed after frame_received returned; received "
                        "buffers belong to the receiver, the transport must not reuse their memory"
                    )
                    break

    async def _teardown(self) -> None:
        for rec in self.recorders:
            if rec.made and not rec.is_lost and rec.link is not None:
                try:
                    rec.link.abort()
                except Exception as exc:
                    self.mon.violation(f"{rec.name}: abort() raised {exc!r}")
        pending = [rec for rec in self.recorders if rec.made and not rec.is_lost]
        if pending:
            await asyncio.wait([rec.lost for rec in pending], timeout=self.timeout)
            for rec in pending:
                if not rec.is_lost:
                    self.mon.violation(
                        f"{rec.name}: link_lost not called within {self.timeout:g} s of abort(); "
                        "every link must end in exactly one link_lost"
                    )
        for listener in self.listeners:
            if id(listener) not in self.closed_listeners:
                await self._quietly(listener.aclose(), "Listener.aclose()")
        for transport in self.transports:
            await self._quietly(transport.aclose(), "Transport.aclose()")

    async def _quietly(self, aw: Awaitable[None], what: str) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                await aw
        except TimeoutError:
            self.mon.violation(f"{what} did not finish within {self.timeout:g} s")
        except Exception as exc:
            self.mon.violation(f"{what} raised {exc!r}")

    # -- waiting --

    async def within(self, aw: Awaitable[T], what: str) -> T:
        """Await ``aw``; fail with a message naming ``what`` on timeout."""
        cm = asyncio.timeout(self.timeout)
        try:
            async with cm:
                return await aw
        except TimeoutError:
            if cm.expired():
                raise ConformanceError(f"timed out after {self.timeout:g} s waiting for {what}") from None
            raise

    async def until(self, predicate: Callable[[], bool], what: str, *, watch: Sequence[RecordingHandler] = ()) -> None:
        """Wait until ``predicate()`` holds (re-checked after every handler
        call); fail early if a handler in ``watch`` loses its link."""

        async def wait() -> None:
            while not predicate():
                for rec in watch:
                    if rec.is_lost:
                        raise ConformanceError(
                            f"{rec.name}: link lost (link_lost({rec.lost_with!r})) while waiting "
                            f"for {what}; {rec.frame_count} frame(s) had arrived"
                        )
                await self.mon.next_tick()

        await self.within(wait(), what)

    async def frames(self, rec: RecordingHandler, n: int, what: str = "") -> None:
        """Wait until ``rec`` has received ``n`` frames."""
        await self.until(
            lambda: rec.frame_count >= n,
            f"{rec.name} to receive {n} frame(s){what} ({rec.frame_count} so far)",
            watch=[rec],
        )

    async def lost(self, rec: RecordingHandler, why: str) -> BaseException | None:
        """Wait for ``rec``'s ``link_lost``; its argument."""
        return await self.within(asyncio.shield(rec.lost), f"{rec.name}: link_lost ({why})")

    # -- making things --

    def handler(self, name: str, **kw: Any) -> RecordingHandler:
        rec = RecordingHandler(name, monitor=self.mon, **kw)
        self.recorders.append(rec)
        return rec

    def transport(self, **option_overrides: Any) -> Transport:
        transport = self.h.make_transport(**option_overrides)
        self.transports.append(transport)
        return transport

    async def listen(
        self, transport: Transport, address: str | None = None, *, name: str = "server", **kw: Any
    ) -> _Served:
        address = address or self.h.next_listen_address()
        handlers: list[RecordingHandler] = []

        def factory() -> RecordingHandler:
            rec = self.handler(f"{name} link #{len(handlers)}", **kw)
            handlers.append(rec)
            return rec

        listener = await self.within(transport.listen(address, factory), f"listen({address!r})")
        self.listeners.append(listener)
        _check_address(listener.address, self.h.scheme, f"listener.address after listen({address!r})")
        return _Served(self, listener, handlers)

    async def close_listener(self, served: _Served) -> None:
        self.closed_listeners.add(id(served.listener))
        await self.within(served.listener.aclose(), "Listener.aclose()")

    async def connect(
        self, transport: Transport, address: str, *, name: str = "client", **kw: Any
    ) -> tuple[Link, RecordingHandler]:
        rec = self.handler(name, **kw)
        link = await self.within(transport.connect(address, rec), f"connect({address!r})")
        if not rec.made:
            raise ConformanceError(
                f"connect({address!r}) returned before calling handler.link_made; the contract "
                "says link_made has been called when connect returns"
            )
        if rec.link is not link:
            raise ConformanceError("connect() returned a different link than the one given to link_made")
        return link, rec

    async def pair(
        self,
        *,
        server: dict[str, Any] | None = None,
        client: dict[str, Any] | None = None,
        server_options: dict[str, Any] | None = None,
        client_options: dict[str, Any] | None = None,
    ) -> _Pair:
        """A listener on one transport and one link to it from another."""
        st = self.transport(**(server_options or {}))
        ct = self.transport(**(client_options or {}))
        served = await self.listen(st, **(server or {}))
        link, crec = await self.connect(ct, served.address, **(client or {}))
        (srec,) = await served.accepted(1)
        return _Pair(link, crec, srec, served)

    # -- sending (marks "inside Link.send" for the re-entrancy check) --

    def send(self, link: Link, frame: Frame) -> None:
        self.mon.in_send += 1
        try:
            link.send(frame)
        finally:
            self.mon.in_send -= 1

    def send_many(self, link: Link, frames: Sequence[Frame]) -> None:
        self.mon.in_send += 1
        try:
            link.send_many(frames)
        finally:
            self.mon.in_send -= 1

    def echo(self, rec: RecordingHandler, frame: list[Buffer]) -> None:
        """An ``on_frame`` that sends every frame back (unless closing)."""
        if rec.link is not None and not rec.link.is_closing():
            self.send(rec.link, frame)

    async def pump(self, link: Link, frames: Sequence[Frame], batch: int = 256) -> None:
        """Send ``frames``, alternating ``send`` and ``send_many`` per batch,
        yielding to the loop between batches."""
        for n, start in enumerate(range(0, len(frames), batch)):
            chunk = frames[start : start + batch]
            if n % 2:
                self.send_many(link, chunk)
            else:
                for frame in chunk:
                    self.send(link, frame)
            await asyncio.sleep(0)

    async def round_trip(self, link: Link, rec: RecordingHandler, peer: RecordingHandler, tag: str) -> None:
        """``link`` sends a frame, ``peer`` answers it: both directions work."""
        n, m = peer.frame_count, rec.frame_count
        self.send(link, [tag.encode()])
        await self.frames(peer, n + 1, f" ({tag})")
        if peer.link is None:
            raise ConformanceError(f"{peer.name} has no link")
        self.send(peer.link, [tag.encode() + b"/reply"])
        await self.frames(rec, m + 1, f" ({tag} reply)")


def _check_address(address: object, scheme: str, what: str) -> None:
    if not isinstance(address, str):
        raise ConformanceError(f"{what} is {address!r}, not a URI string")
    try:
        split_address(address, (scheme,))
    except UnsupportedAddress as exc:
        raise ConformanceError(f"{what} = {address!r} is not a {scheme}:// URI: {exc}") from None


def _check_link(link: Link, what: str) -> None:
    if not isinstance(link, Link):
        raise ConformanceError(f"{what} is {type(link).__qualname__}, not a msgr_core.transport.Link")
    if link.is_closing():
        raise ConformanceError(f"{what}: is_closing() is True on a new link")
    size = link.write_buffer_size()
    if not isinstance(size, int) or size < 0:
        raise ConformanceError(f"{what}: write_buffer_size() returned {size!r}, not an int >= 0")
    for attr in ("local_address", "peer_address"):
        value = getattr(link, attr, None)
        if not isinstance(value, str):
            raise ConformanceError(f"{what}: {attr} is {value!r}, not a str")


def _expect_link_closed(run: _Run, link: Link, frame: Frame, when: str) -> None:
    try:
        run.send(link, frame)
    except LinkClosed:
        return
    except Exception as exc:
        raise ConformanceError(f"send() {when} raised {exc!r}; the contract says LinkClosed") from exc
    raise ConformanceError(f"send() {when} did not raise; the contract says LinkClosed")


def _expect_lost_cleanly(exc: BaseException | None, who: str, why: str) -> None:
    if exc is not None:
        raise ConformanceError(f"{who}: link_lost({exc!r}) after {why}; an orderly close gives link_lost(None)")


# -- the checks -------------------------------------------------------------------


async def check_listen_connect(h: TransportHarness) -> None:
    """A listener reports its address as a URI of the scheme; ``connect``
    returns a link whose handler's ``link_made`` already ran; the listener's
    side gets its own link; frames flow both ways; one transport instance
    can both listen and connect."""
    async with _Run(h) as run:
        p = await run.pair()
        _check_link(p.link, "the link connect() returned")
        _check_link(p.server_link, "the listener's link")
        await run.round_trip(p.link, p.client, p.server, "hello")
        _expect_frames(p.server.contents, [[b"hello"]], "client → server")
        _expect_frames(p.client.contents, [[b"hello/reply"]], "server → client")
        # The listening transport connects to itself.
        link2, c2 = await run.connect(run.transports[0], p.served.address, name="self-connected client")
        (_, s2) = await p.served.accepted(2)
        await run.round_trip(link2, c2, s2, "self")


async def check_any_port(h: TransportHarness) -> None:
    """Listening on the harness's any-port address (port 0) binds a real,
    distinct address each time, and ``listener.address`` reports it."""
    if h.any_port_address is None:
        raise NotSupported("the harness has no any-port address (listen address without port 0)")
    async with _Run(h) as run:
        t = run.transport()
        served = []
        for _ in range(2):
            requested = h.next_listen_address(h.any_port_address)
            s = await run.listen(t, requested)
            bound = s.address
            if bound == requested:
                raise ConformanceError(
                    f"listen({requested!r}) reports listener.address = {bound!r}; it must report "
                    "the address actually bound"
                )
            _, _, port, _ = split_address(bound)
            _, _, req_port, _ = split_address(requested)
            if req_port == 0 and not port:
                raise ConformanceError(f"listener.address = {bound!r} after asking for port 0 has no port")
            served.append(s)
        if served[0].address == served[1].address:
            raise ConformanceError(f"two any-port listeners both report {served[0].address!r}")
        ct = run.transport()
        for i, s in enumerate(served):
            link, rec = await run.connect(ct, s.address, name=f"client of listener {i}")
            (srec,) = await s.accepted(1)
            await run.round_trip(link, rec, srec, f"port0-{i}")


async def check_ordered_delivery(h: TransportHarness, frames: int = 20_000) -> None:
    """``frames`` frames each way, sent concurrently in both directions
    with ``send`` and ``send_many``, arrive whole, once, in order; once all
    arrived, both ``write_buffer_size()`` are 0."""
    async with _Run(h) as run:
        p = await run.pair()
        up = _random_frames(frames, seed=1)
        down = _random_frames(frames, seed=2)
        await run.within(
            asyncio.gather(run.pump(p.link, up), run.pump(p.server_link, down)),
            f"sending {frames} frames each way",
        )
        await run.frames(p.server, frames)
        await run.frames(p.client, frames)
        _expect_frames(p.server.contents, up, "client → server")
        _expect_frames(p.client.contents, down, "server → client")
        for link, who in ((p.link, "client"), (p.server_link, "server")):
            if (size := link.write_buffer_size()) != 0:
                raise ConformanceError(f"{who}: write_buffer_size() = {size} after the peer received every frame")


def _multi_buffer_frames(max_frame_bytes: int) -> list[list[Any]]:
    rng = random.Random(3)
    frames: list[list[Any]] = [
        [b"a"],
        [b""],
        [b"", b""],
        [b"x", b"", b"yz"],
        [b"", b"", b"", b"end"],
        [bytearray(b"bytearray"), memoryview(b"--memoryview--")[2:-2]],
        [memoryview(array("I", range(16)))],  # len 16, nbytes 64
    ]
    for n in (2, 3, 5, 8, 16, 33, 64):
        frames.append([_pattern(rng.choice((0, 0, 1, 7, 100, 1000)), n * 31 + k) for k in range(n)])
    big = min(200_000, max_frame_bytes // 4)
    frames.append([_pattern(16, 5), _pattern(big, 6), b"", _pattern(big, 7)])
    frames.append([_pattern(big, 8)])
    return frames


async def check_multi_buffer(h: TransportHarness) -> None:
    """Frames of 1 to 64 buffers — empty buffers, ``bytes``, ``bytearray``,
    ``memoryview`` slices, a non-byte-format ``memoryview``, large buffers —
    arrive with the same number of buffers, lengths and bytes; echoed back
    (the receiver sends what it received), they arrive intact again."""
    async with _Run(h) as run:
        p = await run.pair(server={"on_frame": run.echo})
        sent = _multi_buffer_frames(h.options.max_frame_bytes)
        want = [[bytes(b) for b in frame] for frame in sent]
        for frame in sent:
            run.send(p.link, frame)
        await run.frames(p.server, len(sent))
        _expect_frames(p.server.contents, want, "client → server")
        await run.frames(p.client, len(sent))
        _expect_frames(p.client.contents, want, "client → server → client (echo)")


def _expect_too_large(run: _Run, link: Link, frame: Frame, limit: int, what: str) -> None:
    size = frame_size(frame)
    try:
        run.send(link, frame)
    except FrameTooLarge as exc:
        if getattr(exc, "limit", None) != limit or getattr(exc, "size", None) != size:
            raise ConformanceError(
                f"send({what}) raised FrameTooLarge with size={getattr(exc, 'size', None)}, "
                f"limit={getattr(exc, 'limit', None)}; expected size={size}, limit={limit}"
            ) from None
    except Exception as exc:
        raise ConformanceError(f"send({what}) raised {exc!r}; the contract says FrameTooLarge") from exc
    else:
        raise ConformanceError(
            f"send({what}) accepted a frame of {size} bytes although max_frame_bytes = {limit}; "
            "it must raise FrameTooLarge"
        )
    if link.is_closing():
        raise ConformanceError(f"send({what}) raised FrameTooLarge and closed the link; the link must stay up")


async def check_frame_size_limit(h: TransportHarness) -> None:
    """A frame of exactly ``max_frame_bytes`` (one buffer, or several) is
    delivered; one byte more is refused by ``send`` with
    :class:`~msgr_core.errors.FrameTooLarge` (``size`` and ``limit`` set),
    nothing of it is sent, and the link stays up."""
    limit = h.options.max_frame_bytes
    async with _Run(h) as run:
        p = await run.pair()
        half = limit // 2
        at_limit_1 = [_pattern(limit, 11)]
        at_limit_3 = [_pattern(half, 12), b"", _pattern(limit - half, 13)]
        for frame in (at_limit_1, at_limit_3):
            run.send(p.link, frame)
        _expect_too_large(run, p.link, [_pattern(limit + 1, 14)], limit, "one buffer of max_frame_bytes + 1")
        _expect_too_large(
            run,
            p.link,
            [_pattern(half, 15), b"", _pattern(limit - half + 1, 16)],
            limit,
            "three buffers totalling max_frame_bytes + 1",
        )
        run.send(p.link, [b"after"])
        await run.frames(p.server, 3)
        _expect_frames(p.server.contents, [at_limit_1, at_limit_3, [b"after"]], "client → server")
        # the server may send a frame at the limit too
        run.send(p.server_link, at_limit_1)
        await run.frames(p.client, 1)
        _expect_frames(p.client.contents, [at_limit_1], "server → client")
        await run.round_trip(p.link, p.client, p.server, "still-up")


async def check_oversize_received(h: TransportHarness) -> None:
    """A frame over the *receiver's* ``max_frame_bytes`` (from a peer whose
    own limit is larger) closes that link alone: the receiver gets
    ``link_lost(FrameTooLarge)``, the sender ``link_lost``; another link
    to the same listener keeps working, and new links are accepted."""
    limit = h.options.max_frame_bytes
    async with _Run(h) as run:
        st = run.transport()
        big_ct = run.transport(max_frame_bytes=2 * limit + 1024)
        ct = run.transport()
        served = await run.listen(st)
        bystander, brec = await run.connect(ct, served.address, name="bystander client")
        (bsrv,) = await served.accepted(1)
        link, crec = await run.connect(big_ct, served.address, name="oversize client")
        (_, srec) = await served.accepted(2)
        run.send(link, [_pattern(limit + 1, 21)])
        exc = await run.lost(srec, "after receiving a frame over max_frame_bytes")
        if not isinstance(exc, FrameTooLarge):
            raise ConformanceError(
                f"receiving a frame of {limit + 1} bytes over max_frame_bytes = {limit} ended the "
                f"link with link_lost({exc!r}); the contract says FrameTooLarge"
            )
        await run.lost(crec, "its peer refused an oversize frame")
        if srec.frame_count:
            raise ConformanceError("the oversize frame was delivered to frame_received")
        await run.round_trip(bystander, brec, bsrv, "bystander")
        link3, c3 = await run.connect(ct, served.address, name="later client")
        s3 = (await served.accepted(3))[2]
        await run.round_trip(link3, c3, s3, "later")


async def check_received_buffers_owned(h: TransportHarness) -> None:
    """Received buffers belong to the receiver: kept without copying, their
    bytes do not change while megabytes more arrive on the same link."""
    async with _Run(h) as run:
        p = await run.pair()
        large = min(256 * 1024, h.options.max_frame_bytes // 2)
        first: list[list[bytes]] = []
        for i in range(300):
            first.append(_numbered(i, _pattern(1 + i % 400, i)))
            if i % 100 == 50:
                first.append(_numbered(i, _pattern(large, i)))
        for frame in first:
            run.send(p.link, frame)
        await run.frames(p.server, len(first))
        _expect_frames(p.server.contents, first, "client → server")
        kept = list(p.server.frames)
        more: list[list[bytes]] = []
        chunk = min(128 * 1024, h.options.max_frame_bytes // 2)
        for i in range(64):
            more.append(_numbered(10_000 + i, _pattern(chunk, 7777 + i)))
            for k in range(40):
                more.append(_numbered(20_000 + 40 * i + k, _pattern(1 + k * 7, 99 + k)))
        await run.pump(p.link, more, batch=64)
        await run.frames(p.server, len(first) + len(more))
        for i, (got, want) in enumerate(zip(kept, first, strict=True)):
            for j, (gb, wb) in enumerate(zip(got, want, strict=True)):
                if bytes(gb) != wb:
                    raise ConformanceError(
                        f"frame {i} buffer {j} ({len(wb)} B) changed after more frames arrived: "
                        "the transport reused its memory, but received buffers belong to the "
                        "receiver"
                    )
        _expect_frames(p.server.contents, first + more, "client → server")


async def check_many_links(h: TransportHarness, links: int = 100) -> None:
    """``links`` links from one transport, connected concurrently to one
    listener, each carry their own frames (echoed) and close cleanly."""
    async with _Run(h) as run:
        st = run.transport()
        ct = run.transport()
        served = await run.listen(st, on_frame=run.echo)
        conns = await run.within(
            asyncio.gather(*(run.connect(ct, served.address, name=f"client {i}") for i in range(links))),
            f"{links} concurrent connects",
        )
        await served.accepted(links)
        wants = []
        for i, (link, _rec) in enumerate(conns):
            want = [[f"{i}:{k}".encode(), _pattern(i + k, i)] for k in range(10)]
            for frame in want:
                run.send(link, frame)
            wants.append(want)
        for i, ((_link, rec), want) in enumerate(zip(conns, wants, strict=True)):
            await run.frames(rec, len(want))
            _expect_frames(rec.contents, want, f"client {i} → server → client {i}")
        if len(served.handlers) != links:
            raise ConformanceError(f"{links} connects made {len(served.handlers)} links on the listener")
        for link, _rec in conns:
            link.close()
        for _link, rec in conns:
            _expect_lost_cleanly(await run.lost(rec, "after close()"), rec.name, "close()")
        for rec in served.handlers:
            _expect_lost_cleanly(await run.lost(rec, "after the peer's close()"), rec.name, "the peer's close()")


async def check_bidirectional(h: TransportHarness, frames: int = 2000) -> None:
    """Both ends send at once: the server echoes every client frame while
    pushing its own stream, and each stream arrives in order; then 200
    strict ping-pong round trips (no frame may wait for more traffic)."""
    async with _Run(h) as run:
        p = await run.pair(server={"on_frame": run.echo})
        up = [[b"c", *f] for f in _random_frames(frames, seed=4)]
        down = [[b"s", *f] for f in _random_frames(frames, seed=5)]
        await run.within(
            asyncio.gather(run.pump(p.link, up, batch=64), run.pump(p.server_link, down, batch=64)),
            "sending both ways",
        )
        await run.frames(p.client, 2 * frames)
        echoed = [f for f in p.client.contents if f[0][:1] == b"c"]
        pushed = [f for f in p.client.contents if f[0][:1] == b"s"]
        _expect_frames(pushed, down, "server → client")
        _expect_frames(echoed, up, "client → server → client (echo)")
        base = p.client.frame_count
        for i in range(200):
            run.send(p.link, [b"p", _SEQ.pack(i)])
            await run.frames(p.client, base + i + 1, f" (ping-pong reply {i})")
        replies = p.client.contents[base:]
        _expect_frames(replies, [[b"p", _SEQ.pack(i)] for i in range(200)], "ping-pong")


async def check_close(h: TransportHarness) -> None:
    """``close()`` flushes what is queued, then both ends get
    ``link_lost(None)`` (once, last); ``is_closing()`` is true at once,
    ``close()`` is idempotent and ``send`` after it raises ``LinkClosed``.
    Tried from the connecting side and from the listening side."""
    async with _Run(h) as run:
        for closer in ("client", "server"):
            p = await run.pair()
            link = p.link if closer == "client" else p.server_link
            sender, receiver = (p.client, p.server) if closer == "client" else (p.server, p.client)
            chunk = min(64 * 1024, h.options.max_frame_bytes)
            want = [_numbered(i, _pattern(chunk, i)) for i in range(64)]
            want += [_numbered(64 + i, _pattern(i, i)) for i in range(200)]
            for frame in want:
                run.send(link, frame)
            link.close()
            if not link.is_closing():
                raise ConformanceError(f"{closer}: is_closing() is False right after close()")
            link.close()
            _expect_link_closed(run, link, [b"late"], f"after close() ({closer} side)")
            exc = await run.lost(receiver, f"the {closer} closed")
            if receiver.frame_count != len(want):
                raise ConformanceError(
                    f"close() on the {closer} side must flush queued frames first: the peer got "
                    f"{receiver.frame_count} of {len(want)} before link_lost({exc!r})"
                )
            _expect_frames(receiver.contents, want, f"{closer} → peer before close")
            _expect_lost_cleanly(exc, receiver.name, f"the {closer}'s close()")
            _expect_lost_cleanly(await run.lost(sender, "after close()"), sender.name, "its own close()")
            link.close()  # still idempotent after link_lost
            if not link.is_closing():
                raise ConformanceError(f"{closer}: is_closing() is False after link_lost")


async def check_close_from_callback(h: TransportHarness) -> None:
    """``close()`` and ``abort()`` may be called from inside callbacks: the
    server answers a frame and closes from ``frame_received`` (the client
    gets the answer, then ``link_lost(None)``), and a server that aborts
    from ``link_made`` ends the client's link."""

    def answer_and_close(rec: RecordingHandler, frame: list[Buffer]) -> None:
        if rec.link is not None:
            run.send(rec.link, [b"bye", *frame])
            rec.link.close()

    def refuse(rec: RecordingHandler, link: Link) -> None:
        link.abort()

    async with _Run(h) as run:
        p = await run.pair(server={"on_frame": answer_and_close})
        run.send(p.link, [b"hi"])
        _expect_lost_cleanly(await run.lost(p.client, "the server closed"), "client", "the server's close()")
        _expect_frames(p.client.contents, [[b"bye", b"hi"]], "server → client before close")
        _expect_lost_cleanly(await run.lost(p.server, "after close()"), "server", "its own close()")

        st = run.transport()
        served = await run.listen(st, name="refusing server", on_made=refuse)
        try:
            link, rec = await run.connect(run.transport(), served.address, name="refused client")
        except OSError:
            return  # refused before the link was up: fine
        await run.lost(rec, "the server aborted in link_made")
        _expect_link_closed(run, link, [b"x"], "after link_lost")


async def check_break_detection(h: TransportHarness) -> None:
    """A peer that aborts mid-stream is noticed: ``link_lost`` on both
    ends, once; what arrived is a prefix of what was sent, frames intact.
    Tried with the sender aborting, and with the receiver aborting while
    the sender is busy."""
    chunk = min(64 * 1024, h.options.max_frame_bytes)
    want = [_numbered(i, _pattern(chunk, 3 * i)) for i in range(64)]
    async with _Run(h) as run:
        # the sender aborts with data queued
        p = await run.pair()
        for frame in want:
            run.send(p.link, frame)
        p.link.abort()
        if not p.link.is_closing():
            raise ConformanceError("is_closing() is False right after abort()")
        p.link.abort()
        _expect_link_closed(run, p.link, [b"late"], "after abort()")
        await run.lost(p.client, "after abort()")
        await run.lost(p.server, "the peer aborted mid-stream")
        _expect_frames(p.server.contents, want[: p.server.frame_count], "client → server before abort")

        # the receiver aborts while the sender is busy
        def abort_at_5(rec: RecordingHandler, frame: list[Buffer]) -> None:
            if rec.frame_count == 5 and rec.link is not None:
                rec.link.abort()

        p = await run.pair(server={"on_frame": abort_at_5})
        for frame in want:
            run.send(p.link, frame)
        await run.lost(p.server, "after abort()")
        await run.lost(p.client, "the receiver aborted mid-stream")
        if p.server.frame_count > 5:
            raise ConformanceError(
                f"{p.server.frame_count - 5} frame(s) were delivered after the handler called "
                "abort() from frame_received"
            )
        _expect_frames(p.server.contents, want[:5], "client → server before abort")
        _expect_link_closed(run, p.link, [b"late"], "after the peer aborted and link_lost was called")

        # an idle link whose peer aborts
        p = await run.pair()
        p.server_link.abort()
        await run.lost(p.client, "the peer aborted an idle link")


async def check_listener_close(h: TransportHarness) -> None:
    """After ``Listener.aclose()`` links already made stay up, and new
    connects to its address fail with ``OSError``."""
    async with _Run(h) as run:
        p = await run.pair()
        await run.close_listener(p.served)
        await run.round_trip(p.link, p.client, p.server, "after-listener-close")
        rec = run.handler("client of a closed listener")
        try:
            await run.within(run.transports[1].connect(p.served.address, rec), "connect() to a closed listener")
        except OSError:
            pass
        else:
            raise ConformanceError(f"connect({p.served.address!r}) succeeded after the listener closed")
        if rec.made:
            raise ConformanceError("a failed connect() called link_made")


async def check_dead_address(h: TransportHarness) -> None:
    """``connect`` to an address nobody listens on raises ``OSError``
    (within the timeout) and never calls the handler."""
    address = await h.dead_address()
    async with _Run(h) as run:
        rec = run.handler("client of a dead address")
        try:
            await run.within(run.transport().connect(address, rec), f"connect({address!r}) to fail")
        except OSError:
            pass
        except Exception as exc:
            raise ConformanceError(f"connect({address!r}) to a dead address raised {exc!r}, not OSError") from exc
        else:
            raise ConformanceError(f"connect({address!r}) succeeded, though nobody listens there")
        if rec.made:
            raise ConformanceError("a failed connect() called link_made")


async def check_bad_address(h: TransportHarness) -> None:
    """Malformed addresses and foreign schemes raise ``UnsupportedAddress``
    from both ``listen`` and ``connect``."""
    async with _Run(h) as run:
        t = run.transport()
        for address in ("not an address", "kit-no-such-scheme://127.0.0.1:1"):
            rec = run.handler(f"client of {address!r}")
            for what, call in (
                ("connect", lambda a=address, r=rec: t.connect(a, r)),
                ("listen", lambda a=address, r=rec: t.listen(a, lambda: r)),
            ):
                try:
                    await run.within(call(), f"{what}({address!r}) to fail")
                except UnsupportedAddress:
                    continue
                except Exception as exc:
                    raise ConformanceError(
                        f"{what}({address!r}) raised {exc!r}; the contract says UnsupportedAddress"
                    ) from exc
                raise ConformanceError(f"{what}({address!r}) succeeded; it must raise UnsupportedAddress")


async def check_send_after_close(h: TransportHarness) -> None:
    """``send`` and ``send_many`` raise ``LinkClosed`` after ``close()``,
    after ``abort()``, and on a link whose peer closed it (after its
    ``link_lost``), where ``is_closing()`` is true too."""
    async with _Run(h) as run:
        p = await run.pair()
        p.link.close()
        _expect_link_closed(run, p.link, [b"x"], "after close()")
        try:
            run.send_many(p.link, [[b"x"], [b"y"]])
        except LinkClosed:
            pass
        else:
            raise ConformanceError("send_many() after close() did not raise LinkClosed")
        await run.lost(p.server, "the peer closed")
        if not p.server_link.is_closing():
            raise ConformanceError("is_closing() is False after link_lost (the peer closed)")
        _expect_link_closed(run, p.server_link, [b"x"], "on a link whose peer closed it")
        p = await run.pair()
        p.link.abort()
        _expect_link_closed(run, p.link, [b"x"], "after abort()")


async def check_link_made_first(h: TransportHarness) -> None:
    """``link_made`` runs before any frame is delivered, and a handler may
    send from inside ``link_made`` (a session sends its handshake there) —
    on both the connecting and the listening side."""

    def greet(rec: RecordingHandler, link: Link) -> None:
        run.send(link, [b"hello from " + rec.name.split()[0].encode()])

    async with _Run(h) as run:
        p = await run.pair(server={"on_made": greet}, client={"on_made": greet})
        await run.frames(p.client, 1)
        await run.frames(p.server, 1)
        _expect_frames(p.client.contents, [[b"hello from server"]], "server → client")
        _expect_frames(p.server.contents, [[b"hello from client"]], "client → server")


async def check_backpressure(h: TransportHarness) -> None:
    """Against a peer that stops reading, ``send`` keeps queueing without
    blocking, ``write_buffer_size()`` grows and ``pause_writing`` fires;
    when the peer reads again, ``resume_writing`` fires with the buffer at
    or below the low watermark, and every frame arrives in order.

    Needs the harness's ``pause_reading`` / ``resume_reading``.
    """
    high, low = h.options.high_watermark, h.options.low_watermark
    chunk = max(1, min(64 * 1024, h.options.max_frame_bytes - 16))
    cap = max(64 * 1024 * 1024, 256 * high)
    async with _Run(h) as run:
        p = await run.pair()
        h.pause_reading(p.server_link)
        sent: list[list[bytes]] = []
        total = 0
        while not p.client.paused and p.client.pause_count == 0:
            if total > cap:
                raise ConformanceError(
                    f"sent {total} bytes to a peer that is not reading and pause_writing never "
                    f"fired (write_buffer_size() = {p.link.write_buffer_size()}, "
                    f"high watermark {high})"
                )
            if p.client.is_lost:
                raise ConformanceError(f"the link broke while its peer was not reading: {p.client.lost_with!r}")
            frame = _numbered(len(sent), _pattern(chunk, len(sent)))
            run.send(p.link, frame)
            sent.append(frame)
            total += chunk
            await asyncio.sleep(0)
        at_pause = p.client.buffer_at_pause
        if at_pause is None or at_pause <= low:
            raise ConformanceError(
                f"pause_writing fired with write_buffer_size() = {at_pause}, not above the low "
                f"watermark {low} (high {high})"
            )
        # send never blocks or refuses while paused
        for _ in range(4):
            frame = _numbered(len(sent), _pattern(chunk, len(sent)))
            run.send(p.link, frame)
            sent.append(frame)
        if (size := p.link.write_buffer_size()) <= high:
            raise ConformanceError(
                f"write_buffer_size() = {size} while paused with the peer not reading; expected "
                f"more than the high watermark {high}"
            )
        h.resume_reading(p.server_link)
        await run.until(lambda: p.client.resume_count > 0, "resume_writing", watch=[p.client])
        at_resume = p.client.buffer_at_resume
        if at_resume is None or at_resume > low:
            raise ConformanceError(
                f"resume_writing fired with write_buffer_size() = {at_resume}, above the low watermark {low}"
            )
        await run.frames(p.server, len(sent))
        _expect_frames(p.server.contents, sent, "client → server")
        if (size := p.link.write_buffer_size()) != 0:
            raise ConformanceError(f"write_buffer_size() = {size} after the peer received every frame")


async def check_malformed_input(h: TransportHarness) -> None:
    """Malformed input (``harness.malformed_inputs``, sent raw with
    ``harness.inject_raw``) makes the listener close that connection —
    a link it made ends with ``link_lost(ProtocolError | FrameTooLarge)`` —
    while another link to the same listener keeps working.

    Needs the harness's ``inject_raw``.
    """
    if h.inject_raw is None or h.malformed_inputs is None:
        raise NotSupported("the harness has no inject_raw capability (raw bytes to a listener)")
    inject = h.inject_raw
    async with _Run(h) as run:
        p = await run.pair()
        for desc, data in h.malformed_inputs(h.options.max_frame_bytes).items():
            before = len(p.served.handlers)
            await run.within(
                inject(p.served.address, data),
                f"the listener to close a connection that sent {desc}",
            )
            for rec in p.served.handlers[before:]:
                if not rec.made:
                    continue
                exc = await run.lost(rec, f"its peer sent {desc}")
                if not isinstance(exc, ProtocolError | FrameTooLarge):
                    raise ConformanceError(
                        f"a link whose peer sent {desc} ended with link_lost({exc!r}); the "
                        "contract says ProtocolError or FrameTooLarge"
                    )
                if rec.frame_count:
                    raise ConformanceError(f"{desc}: {rec.frame_count} frame(s) delivered from malformed input")
            await run.round_trip(p.link, p.client, p.server, f"after {desc}")
        made = sum(x.made for x in p.served.handlers)
        link, c = await run.connect(run.transports[1], p.served.address, name="later client")
        s = (await p.served.accepted(made + 1))[-1]
        await run.round_trip(link, c, s, "later")


async def check_messenger_roundtrip(h: TransportHarness) -> None:
    """Two messengers over this transport: handshake, a request/response
    verb (small, large and 100 concurrent payloads), a handler that raises
    (``RemoteError``) and an unknown verb (``UnknownVerb``).

    Needs ``msgr_core.Messenger`` and the transport installed under its
    scheme (the messenger finds transports through entry points).
    """
    import msgr_core

    from .. import errors

    messenger_cls: Any = getattr(msgr_core, "Messenger", None)
    if messenger_cls is None:
        raise NotSupported("messenger not available (msgr_core has no Messenger yet)")
    try:
        installed = load_transport_class(h.scheme)
    except (PluginError, ImportError) as exc:
        raise NotSupported(
            f"the messenger finds transports by entry point and none serves {h.scheme!r}: {exc}"
        ) from None
    if installed is not h.transport_class:
        raise NotSupported(
            f"scheme {h.scheme!r} is installed as {installed.__qualname__}, not the harness's "
            f"{h.transport_class.__qualname__}"
        )

    def config(name: str) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "messenger": {
                "name": name,
                "listen": [h.next_listen_address()],
                "transports": [h.scheme],
            }
        }
        section = h.transport_class.config_section
        if section and h.options.settings:
            # the harness's transport settings (e.g. a test backend) apply to
            # the messenger's transport too
            cfg[section] = {k: v for k, v in h.options.settings.items() if k in h.transport_class.config_defaults}
        return cfg

    def fail(msg: Any) -> Any:
        raise ValueError("kit handler failure")

    async def within(aw: Awaitable[T], what: str) -> T:
        cm = asyncio.timeout(h.timeout)
        try:
            async with cm:
                return await aw
        except TimeoutError:
            if cm.expired():
                raise ConformanceError(f"timed out after {h.timeout:g} s waiting for {what}") from None
            raise

    a = messenger_cls.from_config(config("kit-a"))
    b = messenger_cls.from_config(config("kit-b"))
    async with a, b:
        b.register_handler("echo", lambda msg: msg.payload)
        b.register_handler("fail", fail)
        if not b.addresses:
            raise ConformanceError("a started messenger has no addresses")
        peer = b.addresses[0]
        _check_address(peer, h.scheme, "messenger.addresses[0]")
        for payload in (b"x", _pattern(min(256 * 1024, h.options.max_frame_bytes // 2), 1)):
            reply = await within(a.send_message("echo", peer, payload, timeout=h.timeout), "an echo reply")
            if reply != payload:
                raise ConformanceError(f"echo of {len(payload)} bytes came back as {reply!r:.80}")
        payloads = [b"%d" % i for i in range(100)]
        replies = await within(
            asyncio.gather(*(a.send_message("echo", peer, x, timeout=h.timeout) for x in payloads)),
            "100 concurrent echo replies",
        )
        if list(replies) != payloads:
            raise ConformanceError("100 concurrent echo requests got mismatched replies")
        for verb, expected in (
            ("fail", errors.RemoteError),
            ("kit-no-such-verb", errors.UnknownVerb),
        ):
            try:
                await within(a.send_message(verb, peer, b"x", timeout=h.timeout), f"the {verb!r} reply")
            except expected:
                continue
            except Exception as exc:
                raise ConformanceError(f"request {verb!r} raised {exc!r}, expected {expected.__name__}") from exc
            raise ConformanceError(f"request {verb!r} returned, expected {expected.__name__}")


#: Every check, in the order the suite runs them.
ALL_CHECKS: tuple[Check, ...] = (
    check_listen_connect,
    check_any_port,
    check_link_made_first,
    check_multi_buffer,
    check_ordered_delivery,
    check_bidirectional,
    check_frame_size_limit,
    check_oversize_received,
    check_received_buffers_owned,
    check_many_links,
    check_close,
    check_close_from_callback,
    check_send_after_close,
    check_break_detection,
    check_listener_close,
    check_dead_address,
    check_bad_address,
    check_backpressure,
    check_malformed_input,
    check_messenger_roundtrip,
)
