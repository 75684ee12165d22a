"""Fixtures for the msgr-loopback tests: a recording link handler and transports."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from msgr_loopback import LoopTransport, SimNetwork, get_network

from msgr_core.transport import Buffer, Link, TransportOptions


class Recorder:
    """A LinkHandler that records every call and checks the call order."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.link: Link | None = None
        self.frames: list[list[Buffer]] = []
        self.times: list[float] = []
        self.events: list[str] = []
        self.made: asyncio.Future[Link] = loop.create_future()
        self.lost: asyncio.Future[BaseException | None] = loop.create_future()
        self.paused = asyncio.Event()
        self.resumed = asyncio.Event()
        self._want = 0
        self._enough: asyncio.Future[None] | None = None
        self.on_frame: Callable[[list[Buffer]], None] | None = None

    def link_made(self, link: Link) -> None:
        assert not self.events, self.events
        self.events.append("made")
        self.link = link
        self.made.set_result(link)

    def frame_received(self, frame: list[Buffer]) -> None:
        assert self.events and self.events[0] == "made" and not self.lost.done()
        assert isinstance(frame, list)
        self.frames.append(frame)
        self.times.append(self.loop.time())
        if self.on_frame is not None:
            self.on_frame(frame)
        enough = self._enough
        if enough is not None and len(self.frames) >= self._want and not enough.done():
            enough.set_result(None)

    def pause_writing(self) -> None:
        assert not self.lost.done()
        assert self.events.count("pause") == self.events.count("resume")
        self.events.append("pause")
        self.resumed.clear()
        self.paused.set()

    def resume_writing(self) -> None:
        assert not self.lost.done()
        assert self.events.count("pause") == self.events.count("resume") + 1
        self.events.append("resume")
        self.paused.clear()
        self.resumed.set()

    def link_lost(self, exc: BaseException | None) -> None:
        assert not self.lost.done()
        self.events.append("lost")
        self.lost.set_result(exc)

    async def wait_frames(self, n: int, guard: float = 5.0) -> list[list[Buffer]]:
        """Wait until ``n`` frames arrived (in total)."""
        if len(self.frames) < n:
            self._want = n
            self._enough = self.loop.create_future()
            await asyncio.wait_for(self._enough, guard)
        return self.frames

    async def wait_lost(self, guard: float = 5.0) -> BaseException | None:
        return await asyncio.wait_for(asyncio.shield(self.lost), guard)


class Server:
    """A listener plus the Recorders of the links it accepted."""

    def __init__(self) -> None:
        self.accepted: list[Recorder] = []
        self.new_link = asyncio.Event()

    def factory(self) -> Recorder:
        rec = Recorder()
        self.accepted.append(rec)
        self.new_link.set()
        return rec

    async def link(self, index: int = 0, guard: float = 5.0) -> Recorder:
        """The ``index``-th accepted link, once ``link_made`` ran on it."""
        while len(self.accepted) <= index:
            self.new_link.clear()
            await asyncio.wait_for(self.new_link.wait(), guard)
        rec = self.accepted[index]
        await asyncio.wait_for(asyncio.shield(rec.made), guard)
        return rec


@pytest.fixture
async def net() -> SimNetwork:
    """The default network of the test's event loop."""
    return get_network()


@pytest.fixture
def transport() -> Callable[..., LoopTransport]:
    """``transport(node=..., network=..., **options)`` makes a LoopTransport."""

    def make(*, node: str = "", network: Any = "default", **options: Any) -> LoopTransport:
        settings = {"network": network, "node": node}
        return LoopTransport("loop", TransportOptions(settings=settings, **options))

    return make


@pytest.fixture
def recorder() -> type[Recorder]:
    return Recorder


@pytest.fixture
def server() -> type[Server]:
    return Server
