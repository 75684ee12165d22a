"""The conformance kit over a real RDMA device through pyverbs (marker
``rdma_hw``): skipped, with the reason, where no device exists.  On a
Soft-RoCE host (``rdma link add rxe0 type rxe netdev eth0``) or an
InfiniBand / RoCE host::

    MSGR_RDMA_DEVICE=rxe0 python -m pytest plugins/msgr-rdma/tests -m rdma_hw

The pyverbs data path is not written yet, so on such a host these tests
fail with NotImplementedError — on purpose, not hidden.
"""

from __future__ import annotations

import os

import pytest
from msgr_rdma import NoRdmaDevice, RdmaTransport
from msgr_rdma.verbs import list_verbs_devices

from msgr_core.testing import TransportHarness, TransportTests, kit_options

DEVICE = os.environ.get("MSGR_RDMA_DEVICE", "")


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
        options = kit_options(settings={"backend": "verbs", "device": DEVICE})
        return TransportHarness(RdmaTransport, "rdma://127.0.0.1:0", options=options, timeout=10.0)
