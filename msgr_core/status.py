"""Node status: what ``msgr status ADDR`` prints and ``/metrics`` exports.

A node started with ``msgr run`` answers the request verb
:data:`STATUS_VERB` (``msgr.node_status``) with :func:`snapshot`: its
identity, its view, the messenger's counters, every open session's
counters and queue depths, and the state of each enabled extension (what
its ``status()`` or ``stats()`` method returns: the heartbeat's per-peer
RTTs, gossip's endpoints with their phi, Plumtree's counters and links, …).
Any other messenger answers the core's ``msgr.status`` (the same without
the extensions); :func:`fetch_status` asks for the first and falls back to
the second.

Extensions are read generically — duck-typed, no plugin imported — so a
new extension, or a new counter in one, shows up without a change here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

from .errors import UnknownVerb
from .messenger import Messenger

__all__ = ["STATUS_VERB", "extension_state", "fetch_status", "format_status", "serve_status", "snapshot"]

#: The request verb served by :func:`serve_status` (``msgr run`` nodes).
STATUS_VERB = "msgr.node_status"


def _plain(value: Any, depth: int = 0) -> Any:
    """``value`` as msgpack/JSON-safe data: sets and tuples become lists
    (sets sorted), mapping keys strings, anything else its ``repr``."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if depth > 8:
        return repr(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, set | frozenset):
        return sorted((_plain(v, depth + 1) for v in value), key=repr)
    if isinstance(value, list | tuple):
        return [_plain(v, depth + 1) for v in value]
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    return repr(value)


def extension_state(ext: Any) -> dict[str, Any] | None:
    """What an extension says about itself: its ``status()`` if it has one,
    else its ``stats()``, made JSON-safe; ``None`` if it has neither (or
    it raised)."""
    for method in ("status", "stats"):
        fn = getattr(ext, method, None)
        if callable(fn):
            try:
                state = fn()
            except Exception as exc:
                return {"error": f"{method}() raised {type(exc).__name__}: {exc}"}
            return _plain(state) if isinstance(state, Mapping) else {"value": _plain(state)}
    return None


