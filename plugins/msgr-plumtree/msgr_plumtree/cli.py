"""``msgr sim plumtree`` (added through ``msgr_cli_commands``)."""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time

__all__ = ["add_commands"]


def _group(subparsers: argparse._SubParsersAction[argparse.ArgumentParser], name: str,
           help: str) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """The subcommands of ``msgr NAME``, created here or by another plugin."""
    parser = subparsers.choices.get(name) or subparsers.add_parser(name, help=help)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return parser.add_subparsers(dest=f"{name}_command", metavar="ACTION")


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
