"""Shared fixtures for the core and integration tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

from msgr_core import Messenger

pytest_plugins = ["pytester"]

_INSTALLED = {ep.name for ep in entry_points(group="msgr.transports")}


def _listen_address(scheme: str, tmp: Path, name: str) -> str:
    return {
        "tcp": "tcp://127.0.0.1:0",
        "unix": f"unix://{tmp}/{name}.sock",
        "loop": f"loop://{name}",
        "zmq+tcp": "zmq+tcp://127.0.0.1:0",
    }[scheme]


@pytest.fixture(params=["loop", "tcp", "zmq+tcp"])
def scheme(request: pytest.FixtureRequest) -> str:
    """Each messenger test runs over the in-process, TCP and ZeroMQ transports."""
    if request.param not in _INSTALLED:
        pytest.fail(f"transport {request.param!r} is not installed; run `python3 dev.py setup`")
    return str(request.param)


MakeMessenger = Callable[..., Any]


@pytest.fixture
def watch_rejections() -> Callable[[Messenger], asyncio.Event]:
    """``watch_rejections(ms)`` -> an event set each time ``ms`` counts a
    rejected incoming link (``stats["rejected"]``).  Over a real network the
    dialler may see an authentication failure before the listener has
    counted it: with a wrong key the dialler detects it and hangs up."""

    def watch(ms: Messenger) -> asyncio.Event:
        event = asyncio.Event()
        count = ms._count_rejected

        def counting(reason: str) -> None:
            count(reason)
            event.set()

        ms._count_rejected = counting  # type: ignore[method-assign]
        return event

    return watch

#: Transports whose I/O completes inside the event loop's own polling, so
#: looptime's virtual clock only jumps when the test is really idle.  libzmq
#: moves bytes on its own I/O thread: while it works the loop looks idle and
#: virtual time would leap past every timeout.
VIRTUAL_TIME_SCHEMES = ["loop", "tcp"]


@pytest.fixture
async def make_messenger(scheme: str, tmp_path: Path) -> AsyncIterator[MakeMessenger]:
    """``await make_messenger("a", **sections)``: a started messenger
    listening on ``scheme``; all are stopped at the end of the test."""
    started: list[Messenger] = []

    async def make(name: str, listen: bool = True, **sections: dict[str, Any]) -> Messenger:
        messenger = dict(sections.pop("messenger", {}))
        messenger.setdefault("name", name)
        if listen:
            messenger.setdefault("listen", [_listen_address(scheme, tmp_path, name)])
        else:
            messenger.setdefault("transports", [scheme])
        ms = Messenger.from_config({"messenger": messenger, **sections})
        await ms.start()
        started.append(ms)
        return ms

    yield make
    for ms in reversed(started):
        with contextlib.suppress(Exception):
            await ms.stop()
