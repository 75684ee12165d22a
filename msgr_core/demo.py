"""``msgr demo``: a small cluster with heartbeats, gossip and Plumtree, live.

What it shows, phase by phase (every phase ends in a check; the summary
lists them and the exit status is 0 only if all passed):

1. **start** — ``--nodes`` (default 5) messengers, each in its own process
   (``python -m msgr_core.demo``), listening on loopback, with the
   extensions ``heartbeat``, ``gossip`` and ``plumtree`` enabled.
2. **membership** — the nodes learn each other through two gossip seeds;
   each node's view (the gossip live set) grows until it holds every node.
   Phi per peer and heartbeat round-trip times are shown live.
3. **broadcast** — node-1 broadcasts through Plumtree; every node reports
   the hop count and the neighbour it got the message from.
4. **kill** — the last node gets SIGKILL (``--transport loop``: its
   messenger is aborted, nothing said).  node-1 broadcasts again at once:
   the tree routes around the dead node before anyone has noticed.
5. **conviction** — every survivor's heartbeat declares it failed
   (``msgr_peer_failed``) and gossip convicts it (``on_dead``, phi over
   the threshold); the view changes.
6. **tree repair** — a broadcast after the view change reaches every live
   node over the repaired tree.
7. **nothing lost** — all through, every node called ``demo.hello`` and
   sent oneway ``demo.note`` messages to random members of its view; every
   note sent to a node that stayed up arrived (or was reported
   undeliverable by the core: then it was not lost silently, and the
   count is shown).
8. **clean stop** — the survivors stop gracefully and exit 0.

Timers are shortened so that it all takes seconds, and the demo says so:
gossip every 0.2 s (Cassandra: 1 s) with phi threshold 8, heartbeats every
0.25 s with a 1.5 s grace (Ceph: 6 s / 20 s), Plumtree lazy tick 0.2 s.

Processes: children talk to the parent by JSON lines (stdout: events,
stdin: commands), their stderr goes to a log file shown if something
fails.  They run in a process group of their own (a Ctrl-C in the
terminal reaches only the parent), the parent kills that group when it
exits for any reason, Ctrl-C and SIGTERM included, and a child whose stdin
closes (the parent died) exits at once.

Display: a live ``rich`` view when stdout is a terminal, plain progressive
lines otherwise (CI, pipes, tests).

The demo uses the extensions only through their public state
(``messenger.extensions[...]``) and hooks: the core imports no plugin.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from .dispatcher import Dispatcher
from .errors import MsgrError
from .hookspecs import hookimpl
from .messenger import Messenger

__all__ = ["LISTEN", "DemoNode", "DemoSettings", "node_config", "run_demo"]

#: ``--transport`` -> listen address template (``{name}``, ``{tmp}`` filled in).
LISTEN = {
    "tcp": "tcp://127.0.0.1:0",
    "zmq+tcp": "zmq+tcp://127.0.0.1:0",
    "unix": "unix://{tmp}/{name}.sock",
    "loop": "loop://{name}",
}

#: The plugins every demo node enables, and the distributions that provide them.
EXTENSIONS = {"heartbeat": "msgr-heartbeat", "gossip": "msgr-gossip", "plumtree": "msgr-plumtree"}
TRANSPORT_DISTS = {"tcp": "msgr-tcp", "unix": "msgr-tcp", "zmq+tcp": "msgr-zmq", "loop": "msgr-loopback"}

HANDLER = "demo"  # the Plumtree broadcast handler's name
ROOT = "node-1"  # the broadcaster


@dataclass(frozen=True)
class DemoSettings:
    """The demo's shortened timers (production defaults in the comments)."""

    gossip_interval: float = 0.2  # gossip.interval (1.0)
    phi_threshold: float = 8.0  # gossip.phi_convict_threshold (8)
    hb_interval: float = 0.25  # heartbeat.interval (6.0)
    hb_grace: float = 1.5  # heartbeat.grace (20.0)
    lazy_tick: float = 0.2  # plumtree.lazy_tick_period (1.0)
    report_every: float = 0.25  # seconds between a node's state reports

    def describe(self) -> str:
        return (f"demo timers: gossip every {self.gossip_interval:g} s (default 1 s), phi threshold "
                f"{self.phi_threshold:g}; heartbeat every {self.hb_interval:g} s, grace {self.hb_grace:g} s "
                f"(default 6 s / 20 s); plumtree lazy tick {self.lazy_tick:g} s (default 1 s)")


def node_config(name: str, listen: str, settings: DemoSettings) -> dict[str, Any]:
    """The config of one demo node."""
    return {
        "messenger": {"name": name, "type": "demo", "listen": [listen], "extensions": list(EXTENSIONS)},
        "heartbeat": {"interval": settings.hb_interval, "grace": settings.hb_grace},
        "gossip": {"interval": settings.gossip_interval, "phi_convict_threshold": settings.phi_threshold},
        # no anti-entropy handler: the tree (eager push, i_have + graft) is all there is
        "plumtree": {"lazy_tick_period": settings.lazy_tick, "exchange_tick_period": 60.0},
    }


