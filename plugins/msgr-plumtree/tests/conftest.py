"""Fixtures for the msgr-plumtree tests: simulated clusters over loop://."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from msgr_plumtree.sim import Cluster, make_cluster

MakeCluster = Callable[..., Any]


@pytest.fixture
async def cluster() -> AsyncIterator[MakeCluster]:
    """``await cluster(n, **options)``: a started simulated cluster (see
    :func:`msgr_plumtree.sim.make_cluster`), stopped at the end."""
    made: list[Cluster] = []

    async def make(nodes: int, **options: Any) -> Cluster:
        c = await make_cluster(nodes, **options)
        made.append(c)
        return c

    yield make
    for c in made:
        await c.stop()
