"""Phi-accrual failure detection, in Cassandra's form.

Each endpoint has an :class:`ArrivalWindow` of the intervals between the
moments a *newer heartbeat* of that endpoint reached us (directly or through
any peer).  Cassandra's model:

- at most ``size`` (1000) intervals are kept; the first report adds the
  ``initial`` interval (twice the gossip interval: a high first guess gives
  false negatives, not flapping); intervals over ``max_interval`` are
  ignored (a partition or a pause is not a sample of the normal rate);
- ``phi(now) = PHI_FACTOR * (now - last) / mean`` with
  ``PHI_FACTOR = 1 / ln 10``: the arrival times are taken as exponentially
  distributed, so phi is ``-log10`` of the probability that a heartbeat
  this late is still coming;
- the endpoint is convicted when phi exceeds the threshold (8 means about
  ``8 * ln 10 = 18.4`` mean intervals of silence).
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["PHI_FACTOR", "ArrivalWindow"]

PHI_FACTOR = 1.0 / math.log(10.0)


class ArrivalWindow:
    """Heartbeat inter-arrival times of one endpoint (O(1) per report).

    :ivar last: the time of the last report (``None`` before the first).
    """

    __slots__ = ("_intervals", "_size", "_sum", "last")

    def __init__(self, size: int = 1000) -> None:
        self._intervals: deque[float] = deque()
        self._size = size
        self._sum = 0.0
        self.last: float | None = None

    def __len__(self) -> int:
        return len(self._intervals)

    def _push(self, interval: float) -> None:
        if len(self._intervals) >= self._size:
            self._sum -= self._intervals.popleft()
        self._intervals.append(interval)
        self._sum += interval

    def report(self, now: float, *, initial: float, max_interval: float) -> None:
        """A newer heartbeat arrived at ``now``."""
        if self.last is None:
            self._push(initial)
        else:
            interval = now - self.last
            if interval <= max_interval:
                self._push(interval)
        self.last = now

    def mean(self) -> float:
        """The mean interval (``0.0`` when empty)."""
        n = len(self._intervals)
        return self._sum / n if n else 0.0

    def phi(self, now: float) -> float:
        """Scaled phi at ``now`` (``0.0`` before the first report)."""
        if self.last is None or not self._intervals:
            return 0.0
        mean = self._sum / len(self._intervals)
        if mean <= 0.0:
            # every sample was 0 (several reports in one instant): any silence is suspect
            mean = 1e-9
        return PHI_FACTOR * (now - self.last) / mean
