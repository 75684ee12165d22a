"""``msgr sim plumtree`` (added through ``msgr_cli_commands``)."""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import sys
import time
from pathlib import Path
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
    p.add_argument("--svg", metavar="FILE", help="also draw the tree (mutual eager links) as SVG into FILE")
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
    paper = p.add_argument_group("the paper's experiment over HyParView (--paper)")
    paper.add_argument("--paper", action="store_true",
                       help="run the paper's scenarios over HyParView (eager-gossip baseline, single and random "
                            "sender, steady failures, massive failures) instead of the full-membership ones")
    paper.add_argument("--scenarios", nargs="+", default=["baseline", "single", "random", "steady", "massive"],
                       choices=["baseline", "single", "random", "steady", "massive"])
    paper.add_argument("--first-seed", type=int, default=0, help="seeds FIRST_SEED .. FIRST_SEED+SEEDS-1")
    paper.add_argument("--fanout", type=int, default=4, help="eager-gossip baseline fanout")
    paper.add_argument("--cycles", type=int, default=100, help="steady failures: cycles")
    paper.add_argument("--rate", type=float, default=0.005, help="steady failures: fraction failing per cycle")
    paper.add_argument("--after", type=int, default=10, help="massive failures: broadcasts after the failure")
    paper.add_argument("--settle", type=float, default=30.0,
                       help="seconds (virtual) for the overlay to form, at least; then until a shuffle period "
                            "passes without a change of any active view")
    paper.add_argument("--max-settle", type=float, default=600.0,
                       help="seconds (virtual) for the overlay to form, at most")
    paper.add_argument("--join-interval", type=float, default=0.01,
                       help="seconds (virtual) between two nodes' joins through n0, as the paper's overlays were "
                            "built one join at a time (0: every node joins at the same instant, a join storm)")
    paper.add_argument("--plot", metavar="PNG", help="plot the rows (needs matplotlib: msgr-plumtree[sim])")
    paper.add_argument("--svg", metavar="FILE", help="draw the delivery tree of the last single-sender broadcast")
    paper.add_argument("--from-csv", metavar="CSV", help="run nothing: summarize (and --plot) the rows of a CSV "
                                                         "an earlier --paper run wrote")
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
    of those links, :func:`msgr_plumtree.svg.eager_tree`); nodes not linked
    and unreachable nodes listed after."""
    from .svg import eager_tree

    root = reply["root"]
    children, rest, down = eager_tree(reply["tree"], root)
    lines = [f"tree rooted at {root} (as collected by {reply['node']})"]
    todo = [(0, root)]
    while todo:
        depth, node = todo.pop()
        lines.append("  " * depth + node)
        todo += [(depth + 1, c) for c in reversed(children.get(node, []))]
    if rest:
        lines.append("not linked by eager links: " + ", ".join(rest))
    if down:
        lines.append("did not answer: " + ", ".join(down))
    return "\n".join(lines)


def write_tree_svg(reply: dict[str, Any], path: str) -> None:
    """Draw a ``pt.tree`` reply (its mutual eager links) as SVG into ``path``."""
    from .svg import eager_tree, tree_svg

    root = reply["root"]
    children, rest, down = eager_tree(reply["tree"], root)
    with open(path, "w") as f:
        f.write(tree_svg(children, root, extra=rest + down,
                         title=f"eager links of the tree rooted at {root} (collected by {reply['node']})"))


def _cmd_tree(args: argparse.Namespace) -> int:
    try:
        reply = asyncio.run(get_tree(args.address, args.root, args.timeout))
    except MsgrError as exc:
        print(f"plumtree tree {args.address}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(reply, indent=2) if args.json else format_tree(reply))
    if args.svg:
        write_tree_svg(reply, args.svg)
    return 0


def _write_csv(path: str, rows: list[Any]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].as_dict()) if rows else ["nodes"])
        w.writeheader()
        for r in rows:
            w.writerow(r.as_dict())


def _cmd_paper(args: argparse.Namespace) -> int:
    import resource

    from .sim import format_summary, run_paper, summarize
    from .svg import tree_svg

    rows: list[Any] = []
    pictures: list[str] = []
    if args.from_csv:
        from .sim import read_rows

        rows = read_rows(args.from_csv)
    for n in [] if args.from_csv else args.nodes:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            t0, c0 = time.perf_counter(), time.process_time()

            settled: list[str] = []

            async def picture(name: str, cluster: Any, seed: int = seed, n: int = n,
                              settled: list[str] = settled) -> None:
                if name != "single":  # the plumtree cluster reports again when it stops
                    settled.append(f"{name} {cluster.settle_time:.0f} s")
                last = cluster.last
                if args.svg and name == "single" and seed == args.first_seed and last is not None:
                    pictures.append(tree_svg(
                        cluster.children(last.msg_id), last.root,
                        title=f"delivery tree of broadcast {args.broadcasts} from {last.root}, N={n}, seed {seed}"))

            def measured(row: Any) -> None:
                rows.append(row)
                if args.csv:
                    _write_csv(args.csv, rows)  # a long run keeps every row it measured

            run_paper(n, seed, scenarios=tuple(args.scenarios), broadcasts=args.broadcasts,
                      fanout=args.fanout, steady_cycles=args.cycles, steady_rate=args.rate,
                      fail=tuple(args.fail), after_failure=args.after, settle=args.settle,
                      max_settle=args.max_settle, join_interval=args.join_interval, on_cluster=picture,
                      on_row=measured)
            if args.svg and pictures:
                Path(args.svg).write_text(pictures[-1])
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"# N={n} seed={seed}: {time.perf_counter() - t0:.1f} s wall, "
                  f"{time.process_time() - c0:.1f} s CPU, peak RSS {rss:.0f} MB; overlay settled in "
                  f"{', '.join(settled)} (virtual)", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(summarize(rows), indent=2))
    else:
        print(format_summary(summarize(rows)))
    if args.plot:
        from .sim import plot

        plot(rows, args.plot)
    return 0


def _cmd_sim(args: argparse.Namespace) -> int:
    if args.paper:
        return _cmd_paper(args)
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
        _write_csv(args.csv, rows)
    if args.json:
        print(json.dumps([r.as_dict() for r in rows], indent=2))
    return 0
