"""Scale: 1 -> 1,000 connections to one messenger.

One *server* process holds a messenger; one *client* process holds N
messengers (distinct entity names, so N distinct sessions), each connected
to the server.  Two passes, each in fresh processes:

memory (``scale-idle``; also ``session_setup_per_s``, how fast the steps connected)
    The server runs under :mod:`tracemalloc`.  The client opens 1 session
    (the baseline: first-connection costs such as lazy imports are paid),
    then grows by equal steps to the top level; after each step the server
    collects garbage and reports its RSS (psutil) and traced Python heap.
    Each step's growth divided by its number of new, idle sessions is one
    run of ``idle_session_bytes`` (traced heap: what the objects and their
    buffers cost) and ``idle_session_rss`` (resident memory: what the OS
    sees; untouched pages of a large buffer are not resident).

throughput (``scale-<N>conn``)
    The server runs untraced.  For each level N the client grows to N
    sessions, then every round sends 64 B one-way messages over all N in
    turn (``send_nowait``; a session with anything queued is drained before
    the next sweep) and finally an END on each; the server measures from
    the first message to the last END and checks the count.

The client caches entry-point discovery across its N messengers (each
would otherwise scan the installed distributions again): that is set-up
cost, outside every measured interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from time import perf_counter
from typing import Any

from .common import OnewayCounter, Usage, oneway_metrics, payload_of
from .harness import BenchError, Control, Job, Proc, Record, Settings, run_async

__all__ = ["build"]

SIZE = 64
CONNECT_CONCURRENCY = 50


def build(loops: list[str], quick: bool) -> list[Job]:
    from .cases import _msgr_impls  # cases imports this module

    if not _msgr_impls("tcp"):
        return []
    top = 100 if quick else 1000
    levels = [1, 10, 100] if quick else [1, 10, 100, 1000]
    return [
        Job("scale", "msgr-tcp-lossy", loop, sender=client, metrics=oneway_metrics, receiver=server,
            params={"scheme": "tcp", "size": SIZE, "top": top, "levels": levels},
            custom=_run_scale)
        for loop in loops
    ]


# -- workers -------------------------------------------------------------------


class _ScaleCounter(OnewayCounter):
    """Counts data from every session; the round ends at the last session's END."""

    __slots__ = ("ends", "expected")

    def __init__(self, ctl: Control) -> None:
        super().__init__(ctl)
        self.ends = 0
        self.expected = 1

    def end(self, *_: Any) -> None:
        self.ends += 1
        if self.ends == self.expected:
            self.ends = 0
            self.ctl.send("result", self.report())


def server(ctl: Control, params: dict[str, Any]) -> None:
    trace = params.get("trace", False)
    if trace:
        import tracemalloc

        tracemalloc.start()

    async def main() -> None:
        import psutil

        from .impl_msgr import _config, _listen_address, _messenger

        proc = psutil.Process()
        ms = _messenger(_config("bench-server", params, server=True, listen=[_listen_address(params["scheme"])]))
        counter = _ScaleCounter(ctl)
        ms.register_handler_oneway("d", counter.on_msgr)
        ms.register_handler_oneway("end", counter.end)
        async with ms:
            ctl.send("ready", {"address": ms.addresses[0]})
            while True:
                kind, info = await ctl.recv()
                if kind == "stop":
                    break
                if kind == "expect":
                    counter.expected = info["ends"]
                    counter.ends = 0
                    ctl.send("ok")
                elif kind == "mem":
                    gc.collect()
                    traced = 0
                    if trace:
                        import tracemalloc

                        traced = tracemalloc.get_traced_memory()[0]
                    ctl.send("mem", {"rss": proc.memory_info().rss, "traced": traced,
                                     "sessions": sum(1 for c in ms.connections if c.is_open)})

    run_async(main, params["loop"])


def _cache_entry_points() -> None:
    import functools

    from msgr_core import registry

    if not hasattr(registry._entry_points, "cache_info"):
        registry._entry_points = functools.lru_cache(maxsize=None)(registry._entry_points)


def client(ctl: Control, params: dict[str, Any]) -> None:
    _cache_entry_points()

    async def main() -> None:
        from .impl_msgr import _config, _messenger, _open

        messengers: list[Any] = []
        conns: list[Any] = []
        payload = payload_of(params["size"])
        address = params["address"]
        sem = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def add(i: int) -> Any:
            async with sem:
                ms = _messenger(_config(f"bench-client-{i}", params, server=False, transports=[params["scheme"]]))
                await ms.start()
                messengers.append(ms)
                return await _open(ms, address)

        ctl.send("ready")
        try:
            while True:
                kind, info = await ctl.recv()
                if kind == "stop":
                    break
                if kind == "grow":
                    t0 = perf_counter()
                    start = len(conns)
                    conns.extend(await asyncio.gather(*(add(i) for i in range(start, info["n"]))))
                    ctl.send("grown", {"n": len(conns), "seconds": perf_counter() - t0})
                elif kind == "round":
                    usage = Usage()
                    sent = await _sweep(conns, payload, info["seconds"])
                    ctl.send("sent", {"msgs": sent, **usage.fractions("sender")})
        finally:
            await asyncio.gather(*(ms.stop() for ms in messengers), return_exceptions=True)

    run_async(main, params["loop"])


