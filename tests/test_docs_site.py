"""The docs site builds with warnings as errors, and its generated reference is complete."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from msgr_core.config import CORE_DEFAULTS

ROOT = Path(__file__).resolve().parents[1]


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("msgr_docs_reference", ROOT / "docs" / "_gen" / "reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_config_reference_lists_every_key_with_its_default() -> None:
    page = _generator().config_reference()
    for section, defaults in CORE_DEFAULTS.items():
        assert f"### `[{section}]`" in page
        for key in defaults:
            assert f"| `{key}` |" in page, f"{section}.{key} missing from the generated config reference"
    assert "| `max_frame_bytes` | `67108864` (64 MiB) | int |" in page
    assert "`[tcp]`" in page and "`[fifo]`" in page  # installed plugins' sections


def test_core_keys_are_described() -> None:
    missing = _generator().undocumented_core_keys()
    assert not missing, f"describe these keys in docs/_gen/reference.py CORE_KEY_DOCS: {missing}"


def test_cli_reference_has_every_subcommand() -> None:
    page = _generator().cli_reference()
    for cmd in ["msgr plugins", "msgr config check", "msgr run", "msgr ping", "msgr new-plugin transport",
                "msgr sim gossip", "msgr sim plumtree"]:
        assert f"### `{cmd}`" in page, cmd


def test_markers_expand_and_unknown_ones_fail() -> None:
    gen = _generator()
    assert "msgr:generated" not in gen.expand("# x\n\n<!-- msgr:generated cli -->\n")
    with pytest.raises(KeyError):
        gen.expand("<!-- msgr:generated nothing -->\n")


def test_site_builds_strict(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    config = (tmp_path / "site" / "config" / "index.html").read_text()
    assert "max_requests_in_flight" in config  # generated at build time
    hooks = (tmp_path / "site" / "hooks" / "index.html").read_text()
    assert "msgr_peer_failed" in hooks  # mkdocstrings
