"""Pieces the workers of every implementation share, so all are measured alike."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from time import perf_counter, process_time
from typing import Any

from .harness import BenchError, Control, percentile

__all__ = [
    "END",
    "Usage",
    "STOP",
    "OnewayCounter",
    "async_sender_loop",
    "blocking_sender_loop",
    "oneway_metrics",
    "payload_of",
    "reqrep_client_loop",
    "reqrep_metrics",
]

def _runqueue_wait() -> float:
    """Seconds this process's main thread spent runnable but waiting for a CPU
    (Linux ``/proc/self/schedstat``; 0 elsewhere)."""
    try:
        with open("/proc/self/schedstat", "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


class Usage:
    """CPU use over an interval, as fractions of its wall time: ``cpu`` (this
    process ran) and ``wait`` (it was runnable but another process had the
    CPU — the shared machine's noise, not this process's doing)."""

    __slots__ = ("c0", "t0", "w0")

    def __init__(self) -> None:
        self.t0, self.c0, self.w0 = perf_counter(), process_time(), _runqueue_wait()

    def fractions(self, prefix: str, wall: float | None = None) -> dict[str, float]:
        wall = wall if wall is not None else perf_counter() - self.t0
        if wall <= 0:
            return {}
        cpu = process_time() - self.c0
        return {f"{prefix}_cpu": cpu / wall, f"{prefix}_wait": (_runqueue_wait() - self.w0) / wall,
                f"{prefix}_cpu_s": cpu}


END = b"E"  # one-byte marker frames: data frames are never 1 byte long
STOP = b"S"
BATCH = 256  # one-way senders hand this many messages over between checks


def payload_of(size: int) -> bytes:
    """The message body every implementation sends: ``size`` bytes."""
    return (bytes(range(256)) * (size // 256 + 1))[:size]


class OnewayCounter:
    """The receiving end of a one-way round.

    Counts messages and bytes from the first message's arrival; the END
    marker (sent after the last message, in order on the same stream) ends
    the round and reports ``msgs`` (all received, checked against the
    sender's count), ``count``/``bytes`` (what arrived *after* the first
    message) and ``seconds`` (first arrival to END) to the parent.
    Each ``on_*`` method is the whole per-message work of its flavour.
    """

    __slots__ = ("ctl", "first_size", "n", "nbytes", "t_first", "usage")

    def __init__(self, ctl: Control) -> None:
        self.ctl = ctl
        self.n = self.nbytes = self.first_size = 0
        self.t_first = 0.0
        self.usage = Usage()

    def on_msgr(self, msg: Any) -> None:
        size = len(msg.payload)
        if not self.n:
            self.t_first = perf_counter()
            self.usage = Usage()
            self.first_size = size
        self.n += 1
        self.nbytes += size

    def on_body(self, body: Any) -> None:
        """Raw frames: a one-byte body is a marker."""
        size = len(body)
        if size == 1:
            if body == END:
                self.end()
            return
        if not self.n:
            self.t_first = perf_counter()
            self.usage = Usage()
            self.first_size = size
        self.n += 1
        self.nbytes += size

    def report(self) -> dict[str, Any]:
        """The round's figures; resets the counter for the next round."""
        n = self.n
        wall = perf_counter() - self.t_first
        res: dict[str, Any] = {"msgs": n, "count": n - 1, "bytes": self.nbytes - self.first_size, "seconds": wall}
        if n:
            res.update(self.usage.fractions("receiver", wall))
        self.n = self.nbytes = self.first_size = 0
        return res

    def end(self, *_: Any) -> None:
        self.ctl.send("result", self.report())


