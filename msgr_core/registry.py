"""Finding, loading and registering plugins.

Plugins are found through two entry-point groups: ``msgr.transports`` (entry
name = URI scheme, ``tcp = "msgr_tcp"``) and ``msgr.extensions`` (entry name =
extension name, ``gossip = "msgr_gossip"``).  A distribution may publish
several entries naming the same module (``tcp`` and ``unix``); the module is
registered once.

Loading follows tox and pytest: ``add_hookspecs -> load the selected entry
points -> register built-ins -> check_pending``.  Only what is selected is
imported (a TCP-only node never imports pyverbs); :func:`installed_plugins`
lists everything without importing anything.

Environment:

``MSGR_DISABLE_PLUGINS``
    comma-separated entry names never to load (``MSGR_DISABLE_PLUGINS=zmq+tcp,gossip``).
``MSGR_TRACE_HOOKS``
    set to ``1`` to log every hook call to the ``msgr.hooks`` logger at DEBUG.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from importlib import metadata
from types import ModuleType
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError, PluginNotInstalled
from .transport import Transport

__all__ = [
    "EXTENSION_GROUP",
    "TRANSPORT_GROUP",
    "PluginInfo",
    "PluginSet",
    "TransportRegistry",
    "installed_plugins",
    "load_transport_class",
]

TRANSPORT_GROUP = "msgr.transports"
EXTENSION_GROUP = "msgr.extensions"
BLOCK_ENV = "MSGR_DISABLE_PLUGINS"
TRACE_ENV = "MSGR_TRACE_HOOKS"

#: Which distribution provides what, for "install X" hints.
KNOWN_DISTRIBUTIONS: dict[str, str] = {
    "loop": "msgr-loopback",
    "tcp": "msgr-tcp",
    "unix": "msgr-tcp",
    "tls": "msgr-tcp",
    "zmq+tcp": "msgr-zmq",
    "zmq+ipc": "msgr-zmq",
    "rdma": "msgr-rdma",
    "heartbeat": "msgr-heartbeat",
    "gossip": "msgr-gossip",
    "plumtree": "msgr-plumtree",
}

_KIND = {TRANSPORT_GROUP: "transport", EXTENSION_GROUP: "extension"}
log = logging.getLogger("msgr.plugins")


def _blocked() -> set[str]:
    return {n.strip() for n in os.environ.get(BLOCK_ENV, "").split(",") if n.strip()}


_EP_CACHE: dict[tuple[str, tuple[str, ...]], dict[str, metadata.EntryPoint]] = {}


def _entry_points(group: str, *, fresh: bool = False) -> dict[str, metadata.EntryPoint]:
    """The entry points of ``group`` by name.

    Scanning the installed distributions costs tens of milliseconds, and
    every :class:`~msgr_core.messenger.Messenger` loads its plugins: the scan
    is kept per ``sys.path``.  ``fresh`` rescans (callers do when a name is
    missing, so a plugin installed while the process runs is still found).
    """
    key = (group, tuple(sys.path))
    eps = None if fresh else _EP_CACHE.get(key)
    if eps is None:
        eps = _EP_CACHE[key] = {ep.name: ep for ep in metadata.entry_points(group=group)}
    return eps


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """One installed entry point, as ``msgr plugins`` lists it."""

    name: str
    kind: str
    distribution: str
    version: str
    module: str
    status: str  # "ok", "blocked", "not loaded", or "error: ..."

    def as_dict(self) -> dict[str, str]:
        return {
            "name": self.name,
            "kind": self.kind,
            "distribution": self.distribution,
            "version": self.version,
            "module": self.module,
            "status": self.status,
        }


def installed_plugins(*, load: bool = False) -> list[PluginInfo]:
    """Every installed msgr plugin.  With ``load=True`` each is imported and
    its registration hooks called, and a plugin that fails is reported with
    ``status="error: ..."`` instead of raising."""
    blocked = _blocked()
    out = []
    for group in (TRANSPORT_GROUP, EXTENSION_GROUP):
        for name, ep in sorted(_entry_points(group, fresh=True).items()):
            dist = ep.dist.name if ep.dist else "?"
            version = ep.dist.version if ep.dist else "?"
            if name in blocked:
                status = "blocked"
            elif not load:
                status = "not loaded"
            else:
                try:
                    module = ep.load()
                    if group == TRANSPORT_GROUP:
                        _transport_classes(name, module)
                    status = "ok"
                except Exception as exc:  # a broken plugin must not break listing
                    status = f"error: {type(exc).__name__}: {exc}"
            out.append(PluginInfo(name, _KIND[group], dist, version, ep.value, status))
    return out


def _transport_classes(name: str, module: ModuleType) -> list[type[Transport]]:
    register = getattr(module, "msgr_register_transports", None)
    if register is None:
        raise PluginError(f"transport plugin {name!r} ({module.__name__}) has no msgr_register_transports")
    classes = list(register())
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, Transport)):
            raise PluginError(f"plugin {name!r} registered {cls!r}, which is not a Transport subclass")
    return classes


def load_transport_class(scheme: str) -> type[Transport]:
    """The transport class serving ``scheme``, from the installed entry points.

    :raises PluginNotInstalled: no installed (unblocked) plugin serves it.
    """
    registry = TransportRegistry(PluginSet())
    return registry.get(scheme)


class PluginSet:
    """A pluggy plugin manager holding msgr's hookspecs and the loaded plugins.

    Each :class:`~msgr_core.messenger.Messenger` has its own, so many
    messengers with different plugin selections can live in one process.
    """

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.loaded: dict[str, ModuleType] = {}
        if os.environ.get(TRACE_ENV):
            hook_log = logging.getLogger("msgr.hooks")
            self.pm.trace.root.setwriter(lambda msg: hook_log.debug("%s", msg.rstrip()))
            self.pm.enable_tracing()

    @property
    def hook(self) -> Any:
        return self.pm.hook

    def load(self, group: str, names: list[str]) -> None:
        """Import and register the entry points ``names`` of ``group``.

        :raises PluginNotInstalled: a name has no entry point, or is blocked.
        :raises PluginError: the plugin failed to import or register.
        """
        if all(name in self.loaded for name in names):
            return
        eps = _entry_points(group)
        if any(name not in eps for name in names):
            eps = _entry_points(group, fresh=True)
        blocked = _blocked()
        for name in names:
            if name in self.loaded:
                continue
            ep = eps.get(name)
            if ep is None or name in blocked:
                err = PluginNotInstalled(
                    _KIND[group], name, [n for n in eps if n not in blocked], KNOWN_DISTRIBUTIONS.get(name)
                )
                if ep is not None:
                    err.args = (f"{err.args[0]} — {name!r} is blocked by {BLOCK_ENV}",)
                raise err
            try:
                module = ep.load()
            except Exception as exc:
                raise PluginError(f"{_KIND[group]} plugin {name!r} ({ep.value}) failed to import: {exc}") from exc
            self.register(module, name)

    def register(self, plugin: object, name: str) -> None:
        """Register a plugin object (module or instance) once."""
        if isinstance(plugin, ModuleType):
            self.loaded[name] = plugin
        if not self.pm.is_registered(plugin):
            self.pm.register(plugin, name=name)
        self.pm.check_pending()

    def has_impls(self, hook_name: str) -> bool:
        """Whether any plugin implements ``hook_name`` (skip the call if not)."""
        caller = getattr(self.pm.hook, hook_name)
        return bool(caller.get_hookimpls())


class TransportRegistry:
    """Transport classes by URI scheme (Dask's ``comm.registry``, in pluggy form).

    Filled from ``msgr_register_transports``; a scheme not yet registered is
    looked up lazily in the ``msgr.transports`` entry points.
    """

    def __init__(self, plugins: PluginSet) -> None:
        self._plugins = plugins
        self._by_scheme: dict[str, type[Transport]] = {}
        self.refresh()

    def refresh(self) -> None:
        """Re-read the registered plugins' transports."""
        seen: dict[str, type[Transport]] = {}
        for result in self._plugins.hook.msgr_register_transports():
            for cls in result:
                if not (isinstance(cls, type) and issubclass(cls, Transport)):
                    raise PluginError(f"msgr_register_transports returned {cls!r}, not a Transport subclass")
                for scheme in cls.schemes:
                    other = seen.get(scheme)
                    if other is not None and other is not cls:
                        raise PluginError(
                            f"scheme {scheme!r} is served by both {other.__module__}.{other.__qualname__} "
                            f"and {cls.__module__}.{cls.__qualname__}"
                        )
                    seen[scheme] = cls
        self._by_scheme = seen

    @property
    def schemes(self) -> list[str]:
        return sorted(self._by_scheme)

    def get(self, scheme: str) -> type[Transport]:
        """The class serving ``scheme``.

        :raises PluginNotInstalled: nothing installed serves it; the message
            lists the installed schemes and the distribution to install.
        """
        cls = self._by_scheme.get(scheme)
        if cls is not None:
            return cls
        self._plugins.load(TRANSPORT_GROUP, [scheme])
        self.refresh()
        cls = self._by_scheme.get(scheme)
        if cls is None:
            raise PluginNotInstalled(
                "transport", scheme, list(_entry_points(TRANSPORT_GROUP)), KNOWN_DISTRIBUTIONS.get(scheme)
            )
        return cls
