"""``msgr new-plugin transport NAME``: generate a third-party transport package.

The generated package is a complete distribution (``pyproject.toml`` with the
``msgr.transports`` entry point, an import package with a working transport,
tests that run the conformance kit, README and CHANGELOG), made from the
templates in :mod:`msgr_core.templates`.
"""

from __future__ import annotations

import argparse

__all__ = ["add_new_plugin_parser"]


def add_new_plugin_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``new-plugin`` to the ``msgr`` command's subcommands."""
    p = subparsers.add_parser("new-plugin", help="generate the skeleton of a new plugin package")
    kinds = p.add_subparsers(dest="plugin_kind", metavar="KIND")
    t = kinds.add_parser("transport", help="a transport plugin: a package serving the URI scheme NAME")
    t.add_argument("name", metavar="NAME", help="the URI scheme (lowercase letters, digits, '+', '-', '.')")
    t.add_argument("--dir", default=".", help="directory to create the package in (default: .)")
    t.set_defaults(func=_cmd_new_transport)


def _cmd_new_transport(args: argparse.Namespace) -> int:
    raise SystemExit("msgr new-plugin transport: not written yet")