def oneway_metrics(res: dict[str, Any]) -> list[tuple[str, str, float, bool]]:
    """msg/s and MB/s (10^6 bytes) of one one-way round."""
    if res["count"] < 1 or res["seconds"] <= 0:
        raise BenchError(f"round too short to measure: {res}")
    out = [
        ("msgs_per_s", "msg/s", res["count"] / res["seconds"], True),
        ("throughput", "MB/s", res["bytes"] / res["seconds"] / 1e6, True),
    ]
    # CPU time per message: what each side costs, whatever else the machine runs.
    if res.get("receiver_cpu_s") is not None:
        out.append(("rx_cpu_per_msg", "us/msg", res["receiver_cpu_s"] / res["count"] * 1e6, False))
    if res.get("sender_cpu_s") is not None and res["msgs"]:
        out.append(("tx_cpu_per_msg", "us/msg", res["sender_cpu_s"] / res["msgs"] * 1e6, False))
    return out + usage_metrics(res)


USAGE_KEYS = ("receiver_cpu", "receiver_wait", "sender_cpu", "sender_wait", "client_cpu", "client_wait")


def usage_metrics(res: dict[str, Any]) -> list[tuple[str, str, float, bool]]:
    """CPU use says which side is the bottleneck; runqueue wait says how much
    other processes on the machine took from it."""
    return [(k, "%", 100 * res[k], False) for k in USAGE_KEYS if res.get(k) is not None]


def reqrep_metrics(res: dict[str, Any]) -> list[tuple[str, str, float, bool]]:
    return [
        ("p50", "us", res["p50_us"], False),
        ("p99", "us", res["p99_us"], False),
        ("req_per_s", "req/s", res["n"] / res["seconds"], True),
        *([("server_cpu_per_req", "us/req", res["receiver_cpu_s"] / res["n"] * 1e6, False)]
          if res.get("receiver_cpu_s") is not None else []),
        ("client_cpu_per_req", "us/req", res["client_cpu_s"] / res["n"] * 1e6, False),
        *usage_metrics(res),
    ]


async def async_sender_loop(ctl: Control, send_round: Callable[[float], Awaitable[int]]) -> None:
    """Report ready, then run rounds (``send_round(seconds)`` returns how many
    data messages it sent, END included after them) until ``stop``."""
    ctl.send("ready")
    while True:
        kind, info = await ctl.recv()
        if kind == "stop":
            return
        usage = Usage()
        sent = await send_round(info["seconds"])
        ctl.send("sent", {"msgs": sent, **usage.fractions("sender")})


def blocking_sender_loop(ctl: Control, send_round: Callable[[float], int]) -> None:
    ctl.send("ready")
    while True:
        kind, info = ctl.recv_blocking()
        if kind == "stop":
            return
        usage = Usage()
        sent = send_round(info["seconds"])
        ctl.send("sent", {"msgs": sent, **usage.fractions("sender")})


async def reqrep_round(request: Callable[[bytes], Awaitable[Any]], payload: bytes, outstanding: int,
                       seconds: float) -> dict[str, Any]:
    """``outstanding`` tasks call ``request`` back to back for ``seconds``;
    every call's latency is kept."""
    lat: list[float] = []
    deadline = perf_counter() + seconds

    async def caller() -> None:
        append = lat.append
        while True:
            t0 = perf_counter()
            if t0 >= deadline:
                return
            await request(payload)
            append(perf_counter() - t0)

    usage = Usage()
    t0 = perf_counter()
    await asyncio.gather(*(caller() for _ in range(outstanding)))
    dt = perf_counter() - t0
    lat.sort()
    return {"n": len(lat), "seconds": dt, "p50_us": percentile(lat, 0.5) * 1e6,
            "p99_us": percentile(lat, 0.99) * 1e6, **usage.fractions("client", dt)}


async def reqrep_client_loop(ctl: Control, request: Callable[[bytes], Awaitable[Any]], params: dict[str, Any]) -> None:
    """Report ready, then run request/response rounds until ``stop``.

    The caller has already checked one round trip echoes the payload whole.
    """
    payload = payload_of(params["size"])
    ctl.send("ready")
    while True:
        kind, info = await ctl.recv()
        if kind == "stop":
            return
        ctl.send("result", await reqrep_round(request, payload, params["outstanding"], info["seconds"]))
