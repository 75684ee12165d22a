"""Coalescing: every OOB user with the heartbeat's interval shares its frame."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import msgr_loopback
import pytest
from msgr_heartbeat import Heartbeat

INTERVAL = 6.0
# no keepalive frames during the count: only OOB frames cross the wire
QUIET = {"keepalive_interval": 3600.0, "keepalive_timeout": 7200.0}


@pytest.mark.looptime
async def test_hb_three_oob_users_share_one_frame_per_interval(make_node: Any) -> None:
    net = msgr_loopback.get_network()
    a = await make_node("a", session=QUIET)
    b = await make_node("b", session=QUIET)
    hb = a.extensions["heartbeat"]
    assert isinstance(hb, Heartbeat)
    got: dict[str, list[Any]] = {"linger_ping": [], "watch_ping": []}
    for op in ("linger_ping", "watch_ping"):
        b.register_oob_handler(op, lambda conn, op, payload: got[op].append(payload))
    hb_b = b.extensions["heartbeat"]  # counts the pings (user 1) it receives
    # user 2 through the heartbeat's API, user 3 through the core's, same interval
    hb.register_payload("linger_ping", lambda conn: {"lingers": [1, 2]})
    a.register_oob_message("watch_ping", lambda conn: {"watch": conn.peer_name}, INTERVAL)
    conn = a.get_connection("loop://b")
    await conn.request("msgr.ping", b"", timeout=10)
    loop = asyncio.get_running_loop()
    await asyncio.sleep(math.ceil(loop.time() / INTERVAL) * INTERVAL + 0.5 - loop.time() + INTERVAL)

    frames0 = net.pair_stats("a", "b").frames
    oob0 = conn.stats["oob_out"]
    oob_in0 = b.get_connection("a").stats["oob_in"]
    pings0 = hb_b.stats()["peers"]["a"]["pings_in"]
    n0 = {op: len(v) for op, v in got.items()}
    await asyncio.sleep(10 * INTERVAL)

    assert net.pair_stats("a", "b").frames - frames0 == 10  # on the wire: one frame per interval ...
    assert conn.stats["oob_out"] - oob0 == 10
    assert b.get_connection("a").stats["oob_in"] - oob_in0 == 10
    # ... carrying all three payloads
    assert hb_b.stats()["peers"]["a"]["pings_in"] - pings0 == 10
    assert {op: len(v) - n0[op] for op, v in got.items()} == {"linger_ping": 10, "watch_ping": 10}
    assert got["watch_ping"][-1] == {"watch": "b"} and got["linger_ping"][-1] == {"lingers": [1, 2]}
