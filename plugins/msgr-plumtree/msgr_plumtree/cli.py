"""``msgr sim plumtree`` (added through ``msgr_cli_commands``)."""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import sys
import time
from typing import Any

from msgr_core import Messenger
from msgr_core.errors import MsgrError

__all__ = ["add_commands", "format_tree", "get_tree"]


def _group(subparsers: argparse._SubParsersAction[argparse.ArgumentParser], name: str,
           help: str) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """The subcommands of ``msgr NAME``, created here or by another plugin."""
    parser = subparsers.choices.get(name) or subparsers.add_parser(name, help=help)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return parser.add_subparsers(dest=f"{name}_command", metavar="ACTION")


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    g = _group(subparsers, "plumtree", "Plumtree broadcast tools")
    p = g.add_parser("tree", help="the broadcast tree as every member of ADDR's cluster sees it")
    p.add_argument("address", help="a node's messenger address (tcp://host:port)")
    p.add_argument("--root", default="", help="the tree's root (default: that node)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the indented tree")
    p.add_argument("--timeout", type=float, default=10.0)
    p.set_defaults(func=_cmd_tree)

    s = _group(subparsers, "sim", "simulations over loop:// under virtual time")
    p = s.add_parser("plumtree", help="Plumtree over N simulated nodes: reliability, RMR, LDH (the paper's metrics)")
    p.add_argument("--nodes", type=int, nargs="+", default=[100], help="cluster sizes")
    p.add_argument("--seeds", type=int, default=1, help="runs per size (seeds 0 ..)")
    p.add_argument("--broadcasts", type=int, default=5, help="broadcasts per steady scenario")
    p.add_argument("--fail", type=float, nargs="*", default=[0.4, 0.6, 0.8],
                   help="fractions of nodes crashing at once (one cluster each)")
    p.add_argument("--tree", choices=["per_root", "shared"], default="per_root")
    p.add_argument("--graft-mode", choices=["partisan", "paper"], default="partisan")
    p.add_argument("--csv", help="also write the rows to this CSV file")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_sim)


async def get_tree(address: str, root: str = "", timeout: float = 10.0) -> dict[str, Any]:
    """The ``pt.tree`` reply of the node at ``address`` (its view of the
    tree rooted at ``root``, default: that node's own tree).

    :raises MsgrError: unreachable, timed out, or plumtree not enabled there.
    """
    ms = Messenger.from_config({"messenger": {"name": f"msgr-plumtree-tree.{os.getpid()}", "type": "client"}})
    async with ms:
        reply = await ms.get_connection(address, policy="lossy_client").request("pt.tree", root, timeout=timeout)
        return reply.payload  # type: ignore[no-any-return]


def format_tree(reply: dict[str, Any]) -> str:
    """The tree as indented text: the root, then each node under the peer
    it is linked to by a mutual eager link (a breadth-first spanning tree
    of those links); lazy links and unreachable nodes listed after."""
    tree = reply["tree"]
    eager = {n: set(v[0]) for n, v in tree.items() if not isinstance(v, str)}
    root = reply["root"]
    lines = [f"tree rooted at {root} (as collected by {reply['node']})"]
    seen = {root}
    order: list[tuple[int, str]] = []
    todo = [(0, root)]
    while todo:
        depth, node = todo.pop()
        order.append((depth, node))
        for child in sorted(eager.get(node, set()), reverse=True):
            if child not in seen and node in eager.get(child, set()):
                seen.add(child)
                todo.append((depth + 1, child))
    lines += ["  " * d + n for d, n in order]
    rest = sorted(set(eager) - seen)
    if rest:
        lines.append("not linked by eager links: " + ", ".join(rest))
    down = sorted(n for n, v in tree.items() if isinstance(v, str))
    if down:
        lines.append("did not answer: " + ", ".join(down))
    return "\n".join(lines)


def _cmd_tree(args: argparse.Namespace) -> int:
    try:
        reply = asyncio.run(get_tree(args.address, args.root, args.timeout))
    except MsgrError as exc:
        print(f"plumtree tree {args.address}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(reply, indent=2) if args.json else format_tree(reply))
    return 0


def _cmd_sim(args: argparse.Namespace) -> int:
    from .sim import format_rows, run

    rows = []
    for n in args.nodes:
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            got = run(n, seed, broadcasts=args.broadcasts, fail=tuple(args.fail), tree=args.tree,
                      graft_mode=args.graft_mode)
            rows.extend(got)
            if not args.json:
                print(format_rows(got), flush=True)
                print(f"# N={n} seed={seed}: {time.perf_counter() - t0:.1f} s wall", file=sys.stderr, flush=True)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0].as_dict()) if rows else ["nodes"])
            w.writeheader()
            for r in rows:
                w.writerow(r.as_dict())
    if args.json:
        print(json.dumps([r.as_dict() for r in rows], indent=2))
    return 0