async def _sweep(conns: list[Any], payload: bytes, seconds: float) -> int:
    per = max(1, 256 // len(conns))
    sent = 0
    deadline = perf_counter() + seconds
    while perf_counter() < deadline:
        for conn in conns:
            send_nowait = conn.send_nowait
            for _ in range(per):
                send_nowait("d", payload)
        sent += per * len(conns)
        for conn in conns:
            if conn.queued_bytes:
                await conn.drain()
        await asyncio.sleep(0)
    for conn in conns:
        await conn.send("end")
    return sent


# -- parent ----------------------------------------------------------------------


def _start(job: Job, settings: Settings, trace: bool) -> tuple[Proc, Proc]:
    params = {**job.params, "loop": job.loop, "trace": trace}
    rx = Proc(server, params, f"{job.label} server", settings.profile_dir)
    params = {**params, **rx.expect("ready", 60)}
    tx = Proc(client, params, f"{job.label} client", settings.profile_dir)
    tx.expect("ready", 60)
    return rx, tx


def _stop(*procs: Proc) -> None:
    for p in procs:
        with contextlib.suppress(BenchError):
            p.send("stop")
        p.finish()


def _grow(tx: Proc, n: int) -> float:
    """Grow the client to ``n`` sessions; the seconds it took."""
    tx.send("grow", {"n": n})
    return float(tx.expect("grown", 60 + n * 0.2)["seconds"])


def _mem(rx: Proc) -> dict[str, Any]:
    rx.send("mem")
    return rx.expect("mem", 60)


def _run_scale(job: Job, settings: Settings) -> list[Record]:
    top: int = job.params["top"]
    levels: list[int] = job.params["levels"]
    reps = max(3, settings.reps)
    records: list[Record] = []
    procs: list[Proc] = []
    try:
        # memory pass
        rx, tx = _start(job, settings, trace=True)
        procs += [rx, tx]
        step = max(1, (top - 1) // reps)
        _grow(tx, 1)
        before = _mem(rx)
        traced: list[float] = []
        rss: list[float] = []
        setup: list[float] = []
        n = 1
        for _ in range(reps):
            n += step
            setup.append(step / _grow(tx, n))
            after = _mem(rx)
            if after["sessions"] != n:
                raise BenchError(f"{job.label}: server has {after['sessions']} open sessions, expected {n}")
            traced.append((after["traced"] - before["traced"]) / step)
            rss.append((after["rss"] - before["rss"]) / step)
            before = after
        note = f"server side, sessions added {step} at a time up to {n}"
        records.append(Record("scale-idle", job.impl, job.loop, "idle_session_bytes", "B/session", traced, False,
                              note + " (tracemalloc: Python heap)"))
        records.append(Record("scale-idle", job.impl, job.loop, "idle_session_rss", "B/session", rss, False,
                              note + " (RSS)"))
        records.append(Record("scale-idle", job.impl, job.loop, "session_setup_per_s", "sessions/s", setup, True,
                              f"connect + handshake + one ping, {CONNECT_CONCURRENCY} at a time, server traced by "
                              "tracemalloc (slower than untraced)"))
        _stop(tx, rx)
        procs.clear()

        # throughput pass
        rx, tx = _start(job, settings, trace=False)
        procs += [rx, tx]
        for level in levels:
            _grow(tx, level)
            rx.send("expect", {"ends": level})
            rx.expect("ok", 30)
            per_metric: dict[tuple[str, str, bool], list[float]] = {}
            plan = [(True, settings.warmup_seconds)] * settings.warmups + [(False, settings.seconds)] * settings.reps
            for warm, secs in plan:
                tx.send("round", {"seconds": secs})
                timeout = 60.0 + 20 * secs
                res = rx.expect("result", timeout)
                info = tx.expect("sent", timeout)
                if info["msgs"] != res["msgs"]:
                    raise BenchError(f"{job.label}: {level} sessions sent {info['msgs']} messages, "
                                     f"server counted {res['msgs']}")
                if warm:
                    continue
                sender = {k: v for k, v in info.items() if k.startswith("sender_")}
                for metric, unit, value, hib in oneway_metrics({**res, **sender}):
                    per_metric.setdefault((metric, unit, hib), []).append(value)
            for (metric, unit, hib), runs in per_metric.items():
                records.append(Record(f"scale-{level}conn", job.impl, job.loop, metric, unit, runs, hib,
                                      f"{SIZE} B one-way over {level} sessions to one messenger"))
        _stop(tx, rx)
        procs.clear()
        return records
    finally:
        for p in procs:
            if p.proc.is_alive():
                p.proc.kill()
                p.proc.join(5)
