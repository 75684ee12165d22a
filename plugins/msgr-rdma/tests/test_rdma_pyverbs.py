"""pyverbs is installed for real (the 56.0rc1 manylinux wheel): the plugin
imports it, enumerates devices, and fails clearly when there is none.
Also: the backend is chosen explicitly, never silently."""

from __future__ import annotations

import pytest
from msgr_rdma import NoRdmaDevice, RdmaTransport, VerbsError, WcStatus
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


# -- the pyverbs backend's parts that need no device -------------------------------------

pv_enums = pytest.importorskip("pyverbs.enums")


def test_wc_status_numbers_are_libibverbs_own() -> None:
    for status in WcStatus:
        assert int(getattr(pv_enums, f"IBV_WC_{status.name}")) == status.value, status
    assert WcStatus.from_raw(int(pv_enums.IBV_WC_RETRY_EXC_ERR)) is WcStatus.RETRY_EXC_ERR
    # a status this version does not know (e.g. IBV_WC_TM_ERR = 22) is an error, never success
    assert WcStatus.from_raw(22) is WcStatus.GENERAL_ERR
    assert WcStatus.from_raw(999) is WcStatus.GENERAL_ERR


def test_opcode_and_access_mapping() -> None:
    from msgr_rdma._pyverbs import ibv_access, wc_opcode
    from msgr_rdma.verbs import Access, Opcode

    for name in ("SEND", "RDMA_WRITE", "RDMA_READ", "RECV"):
        assert wc_opcode(int(getattr(pv_enums, f"IBV_WC_{name}"))) is Opcode[name]
    assert wc_opcode(int(pv_enums.IBV_WC_COMP_SWAP)) is Opcode.UNKNOWN
    assert ibv_access(Access.LOCAL_WRITE) == pv_enums.IBV_ACCESS_LOCAL_WRITE
    assert ibv_access(Access.LOCAL_WRITE | Access.REMOTE_READ) == (
        pv_enums.IBV_ACCESS_LOCAL_WRITE | pv_enums.IBV_ACCESS_REMOTE_READ
    )
    assert ibv_access(Access.REMOTE_WRITE) == pv_enums.IBV_ACCESS_REMOTE_WRITE
    assert ibv_access(Access.LOCAL_READ) == 0


def test_async_events_map_to_link_breaks() -> None:
    from msgr_rdma._pyverbs import EVENT_NAMES, async_event_action

    for value, name in EVENT_NAMES.items():
        assert int(getattr(pv_enums, f"IBV_EVENT_{name}")) == value
    for name in ("QP_FATAL", "QP_REQ_ERR", "QP_ACCESS_ERR", "PATH_MIG_ERR"):
        assert async_event_action(int(getattr(pv_enums, f"IBV_EVENT_{name}"))) == "qp"
    for name in ("CQ_ERR", "DEVICE_FATAL", "PORT_ERR"):
        assert async_event_action(int(getattr(pv_enums, f"IBV_EVENT_{name}"))) == "all"
    for name in ("COMM_EST", "SQ_DRAINED", "PORT_ACTIVE", "LID_CHANGE", "QP_LAST_WQE_REACHED"):
        assert async_event_action(int(getattr(pv_enums, f"IBV_EVENT_{name}"))) == "none"


def test_qp_attributes_for_each_transition() -> None:
    """The QPAttr objects the RESET -> INIT -> RTR -> RTS transitions hand
    to pyverbs (built for real; only ibv_modify_qp needs a device)."""
    from msgr_rdma._pyverbs import RC_RNR_RETRY, gid_bytes, gid_str, rc_init_attr, rc_rtr_attr, rc_rts_attr
    from msgr_rdma.verbs import QPEndpoint

    init = rc_init_attr(2)
    assert (init.qp_state, init.port_num, init.pkey_index) == (pv_enums.IBV_QPS_INIT, 2, 0)
    assert init.qp_access_flags == (
        pv_enums.IBV_ACCESS_LOCAL_WRITE | pv_enums.IBV_ACCESS_REMOTE_READ | pv_enums.IBV_ACCESS_REMOTE_WRITE
    )
    gid = "fe80:0000:0000:0000:0202:c9ff:fe00:0001"
    assert gid_str(gid_bytes(gid)) == gid
    remote = QPEndpoint(0x1234, psn=0x55AA, lid=9, gid=gid_bytes(gid), mtu=int(pv_enums.IBV_MTU_4096))
    rtr = rc_rtr_attr(1, 3, int(pv_enums.IBV_MTU_1024), remote, 8)
    assert (rtr.qp_state, rtr.dest_qp_num, rtr.rq_psn) == (pv_enums.IBV_QPS_RTR, 0x1234, 0x55AA)
    assert rtr.max_dest_rd_atomic == 8
    assert rtr.path_mtu == pv_enums.IBV_MTU_1024  # the smaller of both ports
    ah = rtr.ah_attr
    assert (ah.port_num, ah.is_global, ah.dlid, ah.sgid_index, ah.dgid) == (1, 1, 9, 3, gid)
    local = rc_rtr_attr(1, 0, 0, QPEndpoint(7, lid=4), 1)  # InfiniBand without a GID: LID routed
    assert (local.ah_attr.is_global, local.ah_attr.dlid, local.path_mtu) == (0, 4, pv_enums.IBV_MTU_1024)
    rts = rc_rts_attr(0xABCDE, 4)
    assert (rts.qp_state, rts.sq_psn, rts.max_rd_atomic, rts.rnr_retry) == (pv_enums.IBV_QPS_RTS, 0xABCDE, 4, 0)
    assert RC_RNR_RETRY == 0 and rts.retry_cnt == 7 and rts.timeout == 14


def test_pyverbs_errors_become_verbs_errors() -> None:
    import errno

    from msgr_rdma._pyverbs import verbs_error
    from pyverbs.pyverbs_error import PyverbsRDMAError, PyverbsUserError

    err = verbs_error("QP 7: post_send(SEND)", PyverbsRDMAError("Failed to post send", errno.ENOMEM))
    assert isinstance(err, VerbsError) and isinstance(err, OSError)
    assert err.errno == errno.ENOMEM and err.status is None
    assert str(err).startswith("QP 7: post_send(SEND): Failed to post send. Errno: 12")
    assert verbs_error("x", PyverbsUserError("bad")).errno is None


def test_event_descriptor_discovery_fails_clearly() -> None:
    """A verbs event descriptor is found by what appeared in /proc/self/fd;
    anything else (here an eventfd) is not mistaken for one."""
    import os

    from msgr_rdma._pyverbs import _fds, _new_event_fd

    before = _fds()
    fd = os.eventfd(0)
    try:
        with pytest.raises(VerbsError, match="cannot find the descriptor of the completion channel"):
            _new_event_fd(before, "completion channel")
    finally:
        os.close(fd)


def test_verbs_backend_rejects_fault_injection() -> None:
    with pytest.raises(ConfigError) as info:
        RdmaTransport("rdma", TransportOptions(settings={"emu_qp_error_after": 5}))
    assert info.value.key == "rdma.emu_qp_error_after"
    t = RdmaTransport("rdma", TransportOptions(settings={"backend": "emulated-ipc", "emu_qp_error_after": 5}))
    assert t.settings.emu_qp_error_after == 5
