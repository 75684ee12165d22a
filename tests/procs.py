"""Start and stop the helper processes of the multi-process tests."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent


class Node:
    """A ``peer_node.py`` process; ``address`` is where it listens."""

    def __init__(self, name: str, listen: str = "tcp://127.0.0.1:0", config: dict[str, Any] | None = None,
                 prefix: Sequence[str] = ()) -> None:
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, str(HERE / "peer_node.py"), name, listen, json.dumps(config or {})],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.address = self.proc.stdout.readline().strip()
        if "://" not in self.address:
            self.kill()
            raise RuntimeError(f"peer node {name} failed to start (exit {self.proc.poll()})")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.close()

    def stop(self) -> int:
        """Graceful: close stdin, wait for a clean exit."""
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            code = self.proc.wait(timeout=30)
        finally:
            self.kill()
        return code

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            if f and not f.closed:
                f.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
