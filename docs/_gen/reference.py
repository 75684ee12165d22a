"""Reference pages generated from the code when the site is built.

Used by ``mkdocs.yml`` as a hook file (``hooks:``): on every page, a line
``<!-- msgr:generated NAME -->`` is replaced by ``GENERATORS[NAME]()``.  So
the config and CLI references are made from ``msgr_core.config.CORE_DEFAULTS``,
the installed plugins' config sections and the ``msgr`` argparse parser at
build time, and cannot go stale.  The hook and error references come from
docstrings through mkdocstrings.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

MARKER = re.compile(r"^<!-- msgr:generated (\w+) -->$", re.MULTILINE)

#: What each core key means.  A key without an entry is listed anyway, with
#: "(not described yet)", and tests/test_docs_site.py names it.
CORE_KEY_DOCS: dict[str, dict[str, str]] = {
    "messenger": {
        "name": "entity name; peers can address this node by it (empty: `<type>.<pid>.<n>`)",
        "type": "entity type; peers choose their policy by it",
        "listen": "addresses to listen on (`tcp://host:port`, `unix:///path`, `loop://name`, ...; port 0 picks one)",
        "transports": "preference order of schemes for outgoing links; the schemes of `listen` follow",
        "extensions": "extension plugins to enable",
    },
    "limits": {
        "max_frame_bytes": "largest message (payload + attachments); larger sends raise `FrameTooLarge`, "
        "larger received frames close that link",
        "max_header_bytes": "largest message header accepted",
        "max_queued_bytes": "bytes queued per session before `Backpressure`",
        "high_watermark": "link buffer level that pauses feeding it",
        "low_watermark": "link buffer level that resumes feeding it",
        "connect_timeout": "seconds to establish a link",
        "handshake_timeout": "seconds a new link may take to complete the handshake (then it is dropped)",
        "request_timeout": "default `send_message` timeout, seconds",
        "stop_timeout": "bound on each graceful-stop phase, seconds",
        "max_sessions": "sessions (accepted and dialled) a messenger keeps at once",
        "max_pending": "links accepted and still in their handshake at once",
        "max_requests_in_flight": "requests from one peer being handled at once",
    },
    "session": {
        "ack_every": "send a standalone ack after this many messages received without sending",
        "ack_delay": "... or after this many seconds",
        "max_unacked_bytes": "retransmit window, bytes (lossless)",
        "max_unacked_msgs": "retransmit window, messages (lossless)",
        "reconnect_min": "first backoff between failed dials, seconds (the first redial after a lost link "
        "is immediate)",
        "reconnect_max": "longest backoff between failed dials, seconds",
        "keepalive_interval": "keepalive on an idle link this often, seconds",
        "keepalive_timeout": "drop a link silent this long, seconds",
    },
    "inject": {
        "socket_failures": "when N > 0, about 1 in N link operations (a frame sent or received) breaks the link",
        "seed": "seed for the injection RNG (0: random)",
        "delay_type": 'peer type whose messages are delayed (`"*"`: all)',
        "delay_max": "longest delay, seconds",
        "delay_probability": "chance a received message is delayed (later ones queue behind it)",
        "blackhole_types": "peer types whose messages are dropped before dispatch",
    },
}

#: Sections described on a page of their own.
SECTION_PAGES = {"auth": "[security](security.md#authentication-auth)"}


def _fmt(value: Any) -> str:
    if value is None:
        return "*(unset)*"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, int) and value >= 1024 and value % 1024 == 0:
        for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
            if value % size == 0:
                return f"`{value}` ({value // size} {unit})"
    return f"`{json.dumps(value)}`"


def _type(value: Any) -> str:
    return {bool: "bool", int: "int", float: "float", str: "string", list: "list", dict: "table"}.get(
        type(value), "any"
    )


def _table(defaults: dict[str, Any], docs: dict[str, str]) -> list[str]:
    lines = ["| key | default | type | meaning |", "| --- | --- | --- | --- |"]
    for key, value in defaults.items():
        lines.append(f"| `{key}` | {_fmt(value)} | {_type(value)} | {docs.get(key, '(not described yet)')} |")
    return lines


def undocumented_core_keys() -> list[str]:
    """Core keys (outside sections with a page of their own) with no description."""
    from msgr_core.config import CORE_DEFAULTS

    return [
        f"{section}.{key}"
        for section, defaults in CORE_DEFAULTS.items()
        if section not in SECTION_PAGES
        for key in defaults
        if key not in CORE_KEY_DOCS.get(section, {})
    ]


def _plugin_sections() -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(section, owner, defaults) of every installed plugin, sorted."""
    from importlib.metadata import entry_points

    from msgr_core.registry import EXTENSION_GROUP, TRANSPORT_GROUP, PluginSet, TransportRegistry

    found: dict[str, tuple[str, dict[str, Any]]] = {}
    owners: dict[str, list[str]] = {}
    schemes = sorted(ep.name for ep in entry_points(group=TRANSPORT_GROUP))
    ps = PluginSet()
    for scheme in schemes:
        with contextlib.suppress(Exception):
            ps.load(TRANSPORT_GROUP, [scheme])
    registry = TransportRegistry(ps)
    for scheme in schemes:
        try:
            cls = registry.get(scheme)
        except Exception:
            continue
        if cls.config_section:
            owners.setdefault(cls.config_section, []).append(f"`{scheme}://`")
            found.setdefault(cls.config_section, (cls.distribution, cls.config_defaults))
    for section, (dist, defaults) in list(found.items()):
        found[section] = (f"transport {', '.join(owners[section])} ({dist})", defaults)
    ext = PluginSet()
    for ep in entry_points(group=EXTENSION_GROUP):
        with contextlib.suppress(Exception):
            ext.load(EXTENSION_GROUP, [ep.name])
            for sections in ext.hook.msgr_config_sections():
                for section, defaults in sections.items():
                    found.setdefault(section, (f"extension `{ep.name}`", defaults))
    for section in sorted(found):
        yield section, *found[section]


