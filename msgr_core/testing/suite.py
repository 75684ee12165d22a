"""The conformance suite for an installed transport, picked on the command line::

    pytest --pyargs msgr_core.testing.suite --msgr-transport=tcp
    pytest --pyargs msgr_core.testing.suite --msgr-transport=unix --msgr-listen='unix://{tmp}/s{n}.sock'

The harness comes from the ``msgr_transport_harness`` fixture of the msgr
pytest plugin (:mod:`msgr_core.testing.plugin`); without
``--msgr-transport`` collecting this module is a usage error.
"""

from __future__ import annotations

import pytest

from .harness import TransportHarness
from .transport_tests import TransportTests

__all__ = ["TestSuite"]


class TestSuite(TransportTests):
    """Every conformance check against ``--msgr-transport``."""

    @pytest.fixture
    def transport_harness(self, msgr_transport_harness: TransportHarness) -> TransportHarness:
        return msgr_transport_harness
