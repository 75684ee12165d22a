"""Where the time goes: py-spy sampling of the worker processes.

``python -m benchmarks --py-spy DIR`` attaches ``py-spy record`` to every
worker once it is ready (start-up is not sampled) and detaches after the
last round; for each worker it writes the collapsed stacks
(``DIR/<job>.raw``) and a summary (``DIR/<job>.summary.txt``): the share of
samples per function, by own time and by inclusive time, with idle samples
(the event loop waiting in ``epoll``) counted too, so a side that is not
the bottleneck shows it.  Only the main thread is summarised (the workers'
other Python threads are asyncio's idle resolver executor).  Sampling uses ``--nonblocking`` (the process is
never paused), so the figures of a sampled run stay close to an unsampled
one.  (``--profile DIR`` is the cProfile alternative: exact call counts,
much more overhead.)
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

__all__ = ["Sampler", "py_spy_path", "summarize"]

_LINE = re.compile(r"^(.*) (\d+)$")
_FRAME = re.compile(r"^(?P<name>.*?) \((?P<file>[^():]+)(?::\d+)?\)$")


# With uvloop the loop itself is C: its idle time and its own work show as
# the own time of the Python frame that started it.
_C_LOOP_FRAMES = ("Runner.run (", "run (uvloop", "BaseEventLoop.run_until_complete (")


def py_spy_path() -> str | None:
    """The ``py-spy`` executable next to this Python, or on ``PATH``."""
    local = Path(sys.executable).parent / "py-spy"
    if local.exists():
        return str(local)
    return shutil.which("py-spy")


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


class Sampler:
    """``py-spy record`` attached to one process until :meth:`stop`."""

    def __init__(self, pid: int, out_dir: str, name: str, rate: int = 100) -> None:
        exe = py_spy_path()
        if exe is None:
            raise RuntimeError("py-spy is not installed (pip install py-spy)")
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        self.raw = Path(out_dir) / (_safe(name) + ".raw")
        self.proc = subprocess.Popen(
            [exe, "record", "--pid", str(pid), "--format", "raw", "--output", str(self.raw),
             "--rate", str(rate), "--nonblocking", "--idle"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self) -> Path | None:
        """Stop sampling; write and return the summary (``None`` if py-spy failed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            return None
        if not self.raw.exists():
            with contextlib.suppress(OSError):
                self.raw.with_suffix(".error.txt").write_bytes(err or b"")
            return None
        out = self.raw.with_suffix(".summary.txt")
        out.write_text(summarize(self.raw.read_text(encoding="utf-8")), encoding="utf-8")
        return out


def _short(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    file = m.group("file")
    parts = file.split(os.sep)
    for anchor in ("site-packages", "main", "python3.11", "python3.12", "python3.13"):
        if anchor in parts:
            file = "/".join(parts[parts.index(anchor) + 1:])
            break
    return f"{m.group('name')} ({file})"


def summarize(raw: str, top: int = 30) -> str:
    """Own and inclusive sample shares per function from collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        m = _LINE.match(line.strip())
        if not m:
            continue
        stack, n = m.group(1), int(m.group(2))
        frames = [_short(f) for f in stack.split(";") if f]
        if not frames or any(f.startswith("Thread._bootstrap") for f in frames):
            continue  # helper threads (asyncio's resolver executor): idle, not the event loop
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    if not total:
        return "no samples\n"
    idle = sum(n for f, n in own.items() if f.startswith(("EpollSelector.select", "KqueueSelector.select")))
    c_loop = sum(n for f, n in own.items() if f.startswith(_C_LOOP_FRAMES))
    head = f"{total} samples of the main thread; {100 * idle / total:.1f}% idle in the event loop's select"
    if c_loop:
        head += (f"; {100 * c_loop / total:.1f}% inside a C event loop (uvloop: idle or its own I/O work, "
                 "which py-spy cannot see into)")
    lines = [head, "", "own time (the function itself was running):"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    lines += ["", "inclusive time (the function or what it called):"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in incl.most_common(top)]
    return "\n".join(lines) + "\n"
