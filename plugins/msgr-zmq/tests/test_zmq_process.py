"""A peer in another process dies (SIGKILL) or freezes (SIGSTOP): our end
of the link breaks — at once for a death (the kernel closes its sockets),
within the ZMTP heartbeat timeout for a freeze (nothing closes)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from msgr_core.errors import LinkClosed

HB = {"heartbeat_ivl": 0.1, "heartbeat_timeout": 0.5}


@pytest.fixture
async def spawn(
    peer_command: Callable[..., list[str]],
) -> AsyncIterator[Callable[..., Awaitable[tuple[asyncio.subprocess.Process, str]]]]:
    procs: list[asyncio.subprocess.Process] = []

    async def start(*args: str) -> tuple[asyncio.subprocess.Process, str]:
        proc = await asyncio.create_subprocess_exec(
            *peer_command(*args), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        procs.append(proc)
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line, (await proc.stderr.read()).decode() if proc.stderr else "peer died"
        return proc, line.decode().strip()

    yield start
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()  # stopped or not
        await proc.wait()


@pytest.mark.parametrize("scheme", ["zmq+tcp", "zmq+ipc"])
@pytest.mark.parametrize("how", ["SIGKILL", "SIGSTOP"])
async def test_listening_peer_dies_or_freezes(spawn, make_transport, make_rec, scheme, how, tmp_path) -> None:
    address = "zmq+tcp://127.0.0.1:0" if scheme == "zmq+tcp" else f"zmq+ipc://{tmp_path}/peer.sock"
    proc, peer_address = await spawn("listen", address, str(HB["heartbeat_ivl"]), str(HB["heartbeat_timeout"]))
    rec = make_rec()
    link = await make_transport(scheme, settings=HB).connect(peer_address, rec)
    await rec.until(lambda: len(rec.frames) >= 5)  # the peer is chattering
    link.send([b"ping"])
    await rec.until(lambda: [b"ping"] in rec.frames)
    t0 = time.monotonic()
    os.kill(proc.pid, getattr(signal, how))
    exc = await rec.wait_lost(guard=10.0)
    elapsed = time.monotonic() - t0
    assert isinstance(exc, LinkClosed), exc
    assert link.is_closing()
    if how == "SIGSTOP":
        assert elapsed < 3.0, f"a frozen peer noticed after {elapsed:.2f} s (heartbeat timeout 0.5 s)"
    with pytest.raises(LinkClosed):
        link.send([b"late"])


@pytest.mark.parametrize("how", ["SIGKILL", "SIGSTOP"])
async def test_connecting_peer_dies_or_freezes(spawn, make_transport, make_rec, make_accepting, how) -> None:
    accepting = make_accepting()
    listener = await make_transport(settings=HB).listen("zmq+tcp://127.0.0.1:0", accepting)
    proc, line = await spawn("connect", listener.address, str(HB["heartbeat_ivl"]), str(HB["heartbeat_timeout"]))
    assert line == "connected"
    rec = await accepting.get(0)
    await rec.until(lambda: len(rec.frames) >= 5)
    t0 = time.monotonic()
    os.kill(proc.pid, getattr(signal, how))
    exc = await rec.wait_lost(guard=10.0)
    elapsed = time.monotonic() - t0
    assert isinstance(exc, LinkClosed), exc
    if how == "SIGSTOP":
        assert elapsed < 3.0, f"a frozen peer noticed after {elapsed:.2f} s (heartbeat timeout 0.5 s)"
    # the listener keeps serving: a new link works
    rec2 = make_rec()
    link2 = await make_transport().connect(listener.address, rec2)
    server2 = await accepting.get(1)
    link2.send([b"still", b"here"])
    assert (await server2.wait_frames(1))[0] == [b"still", b"here"]
