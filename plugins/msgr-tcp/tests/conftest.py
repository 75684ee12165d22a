"""Fixtures for the msgr-tcp tests: every async test runs on asyncio's default
loop and on uvloop (when installed), over real loopback sockets."""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from msgr_tcp import TcpTransport

from msgr_core.transport import Buffer, Link, Listener, TransportOptions

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is optional
    uvloop = None


def _loop_factories() -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    factories: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {"asyncio": asyncio.SelectorEventLoop}
    if uvloop is not None:
        factories["uvloop"] = uvloop.new_event_loop
    return factories


LOOP_FACTORIES = _loop_factories()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A hard per-test limit that also works on uvloop: pytest-timeout's
    signal method cannot interrupt a loop blocked inside libuv."""
    if not config.pluginmanager.hasplugin("timeout"):
        return
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(120, method="thread"))


@pytest.hookimpl(optionalhook=True)
def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    """pytest-asyncio >= 1.5: run each async test on every loop we support."""
    return LOOP_FACTORIES


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


HAS_IPV6 = _ipv6_loopback()


@pytest.fixture
def sock_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory for unix sockets: ``tmp_path`` unless its paths would be
    too long for ``sun_path`` (~107 bytes), then a short one under /tmp."""
    if len(str(tmp_path)) < 80:
        yield tmp_path
        return
    short = Path(tempfile.mkdtemp(prefix="mtcp-", dir="/tmp"))
    try:
        yield short
    finally:
        shutil.rmtree(short, ignore_errors=True)


@pytest.fixture(params=["tcp4", "tcp6", "unix"])
def listen_address(request: pytest.FixtureRequest, sock_dir: Path) -> str:
    """A listen address per kind of socket (IPv6 skipped where unavailable)."""
    if request.param == "tcp4":
        return "tcp://127.0.0.1:0"
    if request.param == "tcp6":
        if not HAS_IPV6:
            pytest.skip("no IPv6 loopback (::1) on this host")
        return "tcp://[::1]:0"
    return f"unix://{sock_dir}/l.sock"


