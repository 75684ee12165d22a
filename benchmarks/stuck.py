"""Stuck peer: does one receiver that stops reading slow the others down?

Four receiver processes; the sender (this process) streams 64 B one-way
messages to all four, one task per peer, over lossless TCP sessions.  Each
round measures the messages per second delivered to the first three
(counted by them) twice, interleaved: with the fourth receiver healthy,
and with it stopped by SIGSTOP (alive, not reading: its session's queue
fills to ``limits.max_queued_bytes`` and its task waits, nobody else does).
The ratio stopped / healthy is the figure issue #3 asks about.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
from multiprocessing.connection import Connection as Pipe
from time import perf_counter
from typing import Any

from .common import payload_of
from .harness import BenchError, Job, Record, Settings, run_async

__all__ = ["build"]

SIZE = 64
PEERS = 4
QUEUE_LIMIT = 4 << 20


def _receiver(pipe: Pipe, name: str) -> None:
    from msgr_core import Messenger

    async def main() -> None:
        count = 0

        def on_msg(msg: Any) -> None:
            nonlocal count
            count += 1

        ms = Messenger.from_config({"messenger": {"name": name, "listen": ["tcp://127.0.0.1:0"]}})
        ms.register_handler_oneway("n", on_msg)
        ms.register_handler("count", lambda msg: count)
        async with ms:
            pipe.send(ms.addresses[0])
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, pipe.recv)  # any message: stop

    asyncio.run(main())


def build(loops: list[str], quick: bool) -> list[Job]:
    from .cases import _msgr_impls

    if not _msgr_impls("tcp"):
        return []
    return [Job("stuck-peer", "msgr-tcp-lossless", loop, sender=_unused, metrics=lambda res: [],
                params={"loop": loop}, custom=_run) for loop in loops]


def _unused(*_: Any) -> None:  # pragma: no cover - custom jobs have no round protocol
    raise BenchError("stuck-peer runs as a custom job")


async def _phase(conns: list[Any], seconds: float, payload: bytes) -> float:
    """Stream to every peer for ``seconds``; msgs/s delivered to the first three."""
    before = [(await c.request("count", b"", timeout=60)).payload for c in conns[:3]]
    stop = asyncio.Event()

    async def pump(conn: Any) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            while not stop.is_set():
                for _ in range(256):
                    await conn.send("n", payload)
                await asyncio.sleep(0)

    tasks = [asyncio.create_task(pump(c)) for c in conns]
    t0 = perf_counter()
    await asyncio.sleep(seconds)
    stop.set()
    for t in tasks[:3]:
        await t
    for c in conns[:3]:  # everything sent to them has arrived
        await c.request("msgr.ping", b"", timeout=60)
    elapsed = perf_counter() - t0
    tasks[3].cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await tasks[3]
    after = [(await c.request("count", b"", timeout=60)).payload for c in conns[:3]]
    return sum(a - b for a, b in zip(after, before, strict=True)) / elapsed


def _run(job: Job, settings: Settings) -> list[Record]:
    ctx = multiprocessing.get_context("spawn")
    procs: list[tuple[multiprocessing.process.BaseProcess, Pipe]] = []
    try:
        for i in range(PEERS):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_receiver, args=(child, f"rx{i}"), daemon=True)
            p.start()
            procs.append((p, parent))
        addresses = []
        for _p, pipe in procs:
            if not pipe.poll(60):
                raise BenchError("stuck-peer: a receiver did not start")
            addresses.append(pipe.recv())
        stuck_pid = procs[3][0].pid
        if stuck_pid is None:
            raise BenchError("stuck-peer: no pid for the fourth receiver")

        async def main() -> tuple[list[float], list[float]]:
            from msgr_core import Messenger

            cfg = {"messenger": {"name": "tx", "transports": ["tcp"]}, "limits": {"max_queued_bytes": QUEUE_LIMIT}}
            healthy: list[float] = []
            stopped: list[float] = []
            payload = payload_of(SIZE)
            async with Messenger.from_config(cfg) as ms:
                conns = [ms.get_connection(a) for a in addresses]
                for c in conns:
                    await c.request("msgr.ping", b"", timeout=60)
                await _phase(conns, settings.warmup_seconds, payload)
                for _ in range(settings.reps):
                    healthy.append(await _phase(conns, settings.seconds, payload))
                    os.kill(stuck_pid, signal.SIGSTOP)
                    try:
                        stopped.append(await _phase(conns, settings.seconds, payload))
                    finally:
                        os.kill(stuck_pid, signal.SIGCONT)
                    await conns[3].drain()  # let it catch up before the next healthy phase
            return healthy, stopped

        healthy, stopped = run_async(main, job.loop)
    finally:
        for p, pipe in procs:
            with contextlib.suppress(OSError, ValueError):
                pipe.send("stop")
            p.join(10)
            if p.is_alive():
                p.kill()
    note = f"{SIZE} B one-way to 3 receivers while a 4th receives too"
    return [
        Record("stuck-peer", "msgr-tcp-4th-healthy", job.loop, "msgs_per_s", "msg/s", healthy, True, note),
        Record("stuck-peer", "msgr-tcp-4th-stopped", job.loop, "msgs_per_s", "msg/s", stopped, True,
               f"{SIZE} B one-way to 3 receivers while a 4th is SIGSTOPped (queue bound {QUEUE_LIMIT} B)"),
    ]
