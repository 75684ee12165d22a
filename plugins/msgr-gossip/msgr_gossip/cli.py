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

__all__ = ["add_commands", "format_status", "get_status", "write_csv"]


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
    p.add_argument("--rng-seed", type=int, default=0, help="the first run's seed")
    p.add_argument("--runs", type=int, default=1, help="runs per size, seeds RNG_SEED, RNG_SEED+1, ...")
    p.add_argument("--no-crash", action="store_true", help="skip the crash/conviction phase")
    p.add_argument("--preload", action="store_true",
                   help="skip the join: every node starts knowing every other alive (a converged cluster)")
    p.add_argument("--settle", type=int, default=10, help="with --preload: rounds before the trials")
    p.add_argument("--stagger", type=float, default=0.0,
                   help="start the trials this many rounds apart, overlapping (0: one after the other)")
    p.add_argument("--csv", help="also write one row per run to this CSV file")
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


def write_csv(path: str, results: list[Any]) -> None:
    """One row per :class:`~msgr_gossip.sim.SimResult` (``as_dict``, plus
    the per-trial rounds and per-observer convictions joined by spaces)."""
    import csv

    with open(path, "w", newline="") as f:
        w: Any = None
        for r in results:
            row = {**r.as_dict(), "rng_seed": r.rng_seed,
                   "rounds_all": " ".join(f"{x:.3f}" for x in r.rounds),
                   "conviction_all": " ".join(f"{x:.2f}" for x in r.conviction)}
            if w is None:
                w = csv.DictWriter(f, fieldnames=list(row))
                w.writeheader()
            w.writerow(row)


def _cmd_sim(args: argparse.Namespace) -> int:
    from .sim import format_table, run

    results = []
    for n in args.nodes:
        for k in range(args.runs):
            results.append(run(n, args.seeds, rounds=args.rounds, trials=args.trials, interval=args.interval,
                               fanout=args.fanout, threshold=args.threshold, rng_seed=args.rng_seed + k,
                               crash=not args.no_crash, preload=args.preload, settle=args.settle,
                               stagger=args.stagger))
            if not args.json:
                table = format_table(results[-1:])
                print(table if len(results) == 1 else table.split("\n")[1], flush=True)
            if args.csv:
                write_csv(args.csv, results)  # after every run: a long run keeps what it measured
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        print("rounds: time for every node to learn a new application state, in gossip intervals; "
              "convict: crash to conviction by each live node (virtual time)")
    return 0
