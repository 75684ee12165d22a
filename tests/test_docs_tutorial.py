"""The tutorial (docs/tutorial.md) works as written: its blocks, run in order.

Fenced blocks are read the way a reader copies them:

- ```` ```toml title="FILE" ```` / ```` ```python title="FILE" ````: saved as FILE;
- ```` ```python ```` without a title: run with the environment's python;
- ```` ```sh title="terminal N" ````: each line run in a shell, which must exit 0;
- ```` ```sh title="terminal N (keeps running)" ````: started in the background;
  it is ready when it prints its first line (a node prints "... listening on ...").
  Starting one in a terminal that already runs something first stops that with
  SIGINT (the tutorial says "Ctrl-C" there);
- ```` ```text title="output" ````: every line appears, in order, in what the
  previous command printed;
- the untitled ```` ```sh ```` block (activate the environment, make and enter
  the working directory) runs from the repository root, with the working
  directory replaced by a temporary one.

At the end every background process gets SIGINT (Ctrl-C) and must exit 0.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "docs" / "tutorial.md"
WORKDIR_IN_DOCS = "/tmp/msgr-tutorial"
FENCE = re.compile(r'^```(\w+)(?: title="([^"]*)")?\n(.*?)^```$', re.MULTILINE | re.DOTALL)
READY_TIMEOUT = 60.0
COMMAND_TIMEOUT = 120.0


@dataclass
class Block:
    lang: str
    title: str
    body: str


def blocks(text: str) -> list[Block]:
    return [Block(m.group(1), m.group(2) or "", m.group(3)) for m in FENCE.finditer(text)]


class Background:
    """A command left running, as in a terminal of its own."""

    def __init__(self, command: str, cwd: Path, env: dict[str, str]) -> None:
        self.command = command
        self.proc = subprocess.Popen(
            ["bash", "-c", f"exec {command}"], cwd=cwd, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_ready(self) -> str:
        try:
            line = self.lines.get(timeout=READY_TIMEOUT)
        except queue.Empty:
            pytest.fail(f"`{self.command}` printed nothing within {READY_TIMEOUT} s")
        if line is None:
            pytest.fail(f"`{self.command}` exited ({self.proc.wait()}) before it was ready")
        self.output.append(line)
        return line

    def interrupt(self) -> int:
        """Ctrl-C, then its exit status."""
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -9
        finally:
            self._pump_thread.join(timeout=10)  # reads to EOF, now that the process is gone
            if self.proc.stdout is not None and not self._pump_thread.is_alive():
                self.proc.stdout.close()


def _env() -> dict[str, str]:
    venv = ROOT / ".venv"
    env = dict(os.environ)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    env.pop("PYTHONPATH", None)
    return env


def test_the_tutorial_runs_as_written(tmp_path: Path) -> None:
    items = blocks(TUTORIAL.read_text())
    assert len(items) > 10, "the tutorial's blocks were not found"
    env = _env()
    work = tmp_path / "msgr-tutorial"
    running: dict[str, Background] = {}
    last_output = ""
    checked_outputs = 0
    try:
        for b in items:
            if b.lang == "sh" and not b.title:
                assert WORKDIR_IN_DOCS in b.body, b.body
                script = b.body.replace(WORKDIR_IN_DOCS, str(work)) + "\npwd\n"
                out = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, text=True,
                                     capture_output=True, timeout=COMMAND_TIMEOUT)
                assert out.returncode == 0, out.stderr
                assert out.stdout.strip() == str(work)
            elif b.lang in ("toml", "python") and b.title:
                (work / b.title).write_text(b.body)
            elif b.lang == "python":
                out = subprocess.run(["python", "-c", b.body], cwd=work, env=env, text=True,
                                     capture_output=True, timeout=COMMAND_TIMEOUT)
                assert out.returncode == 0, out.stdout + out.stderr
                last_output = out.stdout
            elif b.lang == "sh" and b.title.endswith("(keeps running)"):
                terminal = b.title.removesuffix("(keeps running)").strip()
                if terminal in running:
                    assert running.pop(terminal).interrupt() == 0
                command = b.body.strip()
                assert "\n" not in command, "one long-running command per terminal"
                bg = running[terminal] = Background(command, work, env)
                last_output = bg.wait_ready()
            elif b.lang == "sh" and b.title.startswith("terminal"):
                outputs = []
                for line in b.body.strip().splitlines():
                    out = subprocess.run(["bash", "-c", line], cwd=work, env=env, text=True,
                                         capture_output=True, timeout=COMMAND_TIMEOUT)
                    assert out.returncode == 0, f"`{line}` failed ({out.returncode}):\n{out.stdout}{out.stderr}"
                    outputs.append(out.stdout)
                last_output = "".join(outputs)
            elif b.lang == "text" and b.title == "output":
                got = last_output.splitlines()
                pos = 0
                for want in b.body.strip().splitlines():
                    while pos < len(got) and got[pos] != want:
                        pos += 1
                    assert pos < len(got), f"expected the line {want!r} in:\n{last_output}"
                    pos += 1
                checked_outputs += 1
            else:
                pytest.fail(f"a block the test does not know how to run: ```{b.lang} title={b.title!r}")
        assert checked_outputs >= 3
    finally:
        codes = {name: bg.interrupt() for name, bg in running.items()}
    assert all(code == 0 for code in codes.values()), codes
