"""``python -m benchmarks``: run the cases, print a table, write JSON."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from .cases import CASES, NO_LOOP, available
from .harness import (
    LOOPS,
    BenchError,
    Job,
    Record,
    Settings,
    machine_info,
    now_iso,
    run_interleaved,
    run_job,
    source_revision,
    versions,
)
from .report import compute_ratios, format_ratios, format_records, record_row, usage_text

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "latest.json"

# Metrics worth a line in the live progress output (the JSON has them all).
_SHOWN = {"msgs_per_s", "throughput", "p50", "p99", "req_per_s", "idle_session_bytes", "idle_session_rss",
          "rx_cpu_per_msg", "tx_cpu_per_msg", "server_cpu_per_req", "client_cpu_per_req", "session_setup_per_s",
          "receiver_cpu", "sender_cpu", "client_cpu", "receiver_wait", "sender_wait", "client_wait"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="msgr side by side with raw asyncio, pyzmq and grpcio, in one run.")
    p.add_argument("--only", metavar="SUBSTRING", action="append", default=[],
                   help="run only the cases whose name contains SUBSTRING (repeatable)")
    p.add_argument("--impl", metavar="SUBSTRING", action="append", default=[],
                   help="run only the implementations whose name contains SUBSTRING (repeatable)")
    p.add_argument("--quick", action="store_true", help="3 short runs per figure (about a minute in all)")
    p.add_argument("--loop", choices=["asyncio", "uvloop", "both"], default=None,
                   help="event loop kinds to measure (default: both; asyncio only with --quick)")
    p.add_argument("--reps", type=int, default=None, help="measured runs per figure (default 5, --quick 3)")
    p.add_argument("--json", metavar="PATH", type=Path, default=DEFAULT_JSON,
                   help=f"where to write the results (default {DEFAULT_JSON})")
    p.add_argument("--profile", metavar="DIR", default=None,
                   help="run every worker under cProfile; write DIR/<job>.prof and a .txt summary "
                        "(figures measured this way are slower: use them for where, not how fast)")
    p.add_argument("--py-spy", metavar="DIR", default=None, dest="py_spy",
                   help="sample every worker with py-spy during the rounds; write DIR/<job>.raw "
                        "and DIR/<job>.summary.txt (pip install py-spy)")
    p.add_argument("--sequential", action="store_true",
                   help="run each job's rounds back to back instead of interleaving the rounds of a case's "
                        "jobs (always so with --py-spy/--profile)")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    return p


def _loops(arg: str | None, quick: bool) -> list[str]:
    if arg is None:
        arg = "asyncio" if quick else "both"
    loops = list(LOOPS) if arg == "both" else [arg]
    if "uvloop" in loops and not available("uvloop"):
        print("uvloop is not installed: measuring asyncio only (pip install uvloop)", file=sys.stderr)
        loops.remove("uvloop")
    return loops or ["asyncio"]


def select_jobs(args: argparse.Namespace) -> list[Job]:
    loops = _loops(args.loop, args.quick)
    jobs: list[Job] = []
    for case in CASES:
        if args.only and not any(s in case.name for s in args.only):
            continue
        for job in case.build(loops, args.quick):
            if args.impl and not any(s in job.impl for s in args.impl):
                continue
            jobs.append(job)
    return jobs


def _by_case(jobs: list[Job]) -> list[tuple[str, list[Job]]]:
    grouped: dict[str, list[Job]] = {}
    for job in jobs:
        grouped.setdefault(job.case, []).append(job)
    return list(grouped.items())


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.list:
        for case in CASES:
            print(f"{case.name:16} {case.title}")
        return 0
    settings = Settings.for_mode(args.quick, args.reps)
    settings.profile_dir = args.profile
    settings.py_spy_dir = args.py_spy
    jobs = select_jobs(args)
    if not jobs:
        print("no case matches --only/--impl (see --list)", file=sys.stderr)
        return 2
    if not available("msgr_tcp"):
        print("note: msgr-tcp is not installed, msgr-tcp rows are skipped "
              "(pip install -e plugins/msgr-tcp)", file=sys.stderr)
    machine = machine_info()
    date = now_iso()
    started = time.perf_counter()
    print(f"msgr benchmarks: {len(jobs)} jobs, {settings.reps} runs of {settings.seconds:g} s each "
          f"after {settings.warmups} warm-up run(s)", flush=True)
    records: list[Record] = []
    failures: list[dict[str, str]] = []
    count = 0

    def done(job: Job, got: list[Record] | None, error: BenchError | None, seconds: float) -> None:
        nonlocal count
        count += 1
        if error is not None or got is None:
            print(f"[{count}/{len(jobs)}] {job.label}: FAILED\n{error}", file=sys.stderr, flush=True)
            failures.append({"case": job.case, "impl": job.impl, "loop": job.loop, "error": str(error)})
            return
        records.extend(got)
        shown = [record_row(r) for r in got if r.metric in _SHOWN and r.unit != "%"]
        summary = ", ".join(f"{row[3]} {row[4]} {row[5]} (±{row[8]})" for row in shown)
        rx_tx = usage_text(got).get((job.case, job.impl, job.loop))
        if rx_tx:
            summary += f"; cpu+wait% rx {rx_tx[0] or '-'} tx {rx_tx[1] or '-'}"
        print(f"[{count}/{len(jobs)}] {job.label}: {summary}  [{seconds:.1f} s]", flush=True)

    sequential = args.sequential or bool(settings.py_spy_dir or settings.profile_dir)
    for case_name, case_jobs in _by_case(jobs):
        if sequential or len(case_jobs) == 1 or any(j.custom for j in case_jobs):
            for job in case_jobs:
                t0 = time.perf_counter()
                try:
                    got = run_job(job, settings)
                except BenchError as exc:
                    done(job, None, exc, time.perf_counter() - t0)
                else:
                    done(job, got, None, time.perf_counter() - t0)
        else:
            print(f"-- {case_name}: {len(case_jobs)} jobs, rounds interleaved", flush=True)
            run_interleaved(case_jobs, settings, done)
    elapsed = time.perf_counter() - started
    ratios = compute_ratios(records)
    print()
    print(format_records(records, _SHOWN))
    print("(rx/tx cpu+wait%: CPU time of the receiving/serving and the sending/client process, and time it "
          "waited for a CPU other processes held, in % of wall time)")
    if ratios:
        print()
        print("Ratios msgr / peer (median of the per-round ratios when both ran the same rounds interleaved, "
              "else of the medians;\nrange = lowest-highest per-round ratio; for p50/p99 lower is better, "
              "for the rest higher):")
        print(format_ratios(ratios))
    if failures:
        print(f"\n{len(failures)} job(s) FAILED: " + ", ".join(f"{f['case']} {f['impl']} [{f['loop']}]"
                                                          for f in failures))
    doc: dict[str, Any] = {
        "suite": "msgr benchmarks",
        "date": date,
        "argv": sys.argv[1:] if argv is None else argv,
        "settings": {"reps": settings.reps, "seconds": settings.seconds, "warmups": settings.warmups,
                     "warmup_seconds": settings.warmup_seconds, "quick": settings.quick,
                     "loops": _loops(args.loop, args.quick), "elapsed_seconds": round(elapsed, 1)},
        "machine": {**machine, "loadavg_end": machine_info().get("loadavg")},
        "source": source_revision(),
        "versions": versions(),
        "no_loop_marker": NO_LOOP,
        "records": [r.as_dict() for r in records],
        "ratios": [r.as_dict() for r in ratios],
        "failures": failures,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(f"\n{len(records)} figures in {elapsed:.0f} s; JSON written to {args.json}")
    return 1 if failures else 0
