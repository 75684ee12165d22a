"""The initial overlay and the config section (no network)."""

from __future__ import annotations

import math

import msgr_plumtree
import pytest
from msgr_plumtree import initial_counts, overlay

from msgr_core import Messenger
from msgr_core.errors import ConfigError


def test_pt_defaults() -> None:
    assert msgr_plumtree.msgr_config_sections() == {"plumtree": {
        "lazy_tick_period": 1.0, "exchange_tick_period": 10.0, "max_exchanges": 1, "graft_mode": "partisan",
        "graft_timeout": 0.5, "graft_retry_timeout": 0.25, "peer_sampling": "view", "seed": 0,
        "tree": "per_root", "eager_gossip_fanout": 0, "contacts": [], "active_size": 5, "passive_size": 30,
        "arwl": 6, "prwl": 3,
        "shuffle_period": 10.0, "shuffle_active": 3, "shuffle_passive": 4, "shuffle_ttl": 6,
        "close_idle_sessions": True}}


def test_pt_initial_counts_are_riak_cores() -> None:
    assert initial_counts(1) == (0, 0)
    assert initial_counts(2) == (1, 0)
    assert initial_counts(3) == initial_counts(4) == (1, 1)
    assert initial_counts(5) == initial_counts(9) == (2, 1)
    assert initial_counts(10) == (round(math.log(10) + 1), 1) == (3, 1)
    assert initial_counts(1000) == (8, 1)


def _eager_connected(ov: dict[str, tuple[set[str], set[str]]]) -> bool:
    start = next(iter(ov))
    seen, todo = {start}, [start]
    while todo:
        for b in ov[todo.pop()][0]:
            if b not in seen:
                seen.add(b)
                todo.append(b)
    return len(seen) == len(ov)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 9, 10, 30, 100, 1000])
def test_pt_overlay_symmetric_connected_and_sized(n: int) -> None:
    names = [f"n{i}" for i in range(n)]
    ov = overlay(names, seed=3)
    assert ov == overlay(reversed(names), seed=3)  # every node computes the same one
    assert ov != overlay(names, seed=4) or n <= 3
    e, lz = initial_counts(n)
    for a, (eager, lazy) in ov.items():
        assert a not in eager | lazy and not eager & lazy
        for b in eager:
            assert a in ov[b][0]
        for b in lazy:
            assert a in ov[b][1]
        if n >= 3:
            assert len(eager) >= max(e, 2) - 1 and len(eager) <= max(e, 2) + 1
        if n >= 5:
            assert len(lazy) >= lz
    assert _eager_connected(ov)
    if n >= 30:
        mean_eager = sum(len(v[0]) for v in ov.values()) / n
        assert abs(mean_eager - e) < 0.5


async def test_pt_config_refuses_unknown_modes() -> None:
    for section, expect in (({"peer_sampling": "cyclon"}, "hyparview"),
                            ({"graft_mode": "eager"}, "partisan"), ({"tree": "forest"}, "shared")):
        ms = Messenger.from_config({"messenger": {"name": "a", "listen": ["loop://"], "extensions": ["plumtree"]},
                                    "plumtree": section})
        with pytest.raises(ConfigError, match=expect):
            await ms.start()
        assert not ms.running
