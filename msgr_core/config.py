"""Configuration: a TOML file or a dict of the same shape.

::

    [messenger]
    name = "osd.3"                      # entity name (default: "<type>.<pid>")
    type = "osd"                        # entity type: peers pick their policy by it
    listen = ["tcp://0.0.0.0:6800"]     # addresses to listen on (port 0 = pick)
    transports = ["tcp"]                # preference order for outgoing links
    extensions = []                     # extension plugins to enable

    [policy]
    default = "lossless_peer"           # policy for peer types not listed
    client = "stateless_server"         # per peer type

    [auth]
    keyring = "/etc/msgr/keyring"       # keys by name / type / cluster (mode 600)
    require = true                      # default: true when any key is configured

    [limits] ... [session] ... [inject] ...   (see CORE_DEFAULTS)

Every section and key is checked: unknown ones are rejected with a
did-you-mean, and each value must have the type of its default.  Plugins
declare their own sections (``msgr_config_sections``, or a transport's
``config_section``).  Every :class:`~msgr_core.errors.ConfigError` names the
source, the dotted key, the value and what was expected.
"""

from __future__ import annotations

import copy
import difflib
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .auth import Authenticator
from .errors import ConfigError
from .policy import POLICIES

__all__ = ["CORE_DEFAULTS", "Config", "load_config"]

MiB = 1024 * 1024

#: Core sections and their defaults; a key's type is its default's type.
CORE_DEFAULTS: dict[str, dict[str, Any]] = {
    "messenger": {
        "name": "",
        "type": "node",
        "listen": [],
        "transports": [],
        "extensions": [],
    },
    "limits": {
        "max_frame_bytes": 64 * MiB,
        "max_header_bytes": 64 * 1024,
        "max_queued_bytes": 64 * MiB,
        "high_watermark": 1 * MiB,
        "low_watermark": 256 * 1024,
        "connect_timeout": 10.0,
        "handshake_timeout": 10.0,
        "request_timeout": 30.0,
        "stop_timeout": 5.0,
        "max_sessions": 16384,
        "max_pending": 1024,
        "max_requests_in_flight": 1024,
    },
    "session": {
        "ack_every": 64,
        "ack_delay": 0.02,
        "max_unacked_bytes": 32 * MiB,
        "max_unacked_msgs": 65536,
        "reconnect_min": 0.2,
        "reconnect_max": 15.0,
        "keepalive_interval": 5.0,
        "keepalive_timeout": 30.0,
    },
    "auth": {
        "keyring": "",
        "require": None,
        "cluster_key": "",
        "keys": {},
        "types": {},
    },
    "inject": {
        "socket_failures": 0,
        "seed": 0,
        "delay_type": "",
        "delay_max": 0.0,
        "delay_probability": 0.0,
        "blackhole_types": [],
    },
}

POLICY_SECTION = "policy"
DEFAULT_POLICY = "lossless_peer"

_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list"}


def _expected(default: Any) -> str:
    if isinstance(default, list):
        return "a list of strings"
    return _TYPE_NAMES.get(type(default), type(default).__name__)


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"did you mean {close[0]!r}?" if close else ""


