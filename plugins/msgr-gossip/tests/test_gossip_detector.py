"""The phi-accrual arrival window (Cassandra's model)."""

from __future__ import annotations

import math

import pytest
from msgr_gossip import PHI_FACTOR, ArrivalWindow


def test_phi_scaling_and_threshold() -> None:
    w = ArrivalWindow()
    assert w.phi(10.0) == 0.0
    w.report(0.0, initial=2.0, max_interval=2.0)  # first report: the initial guess
    for t in range(1, 1001):
        w.report(float(t), initial=2.0, max_interval=2.0)
    assert len(w) == 1000 and w.mean() == pytest.approx(1.0)  # the initial sample was pushed out
    assert w.phi(1000.0 + 18.0) < 8.0 < w.phi(1000.0 + 18.5)
    assert w.phi(1001.0) == pytest.approx(PHI_FACTOR) == pytest.approx(1 / math.log(10))


def test_long_intervals_are_ignored() -> None:
    w = ArrivalWindow(size=10)
    w.report(0.0, initial=2.0, max_interval=2.0)
    w.report(1.0, initial=2.0, max_interval=2.0)
    w.report(100.0, initial=2.0, max_interval=2.0)  # a partition is not a sample
    assert len(w) == 2 and w.mean() == pytest.approx(1.5)
    assert w.last == 100.0
