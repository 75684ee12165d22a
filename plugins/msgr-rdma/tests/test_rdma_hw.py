"""The conformance kit over a real RDMA device through pyverbs (marker
``rdma_hw``): skipped, with the reason, where no device exists.  On a
Soft-RoCE host (``modprobe rdma_rxe; rdma link add rxe0 type rxe netdev
eth0``) or an InfiniBand / RoCE host::

    MSGR_RDMA_DEVICE=rxe0 python -m pytest plugins/msgr-rdma/tests -m rdma_hw

``MSGR_RDMA_ADDR`` (default ``127.0.0.1``) is the address the setup
listener binds; ``MSGR_RDMA_GID_INDEX`` (default 0; RoCE v2 usually wants
the index of the interface's IPv4-mapped GID, see ``show_gids``) the GID.
Both ends run in this process over the one device (loopback through the
HCA / rxe).  Never run so far: the machines this was written on have no
RDMA support.
"""

from __future__ import annotations

import os

import pytest
from msgr_rdma import NoRdmaDevice, RdmaTransport
from msgr_rdma.verbs import list_verbs_devices

from msgr_core.testing import TransportHarness, TransportTests, kit_options

DEVICE = os.environ.get("MSGR_RDMA_DEVICE", "")
ADDR = os.environ.get("MSGR_RDMA_ADDR", "127.0.0.1")
GID_INDEX = int(os.environ.get("MSGR_RDMA_GID_INDEX", "0"))


def _no_device_reason() -> str:
    try:
        names = list_verbs_devices()
    except NoRdmaDevice as exc:
        return str(exc)
    if not names:
        return "no RDMA device present"
    if DEVICE and DEVICE not in names:
        return f"MSGR_RDMA_DEVICE={DEVICE} is not among the devices present ({', '.join(names)})"
    return ""


REASON = _no_device_reason()

pytestmark = [pytest.mark.rdma_hw, pytest.mark.skipif(bool(REASON), reason=REASON or "-")]


class TestRdmaHardwareConformance(TransportTests):
    @pytest.fixture
    def transport_harness(self) -> TransportHarness:
        options = kit_options(settings={"backend": "verbs", "device": DEVICE, "gid_index": GID_INDEX})
        return TransportHarness(RdmaTransport, f"rdma://{ADDR}:0", options=options, timeout=10.0)


class TestRdmaHardwareSmallBuffersConformance(TransportTests):
    """Constant fragmentation, credit starvation and rendezvous by RDMA READ
    from 4 KiB, on the device."""

    @pytest.fixture
    def transport_harness(self) -> TransportHarness:
        settings = {
            "backend": "verbs",
            "device": DEVICE,
            "gid_index": GID_INDEX,
            "buffer_size": 1024,
            "recv_count": 8,
            "rendezvous_threshold": 4096,
            "max_reads": 2,
        }
        return TransportHarness(RdmaTransport, f"rdma://{ADDR}:0", options=kit_options(settings=settings), timeout=10.0)
