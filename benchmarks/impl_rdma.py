"""msgr-rdma: frames/s through the RDMA link protocol.

In-process jobs (one process, one event loop, both ends of one link): the
sender keeps a window of frames in flight through ``RdmaLink.send`` and
the round ends when the last one has been delivered.  Backends:

- ``msgr-rdma-emulated``: the strict in-process verbs emulation -- the
  figure is the protocol's Python overhead (credits, buffer pool,
  batching, fragmentation, rendezvous) plus the emulation's copies; no
  RDMA is measured.
- ``msgr-rdma-emulated-ipc``: the same with the verbs carried over a TCP
  socket between two emulated NICs (what the two-process emulation costs).
- ``msgr-rdma-verbs``: a real device through pyverbs (``MSGR_RDMA_DEVICE``,
  default the first one), looped back through the HCA; only where a device
  exists -- elsewhere the rows are skipped and the reason printed.
"""

from __future__ import annotations

import asyncio
import os
import sys
from time import perf_counter
from typing import Any

from .common import oneway_metrics, payload_of
from .harness import BenchError, Control, Job, run_async

__all__ = ["build", "device_reason"]

KiB = 1024
MiB = 1024 * KiB


def device_reason() -> str:
    """Why the ``msgr-rdma-verbs`` rows cannot run here ("" when they can)."""
    try:
        from msgr_rdma import NoRdmaDevice
        from msgr_rdma.verbs import list_verbs_devices
    except ImportError as exc:
        return f"msgr-rdma is not installed ({exc})"
    try:
        names = list_verbs_devices()
    except NoRdmaDevice as exc:
        return str(exc)
    want = os.environ.get("MSGR_RDMA_DEVICE", "")
    if not names:
        return "no RDMA device present"
    if want and want not in names:
        return f"MSGR_RDMA_DEVICE={want} is not among {names}"
    return ""


class _Rx:
    def __init__(self) -> None:
        self.count = 0
        self.target = 0
        self.reached: asyncio.Future[None] | None = None
        self.lost: BaseException | None = None

    def link_made(self, link: Any) -> None:
        pass

    def frame_received(self, frame: list[Any]) -> None:
        self.count += 1
        if self.count >= self.target and self.reached is not None and not self.reached.done():
            self.reached.set_result(None)

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass

    def link_lost(self, exc: BaseException | None) -> None:
        self.lost = exc or ConnectionResetError("link closed")
        if self.reached is not None and not self.reached.done():
            self.reached.set_exception(BenchError(f"rdma link lost: {self.lost!r}"))

    async def wait(self, target: int) -> None:
        if self.lost is not None:
            raise BenchError(f"rdma link lost: {self.lost!r}")
        if self.count >= target:
            return
        self.target = target
        self.reached = asyncio.get_running_loop().create_future()
        await asyncio.wait_for(self.reached, 60)


def link_frames(ctl: Control, params: dict[str, Any]) -> None:
    async def main() -> None:
        from msgr_rdma import RdmaTransport

        from msgr_core.transport import TransportOptions

        size = params["size"]
        settings: dict[str, Any] = {"backend": params["backend"]}
        if params["backend"] == "verbs":
            settings["device"] = os.environ.get("MSGR_RDMA_DEVICE", "")
        options = TransportOptions(max_frame_bytes=max(64 * MiB, 2 * size), settings=settings)
        t = RdmaTransport("rdma", options)
        rx = _Rx()
        listener = await t.listen(f"rdma://{os.environ.get('MSGR_RDMA_ADDR', '127.0.0.1')}:0", lambda: rx)
        link = await t.connect(listener.address, _Rx())
        frame = [payload_of(size)]
        window = 4096 if size < 64 * KiB else 16
        ctl.send("ready")
        try:
            while True:
                kind, info = await ctl.recv()
                if kind == "stop":
                    break
                start = rx.count
                sent = 0
                t0 = perf_counter()
                deadline = t0 + info["seconds"]
                while perf_counter() < deadline:
                    while sent - (rx.count - start) < window:
                        link.send(frame)
                        sent += 1
                    await rx.wait(start + sent - window // 2)
                await rx.wait(start + sent)
                dt = perf_counter() - t0
                got = rx.count - start
                ctl.send("result", {"msgs": sent, "sent": sent, "count": got, "bytes": got * size, "seconds": dt})
        finally:
            link.abort()
            await listener.aclose()
            await t.aclose()

    run_async(main, params["loop"])


def build(name: str, size: int, loops: list[str]) -> list[Job]:
    """The jobs of case ``name`` (frames of ``size`` bytes)."""
    try:
        import msgr_rdma  # noqa: F401
    except ImportError:
        return []
    backends = ["emulated", "emulated-ipc"]
    reason = device_reason()
    if reason:
        print(f"{name}: msgr-rdma-verbs skipped: {reason}", file=sys.stderr)
    else:
        backends.append("verbs")
    notes = {
        "emulated": "protocol overhead over the in-process verbs emulation (no RDMA measured)",
        "emulated-ipc": "the emulated verbs over a TCP socket between two emulated NICs (no RDMA measured)",
        "verbs": "a real RDMA device through pyverbs, looped back through the HCA",
    }
    return [
        Job(name, f"msgr-rdma-{backend}", loop, link_frames, oneway_metrics,
            params={"size": size, "backend": backend}, note=f"in-process link: {notes[backend]}")
        for loop in loops
        for backend in backends
    ]
