"""``msgr new-plugin transport NAME``: generate a third-party transport package.

::

    msgr new-plugin transport shm --dir ~/src     # creates ~/src/msgr-shm/

The generated package is a complete distribution: ``pyproject.toml`` with
the ``msgr.transports`` entry point named ``NAME``, an import package
``msgr_NAME`` with a working transport (the design of the ``msgr-fifo``
example under ``docs/examples/``: links over pairs of named pipes), a
``py.typed``, README and CHANGELOG, and ``tests/`` that run the whole
conformance kit.  Its transport module and tests are rendered from the same
templates the example is checked against, so the skeleton is the example.

Templates live in ``msgr_core/templates/transport/`` (package data).  In
their paths and text, ``__SCHEME__``, ``__NAME__`` (an identifier form of
the scheme), ``__MODULE__``, ``__DIST__``, ``__CLASS__`` and
``__CORE_VERSION__`` are replaced; a ``.tmpl`` suffix is dropped.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

__all__ = ["PluginNames", "add_new_plugin_parser", "new_transport_plugin", "render", "template_files"]

_SCHEME_RE = re.compile(r"^[a-z][a-z0-9+.-]{0,30}$")


@dataclass(frozen=True)
class PluginNames:
    """The names derived from a scheme (``my-pipe``): ``name`` ``my_pipe``,
    ``module`` ``msgr_my_pipe``, ``dist`` ``msgr-my-pipe``, ``cls`` ``MyPipe``."""

    scheme: str
    name: str
    module: str
    dist: str
    cls: str

    @classmethod
    def for_scheme(cls, scheme: str) -> PluginNames:
        """:raises ValueError: not a usable URI scheme."""
        if not _SCHEME_RE.match(scheme):
            raise ValueError(
                f"{scheme!r} is not a usable scheme: a lowercase letter, then lowercase letters, digits, '+', '-' "
                "or '.' (at most 31 characters)"
            )
        name = re.sub(r"[^a-z0-9]", "_", scheme)
        parts = [p for p in name.split("_") if p]
        return cls(scheme, name, f"msgr_{name}", "msgr-" + "-".join(parts), "".join(p.title() for p in parts))

    def tokens(self) -> dict[str, str]:
        from . import __version__

        return {
            "__SCHEME__": self.scheme,
            "__NAME__": self.name,
            "__MODULE__": self.module,
            "__DIST__": self.dist,
            "__CLASS__": self.cls,
            "__CORE_VERSION__": __version__,
        }


def render(text: str, names: PluginNames) -> str:
    """``text`` with every template token replaced."""
    for token, value in names.tokens().items():
        text = text.replace(token, value)
    return text


def _templates() -> Traversable:
    return resources.files("msgr_core") / "templates" / "transport"


def template_files() -> dict[str, str]:
    """Every template of a transport package: relative path -> text."""
    out: dict[str, str] = {}

    def walk(node: Traversable, prefix: str) -> None:
        for child in sorted(node.iterdir(), key=lambda c: c.name):
            rel = f"{prefix}{child.name}"
            if child.is_dir():
                if child.name != "__pycache__":
                    walk(child, rel + "/")
            elif child.name.endswith(".tmpl"):
                out[rel.removesuffix(".tmpl")] = child.read_text(encoding="utf-8")

    walk(_templates(), "")
    return out


def new_transport_plugin(scheme: str, directory: str | Path = ".") -> Path:
    """Write the package for ``scheme`` to ``directory/msgr-<scheme>``.

    :returns: the package's directory.
    :raises ValueError: ``scheme`` is not a usable URI scheme.
    :raises FileExistsError: the target exists and is not an empty directory.
    """
    names = PluginNames.for_scheme(scheme)
    target = Path(directory) / names.dist
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"{target} already exists and is not empty")
    for rel, text in template_files().items():
        path = target / render(rel, names)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(text, names), encoding="utf-8")
    return target


def add_new_plugin_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``new-plugin`` to the ``msgr`` command's subcommands."""
    p = subparsers.add_parser("new-plugin", help="generate the skeleton of a new plugin package")
    kinds = p.add_subparsers(dest="plugin_kind", metavar="KIND")
    t = kinds.add_parser("transport", help="a transport plugin: a package serving the URI scheme NAME")
    t.add_argument("name", metavar="NAME", help="the URI scheme (lowercase letters, digits, '+', '-', '.')")
    t.add_argument("--dir", default=".", help="directory to create the package in (default: .)")
    t.set_defaults(func=_cmd_new_transport)
    p.set_defaults(func=lambda args: _usage(p))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _cmd_new_transport(args: argparse.Namespace) -> int:
    try:
        target = new_transport_plugin(args.name, args.dir)
    except (ValueError, FileExistsError) as exc:
        print(f"msgr new-plugin transport: {exc}", file=sys.stderr)
        return 1
    names = PluginNames.for_scheme(args.name)
    print(f"created {target} ({names.dist}: {args.name}:// served by {names.module}.{names.cls}Transport)")
    print("next:")
    print(f"  pip install -e {target}")
    print("  msgr plugins")
    print(f"  pytest --pyargs msgr_core.testing.suite --msgr-transport={args.name}")
    return 0
