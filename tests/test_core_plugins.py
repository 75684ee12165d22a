"""Plugin loading: only what is selected is imported; a broken plugin is
reported by `msgr plugins`, never fatal to listing; tracing by env var."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from msgr_core.errors import PluginError, PluginNotInstalled
from msgr_core.registry import PluginSet


def _fake_distribution(root: Path, name: str, module_source: str, entry: str) -> None:
    """A minimal installed distribution (dist-info + module) under ``root``."""
    (root / f"{name}.py").write_text(module_source)
    info = root / f"{name}-0.0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0.1\n")
    (info / "entry_points.txt").write_text(f"[msgr.transports]\n{entry} = {name}\n")


def _run(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_a_tcp_only_node_never_imports_other_plugins() -> None:
    out = _run(
        "import sys; from msgr_core import Messenger;"
        "Messenger.from_config({'messenger': {'listen': ['tcp://127.0.0.1:0']}});"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('msgr_zmq', 'zmq', 'msgr_loopback', 'msgr_heartbeat', 'msgr_gossip', 'msgr_plumtree', 'pyverbs')))")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_broken_plugin_is_reported_not_fatal(tmp_path: Path) -> None:
    _fake_distribution(tmp_path, "msgr_broken", "raise RuntimeError('boom at import')\n", "broken")
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run([sys.executable, "-m", "msgr_core.cli", "plugins", "--json"], capture_output=True,
                         text=True, timeout=60, env={**os.environ, **env})
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert rows["broken"]["status"].startswith("error: RuntimeError: boom at import")
    assert rows["tcp"]["status"] == "ok"
    # selecting it is a clear, typed error
    sel = _run("from msgr_core import Messenger;"
               "Messenger.from_config({'messenger': {'transports': ['broken']}})", env)
    assert sel.returncode == 1
    assert "PluginError" in sel.stderr and "failed to import" in sel.stderr and "boom at import" in sel.stderr


def test_plugin_that_registers_a_non_transport_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = "import msgr_core\n@msgr_core.hookimpl\ndef msgr_register_transports():\n    return [object]\n"
    _fake_distribution(tmp_path, "msgr_wrong", source, "wrong")
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    importlib.invalidate_caches()
    plugins = PluginSet()
    plugins.load("msgr.transports", ["wrong"])
    from msgr_core.registry import TransportRegistry

    with pytest.raises(PluginError, match="not a Transport subclass"):
        TransportRegistry(plugins)


def test_blocked_plugin_cannot_be_selected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSGR_DISABLE_PLUGINS", "tcp, unix")
    with pytest.raises(PluginNotInstalled, match="blocked by MSGR_DISABLE_PLUGINS"):
        PluginSet().load("msgr.transports", ["tcp"])


def test_hook_tracing_by_env_var() -> None:
    out = _run(
        "import logging, asyncio; logging.basicConfig(level=logging.DEBUG);"
        "from msgr_core import Messenger;"
        "ms = Messenger.from_config({'messenger': {'listen': ['loop://t']}});"
        "asyncio.run(ms.start()); print('started')",
        {"MSGR_TRACE_HOOKS": "1"})
    assert out.returncode == 0, out.stderr
    assert "msgr.hooks" in out.stderr and "msgr_messenger_started" in out.stderr


def test_entry_points_are_scanned_once_and_again_for_a_new_plugin(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Messengers share one scan of the installed distributions (it costs
    tens of milliseconds each); a plugin installed while the process runs
    is still found, by a rescan when a name is missing."""
    import importlib
    from importlib import metadata

    from msgr_core import registry

    monkeypatch.syspath_prepend(str(tmp_path))
    scans: list[str] = []
    real = metadata.entry_points

    def counting(**kw: str) -> object:
        scans.append(kw["group"])
        return real(**kw)

    monkeypatch.setattr(registry.metadata, "entry_points", counting)
    for _ in range(3):
        PluginSet().load("msgr.transports", ["tcp"])
    assert scans == ["msgr.transports"]

    source = ("import msgr_core\nfrom msgr_loopback import LoopTransport\n"
              "class Late(LoopTransport):\n    schemes = ('late',)\n"
              "@msgr_core.hookimpl\ndef msgr_register_transports():\n    return [Late]\n")
    _fake_distribution(tmp_path, "msgr_late", source, "late")
    importlib.invalidate_caches()
    plugins = PluginSet()
    plugins.load("msgr.transports", ["late"])
    assert "late" in plugins.loaded
    assert scans == ["msgr.transports", "msgr.transports"]
