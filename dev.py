#!/usr/bin/env python3
"""Set up the project-local environment and run the demo or the whole test suite.

    python3 dev.py demo [demo options]   # set up .venv, run `msgr demo`
    python3 dev.py test [pytest options] # set up .venv, run every check and test
    python3 dev.py setup                 # only set up .venv

Needs nothing but Python >= 3.11 and access to the package index.  Setup
creates ``.venv`` beside this file and installs the core and every plugin
under ``plugins/`` (editable, with their test extras); it is skipped when
nothing it depends on changed since the last run.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / ".msgr-setup"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")

# Tools the test command runs besides pytest.
DEV_TOOLS = ["ruff>=0.6", "mypy>=1.10", "pytest-xdist>=3"]


def distributions() -> list[Path]:
    """The core first, then every plugin, then the docs' example plugins
    (installed and tested exactly as their tutorial says), in a stable order."""
    plugins = sorted(p.parent for p in (ROOT / "plugins").glob("*/pyproject.toml"))
    examples = sorted(p.parent for p in (ROOT / "docs" / "examples").glob("*/pyproject.toml"))
    return [ROOT, *plugins, *examples]


def _fingerprint() -> str:
    h = hashlib.sha256(sys.version.encode())
    for path in [ROOT / "dev.py", *(d / "pyproject.toml" for d in distributions())]:
        h.update(str(path.relative_to(ROOT)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def run(*cmd: str | Path, check: bool = True) -> int:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run([str(c) for c in cmd], cwd=ROOT, check=check).returncode


def setup() -> None:
    fingerprint = _fingerprint()
    if STAMP.exists() and STAMP.read_text() == fingerprint and PY.exists():
        return
    if not PY.exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    pip = [PY, "-m", "pip", "--disable-pip-version-check", "-q"]
    run(*pip, "install", "--upgrade", "pip")
    args: list[str | Path] = ["-e", f"{ROOT}[test,bench,docs]"]
    for dist in distributions()[1:]:
        args += ["-e", f"{dist}[test]"]
    run(*pip, "install", *args, *DEV_TOOLS)
    STAMP.write_text(fingerprint)


def transport_schemes() -> list[str]:
    out = subprocess.run(
        [str(PY), "-c", "from importlib.metadata import entry_points as e;"
         "print(' '.join(sorted(x.name for x in e(group='msgr.transports'))))"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    return out.split()


def test(extra: list[str]) -> int:
    setup()
    tests = [str(d / "tests") for d in distributions() if (d / "tests").is_dir()]
    run(PY, "-m", "ruff", "check", ".")
    run(PY, "-m", "mypy")
    # The documentation site, warnings as errors (its reference pages are
    # generated from the code during the build).
    # (NO_MKDOCS_2_WARNING: Material's end-of-life notice, not about our docs)
    os.environ.setdefault("NO_MKDOCS_2_WARNING", "1")
    with tempfile.TemporaryDirectory(prefix="msgr-site-") as site:
        run(PY, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", site)
    # Every distribution's tests, in one run (importlib mode keeps them apart).
    code = run(PY, "-m", "pytest", *tests, "-q", *extra, check=False)
    if code != 0:
        return code
    # The conformance kit, exactly as a third-party author runs it, against
    # every transport installed here.
    for scheme in transport_schemes():
        code = run(PY, "-m", "pytest", "-q", "--pyargs", "msgr_core.testing.suite",
                   f"--msgr-transport={scheme}", check=False)
        if code != 0:
            return code
    return 0


def main(argv: list[str]) -> int:
    if sys.version_info < (3, 11):  # noqa: UP036 - this file runs before anything else checks
        sys.exit(f"msgr needs Python >= 3.11; this is {sys.version.split()[0]}")
    if not argv or argv[0] not in {"demo", "test", "setup"}:
        print(__doc__)
        return 2
    cmd, extra = argv[0], argv[1:]
    if cmd == "setup":
        setup()
        return 0
    if cmd == "test":
        return test(extra)
    setup()
    return subprocess.run([str(BIN / "msgr"), "demo", *extra], cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
