"""Fixtures for the msgr-zmq tests: transports with given settings, and a
link handler that records what happens to its link."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from msgr_zmq import ZmqTransport

from msgr_core.transport import Buffer, Link, TransportOptions

PEER_SCRIPT = Path(__file__).with_name("zmq_peer.py")


class Rec:
    """A LinkHandler recording frames, pauses and the end of its link."""

    def __init__(self, on_frame: Callable[[Rec, list[Buffer]], None] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.link: Link | None = None
        self.frames: list[list[Buffer]] = []
        self.pauses = 0
        self.resumes = 0
        self.paused = False
        self.made = self.loop.create_future()
        self.lost: asyncio.Future[BaseException | None] = self.loop.create_future()
        self._changed = asyncio.Event()
        self.on_frame = on_frame

    def link_made(self, link: Link) -> None:
        assert self.link is None
        self.link = link
        self.made.set_result(link)

    def frame_received(self, frame: list[Buffer]) -> None:
        assert self.link is not None and not self.lost.done()
        self.frames.append(frame)
        if self.on_frame is not None:
            self.on_frame(self, frame)
        self._changed.set()

    def pause_writing(self) -> None:
        assert not self.paused and not self.lost.done()
        self.paused = True
        self.pauses += 1
        self._changed.set()

    def resume_writing(self) -> None:
        assert self.paused and not self.lost.done()
        self.paused = False
        self.resumes += 1
        self._changed.set()

    def link_lost(self, exc: BaseException | None) -> None:
        assert not self.lost.done()
        self.lost.set_result(exc)
        self._changed.set()

    async def until(self, predicate: Callable[[], bool], guard: float = 10.0) -> None:
        """Wait until ``predicate()`` holds (checked after every event)."""
        async with asyncio.timeout(guard):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def wait_frames(self, n: int, guard: float = 10.0) -> list[list[Buffer]]:
        await self.until(lambda: len(self.frames) >= n or self.lost.done(), guard)
        assert len(self.frames) >= n, f"link lost after {len(self.frames)} of {n} frames"
        return self.frames

    async def wait_lost(self, guard: float = 10.0) -> BaseException | None:
        return await asyncio.wait_for(asyncio.shield(self.lost), guard)


class Accepting:
    """A listener's handler factory that keeps the handlers it made."""

    def __init__(self, **kw: Any) -> None:
        self.recs: list[Rec] = []
        self.kw = kw
        self.new = asyncio.Event()

    def __call__(self) -> Rec:
        rec = Rec(**self.kw)
        self.recs.append(rec)
        self.new.set()
        return rec

    async def get(self, index: int = 0, guard: float = 10.0) -> Rec:
        async with asyncio.timeout(guard):
            while len(self.recs) <= index:
                self.new.clear()
                await self.new.wait()
            await asyncio.shield(self.recs[index].made)
        return self.recs[index]


@pytest.fixture
async def make_transport() -> AsyncIterator[Callable[..., ZmqTransport]]:
    """``make_transport(scheme="zmq+tcp", settings={...}, **options)``; all
    closed at the end of the test."""
    made: list[ZmqTransport] = []

    def make(scheme: str = "zmq+tcp", settings: dict[str, Any] | None = None, **options: Any) -> ZmqTransport:
        opts = dataclasses.replace(TransportOptions(connect_timeout=5.0), settings=settings or {}, **options)
        t = ZmqTransport(scheme, opts)
        made.append(t)
        return t

    yield make
    for t in made:
        await t.aclose()


@pytest.fixture
def peer_command() -> Callable[..., list[str]]:
    """The command line of the helper peer process (tests/zmq_peer.py)."""

    def cmd(*args: str) -> list[str]:
        return [sys.executable, str(PEER_SCRIPT), *args]

    return cmd


@pytest.fixture
def make_rec() -> type[Rec]:
    """The :class:`Rec` handler class."""
    return Rec


@pytest.fixture
def make_accepting() -> type[Accepting]:
    """The :class:`Accepting` handler-factory class."""
    return Accepting
