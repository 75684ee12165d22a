"""The machinery every case shares: worker processes, rounds, statistics.

A *job* measures one implementation (``impl``) in one case on one event
loop kind.  It runs in fresh processes started with the ``spawn`` method: a
*receiver* (a server, or the receiving end of a one-way stream) and a
*sender* (the client).  Jobs that are in-process by nature (``msgr-loop``,
``memcpy``) have a sender only.

Parent and workers talk over :func:`multiprocessing.Pipe` with tuples::

    worker -> parent   ("ready", info) | ("sent", info) | ("result", info) | ("error", traceback)
    parent -> worker   ("round", {"seconds": s}) | ("stop", {})

A job goes: start the receiver and wait for its ``ready`` (which carries the
address it bound), start the sender with that address and wait for its
``ready`` (connected), then run the warm-up rounds and the measured rounds.
Each round the parent tells the sender to run for ``seconds``; whichever
side measures (the receiver for one-way streams, the client for
request/response) reports one ``result``.  The one-way sender also reports
how many messages it sent, and the parent checks the receiver counted
exactly that many — a benchmark that loses messages fails loudly.

Workers never run a round on their own clock: the parent paces everything,
so rounds never overlap and a stuck worker is caught by a timeout (the job
is reported as failed and the suite goes on).  :func:`run_interleaved`
runs the jobs of one case side by side, round *i* of every job before
round *i + 1* of any, so that load drifting on a shared machine affects
them all alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import multiprocessing
import multiprocessing.connection
import os
import platform
import resource
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BenchError",
    "Control",
    "Job",
    "Record",
    "Settings",
    "machine_info",
    "percentile",
    "raise_fd_limit",
    "run_async",
    "JobRun",
    "run_interleaved",
    "run_job",
    "versions",
    "worker_entry",
]

LOOPS = ("asyncio", "uvloop")


class BenchError(Exception):
    """A job failed: a worker raised, died, timed out or lost messages."""


# -- worker side ---------------------------------------------------------------


class Control:
    """A worker's end of its pipe to the parent, usable from a running loop."""

    def __init__(self, pipe: multiprocessing.connection.Connection) -> None:
        self.pipe = pipe

    def send(self, kind: str, info: dict[str, Any] | None = None) -> None:
        self.pipe.send((kind, info or {}))

    def recv_blocking(self) -> tuple[str, dict[str, Any]]:
        msg: tuple[str, dict[str, Any]] = self.pipe.recv()
        return msg

    async def recv(self) -> tuple[str, dict[str, Any]]:
        """The next command, waiting without blocking the event loop."""
        if not self.pipe.poll():
            loop = asyncio.get_running_loop()
            fut: asyncio.Future[None] = loop.create_future()
            fd = self.pipe.fileno()

            def readable() -> None:
                if not fut.done():
                    fut.set_result(None)

            loop.add_reader(fd, readable)
            try:
                await fut
            finally:
                loop.remove_reader(fd)
        return self.recv_blocking()

    async def serve_until_stop(self) -> None:
        """Serve the parent until ``stop``: servers and receivers do just this.

        ``mark`` starts a CPU-use interval; ``usage`` reports it (so a server's
        CPU use during a client-measured round is known too).
        """
        from .common import Usage

        usage = Usage()
        while True:
            kind, _ = await self.recv()
            if kind == "stop":
                return
            if kind == "mark":
                usage = Usage()
            elif kind == "usage":
                self.send("usage", usage.fractions("receiver"))


def worker_entry(target: Callable[[Control, dict[str, Any]], None], pipe: Any, params: dict[str, Any]) -> None:
    """Process entry point: run ``target``, report any exception to the parent."""
    ctl = Control(pipe)
    try:
        raise_fd_limit()
        if params.get("_profile_to"):
            _profiled(target, ctl, params)
        else:
            target(ctl, params)
    except BaseException:
        with contextlib.suppress(Exception):
            ctl.send("error", {"traceback": traceback.format_exc()})
        raise SystemExit(1) from None
    finally:
        with contextlib.suppress(Exception):
            pipe.close()


