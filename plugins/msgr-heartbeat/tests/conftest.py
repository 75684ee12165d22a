"""Fixtures for the msgr-heartbeat tests: messengers with the extension on,
and a recorder of failure-detector events."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

import msgr_core
from msgr_core import Messenger


class Events:
    """Records ``msgr_peer_failed`` / ``msgr_peer_recovered`` of one messenger
    with the loop time, and lets a test await the next one."""

    def __init__(self, messenger: Messenger) -> None:
        self.messenger = messenger
        self.loop = asyncio.get_running_loop()
        self.log: list[tuple[float, str, str]] = []
        self.reasons: list[str] = []
        self._waiters: list[tuple[str, str, asyncio.Future[float]]] = []
        messenger.plugins.register(self, name=f"events-{id(self):x}")

    @msgr_core.hookimpl
    def msgr_peer_failed(self, messenger: Messenger, peer: str, reason: str) -> None:
        if messenger is self.messenger:
            self.reasons.append(reason)
            self._record("failed", peer)

    @msgr_core.hookimpl
    def msgr_peer_recovered(self, messenger: Messenger, peer: str) -> None:
        if messenger is self.messenger:
            self._record("recovered", peer)

    def _record(self, kind: str, peer: str) -> None:
        now = self.loop.time()
        self.log.append((now, kind, peer))
        for w in list(self._waiters):
            if w[0] == kind and w[1] == peer and not w[2].done():
                w[2].set_result(now)
                self._waiters.remove(w)

    def of(self, kind: str, peer: str | None = None) -> list[float]:
        return [t for t, k, p in self.log if k == kind and (peer is None or p == peer)]

    async def next(self, kind: str, peer: str, guard: float) -> float:
        """The loop time of the next ``kind`` event for ``peer``."""
        fut: asyncio.Future[float] = self.loop.create_future()
        self._waiters.append((kind, peer, fut))
        return await asyncio.wait_for(fut, guard)


MakeNode = Callable[..., Any]


@pytest.fixture
async def make_node() -> AsyncIterator[MakeNode]:
    """``await make_node("a", listen="loop://a", heartbeat={...}, **sections)``:
    a started messenger with msgr-heartbeat; all stopped at the end."""
    started: list[Messenger] = []

    async def make(name: str, *, listen: str | None = None, heartbeat: dict[str, Any] | None = None,
                   **sections: Any) -> Messenger:
        messenger = dict(sections.pop("messenger", {}))
        messenger.setdefault("name", name)
        messenger.setdefault("listen", [listen or f"loop://{name}"])
        messenger.setdefault("extensions", ["heartbeat"])
        config: dict[str, Any] = {"messenger": messenger, **sections}
        if heartbeat is not None:
            config["heartbeat"] = heartbeat
        ms = Messenger.from_config(config)
        await ms.start()
        started.append(ms)
        return ms

    yield make
    # virtual time ends with the test: silence the detectors before stopping
    for ms in started:
        detector = ms.extensions.get("heartbeat")
        if detector is not None:
            detector.close()
    for ms in reversed(started):
        with contextlib.suppress(Exception):
            await ms.stop()


@pytest.fixture
def events() -> type[Events]:
    """``events(messenger)``: an :class:`Events` recorder registered on it."""
    return Events