def snapshot(messenger: Messenger, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The node's status, JSON-safe: ``name``, ``type``, ``incarnation``,
    ``addresses``, ``view`` (sorted names, or ``None``), ``stats``
    (``messenger.stats``), ``sessions`` (``Connection.stats`` of each open
    session), ``extensions`` (name -> :func:`extension_state`), ``time``
    (the node's wall clock), plus ``extra``.  Call it on the messenger's
    event loop."""
    view = messenger.view
    out: dict[str, Any] = {
        "name": messenger.name,
        "type": messenger.type,
        "incarnation": messenger.incarnation,
        "addresses": list(messenger.addresses),
        "view": sorted(view) if view is not None else None,
        "stats": _plain(messenger.stats),
        "sessions": [_plain(c.stats) for c in messenger.connections],
        "extensions": {name: extension_state(ext) for name, ext in sorted(messenger.extensions.items())},
        "time": time.time(),
    }
    if extra:
        out.update(_plain(extra))
    return out


def serve_status(messenger: Messenger, extra: Mapping[str, Any] | None = None) -> None:
    """Answer :data:`STATUS_VERB` on ``messenger`` with :func:`snapshot`."""
    messenger.register_handler(STATUS_VERB, lambda msg: snapshot(messenger, extra))


async def fetch_status(address: str, *, timeout: float = 5.0) -> dict[str, Any]:
    """Ask the node at ``address`` for its status (:data:`STATUS_VERB`, or
    the core's ``msgr.status`` when the node does not serve it: then
    ``extensions`` is missing).  The probe session is lossy, so an
    unreachable node fails at once.

    :raises PeerUnreachable, RequestTimeout: the node did not answer.
    """
    client = Messenger.from_config({"messenger": {"name": f"msgr-status.{time.time_ns():x}", "type": "client"}})
    async with client:
        conn = client.get_connection(address, policy="lossy_client")
        try:
            reply = (await conn.request(STATUS_VERB, b"", timeout=timeout)).payload
        except UnknownVerb:
            reply = (await conn.request("msgr.status", b"", timeout=timeout)).payload
        out: dict[str, Any] = dict(reply) if isinstance(reply, Mapping) else {"value": reply}
        out["client"] = client.name
        return out


# -- text ------------------------------------------------------------------------------------

_SESSION_COLUMNS = ["peer", "state", "policy", "msgs_out", "msgs_in", "bytes_out", "bytes_in", "queued_msgs",
                    "unacked_msgs", "retransmits", "reconnects"]


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ",".join(_fmt(v) for v in value) or "-"
    if isinstance(value, dict):
        return " ".join(f"{k}={_fmt(v)}" for k, v in value.items()) or "-"
    return str(value)


def _table(rows: list[dict[str, Any]], columns: list[str], indent: str = "  ") -> list[str]:
    cells = [columns] + [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return [indent + "  ".join(v.ljust(w) if i == 0 else v.rjust(w)
                               for i, (v, w) in enumerate(zip(row, widths, strict=True))).rstrip()
            for row in cells]


def _columns(rows: list[dict[str, Any]], first: str | None = None) -> list[str]:
    cols: list[str] = [first] if first else []
    for r in rows:
        for k, v in r.items():
            if k not in cols and not isinstance(v, dict | list):
                cols.append(k)
    return cols


def _format_extension(name: str, state: dict[str, Any] | None) -> list[str]:
    if state is None:
        return [f"  {name}: (no status)"]
    scalars = {k: v for k, v in state.items() if not isinstance(v, dict | list)}
    lines = [f"  {name}: " + (_fmt(scalars) if scalars else "")]
    for key, value in state.items():
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            col = key[:-1] if key.endswith("s") else key  # e.g. heartbeat "peers": a "peer" column
            rows = [{col: k, **v} for k, v in value.items()]
            lines.append(f"    {key}:")
            lines += _table(rows, _columns(rows, col), indent="      ")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            lines.append(f"    {key}:")  # e.g. gossip endpoints
            lines += _table(value, _columns(value), indent="      ")
        elif isinstance(value, dict | list):
            lines.append(f"    {key}: {_fmt(value)}")
    return lines


def format_status(st: Mapping[str, Any]) -> str:
    """A :func:`snapshot` (as returned by :func:`fetch_status`) as text."""
    view = st.get("view")
    lines = [f"node {st.get('name')} (type {st.get('type')}, incarnation {st.get('incarnation')})",
             f"  addresses: {', '.join(st.get('addresses') or []) or '-'}",
             f"  view: {', '.join(view)} ({len(view)} members)" if view is not None else "  view: none installed"]
    if st.get("metrics"):
        lines.append(f"  metrics: {st['metrics']}")
    stats = st.get("stats") or {}
    lines.append("  totals: " + _fmt({k: v for k, v in stats.items() if not isinstance(v, dict | list)}))
    for key, value in stats.items():
        if isinstance(value, dict) and value:
            lines.append(f"  {key}: {_fmt(value)}")
    sessions: list[dict[str, Any]] = list(st.get("sessions") or [])
    client = st.get("client")
    rows = [{**s, "peer": f"{s.get('peer') or '?'}{' (this client)' if client and s.get('peer') == client else ''}"}
            for s in sessions]
    lines.append(f"sessions ({len(rows)}):")
    if rows:
        lines += _table(rows, [c for c in _SESSION_COLUMNS if any(c in r for r in rows)])
    exts = st.get("extensions")
    if exts is None:
        lines.append("extensions: (not reported: the node does not serve msgr.node_status; start it with msgr run)")
    else:
        lines.append(f"extensions ({len(exts)}):" if exts else "extensions: none enabled")
        for name, state in exts.items():
            lines += _format_extension(name, state)
    return "\n".join(lines)