# ---------------------------------------------------------------------------------------------
# node side: one messenger, in a child process or (loop://) in the parent's event loop
# ---------------------------------------------------------------------------------------------

Emit = Callable[[dict[str, Any]], None]


class _BroadcastLog:
    """The Plumtree handler: messages kept by id."""

    def __init__(self) -> None:
        self.messages: dict[Any, Any] = {}

    def broadcast_data(self, message: Any) -> tuple[Any, Any]:
        msg_id, payload = message
        self.messages[msg_id] = payload
        return msg_id, payload

    def merge(self, msg_id: Any, payload: Any) -> bool:
        if msg_id in self.messages:
            return False
        self.messages[msg_id] = payload
        return True

    def is_stale(self, msg_id: Any) -> bool:
        return msg_id in self.messages

    def graft(self, msg_id: Any) -> Any:
        try:
            return self.messages[msg_id]
        except KeyError:
            raise LookupError(f"no message {msg_id!r}") from None


class _Hooks:
    """Detector and view events of one node, as demo events."""

    def __init__(self, node: DemoNode) -> None:
        self.node = node
        self.hb_reported: set[str] = set()

    @hookimpl
    def msgr_peer_failed(self, messenger: Messenger, peer: str, reason: str) -> None:
        # Heartbeat and gossip both fire this hook; gossip's conviction is
        # reported through its own on_dead callback, so only the
        # heartbeat's (its detector says the peer is failed) is shown here.
        if messenger is not self.node.ms or peer in self.hb_reported:
            return
        hb = messenger.extensions.get("heartbeat")
        if hb is not None and hb.is_failed(peer):
            self.hb_reported.add(peer)
            self.node.emit({"event": "failed", "peer": peer, "source": "heartbeat", "reason": reason})

    @hookimpl
    def msgr_peer_recovered(self, messenger: Messenger, peer: str) -> None:
        if messenger is self.node.ms:
            self.hb_reported.discard(peer)

    @hookimpl
    def msgr_view_changed(self, messenger: Messenger, members: frozenset[str]) -> None:
        if messenger is self.node.ms:
            self.node.emit({"event": "view", "members": sorted(members)})


class _GossipEvents:
    """A gossip subscriber (duck-typed: the core does not import msgr-gossip)."""

    def __init__(self, node: DemoNode) -> None:
        self.node = node

    def on_alive(self, endpoint: str, state: Any) -> None:
        hb = self.node.ms.extensions.get("heartbeat")
        if hb is not None:
            hb.watch(endpoint)  # heartbeat every member, not only peers we happen to talk to
        self.node.emit({"event": "alive", "peer": endpoint})

    def on_dead(self, endpoint: str, state: Any) -> None:
        gossip = self.node.ms.extensions.get("gossip")
        phi = gossip.phi(endpoint) if gossip is not None else None
        self.node.emit({"event": "dead", "peer": endpoint, "phi": phi})


class _Undeliverable(Dispatcher):
    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts

    def handle_undeliverable(self, conn: Any, messages: list[tuple[str, Any]], reason: str) -> None:
        n = sum(1 for verb, _ in messages if verb == "demo.note")
        if n and conn.peer_name:
            self.counts[conn.peer_name] = self.counts.get(conn.peer_name, 0) + n


