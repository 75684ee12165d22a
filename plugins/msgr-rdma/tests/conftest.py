"""Fixtures for the msgr-rdma tests: emulated-backend link pairs and a
recording handler."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from msgr_rdma import RdmaLink, RdmaTransport

from msgr_core.transport import Buffer, Link, Listener, TransportOptions


class Rec:
    """A LinkHandler recording frames and the end of its link."""

    def __init__(self) -> None:
        self.link: Link | None = None
        self.frames: list[list[Buffer]] = []
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        self.changed = asyncio.Event()
        self.pauses = 0

    def link_made(self, link: Link) -> None:
        self.link = link

    def frame_received(self, frame: list[Buffer]) -> None:
        self.frames.append(frame)
        self.changed.set()

    def pause_writing(self) -> None:
        self.pauses += 1

    def resume_writing(self) -> None:
        pass

    def link_lost(self, exc: BaseException | None) -> None:
        assert not self.lost.done()
        self.lost.set_result(exc)
        self.changed.set()

    async def wait_frames(self, n: int, guard: float = 30.0) -> None:
        async with asyncio.timeout(guard):
            while len(self.frames) < n:
                assert not self.lost.done(), f"link lost ({self.lost.result()!r}) after {len(self.frames)} of {n}"
                self.changed.clear()
                await self.changed.wait()

    async def wait_lost(self, guard: float = 10.0) -> BaseException | None:
        return await asyncio.wait_for(asyncio.shield(self.lost), guard)


PairMaker = Callable[..., Awaitable[tuple[RdmaLink, Rec, RdmaLink, Rec]]]


@pytest.fixture
async def rdma_pair() -> AsyncIterator[PairMaker]:
    """``await rdma_pair(**settings)``: (client link, client rec, server link,
    server rec) over the emulated backend; everything closed afterwards."""
    transports: list[RdmaTransport] = []
    listeners: list[Listener] = []
    recs: list[Rec] = []

    async def make(max_frame_bytes: int = 64 * 1024 * 1024, **settings: Any) -> tuple[RdmaLink, Rec, RdmaLink, Rec]:
        options = TransportOptions(max_frame_bytes=max_frame_bytes, settings={"backend": "emulated", **settings})
        t = RdmaTransport("rdma", options)
        transports.append(t)
        server = Rec()
        listener = await t.listen("rdma://127.0.0.1:0", lambda: server)
        listeners.append(listener)
        client = Rec()
        link = await t.connect(listener.address, client)
        recs.extend((client, server))
        assert isinstance(link, RdmaLink) and isinstance(server.link, RdmaLink)
        return link, client, server.link, server

    yield make
    for rec in recs:
        if rec.link is not None and not rec.lost.done():
            rec.link.abort()
            await rec.wait_lost()
    for listener in listeners:
        await listener.aclose()
    for t in transports:
        await t.aclose()
