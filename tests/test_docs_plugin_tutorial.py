"""The plugin-author tutorial (docs/writing-a-transport.md) does what it says.

Its blocks are run in order, from a directory where ``docs`` is the
repository's (so the tutorial's relative paths hold) and with the project's
``.venv`` on PATH:

- ```` ```toml/python title="FILE" ```` blocks whose FILE is in the example
  package (``msgr-fifo/...``) must be snippet includes of that very file;
  the others are saved as FILE;
- every line of an untitled ```` ```sh ```` block runs and must exit 0,
  except ``pip install -e docs/examples/msgr-fifo``: installing is
  ``dev.py setup``'s job (the whole suite shares one venv), so here the
  test checks that msgr-fifo is installed, editable, from that directory;
- ```` ```text title="output" ```` lines appear in the previous command's output.

Separately: ``msgr plugins`` lists ``fifo`` from ``msgr-fifo``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from importlib.metadata import distribution
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "writing-a-transport.md"
EXAMPLE = ROOT / "docs" / "examples" / "msgr-fifo"
FENCE = re.compile(r'^```(\w+)(?: title="([^"]*)")?\n(.*?)^```$', re.MULTILINE | re.DOTALL)
INSTALL = "pip install -e docs/examples/msgr-fifo"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(ROOT / ".venv")
    env.pop("PYTHONPATH", None)
    return env


def _check_installed_from_example() -> None:
    dist = distribution("msgr-fifo")
    direct = json.loads(dist.read_text("direct_url.json") or "{}")
    assert direct.get("dir_info", {}).get("editable"), f"msgr-fifo is not an editable install: {direct}"
    assert Path(direct["url"].removeprefix("file://")).resolve() == EXAMPLE.resolve(), direct


def test_msgr_plugins_lists_the_example() -> None:
    out = subprocess.run(["msgr", "plugins", "--json"], env=_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    fifo = [p for p in json.loads(out.stdout) if p["name"] == "fifo"]
    assert fifo == [{"name": "fifo", "kind": "transport", "distribution": "msgr-fifo", "version": "0.1.0",
                     "module": "msgr_fifo", "status": "ok"}], out.stdout


def test_the_plugin_tutorial_runs_as_written(tmp_path: Path) -> None:
    (tmp_path / "docs").symlink_to(ROOT / "docs")
    env = _env()
    last = ""
    ran: list[str] = []
    for m in FENCE.finditer(PAGE.read_text()):
        lang, title, body = m.group(1), m.group(2) or "", m.group(3)
        if title.startswith("msgr-fifo/"):
            assert body.strip() == f'--8<-- "{title}"', f"{title}: the page must include the example's own file"
            assert (EXAMPLE.parent / title).is_file(), title
        elif lang in ("toml", "python") and title:
            (tmp_path / title).write_text(body)
        elif lang == "sh" and not title:
            outputs = []
            for line in body.strip().splitlines():
                if line == INSTALL:
                    _check_installed_from_example()
                    continue
                out = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True,
                                     text=True, timeout=300)
                assert out.returncode == 0, f"`{line}` failed ({out.returncode}):\n{out.stdout}{out.stderr}"
                outputs.append(out.stdout)
                ran.append(line)
            last = "".join(outputs)
        elif lang == "text" and title == "output":
            lines = last.splitlines()
            for want in body.strip().splitlines():
                assert want in lines, f"expected {want!r} in:\n{last}"
        elif lang == "text" and not title:
            continue  # the package's file tree
        else:
            pytest.fail(f"a block the test does not know how to run: ```{lang} title={title!r}")
    # The commands that matter were among them.
    assert "msgr plugins" in ran
    assert "pytest --pyargs msgr_core.testing.suite --msgr-transport=fifo" in ran
    assert "python -m pytest docs/examples/msgr-fifo/tests" in ran
    assert "python fifo_roundtrip.py" in ran
