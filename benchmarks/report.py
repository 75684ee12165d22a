"""The table, the ratios against peers, and the targets of issue #10."""

from __future__ import annotations

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
    out.append(Target("oneway-64B", "msgs_per_s", "msgr-tcp-lossless", "msgr-tcp-lossy"))
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

    def as_dict(self) -> dict[str, Any]:
        return {"case": self.case, "metric": self.metric, "num": self.num, "den": self.den,
                "ratio": self.ratio, "target": self.target or None, "met": self.met, "verdict": self.verdict,
                "note": self.note or None}


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
            value = num.median / den.median
            target, met, verdict = "", None, ""
            if t.bound is not None:
                target = f"{t.op} {t.bound:g}x"
                met, verdict = _verdict(value, t.op, t.bound)
            out.append(Ratio(t.case, t.metric, f"{t.num}[{loop}]", f"{t.den}[{den.loop}]", value, target, met,
                             verdict, t.why))
    for case, impl, metric, op, bound, text in ABSOLUTE:
        for r in records:
            if (r.case, r.impl, r.metric) == (case, impl, metric):
                met, verdict = _verdict(r.median, op, bound)
                out.append(Ratio(case, metric, f"{impl}[{r.loop}]", "-", r.median, f"{op} {fmt(bound)} {r.unit}",
                                 met, verdict, text))
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
        rows.append([r.case, r.metric, r.num, r.den, fmt(r.ratio) + ("x" if r.den != "-" else ""), r.target or "-",
                     verdict])
    table = _table(["case", "metric", "msgr", "peer", "ratio", "target", "verdict"], rows, right={4})
    return "\n".join([table, *(f"[{i}] {n}" for i, n in enumerate(notes, 1))])