def _profiled(target: Callable[[Control, dict[str, Any]], None], ctl: Control, params: dict[str, Any]) -> None:
    """Run ``target`` under cProfile; write ``<name>.prof`` and a text summary
    (top functions by own time, then by cumulative time) next to it.

    The profiler's clock is the thread's CPU time, not wall time: on a busy
    machine a process is often preempted inside a system call (a send wakes
    the peer, which takes the CPU), and wall time would charge that to the
    call.  Time blocked in ``epoll`` therefore shows as (almost) nothing.
    """
    import cProfile
    import io
    import pstats
    from pathlib import Path

    path = Path(params["_profile_to"])
    path.parent.mkdir(parents=True, exist_ok=True)
    prof = cProfile.Profile(time.thread_time)
    prof.enable()
    try:
        target(ctl, params)
    finally:
        prof.disable()
        prof.dump_stats(str(path))
        out = io.StringIO()
        stats = pstats.Stats(prof, stream=out)
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats(30)
        path.with_suffix(".txt").write_text(out.getvalue(), encoding="utf-8")


def run_async(main: Callable[[], Coroutine[Any, Any, Any]], loop: str | None) -> Any:
    """Run ``main()`` on a fresh event loop of kind ``loop`` (``asyncio`` or ``uvloop``)."""
    if loop == "uvloop":
        import uvloop

        return uvloop.run(main())
    return asyncio.run(main())


def raise_fd_limit(want: int = 65536) -> int:
    """Raise the soft open-files limit toward ``want`` (the hard limit caps it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
    return soft


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q``-quantile (0..1) of already sorted values, nearest rank."""
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


# -- parent side -----------------------------------------------------------------


@dataclass
class Settings:
    """How long and how often to measure."""

    reps: int = 5
    seconds: float = 1.0
    warmups: int = 1
    warmup_seconds: float = 0.5
    quick: bool = False
    profile_dir: str | None = None
    py_spy_dir: str | None = None

    @classmethod
    def for_mode(cls, quick: bool, reps: int | None = None) -> Settings:
        s = cls(reps=3, seconds=0.2, warmups=1, warmup_seconds=0.1, quick=True) if quick else cls()
        if reps is not None:
            s.reps = max(1, reps)
        return s


@dataclass
class Record:
    """One measured figure, as written to the JSON file."""

    case: str
    impl: str
    loop: str
    metric: str
    unit: str
    runs: list[float]
    higher_is_better: bool = True
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "case": self.case,
            "impl": self.impl,
            "loop": self.loop,
            "metric": self.metric,
            "unit": self.unit,
            "median": self.median,
            "min": min(self.runs),
            "max": max(self.runs),
            "runs": list(self.runs),
            "higher_is_better": self.higher_is_better,
        }
        if self.note:
            d["note"] = self.note
        return d


Metrics = Callable[[dict[str, Any]], list[tuple[str, str, float, bool]]]
"""Turns one round's result into ``(metric, unit, value, higher_is_better)`` tuples."""


@dataclass
class Job:
    """One implementation in one case on one loop kind.

    :ivar receiver: worker function for the receiving/serving process, or
        ``None`` for an in-process job (the sender does everything).
    :ivar sender: worker function for the sending/client process.
    :ivar measured_by: ``"receiver"`` (one-way streams: the receiver's
        result is checked against the sender's count) or ``"sender"``.
    :ivar metrics: turns a round's result into figures.
    :ivar custom: a whole-job runner replacing the round protocol (scale).
    """

    case: str
    impl: str
    loop: str
    sender: Callable[[Control, dict[str, Any]], None]
    metrics: Metrics
    receiver: Callable[[Control, dict[str, Any]], None] | None = None
    measured_by: str = "receiver"
    params: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    custom: Callable[[Job, Settings], list[Record]] | None = None
    server_usage: bool = True
    """The receiver serves ``mark``/``usage`` (it runs :meth:`Control.serve_until_stop`)."""

    @property
    def label(self) -> str:
        return f"{self.case} {self.impl} [{self.loop}]"


