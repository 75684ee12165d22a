"""The ``msgr`` command.

::

    msgr plugins [--json]            what is installed (transports, extensions)
    msgr config check FILE           check a config file; exit 1 with the error
    msgr run --config FILE [--metrics-port PORT]
                                     run a node until Ctrl-C / SIGTERM (graceful); it answers
                                     `msgr status`, and serves Prometheus metrics with --metrics-port
    msgr status ADDR [--json]        a node's sessions, view and extension state
    msgr ping ADDR [-c N]            handshake + round trips, prints RTTs
    msgr demo [--nodes N] [--transport T] [--duration S]
                                     a live cluster: heartbeat, gossip, plumtree, a node killed

Plugins add subcommands through the ``msgr_cli_commands`` hook.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from . import __version__
from .config import load_config
from .errors import MsgrError
from .messenger import Messenger
from .registry import EXTENSION_GROUP, TRANSPORT_GROUP, PluginSet, installed_plugins

__all__ = ["main"]


def _cmd_plugins(args: argparse.Namespace) -> int:
    infos = installed_plugins(load=True)
    if args.json:
        print(json.dumps([i.as_dict() for i in infos], indent=2))
        return 0
    rows = [("name", "kind", "distribution", "version", "status")]
    rows += [(i.name, i.kind, i.distribution, i.version, i.status) for i in infos]
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    for r in rows:
        print("  ".join(r[c].ljust(widths[c]) for c in range(4)) + "  " + r[4])
    if not infos:
        print("(no msgr plugins installed: pip install msgr-tcp, msgr-loopback, ...)")
    return 0


def _cmd_config_check(args: argparse.Namespace) -> int:
    try:
        Messenger.from_config(args.file)
    except MsgrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    cfg = load_config(args.file)
    ms = cfg["messenger"]
    print(f"{args.file}: ok (name {ms['name']}, listen {', '.join(ms['listen']) or 'nothing'}, "
          f"transports {', '.join(cfg.transports) or 'by address'}, "
          f"extensions {', '.join(ms['extensions']) or 'none'})")
    return 0


async def _run_node(config: str, metrics_port: int | None = None, metrics_host: str = "127.0.0.1") -> int:
    """Run a node until SIGINT/SIGTERM.  It answers ``msgr.node_status``
    (``msgr status``) and, with ``metrics_port``, serves Prometheus metrics."""
    from .status import serve_status

    ms = Messenger.from_config(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    metrics = None
    if metrics_port is not None:
        from .metrics import start_metrics_server  # needs prometheus-client (msgr-core[metrics])

        try:
            metrics = start_metrics_server(ms, metrics_port, metrics_host)
        except OSError as exc:
            print(f"error: cannot serve metrics on {metrics_host}:{metrics_port}: {exc}", file=sys.stderr)
            return 1
    serve_status(ms, {"metrics": metrics.url} if metrics else None)
    try:
        async with ms:
            print(f"{ms.name} listening on {' '.join(ms.addresses) or '(nothing)'}", flush=True)
            if metrics is not None:
                print(f"{ms.name} metrics on {metrics.url}", flush=True)
            await stop.wait()
            print(f"{ms.name} stopping", flush=True)
    finally:
        if metrics is not None:
            metrics.close()
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run_node(args.config, args.metrics_port, args.metrics_host))
    except MsgrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _cmd_status(args: argparse.Namespace) -> int:
    from .status import fetch_status, format_status

    try:
        status = asyncio.run(fetch_status(args.address, timeout=args.timeout))
    except MsgrError as exc:
        print(f"status {args.address}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return 0


async def _ping(address: str, count: int, size: int, timeout: float) -> int:
    ms = Messenger.from_config({"messenger": {"name": f"msgr-ping.{id(address):x}", "type": "client"}})
    payload = bytes(size)
    rtts: list[float] = []
    async with ms:
        try:
            t0 = time.perf_counter()
            # a probe: lossy, so an unreachable node fails at once
            conn = ms.get_connection(address, policy="lossy_client")
            await conn.request("msgr.ping", payload, timeout=timeout)
            first = (time.perf_counter() - t0) * 1e3
            print(f"connected to {conn.peer_name} ({conn.peer_type}) at {address} "
                  f"in {first:.2f} ms (connect + handshake + first round trip)")
            for i in range(count):
                t0 = time.perf_counter()
                await conn.request("msgr.ping", payload, timeout=timeout)
                rtt = (time.perf_counter() - t0) * 1e3
                rtts.append(rtt)
                print(f"{size} bytes from {conn.peer_name}: seq={i + 1} rtt={rtt:.3f} ms")
        except MsgrError as exc:
            print(f"ping {address}: {exc}", file=sys.stderr)
            return 1
    if rtts:
        print(f"--- {address}: {len(rtts)} round trips, rtt min/median/max = "
              f"{min(rtts):.3f}/{statistics.median(rtts):.3f}/{max(rtts):.3f} ms")
    return 0


def _cmd_ping(args: argparse.Namespace) -> int:
    return asyncio.run(_ping(args.address, args.count, args.size, args.timeout))


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(nodes=args.nodes, transport=args.transport, duration=args.duration)


def build_parser(plugins: PluginSet | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="msgr", description="msgr: a pluggable messenger for cluster software")
    parser.add_argument("--version", action="version", version=f"msgr-core {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("plugins", help="list installed transports and extensions")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_plugins)

    p = sub.add_parser("config", help="work with config files")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION")
    c = csub.add_parser("check", help="check a config file (exit 1 with the error)")
    c.add_argument("file")
    c.set_defaults(func=_cmd_config_check)

    p = sub.add_parser("run", help="run a node until Ctrl-C / SIGTERM")
    p.add_argument("--config", required=True, help="TOML config file")
    p.add_argument("--metrics-port", type=int, metavar="PORT",
                   help="serve Prometheus metrics on http://HOST:PORT/metrics (0: pick a port; "
                        "needs prometheus-client: pip install 'msgr-core[metrics]')")
    p.add_argument("--metrics-host", default="127.0.0.1", metavar="HOST",
                   help="address the metrics server binds (default 127.0.0.1; 0.0.0.0 for every interface)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("status", help="a node's sessions, view and extension state")
    p.add_argument("address", help="the node's address, e.g. tcp://127.0.0.1:6800")
    p.add_argument("--json", action="store_true", help="print the raw status as JSON")
    p.add_argument("--timeout", type=float, default=5.0)
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("ping", help="handshake with a node and time round trips")
    p.add_argument("address")
    p.add_argument("-c", "--count", type=int, default=5)
    p.add_argument("-s", "--size", type=int, default=64, help="payload bytes")
    p.add_argument("--timeout", type=float, default=5.0)
    p.set_defaults(func=_cmd_ping)

    p = sub.add_parser(
        "demo", help="a live cluster: heartbeat, gossip, plumtree, a node killed and convicted",
        description="Start a cluster with msgr-heartbeat, msgr-gossip and msgr-plumtree enabled, show "
                    "membership, phi and a broadcast live, kill one node (SIGKILL), show its conviction, "
                    "the view change and the tree repair, then check nothing was lost.  Exits 0 when every "
                    "check passed.  Timers are shortened so it takes seconds (it says which).")
    p.add_argument("--nodes", type=int, default=5, help="cluster size, 3 to 16 (default 5)")
    p.add_argument("--transport", default="tcp", choices=["tcp", "zmq+tcp", "unix", "loop"],
                   help="tcp (default), zmq+tcp and unix: one process per node on loopback; loop: every "
                        "node in this process on msgr-loopback's simulated network (loop:// cannot cross "
                        "processes)")
    p.add_argument("--duration", type=float, default=3.0,
                   help="seconds of steady traffic between the first broadcast and the kill (default 3)")
    p.set_defaults(func=_cmd_demo)

    from .scaffold import add_new_plugin_parser  # `msgr new-plugin`: the logic lives in scaffold.py

    add_new_plugin_parser(sub)

    if plugins is not None:
        plugins.hook.msgr_cli_commands(subparsers=sub)
    return parser


def _plugins_for_cli() -> PluginSet:
    """Every installed plugin that loads (a broken one is skipped here and
    reported by ``msgr plugins``)."""
    ps = PluginSet()
    for info in installed_plugins():
        if info.status == "blocked":
            continue
        group = TRANSPORT_GROUP if info.kind == "transport" else EXTENSION_GROUP
        try:
            ps.load(group, [info.name])
        except MsgrError:
            continue
    return ps


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(_plugins_for_cli())
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    func: Any = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