def config_reference() -> str:
    """Markdown: every core section and key with its default, then every
    installed plugin's section."""
    from msgr_core.config import CORE_DEFAULTS, DEFAULT_POLICY, POLICY_SECTION

    out: list[str] = []
    for section, defaults in CORE_DEFAULTS.items():
        out += ["", f"### `[{section}]`", ""]
        if section in SECTION_PAGES:
            out += [f"Described on {SECTION_PAGES[section]}.", ""]
        out += _table(defaults, CORE_KEY_DOCS.get(section, {}))
    out += [
        "",
        f"### `[{POLICY_SECTION}]`",
        "",
        f'`default = "{DEFAULT_POLICY}"`, plus `<peer type> = "<policy>"` for any peer type '
        "(see [policies](policies.md)).",
    ]
    out += ["", "### Plugin sections", "",
            "Accepted when the plugin is selected (a transport in `listen`/`transports`, an extension in "
            "`extensions`).  These are the plugins installed where this page was built; what each key means is in "
            "the plugin's module docstring (`python -m pydoc msgr_tcp`) and README.", ""]
    for section, owner, defaults in _plugin_sections():
        out += ["", f"#### `[{section}]` — {owner}", ""]
        out += ["| key | default | type |", "| --- | --- | --- |"]
        out += [f"| `{key}` | {_fmt(value)} | {_type(value)} |" for key, value in defaults.items()]
    return "\n".join(out).lstrip("\n") + "\n"


def _walk(parser: argparse.ArgumentParser, path: list[str]) -> Iterator[tuple[list[str], argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, [*path, name])


def cli_reference() -> str:
    """Markdown: ``--help`` of ``msgr`` and of every subcommand (plugins' included)."""
    from msgr_core.cli import _plugins_for_cli, build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        parser = build_parser(_plugins_for_cli())
        out: list[str] = []
        for path, sub in _walk(parser, ["msgr"]):
            out += ["", f"### `{' '.join(path)}`", "", "```text", sub.format_help().rstrip(), "```"]
        return "\n".join(out).lstrip("\n") + "\n"
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


GENERATORS: dict[str, Callable[[], str]] = {"config": config_reference, "cli": cli_reference}


def expand(markdown: str) -> str:
    """``markdown`` with every generated-section marker replaced."""
    return MARKER.sub(lambda m: GENERATORS[m.group(1)]().rstrip("\n"), markdown)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """mkdocs hook."""
    return expand(markdown)
