"""pyverbs is installed for real (the 56.0rc1 manylinux wheel): the plugin
imports it, enumerates devices, and fails clearly when there is none.
Also: the backend is chosen explicitly, never silently."""

from __future__ import annotations

import pytest
from msgr_rdma import NoRdmaDevice, RdmaTransport
from msgr_rdma.verbs import list_verbs_devices

from msgr_core.errors import ConfigError
from msgr_core.transport import TransportOptions

pyverbs_device = pytest.importorskip("pyverbs.device", reason="pyverbs is not importable (pip install msgr-rdma)")


def _devices() -> list[str]:
    try:
        return list_verbs_devices()
    except NoRdmaDevice:
        return []


HAVE_DEVICE = bool(_devices())


def test_pyverbs_enumerates_devices_or_says_why_not() -> None:
    from pyverbs.pyverbs_error import PyverbsError

    try:
        devices = pyverbs_device.get_device_list()
    except PyverbsError as exc:
        # no kernel RDMA support (ENOSYS), as on these CI machines
        assert "Failed to get devices list" in str(exc)
        with pytest.raises(NoRdmaDevice) as info:
            list_verbs_devices()
        assert "Failed to get devices list" in str(info.value)
        assert "rdma link add rxe0 type rxe netdev" in str(info.value)
    else:
        assert list_verbs_devices() == [d.name.decode() if isinstance(d.name, bytes) else str(d.name) for d in devices]


@pytest.mark.skipif(HAVE_DEVICE, reason="an RDMA device exists here")
@pytest.mark.parametrize("device", ["", "mlx5_0"])
async def test_listen_and_connect_without_a_device_fail_clearly(device: str) -> None:
    t = RdmaTransport("rdma", TransportOptions(settings={"device": device}))
    assert t.settings.backend == "verbs"  # the default: never the emulation
    with pytest.raises(NoRdmaDevice) as info:
        await t.listen("rdma://127.0.0.1:0", lambda: None)  # type: ignore[arg-type, return-value]
    msg = str(info.value)
    assert isinstance(info.value, OSError)
    assert ("no RDMA device 'mlx5_0'" if device else "no RDMA device:") in msg
    assert "rdma link add rxe0 type rxe netdev eth0" in msg and 'backend = "emulated"' in msg
    with pytest.raises(NoRdmaDevice):
        await t.connect("rdma://127.0.0.1:18515", None)  # type: ignore[arg-type]
    await t.aclose()


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"backend": "fake"}, "rdma.backend"),
        ({"backend": ""}, "rdma.backend"),
        ({"recv_count": 2}, "rdma.recv_count"),
        ({"buffer_size": 16}, "rdma.buffer_size"),
        ({"inline_threshold": "128"}, "rdma.inline_threshold"),
        ({"no_such_key": 1}, "rdma.no_such_key"),
    ],
)
def test_bad_settings_are_named(settings: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        RdmaTransport("rdma", TransportOptions(settings=settings))
    assert info.value.key == key


def test_registered_under_its_scheme() -> None:
    from msgr_core.testing.harness import load_transport_class

    assert load_transport_class("rdma") is RdmaTransport
    assert RdmaTransport.test_addresses["rdma"] == "rdma://127.0.0.1:0"