class Proc:
    """A worker process and the parent's end of its pipe."""

    def __init__(self, target: Callable[[Control, dict[str, Any]], None], params: dict[str, Any], name: str,
                 profile_dir: str | None = None) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.name = name
        if profile_dir:
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
            params = {**params, "_profile_to": os.path.join(profile_dir, safe + ".prof")}
        self.pipe, child = ctx.Pipe()
        self.proc = ctx.Process(target=worker_entry, args=(target, child, params), name=name, daemon=True)
        self.proc.start()
        child.close()

    def send(self, kind: str, info: dict[str, Any] | None = None) -> None:
        try:
            self.pipe.send((kind, info or {}))
        except (BrokenPipeError, OSError) as exc:
            raise BenchError(f"{self.name}: worker gone ({exc})") from None

    def expect(self, kind: str, timeout: float) -> dict[str, Any]:
        """The next message, which must be of ``kind``; raises :class:`BenchError`."""
        if not self.pipe.poll(timeout):
            raise BenchError(f"{self.name}: no {kind!r} within {timeout:g} s")
        try:
            got, info = self.pipe.recv()
        except EOFError:
            raise BenchError(f"{self.name}: worker died (exit code {self.proc.exitcode})") from None
        if got == "error":
            raise BenchError(f"{self.name} failed:\n{info.get('traceback', '')}")
        if got != kind:
            raise BenchError(f"{self.name}: expected {kind!r}, got {got!r}")
        result: dict[str, Any] = info
        return result

    def finish(self, timeout: float = 10.0) -> None:
        self.proc.join(timeout)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self.pipe.close()


READY_TIMEOUT = 60.0


class JobRun:
    """One job's worker processes, driven round by round.

    ``start()`` launches the workers and waits until they are connected;
    each ``round()`` runs one round and keeps its figures (unless it is a
    warm-up); ``finish()`` stops the workers and returns the records;
    ``kill()`` cleans up after a failure.  Every step raises
    :class:`BenchError` when a worker fails, times out or loses messages.
    """

    def __init__(self, job: Job, settings: Settings) -> None:
        self.job = job
        self.settings = settings
        self.procs: list[Proc] = []
        self.rx: Proc | None = None
        self.tx: Proc | None = None
        self.samplers: list[Any] = []
        self.per_metric: dict[tuple[str, str, bool], list[float]] = {}
        self.error: BenchError | None = None

    def start(self, sample: bool = True) -> None:
        job, settings = self.job, self.settings
        params = {**job.params, "loop": job.loop}
        if job.receiver is not None:
            self.rx = Proc(job.receiver, params, f"{job.label} receiver", settings.profile_dir)
            self.procs.append(self.rx)
            params = {**params, **self.rx.expect("ready", READY_TIMEOUT)}
        self.tx = Proc(job.sender, params, f"{job.label} sender", settings.profile_dir)
        self.procs.append(self.tx)
        self.tx.expect("ready", READY_TIMEOUT)
        if sample:
            self.samplers = start_sampling(self.procs, settings)

    def round(self, seconds: float, warm: bool = False) -> None:
        job, rx, tx = self.job, self.rx, self.tx
        if tx is None:
            raise BenchError(f"{job.label}: not started")
        meas = rx if (job.measured_by == "receiver" and rx is not None) else tx
        server_usage = rx is not None and meas is tx and job.server_usage
        if server_usage and rx is not None:
            rx.send("mark")
        tx.send("round", {"seconds": seconds})
        timeout = 60.0 + 20 * seconds
        res = meas.expect("result", timeout)
        if server_usage and rx is not None:
            rx.send("usage")
            res = {**res, **rx.expect("usage", timeout)}
        if job.measured_by == "receiver":
            if meas is not tx:
                info = tx.expect("sent", timeout)
                sent = info["msgs"]
                res = {**res, **{k: v for k, v in info.items() if k.startswith("sender_")}}
            else:
                sent = res.get("sent")
            if sent is not None and sent != res["msgs"]:
                raise BenchError(f"{job.label}: sender sent {sent} messages, receiver counted {res['msgs']}")
        if warm:
            return
        for metric, unit, value, hib in job.metrics(res):
            self.per_metric.setdefault((metric, unit, hib), []).append(value)

    def finish(self) -> list[Record]:
        stop_sampling(self.samplers)
        self.samplers = []
        if self.tx is not None:
            self.tx.send("stop")
            self.tx.finish()
        if self.rx is not None:
            with contextlib.suppress(BenchError):  # it may have stopped on the sender's STOP already
                self.rx.send("stop")
            self.rx.finish()
        job = self.job
        return [
            Record(job.case, job.impl, job.loop, metric, unit, runs, hib, job.note)
            for (metric, unit, hib), runs in self.per_metric.items()
        ]

    def kill(self) -> None:
        stop_sampling(self.samplers)
        self.samplers = []
        for p in self.procs:
            if p.proc.is_alive():
                p.proc.kill()
                p.proc.join(5)


