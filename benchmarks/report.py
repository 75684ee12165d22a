"""The table, the ratios against peers, and the targets of issue #10."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from .harness import Record

__all__ = ["TARGETS", "Ratio", "compute_ratios", "format_records", "format_ratios", "fmt"]

NO_LOOP = "none"


@dataclass(frozen=True)
class Target:
    """``num`` / ``den`` on ``metric`` of ``case``; ``bound`` with ``op``
    (``>=`` or ``<=``) is the target, ``None`` for an informative ratio."""

    case: str
    metric: str
    num: str
    den: str
    op: str = ">="
    bound: float | None = None
    why: str = ""


_LOSSLESS_NOTE = "issue #10 sets it for tcp lossless; the lossy row is shown against it too"


def _targets() -> list[Target]:
    out: list[Target] = []
    for policy in ("lossless", "lossy"):
        tcp = f"msgr-tcp-{policy}"
        note = "" if policy == "lossless" else _LOSSLESS_NOTE
        out += [
            Target("oneway-64B", "msgs_per_s", tcp, "raw-asyncio", ">=", 0.5, note),
            Target("oneway-64B", "msgs_per_s", tcp, "raw-pyzmq", ">=", 0.8, note),
            Target("oneway-64B", "msgs_per_s", tcp, "raw-zmq-asyncio"),
            Target("oneway-64B", "rx_cpu_per_msg", tcp, "raw-asyncio"),
            Target("oneway-64B", "tx_cpu_per_msg", tcp, "raw-asyncio"),
            Target("oneway-16MiB", "throughput", tcp, "raw-asyncio", ">=", 1.5),
            Target("oneway-16MiB", "throughput", tcp, "raw-pyzmq"),
            Target("oneway-16MiB", "throughput", tcp, "memcpy"),
            Target("oneway-1MiB", "throughput", tcp, "raw-asyncio"),
            Target("oneway-1MiB", "throughput", tcp, "raw-pyzmq"),
            Target("oneway-1MiB", "throughput", tcp, "memcpy"),
            Target("reqrep-64B-1", "p50", tcp, "raw-asyncio", "<=", 1.25),
            Target("reqrep-64B-1", "p99", tcp, "raw-asyncio"),
            Target("reqrep-64B-1", "req_per_s", tcp, "grpcio", ">=", 8.0),
            Target("reqrep-64B-1", "server_cpu_per_req", tcp, "raw-asyncio"),
            Target("reqrep-64B-1", "client_cpu_per_req", tcp, "raw-asyncio"),
            Target("reqrep-64B-64", "p50", tcp, "raw-asyncio"),
            Target("reqrep-64B-64", "req_per_s", tcp, "raw-asyncio"),
            Target("reqrep-64B-64", "req_per_s", tcp, "grpcio", ">=", 8.0),
        ]
    out.append(Target("oneway-64B", "msgs_per_s", "msgr-loop-lossy", "raw-asyncio"))
    out.append(Target("oneway-64B", "msgs_per_s", "msgr-tcp-lossless", "msgr-tcp-lossy", ">=", 0.85))
    # issue #3: a stopped receiver must not slow the others
    out.append(Target("stuck-peer", "msgs_per_s", "msgr-tcp-4th-stopped", "msgr-tcp-4th-healthy", ">=", 0.9))
    # issue #4: msgr over ZeroMQ
    out.append(Target("oneway-64B", "msgs_per_s", "msgr-zmq-lossless", "raw-zmq-asyncio", ">=", 5.0))
    out.append(Target("oneway-64B", "msgs_per_s", "msgr-zmq-lossless", "raw-pyzmq"))
    out.append(Target("oneway-16MiB", "throughput", "msgr-zmq-lossless", "raw-pyzmq", ">=", 0.9))
    out.append(Target("reqrep-64B-1", "p50", "msgr-zmq-lossless", "raw-asyncio"))
    # issue #9: a lossless stream under hostile load keeps >= 70% of its unloaded rate
    out.append(Target("hostile", "msgs_per_s", "msgr-tcp-under-attack", "msgr-tcp-unloaded", ">=", 0.7))
    return out


TARGETS: list[Target] = _targets()

# Absolute targets: (case, impl, metric, op, bound, text)
ABSOLUTE = [
    ("scale-idle", "msgr-tcp-lossy", "idle_session_bytes", "<=", 20 * 1024, "1,000 idle sessions cost <= 20 KiB each"),
]


@dataclass
class Ratio:
    case: str
    metric: str
    num: str
    den: str
    ratio: float
    target: str
    met: bool | None
    verdict: str
    note: str = ""
    low: float | None = None
    high: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"case": self.case, "metric": self.metric, "num": self.num, "den": self.den,
                "ratio": self.ratio, "ratio_min": self.low, "ratio_max": self.high,
                "target": self.target or None, "met": self.met, "verdict": self.verdict, "note": self.note or None}


def _ratio(num: Record, den: Record) -> tuple[float, float | None, float | None]:
    """The ratio of two figures and its range.

    With as many runs on both sides (the rounds of a case are interleaved,
    so run *i* of each ran moments apart) it is the median of the per-run
    ratios, and the range is theirs; otherwise the ratio of the medians.
    """
    if len(num.runs) == len(den.runs) and all(den.runs):
        per_run = sorted(a / b for a, b in zip(num.runs, den.runs, strict=True))
        return statistics.median(per_run), per_run[0], per_run[-1]
    return num.median / den.median, None, None


def _verdict(value: float, op: str, bound: float) -> tuple[bool, str]:
    """Whether ``value op bound`` holds, and if not by how much it misses."""
    if op == ">=":
        if value >= bound:
            return True, "met"
        return False, f"MISSED by {(1 - value / bound) * 100:.0f}%: needs {bound / value:.2f}x more"
    if value <= bound:
        return True, "met"
    return False, f"MISSED by {(value / bound - 1) * 100:.0f}%: needs {value / bound:.2f}x less"


def compute_ratios(records: list[Record]) -> list[Ratio]:
    """Ratios of medians for every target pair measured in this run (same
    event loop kind, or against a loop-independent peer)."""
    idx = {(r.case, r.impl, r.loop, r.metric): r for r in records}
    loops = sorted({r.loop for r in records if r.loop != NO_LOOP})
    out: list[Ratio] = []
    for t in TARGETS:
        for loop in loops:
            num = idx.get((t.case, t.num, loop, t.metric))
            den = idx.get((t.case, t.den, loop, t.metric)) or idx.get((t.case, t.den, NO_LOOP, t.metric))
            if num is None or den is None or den.median == 0:
                continue
            value, lo, hi = _ratio(num, den)
            target, met, verdict = "", None, ""
            if t.bound is not None:
                target = f"{t.op} {t.bound:g}x"
                met, verdict = _verdict(value, t.op, t.bound)
            out.append(Ratio(t.case, t.metric, f"{t.num}[{loop}]", f"{t.den}[{den.loop}]", value, target, met,
                             verdict, t.why, lo, hi))
    for case, impl, metric, op, bound, text in ABSOLUTE:
        for r in records:
            if (r.case, r.impl, r.metric) == (case, impl, metric):
                met, verdict = _verdict(r.median, op, bound)
                out.append(Ratio(case, metric, f"{impl}[{r.loop}]", "-", r.median, f"{op} {fmt(bound)} {r.unit}",
                                 met, verdict, text))
    # in the order the cases ran, targets first within a case
    order = {c: i for i, c in enumerate(dict.fromkeys(r.case for r in records))}
    out.sort(key=lambda x: (order.get(x.case, len(order)), x.target == "", x.metric, x.num))
    return out


def fmt(v: float) -> str:
    """A number for humans: thousands separators above 100, 3 significant digits below."""
    if v != v:  # NaN
        return "nan"
    a = abs(v)
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> str:
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) if rows else len(header[i]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in pairs)

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def record_row(r: Record) -> list[str]:
    med = r.median
    spread = (max(r.runs) - min(r.runs)) / med * 100 if med else 0.0
    return [r.case, r.impl, r.loop, r.metric, fmt(med), r.unit, fmt(min(r.runs)), fmt(max(r.runs)),
            f"{spread:.0f}%", str(len(r.runs))]


RECORD_HEADER = ["case", "impl", "loop", "metric", "median", "unit", "min", "max", "spread", "runs"]
USAGE = {"receiver": "rx", "sender": "tx", "client": "tx"}


def usage_text(records: list[Record]) -> dict[tuple[str, str, str], tuple[str, str]]:
    """Per job: ``("cpu%+wait%", ...)`` of the receiving and the sending side."""
    got: dict[tuple[str, str, str], dict[str, float]] = {}
    for r in records:
        if r.unit == "%" and r.metric.endswith(("_cpu", "_wait")):
            got.setdefault((r.case, r.impl, r.loop), {})[r.metric] = r.median
    out: dict[tuple[str, str, str], tuple[str, str]] = {}
    for key, m in got.items():
        cols = {"rx": "", "tx": ""}
        for side, col in USAGE.items():
            if f"{side}_cpu" in m:
                cols[col] = f"{m[side + '_cpu']:.0f}+{m.get(side + '_wait', 0):.0f}"
        out[key] = (cols["rx"], cols["tx"])
    return out


def format_records(records: list[Record], metrics: set[str] | None = None) -> str:
    """The figures, with each job's CPU use: ``cpu+wait`` in % of wall time for
    the receiving/serving (rx) and sending/client (tx) process — cpu near 100
    marks the bottleneck, wait is CPU time other processes took from it."""
    usage = usage_text(records)
    rows = []
    for r in records:
        if r.unit == "%" or (metrics is not None and r.metric not in metrics):
            continue
        rows.append(record_row(r) + list(usage.get((r.case, r.impl, r.loop), ("", ""))))
    return _table([*RECORD_HEADER, "rx cpu+wait%", "tx cpu+wait%"], rows, right={4, 6, 7, 8, 9, 10, 11})


def format_ratios(ratios: list[Ratio]) -> str:
    notes: list[str] = []
    rows = []
    for r in ratios:
        verdict = r.verdict or "-"
        if r.note:
            if r.note not in notes:
                notes.append(r.note)
            verdict += f" [{notes.index(r.note) + 1}]"
        rng = f"{fmt(r.low)}-{fmt(r.high)}" if r.low is not None and r.high is not None else "-"
        rows.append([r.case, r.metric, r.num, r.den, fmt(r.ratio) + ("x" if r.den != "-" else ""), rng,
                     r.target or "-", verdict])
    table = _table(["case", "metric", "msgr", "peer", "ratio", "range", "target", "verdict"], rows, right={4, 5})
    return "\n".join([table, *(f"[{i}] {n}" for i, n in enumerate(notes, 1))])


# -- markdown (for docs) ----------------------------------------------------------

_MD_METRICS = ("msgs_per_s", "throughput", "p50", "p99", "req_per_s", "idle_session_bytes", "idle_session_rss",
               "rx_cpu_per_msg", "tx_cpu_per_msg", "server_cpu_per_req", "client_cpu_per_req")
_MD_BY_CASE = {
    "oneway-64B": ("msgs_per_s", "rx_cpu_per_msg", "tx_cpu_per_msg"),
    "oneway-1MiB": ("throughput", "rx_cpu_per_msg", "tx_cpu_per_msg"),
    "oneway-16MiB": ("throughput", "rx_cpu_per_msg", "tx_cpu_per_msg"),
    "reqrep-64B-1": ("p50", "p99", "req_per_s", "server_cpu_per_req", "client_cpu_per_req"),
    "reqrep-64B-64": ("p50", "p99", "req_per_s", "server_cpu_per_req", "client_cpu_per_req"),
    "scale-idle": ("idle_session_bytes", "idle_session_rss", "session_setup_per_s"),
}


def to_markdown(doc: dict[str, Any]) -> str:
    """A results JSON as markdown tables: per case, one row per impl and loop
    with the case's main metrics (median and spread), then the ratios."""
    recs = doc["records"]
    by_case: dict[str, list[dict[str, Any]]] = {}
    for r in recs:
        by_case.setdefault(r["case"], []).append(r)
    out: list[str] = []
    for case, rs in by_case.items():
        metrics = _MD_BY_CASE.get(case) or (("msgs_per_s", "rx_cpu_per_msg", "tx_cpu_per_msg")
                                            if case.startswith("scale-") else _MD_METRICS)
        present = [m for m in metrics if any(r["metric"] == m for r in rs)]
        units = {r["metric"]: r["unit"] for r in rs}
        usage: dict[tuple[str, str], dict[str, float]] = {}
        for r in rs:
            if r["unit"] == "%":
                usage.setdefault((r["impl"], r["loop"]), {})[r["metric"]] = r["median"]
        rows: dict[tuple[str, str], dict[str, str]] = {}
        for r in rs:
            if r["metric"] in present:
                spread = (r["max"] - r["min"]) / r["median"] * 100 if r["median"] else 0.0
                rows.setdefault((r["impl"], r["loop"]), {})[r["metric"]] = f"{fmt(r['median'])} ±{spread:.0f}%"
        head = ["impl", "loop", *(f"{m} ({units[m]})" for m in present), "cpu+wait % rx / tx"]
        out.append(f"**{case}**\n")
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for (impl, loop), cells in rows.items():
            u = usage.get((impl, loop), {})
            sides = []
            for side in (("receiver",), ("sender", "client")):
                txt = "-"
                for s in side:
                    if f"{s}_cpu" in u:
                        txt = f"{u[s + '_cpu']:.0f}+{u.get(s + '_wait', 0):.0f}"
                sides.append(txt)
            out.append("| " + " | ".join([impl, loop, *(cells.get(m, "-") for m in present), " / ".join(sides)])
                       + " |")
        out.append("")
    if doc.get("ratios"):
        out.append("**ratios of medians (msgr / peer)**\n")
        out.append("| case | metric | msgr | peer | ratio | range | target | verdict |")
        out.append("|---|---|---|---|---|---|---|---|")
        for x in doc["ratios"]:
            ratio = fmt(x["ratio"]) + ("x" if x["den"] != "-" else "")
            lo, hi = x.get("ratio_min"), x.get("ratio_max")
            rng = f"{fmt(lo)}-{fmt(hi)}" if lo is not None and hi is not None else "-"
            out.append(f"| {x['case']} | {x['metric']} | {x['num']} | {x['den']} | {ratio} | {rng} "
                       f"| {x['target'] or '-'} | {x['verdict'] or '-'} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    import json
    import sys

    with open(sys.argv[1], encoding="utf-8") as f:
        print(to_markdown(json.load(f)))
