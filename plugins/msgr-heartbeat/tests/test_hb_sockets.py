"""The same detector over real sockets (tcp, zmq+tcp), in real time with a
short interval and grace; the test awaits events, it never sleeps."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from msgr_heartbeat import Heartbeat

INTERVAL, GRACE = 0.05, 0.3
# real scheduling on a loaded machine: allow this much beyond the bound
SLACK = 1.0


@pytest.mark.parametrize("scheme", ["tcp", "zmq+tcp"])
async def test_hb_real_sockets_detect_and_recover(make_node: Any, events: Any, scheme: str) -> None:
    if scheme == "zmq+tcp":
        pytest.importorskip("msgr_zmq")
    loop = asyncio.get_running_loop()
    settings = {"interval": INTERVAL, "grace": GRACE}
    b = await make_node("b", listen=f"{scheme}://127.0.0.1:0", heartbeat=settings)
    address = b.addresses[0]
    a = await make_node("a", listen=f"{scheme}://127.0.0.1:0", heartbeat={**settings, "watch": [address]},
                        session={"reconnect_min": 0.05, "reconnect_max": 0.2})
    ev = events(a)
    ha = a.extensions["heartbeat"]
    assert isinstance(ha, Heartbeat)

    # wait until a has received 5 heartbeat frames from b (each carrying a
    # probe of our own, coalesced with the ping)
    frames = 0
    enough = loop.create_future()

    def seen(conn: Any, op: str, payload: Any) -> None:
        nonlocal frames
        frames += 1
        if frames >= 5 and not enough.done():
            enough.set_result(None)

    a.register_oob_handler("probe", seen)
    b.extensions["heartbeat"].register_payload("probe", lambda conn: 1)
    await asyncio.wait_for(enough, 10)
    st = ha.peer("b")
    assert st is not None and st.rtt is not None and st.rtt < GRACE and not st.failed
    assert ev.log == []

    killed = loop.time()
    await b.abort()
    t_failed = await ev.next("failed", "b", guard=10)
    assert t_failed - killed <= GRACE + INTERVAL + SLACK
    assert t_failed - killed > GRACE - 2 * INTERVAL

    restarted = loop.time()
    await make_node("b", listen=address, heartbeat=settings)  # same name, same address
    t_rec = await ev.next("recovered", "b", guard=10)
    assert t_rec - restarted <= 0.2 + 3 * INTERVAL + SLACK
    assert ha.stats()["detections"] == 1 and ha.stats()["recoveries"] == 1
