"""Prometheus metrics of a messenger (``msgr run --metrics-port PORT``).

Needs ``prometheus-client`` (``pip install msgr-core[metrics]``).

:class:`MessengerCollector` is a custom collector: nothing is counted on
the message path.  At each scrape it takes one :func:`msgr_core.status.snapshot`
of the messenger on the messenger's event loop (the HTTP server runs in a
thread of its own) and turns it into metric families:

Messenger (``messenger.stats``), read generically — a counter added to the
stats dict appears without a change here:

- a number under key ``K`` becomes ``msgr_K_total`` (a counter), or the gauge
  ``msgr_K`` when ``K`` is a depth or a size (``sessions``, ``queued_*``,
  ``unacked_*``, ``pending_*``, ``*_buffered_bytes``);
- a mapping of numbers under ``K`` (``errors``) becomes ``msgr_K_total{kind=...}``.

Sessions (``Connection.stats``), the same rule under ``msgr_session_``,
labelled by ``peer`` (sessions with the same peer are summed): messages and
bytes sent and received, retransmits, reconnects, queue depths, unacked
messages, ...

Extensions, by what they expose (duck-typed, no plugin imported):

- heartbeat (``stats()``): per peer ``msgr_heartbeat_peer_rtt_seconds{peer}``
  (the last RTT; ``rtt_avg``, ``rtt_min``, ``rtt_max`` too),
  ``msgr_heartbeat_peer_failed{peer}``, ``..._pings_in_total``,
  ``..._pings_out_total``, ``..._misses_total``, ``..._detections_total`` …;
  overall ``msgr_heartbeat_detections_total``, ``..._recoveries_total``,
  ``..._misses_total``, ``..._interval_seconds``, ``..._grace_seconds``;
- gossip (``status()``): ``msgr_gossip_phi{endpoint}``, and per endpoint
  ``msgr_gossip_endpoint_alive``, ``..._generation``, ``..._version``,
  ``..._heartbeat``; ``msgr_gossip_rounds_total``,
  ``msgr_gossip_sent_total{verb}``, ``msgr_gossip_dropped_total``,
  ``msgr_gossip_live``, ``msgr_gossip_unreachable``;
- plumtree (``stats()``): the protocol counters behind the paper's RMR
  (``msgr_plumtree_payload_out_total``, ``..._payload_in_total``,
  ``..._duplicates_total``, ``..._delivered_total``, grafts, prunes,
  i_have) and the eager/lazy/member set sizes;
- any other extension: every top-level number of its ``status()`` /
  ``stats()`` as the gauge ``msgr_ext_value{extension, key}``.

Also ``msgr_up`` (1 while the messenger runs) and ``msgr_node_info{name,
type}``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from .errors import MsgrError
from .messenger import Messenger
from .status import snapshot

try:
    from prometheus_client import start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector, CollectorRegistry
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MsgrError("metrics need prometheus-client: pip install 'msgr-core[metrics]'") from exc

__all__ = ["MessengerCollector", "MetricsServer", "families", "start_metrics_server"]

_GAUGE_PREFIXES = ("queued_", "unacked_", "pending_")
_GAUGE_SUFFIXES = ("_buffered_bytes", "_depth")
_GAUGES = {"sessions", "links"}

_HB_GAUGES = {"rtt", "rtt_avg", "rtt_min", "rtt_max", "last_seen_ago", "confirmed_ago", "failed", "watched",
              "interval", "grace"}
_HB_SECONDS = {"rtt", "rtt_avg", "rtt_min", "rtt_max", "last_seen_ago", "confirmed_ago", "interval", "grace"}
_GOSSIP_GAUGES = {"phi", "alive", "generation", "version", "heartbeat", "load", "live", "unreachable"}
_PT_GAUGES = {"members", "eager", "lazy", "trees", "outstanding", "exchanges_running"}

_NAME_RE = re.compile(r"[^a-zA-Z0-9_]")


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float)  # bools too: 0 / 1


def _looks_like_gauge(key: str) -> bool:
    return key in _GAUGES or key.startswith(_GAUGE_PREFIXES) or key.endswith(_GAUGE_SUFFIXES)


class _Families:
    """Metric families by name, filled sample by sample."""

    def __init__(self) -> None:
        self._by_name: dict[str, tuple[Metric, tuple[str, ...]]] = {}

    def add(self, name: str, value: float, labels: Mapping[str, str] | None = None, *, counter: bool,
            doc: str = "") -> None:
        name = _NAME_RE.sub("_", name)
        labels = labels or {}
        keys = tuple(labels)
        entry = self._by_name.get(name)
        if entry is None:
            fam: Metric = (CounterMetricFamily if counter else GaugeMetricFamily)(
                name, doc or name.replace("_", " "), labels=list(keys))
            entry = self._by_name[name] = (fam, keys)
        family, keys = entry
        if tuple(labels) != keys:
            return  # same name, other labels: keep the first shape
        if counter and value < 0:
            return
        if isinstance(family, CounterMetricFamily | GaugeMetricFamily):
            family.add_metric([str(labels[k]) for k in keys], float(value))

    def number(self, prefix: str, key: str, value: Any, labels: Mapping[str, str] | None, *, gauge: bool,
               doc: str = "") -> None:
        if not _is_number(value):
            return
        self.add(f"{prefix}_{key}", float(value), labels, counter=not gauge, doc=doc)

    def __iter__(self) -> Iterator[Metric]:
        return (fam for fam, _ in self._by_name.values())


def _stats(out: _Families, prefix: str, stats: Mapping[str, Any], labels: Mapping[str, str] | None = None,
           what: str = "messenger") -> None:
    for key, value in stats.items():
        if _is_number(value):
            out.number(prefix, key, value, labels, gauge=_looks_like_gauge(key) or isinstance(value, bool),
                       doc=f"{what} stats[{key!r}]")
        elif isinstance(value, Mapping):
            for kind, n in value.items():
                if _is_number(n):
                    out.add(f"{prefix}_{key}", float(n), {**(labels or {}), "kind": str(kind)},
                            counter=not _looks_like_gauge(key), doc=f"{what} stats[{key!r}] by kind")


def _sessions(out: _Families, sessions: Iterable[Mapping[str, Any]]) -> None:
    by_peer: dict[str, dict[str, Any]] = {}
    for s in sessions:
        peer = str(s.get("peer") or "(handshaking)")
        acc = by_peer.setdefault(peer, {})
        for k, v in s.items():
            if _is_number(v):
                acc[k] = acc.get(k, 0) + v
    for peer, stats in sorted(by_peer.items()):
        _stats(out, "msgr_session", stats, {"peer": peer}, what="Connection")


def _heartbeat(out: _Families, st: Mapping[str, Any]) -> None:
    for key, value in st.items():
        if key in ("interval", "grace"):
            out.number("msgr_heartbeat", f"{key}_seconds", value, None, gauge=True, doc=f"heartbeat {key}")
        elif key != "peers":
            out.number("msgr_heartbeat", key, value, None, gauge=key in _HB_GAUGES, doc=f"heartbeat {key}")
    for peer, ps in sorted((st.get("peers") or {}).items()):
        if not isinstance(ps, Mapping):
            continue
        for key, value in ps.items():
            name = f"{key}_seconds" if key in _HB_SECONDS else key
            out.number("msgr_heartbeat_peer", name, value, {"peer": str(peer)}, gauge=key in _HB_GAUGES,
                       doc=f"heartbeat per peer: {key}")


def _gossip(out: _Families, st: Mapping[str, Any]) -> None:
    for key, value in st.items():
        if key == "sent" and isinstance(value, Mapping):
            for verb, n in value.items():
                out.number("msgr_gossip", "sent", n, {"verb": str(verb)}, gauge=False, doc="gossip messages sent")
        elif key not in ("endpoints", "name"):
            out.number("msgr_gossip", key, value, None, gauge=key in _GOSSIP_GAUGES, doc=f"gossip {key}")
    for row in st.get("endpoints") or []:
        if not isinstance(row, Mapping):
            continue
        labels = {"endpoint": str(row.get("endpoint"))}
        for key, value in row.items():
            if key == "phi":
                out.number("msgr_gossip", "phi", value, labels, gauge=True,
                           doc="phi-accrual suspicion of the endpoint (convicted over the threshold)")
            elif key != "endpoint":
                out.number("msgr_gossip_endpoint", key, value, labels, gauge=True, doc=f"gossip endpoint {key}")


def _plumtree(out: _Families, st: Mapping[str, Any]) -> None:
    for key, value in st.items():
        out.number("msgr_plumtree", key, value, None, gauge=key in _PT_GAUGES, doc=f"plumtree {key}")


_EXTENSIONS = {"heartbeat": _heartbeat, "gossip": _gossip, "plumtree": _plumtree}


def _generic(out: _Families, name: str, st: Mapping[str, Any]) -> None:
    for key, value in st.items():
        if _is_number(value):
            out.add("msgr_ext_value", float(value), {"extension": name, "key": str(key)}, counter=False,
                    doc="a number an extension reports in status()/stats()")


def families(snap: Mapping[str, Any]) -> list[Metric]:
    """The metric families of one :func:`msgr_core.status.snapshot`."""
    out = _Families()
    out.add("msgr_up", 1.0, counter=False, doc="1 while the messenger runs")
    out.add("msgr_node_info", 1.0, {"name": str(snap.get("name")), "type": str(snap.get("type"))}, counter=False,
            doc="the node's entity name and type")
    view = snap.get("view")
    if view is not None:
        out.add("msgr_view_members", float(len(view)), counter=False, doc="members in the installed view")
    _stats(out, "msgr", snap.get("stats") or {})
    _sessions(out, snap.get("sessions") or [])
    for name, st in (snap.get("extensions") or {}).items():
        if not isinstance(st, Mapping):
            continue
        known = _EXTENSIONS.get(name)
        if known is not None:
            known(out, st)
        else:
            _generic(out, name, st)
    return list(out)


class MessengerCollector(Collector):
    """Reads ``messenger``'s live state at each scrape (see the module doc).

    ``collect`` may run in any thread: off the messenger's loop it asks the
    loop for the snapshot and waits up to ``timeout`` seconds; a messenger
    that is not running (or a loop that does not answer) yields only
    ``msgr_up 0``."""

    def __init__(self, messenger: Messenger, *, timeout: float = 5.0) -> None:
        self.messenger = messenger
        self.timeout = timeout

    def _snapshot(self) -> dict[str, Any] | None:
        ms = self.messenger
        if not ms.running:
            return None
        loop = ms.loop
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            return snapshot(ms)
        fut: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()

        def take() -> None:
            try:
                fut.set_result(snapshot(ms))
            except BaseException as exc:
                fut.set_exception(exc)

        try:
            loop.call_soon_threadsafe(take)
            return fut.result(self.timeout)
        except (RuntimeError, concurrent.futures.TimeoutError):
            return None  # the loop is closed or stuck

    def collect(self) -> Iterable[Metric]:
        snap = self._snapshot()
        if snap is None:
            up = GaugeMetricFamily("msgr_up", "1 while the messenger runs")
            up.add_metric([], 0.0)
            return [up]
        return families(snap)


class MetricsServer:
    """An HTTP server (a daemon thread) serving ``/metrics`` for one messenger.

    :ivar port: the port actually bound (``port=0`` picks one).
    :ivar url: ``http://HOST:PORT/metrics``.
    """

    def __init__(self, messenger: Messenger, port: int, host: str = "127.0.0.1") -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(MessengerCollector(messenger))
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        self.port = int(self._server.server_port)
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_metrics_server(messenger: Messenger, port: int, host: str = "127.0.0.1") -> MetricsServer:
    """Serve ``messenger``'s metrics on ``http://host:port/metrics``.

    :raises OSError: the port cannot be bound.
    """
    return MetricsServer(messenger, port, host)
