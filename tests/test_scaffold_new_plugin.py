"""`msgr new-plugin transport NAME`: the generated package is the example, and its tests really run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from msgr_core.scaffold import PluginNames, new_transport_plugin, render, template_files

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "msgr-fifo"


@pytest.mark.parametrize(
    ("template", "example"),
    [
        ("__MODULE__/transport.py", "msgr_fifo/transport.py"),
        ("tests/test___NAME___conformance.py", "tests/test_fifo_conformance.py"),
    ],
)
def test_the_templates_are_the_example(template: str, example: str) -> None:
    rendered = render(template_files()[template], PluginNames.for_scheme("fifo"))
    assert rendered == (EXAMPLE / example).read_text(), (
        f"msgr_core/templates/transport/{template}.tmpl rendered for 'fifo' differs from docs/examples/msgr-fifo/"
        f"{example}: change both together (the template is the example with msgr_fifo -> __MODULE__, "
        "msgr-fifo -> __DIST__, Fifo -> __CLASS__, fifo:// -> __SCHEME__://, other 'fifo' -> __NAME__ or __SCHEME__)"
    )


def test_names() -> None:
    n = PluginNames.for_scheme("my-pipe")
    assert (n.name, n.module, n.dist, n.cls) == ("my_pipe", "msgr_my_pipe", "msgr-my-pipe", "MyPipe")
    for bad in ["", "Shm", "1x", "a b", "x/y", "x" * 40]:
        with pytest.raises(ValueError):
            PluginNames.for_scheme(bad)


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    (tmp_path / "msgr-shm").mkdir()
    (tmp_path / "msgr-shm" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        new_transport_plugin("shm", tmp_path)
    assert (tmp_path / "msgr-shm" / "keep.txt").read_text() == "mine"


def _make_visible(pkg: Path, site: Path) -> None:
    """What `pip install -e` would publish: a .dist-info with the pyproject's entry points."""
    project = tomllib.loads((pkg / "pyproject.toml").read_text())["project"]
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    lines = []
    for group, entries in project["entry-points"].items():
        lines.append(f"[{group}]")
        lines += [f"{name} = {value}" for name, value in entries.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")


def test_generated_package_passes_the_conformance_kit(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "msgr_core.cli", "new-plugin", "transport", "my-pipe", "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    pkg = tmp_path / "msgr-my-pipe"
    assert sorted(str(p.relative_to(pkg)) for p in pkg.rglob("*") if p.is_file()) == [
        "CHANGELOG.md", "README.md", "msgr_my_pipe/__init__.py", "msgr_my_pipe/py.typed",
        "msgr_my_pipe/transport.py", "pyproject.toml", "tests/test_my_pipe_conformance.py",
    ]
    site = tmp_path / "site"
    _make_visible(pkg, site)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(pkg), str(site)])}

    listed = subprocess.run([sys.executable, "-m", "msgr_core.cli", "plugins", "--json"],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    mine = [p for p in json.loads(listed.stdout) if p["name"] == "my-pipe"]
    assert mine and mine[0]["distribution"] == "msgr-my-pipe", listed.stdout

    # The package's own tests: every check of the kit, none skipped.
    own = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                         capture_output=True, text=True, env=env, cwd=pkg, timeout=240)
    assert own.returncode == 0, own.stdout + own.stderr
    assert "20 passed" in own.stdout and "skipped" not in own.stdout, own.stdout

    # The kit as the README says, by scheme through the entry point.
    kit = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--pyargs",
                          "msgr_core.testing.suite", "--msgr-transport=my-pipe"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240)
    assert kit.returncode == 0, kit.stdout + kit.stderr
    assert "18 passed" in kit.stdout, kit.stdout  # any_port and malformed_input need capabilities
