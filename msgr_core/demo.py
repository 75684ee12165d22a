"""``msgr demo``: a small cluster in separate processes, exchanging verbs.

The parent starts ``--nodes`` node processes (``python -m msgr_core.demo``),
each a messenger listening on loopback.  Once every node has reported its
address, the parent hands each the others' addresses; for ``--duration``
seconds every node calls ``demo.hello`` (request/response) and sends
``demo.note`` (oneway) to random peers and reports round-trip times.  Then
the last node stops gracefully mid-run, the others see its session reset,
and the rest stop.  The parent prints what happens and a summary, checks
every oneway message sent to a live node arrived, and exits 0 on success.

Children talk to the parent by JSON lines on stdin/stdout.  Every child is
killed on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from typing import IO, Any

from .dispatcher import Dispatcher
from .messenger import Messenger

__all__ = ["run_demo"]

LISTEN = {"tcp": "tcp://127.0.0.1:0", "unix": "unix://{tmp}/{name}.sock"}


def _emit(**event: Any) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


class _Events(Dispatcher):
    def handle_accept(self, conn: Any) -> None:
        _emit(event="accept", peer=conn.peer_name)

    def handle_reset(self, conn: Any, reason: str) -> None:
        _emit(event="reset", peer=conn.peer_name, reason=reason)


async def _node(name: str, address: str) -> int:
    ms = Messenger.from_config({"messenger": {"name": name, "type": "demo", "listen": [address]}})
    received: dict[str, int] = {}
    ms.register_handler("demo.hello", lambda msg: {"from": name, "echo": msg.payload})

    def note(msg: Any) -> None:
        received[msg.peer] = received.get(msg.peer, 0) + 1

    ms.register_handler_oneway("demo.note", note)
    ms.add_dispatcher(_Events())
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with ms:
        _emit(event="ready", name=name, address=ms.addresses[0], pid=os.getpid())
        peers: dict[str, str] = json.loads(await reader.readline())["peers"]
        sent: dict[str, int] = {}
        rtts: list[float] = []
        errors = 0

        async def talk() -> None:
            nonlocal errors
            rng = random.Random(name)
            while True:
                live = [p for p in peers if p != name]
                if not live:
                    await asyncio.sleep(0.05)
                    continue
                peer = rng.choice(live)
                t0 = time.perf_counter()
                try:
                    reply = await ms.send_message("demo.hello", peers[peer], {"n": len(rtts)}, timeout=2.0)
                    rtts.append((time.perf_counter() - t0) * 1e3)
                    if len(rtts) % 50 == 1:
                        _emit(event="reply", peer=reply["from"], rtt_ms=round(rtts[-1], 3))
                    for _ in range(20):
                        await ms.send_message_oneway("demo.note", peers[peer], b"x" * 64)
                        sent[peer] = sent.get(peer, 0) + 1
                except Exception as exc:
                    errors += 1
                    _emit(event="error", peer=peer, error=f"{type(exc).__name__}: {exc}")
                    peers.pop(peer, None)
                await asyncio.sleep(0.005)

        task = asyncio.create_task(talk())

        async def quiesce() -> None:
            # Stop talking; a ping behind our last oneway message on each
            # session returns only once the peer has handled all of them.
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            for peer, address in list(peers.items()):
                if peer != name:
                    try:
                        await ms.send_message("msgr.ping", address, b"", timeout=5.0)
                    except Exception as exc:
                        _emit(event="error", peer=peer, error=f"{type(exc).__name__}: {exc}")

        while True:
            line = await reader.readline()
            if not line:
                break
            cmd = json.loads(line)
            if cmd.get("cmd") == "forget":
                peers.pop(cmd["peer"], None)
            elif cmd.get("cmd") == "quiesce":
                await quiesce()
                _emit(event="quiet", name=name)
            elif cmd.get("cmd") == "stop":
                await quiesce()
                break
        rtts.sort()
        _emit(event="summary", name=name, requests=len(rtts), errors=errors, sent=sent, received=received,
              p50_ms=round(rtts[len(rtts) // 2], 3) if rtts else None,
              p99_ms=round(rtts[int(len(rtts) * 0.99)], 3) if rtts else None,
              stats=ms.stats)
    return 0


class _Child:
    def __init__(self, name: str, address: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "msgr_core.demo", "--node", name, "--address", address],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )
        self.address = ""
        self.summary: dict[str, Any] = {}

    @property
    def stdin(self) -> IO[str]:
        stdin = self.proc.stdin
        if stdin is None:  # pragma: no cover - Popen(stdin=PIPE) always has one
            raise RuntimeError("child has no stdin")
        return stdin

    def send(self, **cmd: Any) -> None:
        self.stdin.write(json.dumps(cmd) + "\n")
        self.stdin.flush()

    def read_event(self) -> dict[str, Any] | None:
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        return json.loads(line) if line else None


def _say(text: str) -> None:
    print(text, flush=True)


def run_demo(nodes: int = 3, transport: str = "tcp", duration: float = 3.0) -> int:
    """Run the demo cluster; returns the exit code (0: every check passed)."""
    import tempfile
    import threading

    if nodes < 2:
        _say("msgr demo needs at least 2 nodes")
        return 2
    if transport not in LISTEN:
        _say(f"msgr demo supports --transport {', '.join(LISTEN)}; got {transport!r}")
        return 2
    tmp = tempfile.mkdtemp(prefix="msgr-demo-")
    children: list[_Child] = []
    lock = threading.Lock()
    quiet_seen: dict[str, threading.Barrier] = {}
    ok = True

    def pump(child: _Child) -> None:
        nonlocal ok
        while True:
            ev = child.read_event()
            if ev is None:
                return
            kind = ev.get("event")
            with lock:
                if kind == "accept":
                    _say(f"  {child.name}: accepted a session from {ev['peer']}")
                elif kind == "reply":
                    _say(f"  {child.name}: demo.hello answered by {ev['peer']} in {ev['rtt_ms']} ms")
                elif kind == "reset":
                    _say(f"  {child.name}: session with {ev['peer']} reset ({ev['reason']})")
                elif kind == "error":
                    _say(f"  {child.name}: {ev['error']}")
                elif kind == "summary":
                    child.summary = ev
            if kind == "quiet":
                quiet_seen[child.name].wait(timeout=30)

    def stop_all() -> None:
        for c in children:
            if c.proc.poll() is None:
                c.proc.kill()
        for c in children:
            c.proc.wait()

    old = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        _say(f"msgr demo: starting {nodes} nodes over {transport} (one process each)")
        for i in range(nodes):
            name = f"node-{i + 1}"
            children.append(_Child(name, LISTEN[transport].format(tmp=tmp, name=name)))
        for c in children:
            ev = c.read_event()
            if ev is None or ev.get("event") != "ready":
                _say(f"{c.name} failed to start")
                return 1
            c.address = ev["address"]
            _say(f"  {c.name} (pid {ev['pid']}) listening on {c.address}")
        peers = {c.name: c.address for c in children}
        threads = [threading.Thread(target=pump, args=(c,), daemon=True) for c in children]
        for t in threads:
            t.start()
        _say(f"every node calls demo.hello and sends demo.note to random peers for {duration:g} s")
        for c in children:
            c.send(peers=peers)
        time.sleep(duration / 2)
        leaver = children[-1]
        _say(f"{leaver.name} stops gracefully; the others see its sessions end")
        for c in children[:-1]:
            c.send(cmd="forget", peer=leaver.name)
        leaver.send(cmd="stop")
        leaver.proc.wait(timeout=30)
        time.sleep(duration / 2)
        survivors_quiet = threading.Barrier(len(children))
        quiet_seen.update({c.name: survivors_quiet for c in children[:-1]})
        for c in children[:-1]:
            c.send(cmd="quiesce")
        survivors_quiet.wait(timeout=30)
        for c in children[:-1]:
            c.send(cmd="stop")
        for c in children:
            c.proc.wait(timeout=30)
        for t in threads:
            t.join(timeout=5)
        _say("\nsummary")
        _say(f"  {'node':8} {'requests':>9} {'p50 ms':>8} {'p99 ms':>8} {'oneway out':>11} {'oneway in':>10}")
        for c in children:
            s = c.summary
            if not s:
                _say(f"  {c.name}: no summary (exit code {c.proc.returncode})")
                ok = False
                continue
            _say(f"  {c.name:8} {s['requests']:>9} {s['p50_ms']!s:>8} {s['p99_ms']!s:>8} "
                 f"{sum(s['sent'].values()):>11} {sum(s['received'].values()):>10}")
        # every oneway message sent to a node that stayed up must have arrived
        survivors = {c.name: c for c in children[:-1]}
        for c in children:
            for peer, n in c.summary.get("sent", {}).items():
                if peer in survivors:
                    got = survivors[peer].summary.get("received", {}).get(c.name, 0)
                    if got != n:
                        _say(f"  LOST: {c.name} sent {n} demo.note to {peer}, which received {got}")
                        ok = False
        if any(c.proc.returncode != 0 for c in children):
            ok = False
        _say("demo ok: every message to a live node arrived" if ok else "demo FAILED")
        return 0 if ok else 1
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    finally:
        stop_all()
        signal.signal(signal.SIGTERM, old)


def _main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--node", required=True)
    parser.add_argument("--address", required=True)
    args = parser.parse_args()
    return asyncio.run(_node(args.node, args.address))


if __name__ == "__main__":
    sys.exit(_main())