class Recorder:
    """A LinkHandler that records what happens and checks the call order:
    ``link_made`` once, first; ``link_lost`` once, last; pause / resume
    alternating.  Violations are collected in :attr:`errors`."""

    def __init__(
        self,
        name: str = "handler",
        *,
        on_frame: Any = None,
        on_made: Any = None,
        changed: asyncio.Event | None = None,
    ) -> None:
        self.name = name
        self.link: Link | None = None
        self.frames: list[list[Buffer]] = []
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        self.paused = False
        self.pauses = 0
        self.resumes = 0
        self.size_at_pause: int | None = None
        self.size_at_resume: int | None = None
        self.errors: list[str] = []
        self._on_frame = on_frame
        self._on_made = on_made
        # shared by the recorders of one test: any callback wakes every waiter
        self._changed = changed or asyncio.Event()

    def _check(self, what: str) -> None:
        if self.lost.done():
            self.errors.append(f"{what} after link_lost")
        elif self.link is None and what != "link_made":
            self.errors.append(f"{what} before link_made")
        self._changed.set()

    def link_made(self, link: Link) -> None:
        if self.link is not None:
            self.errors.append("link_made twice")
        self._check("link_made")
        self.link = link
        if self._on_made is not None:
            self._on_made(self, link)

    def frame_received(self, frame: list[Buffer]) -> None:
        self._check("frame_received")
        self.frames.append(frame)
        if self._on_frame is not None:
            self._on_frame(self, frame)

    def pause_writing(self) -> None:
        self._check("pause_writing")
        if self.paused:
            self.errors.append("pause_writing twice")
        self.paused = True
        self.pauses += 1
        if self.link is not None:
            self.size_at_pause = self.link.write_buffer_size()

    def resume_writing(self) -> None:
        self._check("resume_writing")
        if not self.paused:
            self.errors.append("resume_writing without pause_writing")
        self.paused = False
        self.resumes += 1
        if self.link is not None:
            self.size_at_resume = self.link.write_buffer_size()

    def link_lost(self, exc: BaseException | None) -> None:
        if self.lost.done():
            self.errors.append(f"link_lost twice (again with {exc!r})")
            return
        self._check("link_lost")
        self.lost.set_result(exc)

    async def until(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        """Wait (bounded) until ``predicate()`` holds, re-checked after each callback."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def wait_frames(self, n: int, timeout: float = 30.0) -> None:
        """Wait for ``n`` frames; fail at once if the link is lost first."""

        def enough() -> bool:
            if len(self.frames) < n and self.lost.done():
                raise AssertionError(
                    f"{self.name}: link lost ({self.lost.result()!r}) after {len(self.frames)} of {n} frames"
                )
            return len(self.frames) >= n

        await self.until(enough, timeout)

    async def wait_lost(self, timeout: float = 30.0) -> BaseException | None:
        async with asyncio.timeout(timeout):
            return await asyncio.shield(self.lost)


class Net:
    """Makes transports, listeners and handlers for one test and cleans up:
    aborts every link still up (each must report ``link_lost``), closes
    listeners, and fails the test on any call-order violation."""

    def __init__(self) -> None:
        self.recorders: list[Recorder] = []
        self.listeners: list[Listener] = []
        self.changed = asyncio.Event()

    async def until(self, predicate: Callable[[], Any], timeout: float = 30.0) -> None:
        """Wait (bounded) until ``predicate()`` holds, re-checked after each callback."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

    def transport(self, scheme: str = "tcp", **options: Any) -> TcpTransport:
        settings = options.pop("settings", {})
        return TcpTransport(scheme, TransportOptions(settings=settings, **options))

    def recorder(self, name: str = "handler", **kw: Any) -> Recorder:
        rec = Recorder(name, changed=self.changed, **kw)
        self.recorders.append(rec)
        return rec

    async def listen(self, transport: TcpTransport, address: str, **kw: Any) -> tuple[Listener, list[Recorder]]:
        accepted: list[Recorder] = []

        def factory() -> Recorder:
            rec = self.recorder(f"server link #{len(accepted)}", **kw)
            accepted.append(rec)
            return rec

        listener = await transport.listen(address, factory)
        self.listeners.append(listener)
        return listener, accepted

    async def pair(
        self, address: str, *, server: dict[str, Any] | None = None, **options: Any
    ) -> tuple[Link, Recorder, Recorder, Listener]:
        """A listener on ``address`` and one link to it: (link, client, server, listener)."""
        scheme = address.split(":", 1)[0]
        t = self.transport(scheme, **options)
        listener, accepted = await self.listen(t, address, **(server or {}))
        client = self.recorder("client")
        link = await t.connect(listener.address, client)
        await client.until(lambda: bool(accepted) and accepted[0].link is not None)
        return link, client, accepted[0], listener

    async def close(self) -> None:
        for rec in self.recorders:
            if rec.link is not None and not rec.lost.done():
                rec.link.abort()
        for rec in self.recorders:
            if rec.link is not None:
                await rec.wait_lost(10)
        for listener in self.listeners:
            await listener.aclose()
        errors = [f"{rec.name}: {e}" for rec in self.recorders for e in rec.errors]
        assert not errors, errors


@pytest.fixture
async def net() -> AsyncIterator[Net]:
    n = Net()
    try:
        yield n
    finally:
        await n.close()


@pytest.fixture
def raw_connect() -> Callable[[str], Any]:
    """``await raw_connect(address)``: an asyncio (reader, writer) to a
    tcp:// or unix:// address, speaking no msgr at all."""

    async def connect(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async with asyncio.timeout(10):
            if address.startswith("unix://"):
                return await asyncio.open_unix_connection(address[len("unix://") :])
            host, port = address[len("tcp://") :].rsplit(":", 1)
            return await asyncio.open_connection(host.strip("[]"), int(port))

    return connect
