"""Five gossiping nodes over TCP in separate processes: they converge, a
SIGKILLed node is convicted, a gracefully stopped one is marked down at once."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

NODE = Path(__file__).parent / "gossip_node.py"
INTERVAL = 0.2  # conviction at phi 8 takes ~20 intervals: ~4 s


class Proc:
    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self.address = ""
        self.alive: set[str] = set()
        self.dead: dict[str, float] = {}
        self.changed = asyncio.Event()
        self.reader: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, name: str, seeds: list[str]) -> Proc:
        config = {"gossip": {"seeds": seeds, "interval": INTERVAL}}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(NODE), name, json.dumps(config),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        p = cls(name, proc)
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().split()
        assert line and line[0] == "addr", line
        p.address = line[1]
        p.reader = asyncio.create_task(p._read())
        return p

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            event, peer = line.decode().split()
            if event == "alive":
                self.alive.add(peer)
            elif event == "dead":
                self.alive.discard(peer)
                self.dead[peer] = time.monotonic()
            self.changed.set()

    async def wait(self, predicate: Any, timeout: float = 30) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

    async def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        await asyncio.wait_for(self.proc.wait(), 30)

    async def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self.reader is not None:
            await asyncio.gather(self.reader, return_exceptions=True)


@pytest.mark.timeout(90)
async def test_five_processes_converge_convict_and_see_shutdown() -> None:
    procs: list[Proc] = []
    try:
        procs.append(await Proc.start("p0", []))
        for i in range(1, 5):
            procs.append(await Proc.start(f"p{i}", [procs[0].address]))
        names = {p.name for p in procs}
        await asyncio.gather(*(p.wait(lambda p=p: p.alive == names - {p.name}) for p in procs))

        # SIGKILL: no goodbye, phi convicts it
        killed = procs[4]
        t0 = time.monotonic()
        killed.proc.kill()
        await killed.proc.wait()
        rest = procs[:4]
        await asyncio.gather(*(p.wait(lambda p=p: "p4" in p.dead) for p in rest))
        convict = max(p.dead["p4"] for p in rest) - t0
        assert convict > 8 * INTERVAL  # not before phi could exceed 8

        # graceful stop: gossip.shutdown marks it down at once
        stopped = procs[3]
        t0 = time.monotonic()
        await stopped.stop()
        await asyncio.gather(*(p.wait(lambda p=p: "p3" in p.dead) for p in procs[:3]))
        marked = max(p.dead["p3"] for p in procs[:3]) - t0
        assert marked < convict / 2, (marked, convict)
        assert stopped.proc.returncode == 0
        print(f"SIGKILL -> convicted by all in {convict:.2f} s; graceful stop -> down in {marked:.3f} s")
    finally:
        for p in procs:
            await p.close()