def run_job(job: Job, settings: Settings) -> list[Record]:
    """Run ``job``'s rounds, back to back, in fresh worker processes.

    :raises BenchError: a worker failed, timed out, or messages were lost.
    """
    if job.custom is not None:
        return job.custom(job, settings)
    run = JobRun(job, settings)
    try:
        run.start()
        for _ in range(settings.warmups):
            run.round(settings.warmup_seconds, warm=True)
        for _ in range(settings.reps):
            run.round(settings.seconds)
        return run.finish()
    finally:
        run.kill()


def run_interleaved(jobs: list[Job], settings: Settings,
                    done: Callable[[Job, list[Record] | None, BenchError | None, float], None]) -> None:
    """Run several jobs' rounds interleaved: all workers up first, then warm-up
    rounds, then measured round 1 of every job, round 2 of every job, ...

    A shared machine's load drifts over minutes; interleaving spreads the
    drift over every implementation of a case alike, so the ratios between
    them (and the per-round ratios: round *i* of two jobs ran moments apart)
    hold up where back-to-back jobs would not.  Idle workers wait in
    ``epoll`` / a blocking read and cost nothing meanwhile.

    ``done(job, records, error, seconds)`` is called once per job.
    """
    runs: list[JobRun] = []
    started: dict[int, float] = {}
    try:
        for job in jobs:
            run = JobRun(job, settings)
            runs.append(run)
            started[id(run)] = time.perf_counter()
            try:
                run.start(sample=False)
            except BenchError as exc:
                run.error = exc
        for _ in range(settings.warmups):
            for run in runs:
                _guarded(run, settings.warmup_seconds, warm=True)
        for _ in range(settings.reps):
            for run in runs:
                _guarded(run, settings.seconds)
        for run in runs:
            records: list[Record] | None = None
            if run.error is None:
                try:
                    records = run.finish()
                except BenchError as exc:
                    run.error = exc
            done(run.job, records, run.error, time.perf_counter() - started[id(run)])
    finally:
        for run in runs:
            run.kill()


def _guarded(run: JobRun, seconds: float, warm: bool = False) -> None:
    if run.error is not None:
        return
    try:
        run.round(seconds, warm)
    except BenchError as exc:
        run.error = exc
        run.kill()


def start_sampling(procs: list[Proc], settings: Settings) -> list[Any]:
    """py-spy samplers on ``procs`` when ``--py-spy`` asked for them."""
    if not settings.py_spy_dir:
        return []
    from .profiling import Sampler

    return [Sampler(p.proc.pid or 0, settings.py_spy_dir, p.name) for p in procs]


def stop_sampling(samplers: list[Any]) -> None:
    for s in samplers:
        s.stop()


# -- describing the machine ----------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """CPU count and model, Python, platform, load (shared machines drift)."""
    info: dict[str, Any] = {
        "hostname": platform.node(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
    }
    with contextlib.suppress(OSError, AttributeError):
        info["cpu_affinity"] = len(os.sched_getaffinity(0))
        info["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    with contextlib.suppress(Exception):
        import psutil

        info["memory_bytes"] = psutil.virtual_memory().total
    return info


_DISTS = ("msgr-core", "msgr-tcp", "msgr-loopback", "msgpack", "pyzmq", "grpcio", "uvloop", "psutil")


def versions() -> dict[str, str | None]:
    """Installed versions of msgr and of every peer library (``None``: missing)."""
    out: dict[str, str | None] = {}
    for dist in _DISTS:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    with contextlib.suppress(Exception):
        import zmq

        out["libzmq"] = zmq.zmq_version()
    return out


def source_revision() -> dict[str, Any]:
    """The git commit of the checkout the suite runs from, and whether it has
    uncommitted changes (figures of a dirty tree are not reproducible)."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(dirty)}


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
