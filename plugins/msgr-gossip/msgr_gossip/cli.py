"""``msgr gossip status ADDR`` and ``msgr sim gossip`` (added through
``msgr_cli_commands``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from msgr_core import Messenger
from msgr_core.errors import MsgrError

from .gossiper import VERB_STATUS

__all__ = ["add_commands", "format_status", "get_status"]


def _sub(subparsers: argparse._SubParsersAction[argparse.ArgumentParser], name: str,
         help: str) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """The sub-subcommands of ``msgr NAME``, shared with other plugins that
    add to the same group (``msgr sim plumtree``)."""
    parser = subparsers.choices.get(name)
    if parser is None:
        parser = subparsers.add_parser(name, help=help)
        parser.add_subparsers(dest=f"{name}_command", metavar="ACTION")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return parser.add_subparsers(dest=f"{name}_command", metavar="ACTION")


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    g = _sub(subparsers, "gossip", "gossip membership tools")
    p = g.add_parser("status", help="a node's gossip view: endpoints, generation, version, status, phi")
    p.add_argument("address", help="the node's messenger address (tcp://host:port)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--timeout", type=float, default=5.0)
    p.set_defaults(func=_cmd_status)

    s = _sub(subparsers, "sim", "simulations over loop:// under virtual time")
    p = s.add_parser("gossip", help="simulate N gossiping nodes: dissemination, traffic, conviction")
    p.add_argument("--nodes", type=int, nargs="+", default=[30], help="cluster sizes (one run each)")
    p.add_argument("--seeds", type=int, default=3, help="seed nodes")
    p.add_argument("--rounds", type=int, default=120, help="round budget per phase before giving up")
    p.add_argument("--trials", type=int, default=10, help="new application states disseminated (>= 10)")
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--fanout", type=int, default=1)
    p.add_argument("--threshold", type=float, default=8.0, help="phi_convict_threshold")
    p.add_argument("--rng-seed", type=int, default=0)
    p.add_argument("--no-crash", action="store_true", help="skip the crash/conviction phase")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_sim)


async def get_status(address: str, timeout: float = 5.0) -> dict[str, Any]:
    """The ``gossip.status`` of the node at ``address``.

    :raises MsgrError: unreachable, timed out, or gossip not enabled there.
    """
    ms = Messenger.from_config({"messenger": {"name": f"msgr-gossip-status.{os.getpid()}", "type": "client"}})
    async with ms:
        conn = ms.get_connection(address, policy="lossy_client")
        reply = await conn.request(VERB_STATUS, b"", timeout=timeout)
        return reply.payload  # type: ignore[no-any-return]


def format_status(status: dict[str, Any]) -> str:
    """A ``gossip.status`` reply as a table."""
    head = ("endpoint", "generation", "version", "heartbeat", "status", "state", "phi", "addrs")
    rows = [head]
    for ep in status["endpoints"]:
        rows.append((ep["endpoint"] + (" *" if ep["endpoint"] == status["name"] else ""), str(ep["generation"]),
                     str(ep["version"]), str(ep["heartbeat"]), ep["status"] or "-",
                     "up" if ep["alive"] else "DOWN", f"{ep['phi']:.2f}", ",".join(ep["addrs"])))
    widths = [max(len(r[c]) for r in rows) for c in range(len(head))]
    lines = [f"{status['name']}: {status['live']} live, {status['unreachable']} unreachable, "
             f"{status['rounds']} rounds"]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def _cmd_status(args: argparse.Namespace) -> int:
    try:
        status = asyncio.run(get_status(args.address, args.timeout))
    except MsgrError as exc:
        print(f"gossip status {args.address}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return 0


def _cmd_sim(args: argparse.Namespace) -> int:
    from .sim import format_table, run

    results = []
    for n in args.nodes:
        results.append(run(n, args.seeds, rounds=args.rounds, trials=args.trials, interval=args.interval,
                           fanout=args.fanout, threshold=args.threshold, rng_seed=args.rng_seed,
                           crash=not args.no_crash))
        if not args.json:
            print(format_table(results[-1:]) if len(results) == 1 else format_table(results[-1:]).split("\n")[1],
                  flush=True)
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        print("rounds: time for every node to learn a new application state, in gossip intervals; "
              "convict: crash to conviction by each live node (virtual time)")
    return 0
