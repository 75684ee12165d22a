"""Config: every error names the source, the dotted key, the value and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from msgr_core import Messenger
from msgr_core.config import Config, load_config
from msgr_core.errors import ConfigError, PluginNotInstalled


def test_defaults_fill_in() -> None:
    cfg = Config({"messenger": {"name": "a"}})
    assert cfg["limits"]["max_frame_bytes"] == 64 * 1024 * 1024
    assert cfg.policy_for("anything") == "lossless_peer"
    assert cfg["inject"]["socket_failures"] == 0


def test_transports_order_then_listen_schemes() -> None:
    cfg = Config({"messenger": {"listen": ["unix:///tmp/x", "tcp://127.0.0.1:0"], "transports": ["tcp"]}})
    assert cfg.transports == ["tcp", "unix"]


@pytest.mark.parametrize(
    ("data", "key", "expected"),
    [
        ({"limits": {"max_frame_bytes": "big"}}, "limits.max_frame_bytes", "an integer"),
        ({"limits": {"max_frame_byte": 10}}, "limits.max_frame_byte", "one of the keys"),
        ({"messenger": {"listen": "tcp://x:1"}}, "messenger.listen", "a list of strings"),
        ({"messenger": {"listen": ["nonsense"]}}, "messenger.listen[0]", "a URI"),
        ({"policy": {"default": "lossy_clinet"}}, "policy.default", "one of"),
        ({"limits": {"connect_timeout": -1}}, "limits.connect_timeout", ">= 0"),
        ({"limits": {"low_watermark": 10, "high_watermark": 5}}, "limits.low_watermark", "at most"),
        ({"inject": {"socket_failures": True}}, "inject.socket_failures", "an integer"),
        ({"messenger": 3}, "messenger", "a table"),
    ],
)
def test_errors_name_key_value_and_expectation(data: dict[str, object], key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as ei:
        Config(data)
    assert ei.value.key == key
    assert expected in ei.value.expected
    assert key in str(ei.value)


def test_did_you_mean_for_keys_and_policies() -> None:
    with pytest.raises(ConfigError, match="did you mean 'max_frame_bytes'"):
        Config({"limits": {"max_frame_byte": 10}})
    with pytest.raises(ConfigError, match="did you mean 'lossy_client'"):
        Config({"policy": {"default": "lossy_clinet"}})


def test_unknown_section_is_rejected_with_a_hint() -> None:
    with pytest.raises(ConfigError, match="did you mean 'limits'") as ei:
        Messenger.from_config({"limitz": {}})
    assert ei.value.key == "limitz"


def test_policy_per_peer_type_and_session_limits_checked() -> None:
    cfg = Config({"policy": {"client": "stateless_server", "default": "lossless_peer"}})
    assert cfg.policy_for("client") == "stateless_server" and cfg.policy_for("osd") == "lossless_peer"
    with pytest.raises(ConfigError, match=r"session\.reconnect_max"):
        Config({"session": {"reconnect_min": 2.0, "reconnect_max": 1.0}})
    with pytest.raises(ConfigError, match=r"session\.ack_every"):
        Config({"session": {"ack_every": 0}})
    with pytest.raises(ConfigError, match=r"inject\.delay_probability"):
        Config({"inject": {"delay_probability": 1.5}})


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "node.toml"
    bad.write_text('[limits]\nmax_frame_bytes = "x"\n')
    with pytest.raises(ConfigError) as ei:
        load_config(bad)
    assert str(bad) in str(ei.value) and "limits.max_frame_bytes" in str(ei.value)
    bad.write_text("[limits\n")
    with pytest.raises(ConfigError, match="valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="readable TOML file"):
        load_config(tmp_path / "missing.toml")


def test_selecting_a_transport_that_is_not_installed_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from msgr_core import registry

    # a scheme whose distribution is known but not installed here
    monkeypatch.setitem(registry.KNOWN_DISTRIBUTIONS, "sctp", "msgr-sctp")
    with pytest.raises(PluginNotInstalled) as ei:
        Messenger.from_config({"messenger": {"transports": ["sctp"]}})
    assert ei.value.name == "sctp"
    assert ei.value.distribution == "msgr-sctp"
    assert "install msgr-sctp" in str(ei.value)
    assert "tcp" in ei.value.installed


def test_plugin_section_accepted_when_selected_and_typed() -> None:
    ms = Messenger.from_config({"messenger": {"transports": ["tcp"]}, "tcp": {}})
    assert ms.config["tcp"] == ms.transports.get("tcp").config_defaults


def test_unknown_extension_is_reported() -> None:
    with pytest.raises(PluginNotInstalled, match="unknown extension 'no-such-extension'") as ei:
        Messenger.from_config({"messenger": {"extensions": ["no-such-extension"]}})
    assert ei.value.kind == "extension" and ei.value.distribution is None