class DemoNode:
    """One demo node: a messenger with heartbeat, gossip and Plumtree that
    reports what happens through ``emit`` (dicts with an ``event`` key) and
    obeys :meth:`command`.  Runs in a child process (``python -m
    msgr_core.demo``) or, for ``loop://``, in the parent's event loop."""

    def __init__(self, name: str, listen: str, settings: DemoSettings, emit: Emit) -> None:
        self.name = name
        self.settings = settings
        self.emit = emit
        self.ms = Messenger.from_config(node_config(name, listen, settings))
        self.log = _BroadcastLog()
        self.sent: dict[str, int] = {}
        self.received: dict[str, int] = {}
        self.undeliverable: dict[str, int] = {}
        self.rtts: list[float] = []
        self.errors = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._talker: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        return self.ms.addresses[0]

    async def start(self) -> None:
        ms = self.ms
        ms.register_handler("demo.hello", lambda msg: {"from": self.name})
        ms.register_handler_oneway("demo.note", self._on_note)
        ms.add_dispatcher(_Undeliverable(self.undeliverable))
        ms.plugins.register(_Hooks(self), name=f"msgr-demo-{self.name}")
        await ms.start()
        ms.extensions["gossip"].subscribe(_GossipEvents(self))
        pt = ms.extensions["plumtree"]
        pt.register(HANDLER, self.log)
        pt.on_deliver.append(self._on_deliver)
        self._tasks.append(asyncio.create_task(self._report()))

    def _on_note(self, msg: Any) -> None:
        self.received[msg.peer] = self.received.get(msg.peer, 0) + 1

    def _on_deliver(self, handler: str, msg_id: Any, hops: int, sender: str) -> None:
        if handler == HANDLER:
            self.emit({"event": "deliver", "id": msg_id, "hops": hops, "sender": sender})

    def state(self) -> dict[str, Any]:
        """What the live table shows: view, phi and RTT per peer, tree links."""
        ms = self.ms
        gossip = ms.extensions.get("gossip")
        hb = ms.extensions.get("heartbeat")
        pt = ms.extensions.get("plumtree")
        phi: dict[str, float] = {}
        if gossip is not None:
            for row in gossip.status()["endpoints"]:
                if row["endpoint"] != self.name:
                    phi[row["endpoint"]] = row["phi"]
        rtt: dict[str, float] = {}
        if hb is not None:
            for peer, st in hb.stats()["peers"].items():
                if st["rtt_avg"] is not None:
                    rtt[peer] = round(st["rtt_avg"] * 1e3, 3)
        eager, lazy = pt.get_peers(ROOT) if pt is not None else (set(), set())
        return {"event": "state", "view": sorted(ms.view) if ms.view is not None else None, "phi": phi,
                "rtt": rtt, "eager": sorted(eager), "lazy": sorted(lazy),
                "out": sum(self.sent.values()), "in": sum(self.received.values())}

    async def _report(self) -> None:
        while self.ms.running:
            self.emit(self.state())
            await asyncio.sleep(self.settings.report_every)

    async def _talk(self) -> None:
        """Requests and oneway notes to random members of the view."""
        rng = random.Random(self.name)
        while True:
            view = self.ms.view or frozenset()
            peers = sorted(view - {self.name})
            if not peers:
                await asyncio.sleep(0.05)
                continue
            peer = rng.choice(peers)
            t0 = time.perf_counter()
            try:
                await self.ms.send_message("demo.hello", peer, b"", timeout=1.0)
                self.rtts.append((time.perf_counter() - t0) * 1e3)
                for _ in range(5):
                    await self.ms.send_message_oneway("demo.note", peer, b"x" * 64)
                    self.sent[peer] = self.sent.get(peer, 0) + 1
            except MsgrError:
                self.errors += 1  # a peer that died (until the view drops it)
            await asyncio.sleep(0.02)

    async def command(self, cmd: dict[str, Any]) -> bool:
        """Obey one command; ``True`` once the node has stopped.

        ``join`` (``seeds``: gossip seeds, then start talking), ``bcast``
        (``id``, ``text``), ``quiesce`` (stop talking, make sure every note
        sent arrived, report counts), ``stop`` (graceful)."""
        what = cmd.get("cmd")
        if what == "join":
            gossip = self.ms.extensions["gossip"]
            gossip.seeds = [s for s in cmd["seeds"] if s not in self.ms.addresses]
            self._talker = asyncio.create_task(self._talk())
        elif what == "bcast":
            self.ms.extensions["plumtree"].broadcast(HANDLER, (cmd["id"], cmd.get("text", "")))
            self.emit({"event": "sent", "id": cmd["id"]})
        elif what == "quiesce":
            await self._quiesce()
        elif what == "stop":
            await self.stop()
            return True
        return False

    async def _quiesce(self) -> None:
        if self._talker is not None:
            self._talker.cancel()
            await asyncio.gather(self._talker, return_exceptions=True)
            self._talker = None
        view = self.ms.view or frozenset()
        # A request behind our last note on each session returns only once
        # the peer has handled every note before it (one ordered session).
        for peer in sorted(set(self.sent) & view):
            try:
                await self.ms.send_message("msgr.ping", peer, b"", timeout=5.0)
            except MsgrError as exc:
                self.emit({"event": "error", "text": f"quiesce ping to {peer}: {exc}"})
        rtts = sorted(self.rtts)
        self.emit({"event": "quiet", "sent": self.sent, "received": self.received,
                   "undeliverable": self.undeliverable, "requests": len(rtts), "errors": self.errors,
                   "p50_ms": round(rtts[len(rtts) // 2], 3) if rtts else None,
                   "p99_ms": round(rtts[int(len(rtts) * 0.99)], 3) if rtts else None})

    def _cancel_tasks(self) -> None:
        for t in [*self._tasks, *([self._talker] if self._talker else [])]:
            t.cancel()

    async def stop(self) -> None:
        """Graceful: gossip says goodbye, sessions flush.  Sessions with
        peers outside the view (the dead node, which the heartbeat keeps
        redialling to see it come back) are dropped first: a graceful stop
        would wait up to ``limits.stop_timeout`` to say goodbye to them."""
        self._cancel_tasks()
        view = self.ms.view
        if view is not None:
            hb = self.ms.extensions.get("heartbeat")
            for conn in self.ms.connections:
                peer = conn.peer_name
                if peer and peer not in view:
                    if hb is not None:
                        hb.unwatch(peer)
                    conn.mark_down()
        await self.ms.stop()
        self.emit({"event": "stopped"})

    async def crash(self) -> None:
        """Die without a word (in-process ``loop://`` nodes: what SIGKILL is
        to a process): extensions stop, links are aborted, listeners close."""
        self._cancel_tasks()
        for ext in self.ms.extensions.values():
            stop = getattr(ext, "abort", None) or getattr(ext, "close", None)
            if callable(stop):
                stop()
        await self.ms.abort()


async def _child(name: str, listen: str, settings: DemoSettings) -> int:
    """A node in its own process: events on stdout, commands on stdin."""

    def emit(event: dict[str, Any]) -> None:
        try:
            sys.stdout.write(json.dumps(event) + "\n")
            sys.stdout.flush()
        except BrokenPipeError:  # the parent is gone
            os._exit(1)

    node = DemoNode(name, listen, settings, emit)
    await node.start()
    emit({"event": "ready", "name": name, "address": node.address, "pid": os.getpid()})
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:  # the parent died: do not linger
            await node.crash()
            return 1
        if await node.command(json.loads(line)):
            return 0


# ---------------------------------------------------------------------------------------------
# parent side: the nodes as handles, a model of what they report, the scenario, the display
# ---------------------------------------------------------------------------------------------

Events = asyncio.Queue[tuple[str, dict[str, Any]]]


class _Handle:
    """A node seen from the parent."""

    name: str
    pid: int | None = None

    def send(self, **cmd: Any) -> None:
        raise NotImplementedError

    async def kill(self) -> None:
        raise NotImplementedError

    async def wait(self) -> int:
        raise NotImplementedError


class _ProcHandle(_Handle):
    def __init__(self, name: str, proc: asyncio.subprocess.Process, events: Events) -> None:
        self.name = name
        self.proc = proc
        self.pid = proc.pid
        self._reader = asyncio.create_task(self._read(events))

    @classmethod
    async def spawn(cls, name: str, listen: str, settings: DemoSettings, events: Events, log_path: str,
                    pgid: int) -> _ProcHandle:
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "msgr_core.demo", "--node", name, "--listen", listen,
                "--settings", json.dumps(asdict(settings)),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log,
                process_group=pgid,  # 0: a new group led by the first child; then that group
            )
        finally:
            os.close(log)
        return cls(name, proc, events)

    async def _read(self, events: Events) -> None:
        stdout = self.proc.stdout
        while stdout is not None:
            line = await stdout.readline()
            if not line:
                break
            try:
                events.put_nowait((self.name, json.loads(line)))
            except ValueError:
                events.put_nowait((self.name, {"event": "error", "text": line.decode(errors="replace").strip()}))
        events.put_nowait((self.name, {"event": "exit", "code": await self.proc.wait()}))

    def send(self, **cmd: Any) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.write((json.dumps(cmd) + "\n").encode())

    async def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def wait(self) -> int:
        return await self.proc.wait()


class _LocalHandle(_Handle):
    """An in-process node (``loop://``)."""

    def __init__(self, node: DemoNode, events: Events) -> None:
        self.name = node.name
        self.node = node
        self.pid = None
        self._events = events
        self._commands: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task = asyncio.create_task(self._serve())
        self._code = 0

    async def _serve(self) -> None:
        try:
            while not await self.node.command(await self._commands.get()):
                pass
        finally:
            self._events.put_nowait((self.name, {"event": "exit", "code": self._code}))

    def send(self, **cmd: Any) -> None:
        self._commands.put_nowait(cmd)

    async def kill(self) -> None:
        self._code = -signal.SIGKILL
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.node.crash()

    async def wait(self) -> int:
        await asyncio.gather(self._task, return_exceptions=True)
        return self._code


@dataclass
class _Row:
    """What the parent knows of one node."""

    name: str
    address: str = ""
    pid: int | None = None
    status: str = "starting"  # up, killed, stopped, exited
    view: list[str] | None = None
    phi: dict[str, float] = field(default_factory=dict)
    rtt: dict[str, float] = field(default_factory=dict)
    eager: list[str] = field(default_factory=list)
    lazy: list[str] = field(default_factory=list)
    notes_out: int = 0
    notes_in: int = 0
    delivered: dict[str, tuple[int, str]] = field(default_factory=dict)
    hb_failed: dict[str, float] = field(default_factory=dict)  # peer -> seconds after the kill
    gossip_dead: dict[str, float] = field(default_factory=dict)
    quiet: dict[str, Any] | None = None
    exit_code: int | None = None


@dataclass
class _Check:
    name: str
    ok: bool
    detail: str


class _Model:
    def __init__(self, names: list[str], settings: DemoSettings) -> None:
        self.rows = {n: _Row(n) for n in names}
        self.settings = settings
        self.t0 = time.monotonic()
        self.kill_time: float | None = None
        self.victim: str | None = None
        self.phase = "start"
        self.checks: list[_Check] = []
        self.changed = asyncio.Condition()

    def since_kill(self) -> float:
        return time.monotonic() - (self.kill_time or self.t0)

    def live(self) -> list[_Row]:
        return [r for r in self.rows.values() if r.name != self.victim]


class _PlainDisplay:
    """Progressive lines: one per event, a table at the end of some phases."""

    def __init__(self, model: _Model) -> None:
        self.model = model

    def __enter__(self) -> _PlainDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def _t(self) -> str:
        return f"[{time.monotonic() - self.model.t0:5.1f}s]"

    def phase(self, title: str) -> None:
        print(f"\n== {title} ==", flush=True)

    def event(self, text: str) -> None:
        print(f"{self._t()} {text}", flush=True)

    def refresh(self) -> None:
        pass

    def table(self) -> None:
        for line in _table_lines(self.model):
            print("  " + line, flush=True)

    def summary(self, checks: list[_Check]) -> None:
        print("\n== summary ==", flush=True)
        for c in checks:
            print(f"  [{'PASS' if c.ok else 'FAIL'}] {c.name}: {c.detail}", flush=True)


def _short(name: str) -> str:
    return name.removeprefix("node-")


def _phi_text(row: _Row, peer: str, model: _Model) -> str:
    if peer == row.name:
        return "-"
    if peer in row.gossip_dead:
        return "dead"
    phi = row.phi.get(peer)
    return "?" if phi is None else f"{phi:.1f}"


def _rtt_text(row: _Row) -> str:
    """Mean heartbeat RTT to the members of the node's view."""
    rtts = [v for k, v in row.rtt.items() if row.view is None or k in row.view]
    return f"{statistics.mean(rtts):.2f}" if rtts else "-"


def _table_lines(model: _Model) -> list[str]:
    names = list(model.rows)
    head = f"{'node':8} {'pid':>7} {'state':8} {'view':16} " + " ".join(f"{'phi>' + _short(n):>6}" for n in names)
    head += f" {'hb rtt ms':>9}  eager(tree of {ROOT})"
    lines = [head]
    for r in model.rows.values():
        view = ",".join(_short(n) for n in r.view) if r.view is not None else "-"
        rtt = _rtt_text(r)
        phis = " ".join(f"{_phi_text(r, n, model):>6}" for n in names)
        lines.append(f"{r.name:8} {r.pid or 'in-proc'!s:>7} {r.status:8} {view:16} {phis} {rtt:>9}  "
                     f"{','.join(_short(n) for n in r.eager) or '-'}")
    return lines


class _RichDisplay:
    """A live table under a scrolling log (stdout is a terminal)."""

    def __init__(self, model: _Model) -> None:
        from rich.console import Console
        from rich.live import Live

        self.model = model
        self.console = Console()
        self.live = Live(console=self.console, auto_refresh=False, transient=False)
        self._last = 0.0

    def __enter__(self) -> _RichDisplay:
        self.live.start()
        self.refresh(force=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.refresh(force=True)
        self.live.stop()

    def phase(self, title: str) -> None:
        from rich.text import Text

        self.console.rule(Text(title, style="bold"))
        self.refresh(force=True)

    def event(self, text: str) -> None:
        from rich.text import Text

        t = time.monotonic() - self.model.t0
        self.console.print(Text.assemble((f"{t:5.1f}s ", "dim"), text))
        self.refresh()

    def table(self) -> None:
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last > 0.1:
            self._last = now
            self.live.update(self._render(), refresh=True)

    def _render(self) -> Any:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        model = self.model
        names = list(model.rows)
        table = Table(title=f"msgr demo — {model.phase}", title_justify="left", expand=False)
        for col in ("node", "pid", "state", "view"):
            table.add_column(col)
        for n in names:
            table.add_column(f"phi→{_short(n)}", justify="right")
        table.add_column("hb rtt ms", justify="right")
        table.add_column(f"eager ({ROOT}'s tree)")
        table.add_column("broadcasts: hops via")
        threshold = model.settings.phi_threshold
        for r in model.rows.values():
            style = {"up": "green", "killed": "red", "starting": "yellow"}.get(r.status, "")
            cells: list[Any] = [r.name, str(r.pid or "in-proc"), Text(r.status, style=style),
                                ",".join(_short(n) for n in r.view) if r.view is not None else "-"]
            for n in names:
                txt = _phi_text(r, n, model)
                phi = r.phi.get(n, 0.0)
                cells.append(Text(txt, style="red bold" if txt == "dead" else
                                  ("yellow" if phi > threshold / 2 else "")))
            cells.append(_rtt_text(r))
            cells.append(",".join(_short(n) for n in r.eager) or "-")
            cells.append(" ".join(f"{i}:{h}←{_short(s)}" for i, (h, s) in r.delivered.items()))
            table.add_row(*cells)
        return Group(table, Text(model.settings.describe(), style="dim"))

    def summary(self, checks: list[_Check]) -> None:
        from rich.table import Table
        from rich.text import Text

        self.refresh(force=True)
        self.live.stop()
        table = Table(title="summary", title_justify="left")
        table.add_column("check")
        table.add_column("result")
        table.add_column("detail")
        for c in checks:
            table.add_row(c.name, Text("PASS", style="green") if c.ok else Text("FAIL", style="red bold"),
                          Text(c.detail))
        self.console.print(table)


Display = _PlainDisplay | _RichDisplay


class _Scenario:
    def __init__(self, model: _Model, handles: dict[str, _Handle], display: Display, events: Events,
                 deadline: float) -> None:
        self.model = model
        self.handles = handles
        self.display = display
        self.events = events
        self.deadline = deadline
        self._pump = asyncio.create_task(self._consume())

    # -- events -> model -----------------------------------------------------------

    async def _consume(self) -> None:
        while True:
            name, ev = await self.events.get()
            self._apply(self.model.rows[name], ev)
            async with self.model.changed:
                self.model.changed.notify_all()
            self.display.refresh()

    def _apply(self, r: _Row, ev: dict[str, Any]) -> None:
        kind = ev.get("event")
        say = self.display.event
        if kind == "ready":
            r.address, r.pid, r.status = ev["address"], ev.get("pid"), "up"
            say(f"{r.name} up (pid {r.pid or 'in-process'}) listening on {r.address}")
        elif kind == "state":
            r.view, r.phi, r.rtt = ev["view"], ev["phi"], ev["rtt"]
            r.eager, r.lazy = ev["eager"], ev["lazy"]
            r.notes_out, r.notes_in = ev["out"], ev["in"]
        elif kind == "view":
            r.view = ev["members"]
            if self.model.phase != "membership":
                say(f"{r.name}: view changed to [{', '.join(ev['members'])}]")
        elif kind == "alive" and self.model.phase != "membership":
            say(f"{r.name}: gossip marks {ev['peer']} alive")
        elif kind == "deliver":
            r.delivered[str(ev["id"])] = (ev["hops"], ev["sender"])
            say(f"{r.name} delivered broadcast {ev['id']} after {ev['hops']} hop(s), from {ev['sender']}")
        elif kind == "failed":
            r.hb_failed[ev["peer"]] = self.model.since_kill()
            say(f"{r.name}: heartbeat peer_failed {ev['peer']} {self.model.since_kill():.1f} s after the kill "
                f"({ev['reason']})")
        elif kind == "dead":
            r.gossip_dead[ev["peer"]] = self.model.since_kill()
            phi, threshold = ev.get("phi"), self.model.settings.phi_threshold
            if ev["peer"] == self.model.victim:
                say(f"{r.name}: gossip on_dead {ev['peer']} {self.model.since_kill():.1f} s after the kill"
                    + (f" (phi {phi:.1f} > {threshold:g})" if phi is not None and phi > threshold else ""))
            else:
                say(f"{r.name}: gossip on_dead {ev['peer']}" + (" (it announced its shutdown)"
                                                                if self.model.phase == "stop" else ""))
        elif kind == "quiet":
            r.quiet = ev
        elif kind == "stopped":
            r.status = "stopped"
        elif kind == "error":
            say(f"{r.name}: {ev['text']}")
        elif kind == "exit":
            r.exit_code = ev["code"]
            if r.status not in ("killed", "stopped"):
                r.status = "exited"
                say(f"{r.name} exited unexpectedly (code {r.exit_code})")

    async def until(self, pred: Callable[[], bool], timeout: float) -> bool:
        """Wait (event-driven) until ``pred()`` holds; ``False`` on timeout
        or when the demo's overall deadline comes first."""
        timeout = min(timeout, self.deadline - time.monotonic())
        async with self.model.changed:
            try:
                await asyncio.wait_for(self.model.changed.wait_for(pred), max(timeout, 0.0))
                return True
            except TimeoutError:
                return pred()

    def check(self, name: str, ok: bool, detail: str) -> bool:
        self.model.checks.append(_Check(name, ok, detail))
        self.display.event(("check passed: " if ok else "CHECK FAILED: ") + f"{name}: {detail}")
        return ok

    async def close(self) -> None:
        self._pump.cancel()
        await asyncio.gather(self._pump, return_exceptions=True)

    # -- the phases ------------------------------------------------------------------

    async def broadcast(self, msg_id: str, rows: list[_Row], label: str) -> bool:
        self.handles[ROOT].send(cmd="bcast", id=msg_id, text=label)
        others = [r for r in rows if r.name != ROOT]
        ok = await self.until(lambda: all(msg_id in r.delivered for r in others), 15)
        got = [r for r in others if msg_id in r.delivered]
        hops = {r.name: r.delivered[msg_id][0] for r in got}
        path = ", ".join(f"{r.name} {r.delivered[msg_id][0]} hop(s) via {r.delivered[msg_id][1]}" for r in got)
        return self.check(label, ok, f"{msg_id} from {ROOT} reached {len(got)}/{len(others)} nodes"
                          + (f", max {max(hops.values())} hops" if hops else "") + (f" ({path})" if path else ""))

    async def run(self, duration: float, seeds: list[str]) -> None:
        model, display = self.model, self.display
        rows = list(model.rows.values())
        names = sorted(model.rows)

        model.phase = "membership"
        display.phase(f"membership: gossip through seeds {', '.join(seeds)}")
        for h in self.handles.values():
            h.send(cmd="join", seeds=seeds)
        formed = await self.until(lambda: all(r.view == names for r in rows), 20)
        display.table()
        if not self.check("membership", formed,
                          f"every node's view holds all {len(names)} nodes" if formed else
                          "views: " + "; ".join(f"{r.name}={r.view}" for r in rows)):
            return

        model.phase = "broadcast"
        display.phase(f"broadcast: {ROOT} broadcasts b1 through plumtree")
        await self.broadcast("b1", rows, "broadcast reaches every node")

        model.phase = "steady"
        display.phase(f"steady state for {duration:g} s: verbs and notes between random members")
        await asyncio.sleep(duration)  # the display refreshes as the nodes report
        display.table()

        victim = self.handles[names[-1]]
        model.phase = "kill"
        display.phase(f"kill: SIGKILL {victim.name}" + ("" if victim.pid else " (in-process: aborted, nothing said)"))
        model.victim = victim.name
        model.rows[victim.name].status = "killed"
        model.kill_time = time.monotonic()
        await victim.kill()
        display.event(f"{victim.name} killed" + (f" (pid {victim.pid})" if victim.pid else ""))
        live = model.live()
        await self.broadcast("b2", live, "broadcast right after the kill reaches every survivor")

        model.phase = "conviction"
        display.phase(f"conviction: heartbeat (grace {model.settings.hb_grace:g} s) and gossip "
                      f"(phi > {model.settings.phi_threshold:g}) on every survivor")
        v = victim.name
        hb = await self.until(lambda: all(v in r.hb_failed for r in live), 15)
        times = sorted(r.hb_failed[v] for r in live if v in r.hb_failed)
        self.check("heartbeat conviction", hb, f"{len(times)}/{len(live)} survivors raised peer_failed({v})"
                   + (f" {times[0]:.1f}-{times[-1]:.1f} s after the kill" if times else ""))
        gossip = await self.until(lambda: all(v in r.gossip_dead for r in live), 25)
        times = sorted(r.gossip_dead[v] for r in live if v in r.gossip_dead)
        self.check("gossip conviction", gossip, f"{len(times)}/{len(live)} survivors ran on_dead({v})"
                   + (f" {times[0]:.1f}-{times[-1]:.1f} s after the kill" if times else ""))
        survivors = sorted(r.name for r in live)
        views = await self.until(lambda: all(r.view == survivors for r in live), 10)
        display.table()
        self.check("view change", views, f"every survivor's view is [{', '.join(survivors)}]" if views else
                   "views: " + "; ".join(f"{r.name}={r.view}" for r in live))

        model.phase = "tree repair"
        display.phase(f"tree repair: {ROOT} broadcasts b3 over the repaired tree")
        await self.broadcast("b3", live, "broadcast after the view change reaches every survivor")
        display.event("eager links of the tree rooted at " + ROOT + ": " +
                      "; ".join(f"{r.name}→{','.join(r.eager) or '-'}" for r in live))

        model.phase = "nothing lost"
        display.phase("nothing lost: stop talking, flush, count")
        for r in live:
            self.handles[r.name].send(cmd="quiesce")
        quiet = await self.until(lambda: all(r.quiet is not None for r in live), 20)
        self._check_notes(live, quiet)

        model.phase = "stop"
        display.phase("clean stop: survivors stop gracefully")
        for r in live:
            self.handles[r.name].send(cmd="stop")
        stopped = await self.until(lambda: all(r.exit_code is not None for r in live), 20)
        codes = {r.name: r.exit_code for r in live}
        self.check("clean stop", stopped and all(c == 0 for c in codes.values()),
                   "exit codes " + ", ".join(f"{n}={c}" for n, c in codes.items()))

    def _check_notes(self, live: list[_Row], quiet: bool) -> None:
        if not quiet:
            self.check("nothing lost", False, "not every survivor reported its counts")
            return
        by_name = {r.name: r.quiet or {} for r in live}
        sent = lost = reported = dup = 0
        bad: list[str] = []
        for a, qa in by_name.items():
            for b, n in qa.get("sent", {}).items():
                if b not in by_name:
                    continue  # the victim
                got = by_name[b].get("received", {}).get(a, 0)
                rep = qa.get("undeliverable", {}).get(b, 0)
                sent += n
                reported += rep
                if got + rep < n:
                    lost += n - got - rep
                    bad.append(f"{a}→{b} sent {n}, arrived {got}, reported {rep}")
                elif got > n:
                    dup += got - n
                    bad.append(f"{a}→{b} sent {n}, arrived {got}")
        requests = sum(q.get("requests", 0) for q in by_name.values())
        p50 = [q["p50_ms"] for q in by_name.values() if q.get("p50_ms") is not None]
        detail = (f"{sent} demo.note between survivors, {sent - reported - lost} arrived, "
                  f"{reported} reported undeliverable, {lost} lost, {dup} duplicated; "
                  f"{requests} demo.hello calls" + (f", median rtt {statistics.median(p50):.2f} ms" if p50 else ""))
        self.check("nothing lost", not bad and sent > 0, detail + ("" if not bad else " — " + "; ".join(bad[:5])))


async def _demo(nodes: int, transport: str, duration: float, live_display: bool, settings: DemoSettings) -> int:
    names = [f"node-{i + 1}" for i in range(nodes)]
    model = _Model(names, settings)
    events: Events = asyncio.Queue()
    handles: dict[str, _Handle] = {}
    tmp = tempfile.mkdtemp(prefix="msgr-demo-")
    pgid = 0
    ok = False
    display: Display = _RichDisplay(model) if live_display else _PlainDisplay(model)
    loop = asyncio.get_running_loop()
    me = asyncio.current_task()
    if me is not None:
        loop.add_signal_handler(signal.SIGTERM, me.cancel)
    scenario: _Scenario | None = None
    try:
        with display:
            where = ("in this process on the simulated loop:// network (loopback cannot cross processes)"
                     if transport == "loop" else f"one process each, over {transport} on loopback")
            display.phase(f"start: {nodes} nodes {where}, with heartbeat, gossip and plumtree")
            display.event(settings.describe())
            for name in names:
                listen = LISTEN[transport].format(name=name, tmp=tmp)
                if transport == "loop":
                    node = DemoNode(name, listen, settings, _to_queue(events, name))
                    await node.start()
                    handles[name] = _LocalHandle(node, events)
                    events.put_nowait((name, {"event": "ready", "address": node.address, "pid": None}))
                else:
                    h = await _ProcHandle.spawn(name, listen, settings, events, os.path.join(tmp, f"{name}.log"),
                                                pgid)
                    pgid = pgid or h.proc.pid
                    handles[name] = h
            scenario = _Scenario(model, handles, display, events, deadline=model.t0 + 55.0)
            rows = list(model.rows.values())
            started = await scenario.until(lambda: all(r.status == "up" for r in rows), 30)
            if scenario.check("start", started, f"{sum(r.status == 'up' for r in rows)}/{nodes} nodes up"):
                seeds = [r.address for r in rows[:2]]
                await scenario.run(duration, seeds)
            ok = all(c.ok for c in model.checks)
            display.summary(model.checks)
        elapsed = time.monotonic() - model.t0
        passed = sum(c.ok for c in model.checks)
        print(f"demo {'ok' if ok else 'FAILED'}: {passed}/{len(model.checks)} checks passed in {elapsed:.1f} s",
              flush=True)
        if not ok and transport != "loop":
            _show_logs(tmp, names)
        return 0 if ok else 1
    except asyncio.CancelledError:
        print("\ninterrupted: stopping every node", flush=True)
        return 130
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        if scenario is not None:
            await scenario.close()
        await _cleanup(handles, pgid)
        if ok or transport == "loop":
            shutil.rmtree(tmp, ignore_errors=True)


def _to_queue(events: Events, name: str) -> Emit:
    def emit(event: dict[str, Any]) -> None:
        events.put_nowait((name, event))

    return emit


async def _cleanup(handles: dict[str, _Handle], pgid: int) -> None:
    """Leave nothing behind: kill the children's process group, reap them,
    abort in-process nodes."""
    if pgid:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    for h in handles.values():
        if isinstance(h, _ProcHandle):
            if h.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    h.proc.kill()
            await h.proc.wait()
            h._reader.cancel()
            await asyncio.gather(h._reader, return_exceptions=True)
        elif isinstance(h, _LocalHandle):
            h._task.cancel()
            await asyncio.gather(h._task, return_exceptions=True)
            if h.node.ms.running:
                await h.node.crash()


def _show_logs(tmp: str, names: Iterable[str]) -> None:
    for name in names:
        path = os.path.join(tmp, f"{name}.log")
        with contextlib.suppress(OSError), open(path, errors="replace") as f:
            tail = f.read().splitlines()[-15:]
            if tail:
                print(f"--- {name} stderr (last lines, {path}) ---", flush=True)
                print("\n".join(tail), flush=True)


def _missing_plugins(transport: str) -> list[str]:
    from .registry import installed_plugins

    have = {(i.kind, i.name) for i in installed_plugins()}
    missing = [dist for name, dist in EXTENSIONS.items() if ("extension", name) not in have]
    if ("transport", transport) not in have:
        missing.append(TRANSPORT_DISTS[transport])
    return missing


def run_demo(nodes: int = 5, transport: str = "tcp", duration: float = 3.0, *, live: bool | None = None,
             settings: DemoSettings | None = None) -> int:
    """Run the demo; returns the exit status: 0 when every check passed, 1
    when one failed, 2 for bad options or missing plugins, 130 when
    interrupted.  ``live``: the rich display (default: when stdout is a
    terminal)."""
    if transport not in LISTEN:
        print(f"msgr demo: --transport must be one of {', '.join(LISTEN)}; got {transport!r}", file=sys.stderr)
        return 2
    if not 3 <= nodes <= 16:
        print(f"msgr demo: --nodes must be 3 to 16 (a node is killed, two must remain); got {nodes}",
              file=sys.stderr)
        return 2
    if duration < 0:
        print(f"msgr demo: --duration must be >= 0; got {duration:g}", file=sys.stderr)
        return 2
    missing = _missing_plugins(transport)
    if missing:
        print(f"msgr demo needs {', '.join(missing)}: pip install {' '.join(missing)}", file=sys.stderr)
        return 2
    if live is None:
        live = sys.stdout.isatty()
    try:
        return asyncio.run(_demo(nodes, transport, duration, live, settings or DemoSettings()))
    except KeyboardInterrupt:
        print("\ninterrupted: every node stopped", flush=True)
        return 130


def _main() -> int:
    parser = argparse.ArgumentParser(description="one msgr demo node (started by `msgr demo`)")
    parser.add_argument("--node", required=True)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--settings", default="{}")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s {args.node} %(name)s %(levelname)s %(message)s")
    settings = DemoSettings(**json.loads(args.settings))
    return asyncio.run(_child(args.node, args.listen, settings))


if __name__ == "__main__":
    sys.exit(_main())