class Config:
    """A checked configuration.  Read sections as ``config["limits"]["max_frame_bytes"]``.

    :ivar source: the file it came from, or ``"<dict>"``.
    """

    def __init__(self, data: Mapping[str, Any], source: str = "<dict>") -> None:
        self.source = source
        self._raw = copy.deepcopy(dict(data))
        self._sections: dict[str, dict[str, Any]] = {}
        self._declared: dict[str, dict[str, Any]] = dict(CORE_DEFAULTS)
        self._check_shape()
        for name in CORE_DEFAULTS:
            self._sections[name] = self._check_section(name, CORE_DEFAULTS[name])
        self._sections[POLICY_SECTION] = self._check_policy()
        self._check_messenger()

    # -- access -----------------------------------------------------------

    def __getitem__(self, section: str) -> dict[str, Any]:
        return self._sections[section]

    def get(self, section: str) -> dict[str, Any]:
        return self._sections.get(section, {})

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return copy.deepcopy(self._sections)

    @property
    def transports(self) -> list[str]:
        """Schemes in preference order: ``messenger.transports``, then the
        schemes of ``messenger.listen`` not already named."""
        order = list(self["messenger"]["transports"])
        for addr in self["messenger"]["listen"]:
            scheme = addr.split("://", 1)[0]
            if scheme not in order:
                order.append(scheme)
        return order

    def policy_for(self, peer_type: str) -> str:
        """The policy for peers of ``peer_type`` (``policy.default`` if not listed)."""
        pol = self[POLICY_SECTION]
        return str(pol.get(peer_type, pol["default"]))

    def explicit_policy(self, peer_type: str) -> str | None:
        """The policy configured for ``peer_type`` by name, or ``None``."""
        pol = self[POLICY_SECTION]
        return str(pol[peer_type]) if peer_type in pol and peer_type != "default" else None

    # -- plugin sections ----------------------------------------------------

    def has_section(self, section: str) -> bool:
        """Whether ``section`` is declared (by the core or a loaded plugin)."""
        return section in self._declared

    def declare(self, section: str, defaults: Mapping[str, Any], owner: str) -> None:
        """Check section ``section`` against a plugin's declared ``defaults``.

        :raises ConfigError: a key is unknown or has the wrong type.
        """
        if section in self._declared and section in CORE_DEFAULTS:
            raise ConfigError(section, None, f"a section no plugin redefines ({owner} tried)", source=self.source)
        self._declared[section] = dict(defaults)
        self._sections[section] = self._check_section(section, defaults)

    def check_unknown_sections(self) -> None:
        """After every plugin declared its sections: reject the rest."""
        known = [*self._declared, POLICY_SECTION]
        for name in self._raw:
            if name not in known:
                hint = _did_you_mean(name, known) or (
                    "a plugin's section is accepted only when that plugin is enabled in "
                    "messenger.transports, messenger.listen or messenger.extensions"
                )
                raise ConfigError(name, self._raw[name], f"one of the sections {', '.join(sorted(known))}",
                                  source=self.source, hint=hint)

    # -- checks -------------------------------------------------------------

    def _check_shape(self) -> None:
        for name, body in self._raw.items():
            if not isinstance(body, Mapping):
                raise ConfigError(name, body, "a table (section)", source=self.source)

    def _check_section(self, name: str, defaults: Mapping[str, Any]) -> dict[str, Any]:
        given = self._raw.get(name, {})
        out = copy.deepcopy(dict(defaults))
        for key, value in given.items():
            dotted = f"{name}.{key}"
            if key not in defaults:
                raise ConfigError(dotted, value, f"one of the keys {', '.join(sorted(defaults)) or '(none)'}",
                                  source=self.source, hint=_did_you_mean(key, list(defaults)))
            out[key] = self._check_value(dotted, value, defaults[key])
        return out

    def _check_value(self, dotted: str, value: Any, default: Any) -> Any:
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            value = float(value) if ok else value
        elif isinstance(default, str):
            ok = isinstance(value, str)
        elif isinstance(default, list):
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        elif isinstance(default, dict):
            ok = isinstance(value, Mapping)
        else:
            ok = default is None or isinstance(value, type(default))
        if not ok:
            raise ConfigError(dotted, value, _expected(default), source=self.source)
        if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
            raise ConfigError(dotted, value, "a value >= 0", source=self.source)
        return value

    def _check_policy(self) -> dict[str, Any]:
        given = self._raw.get(POLICY_SECTION, {})
        out: dict[str, Any] = {"default": DEFAULT_POLICY}
        for key, value in given.items():
            dotted = f"{POLICY_SECTION}.{key}"
            if not isinstance(value, str) or value not in POLICIES:
                hint = _did_you_mean(value, list(POLICIES)) if isinstance(value, str) else ""
                raise ConfigError(dotted, value, f"one of {', '.join(POLICIES)}", source=self.source, hint=hint)
            out[key] = value
        return out

    def _check_messenger(self) -> None:
        ms = self["messenger"]
        for i, addr in enumerate(ms["listen"]):
            if "://" not in addr:
                raise ConfigError(f"messenger.listen[{i}]", addr, "a URI such as tcp://127.0.0.1:6800",
                                  source=self.source)
        lim = self["limits"]
        if lim["low_watermark"] > lim["high_watermark"]:
            raise ConfigError("limits.low_watermark", lim["low_watermark"],
                              f"at most limits.high_watermark ({lim['high_watermark']})", source=self.source)
        ses = self["session"]
        for key in ("ack_every", "max_unacked_msgs"):
            if ses[key] < 1:
                raise ConfigError(f"session.{key}", ses[key], "at least 1", source=self.source)
        for key in ("keepalive_interval", "ack_delay", "reconnect_min"):
            if ses[key] <= 0:
                raise ConfigError(f"session.{key}", ses[key], "a number > 0", source=self.source)
        if ses["reconnect_max"] < ses["reconnect_min"]:
            raise ConfigError("session.reconnect_max", ses["reconnect_max"],
                              f"at least session.reconnect_min ({ses['reconnect_min']})", source=self.source)
        inj = self["inject"]
        if inj["delay_probability"] > 1:
            raise ConfigError("inject.delay_probability", inj["delay_probability"], "a probability in [0, 1]",
                              source=self.source)
        if lim["max_frame_bytes"] < 1024:
            raise ConfigError("limits.max_frame_bytes", lim["max_frame_bytes"], "at least 1024", source=self.source)
        for key in ("max_sessions", "max_pending", "max_requests_in_flight"):
            if lim[key] < 1:
                raise ConfigError(f"limits.{key}", lim[key], "at least 1", source=self.source)
        self._check_auth()
        if not ms["name"]:
            ms["name"] = f"{ms['type']}.{os.getpid()}.{id(self) & 0xFFFF:x}"

    def _check_auth(self) -> None:
        auth = self["auth"]
        keyring = auth["keyring"]
        if keyring and not os.path.isabs(keyring) and self.source != "<dict>":
            auth["keyring"] = str(Path(self.source).parent / keyring)
        Authenticator.from_config(auth, source=self.source)


def load_config(source: str | os.PathLike[str] | Mapping[str, Any] | Config) -> Config:
    """A :class:`Config` from a TOML file path, a dict, or a :class:`Config`.

    :raises ConfigError: unreadable file, bad TOML, or a bad value.
    """
    if isinstance(source, Config):
        return source
    if isinstance(source, Mapping):
        return Config(source)
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        hint = exc.strerror or str(exc)
        raise ConfigError("", str(path), "a readable TOML file", source=str(path), hint=hint) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", str(path), "valid TOML", source=str(path), hint=str(exc)) from None
    return Config(data, source=str(path))
