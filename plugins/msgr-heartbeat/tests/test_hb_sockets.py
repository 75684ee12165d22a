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


async def test_hb_tcp_receiver_that_stops_reading_is_failed_while_a_separate_link_answers(
        make_node: Any, events: Any) -> None:
    """The Ceph point over real TCP: b's process lives and keeps a separate
    heartbeat connection (b-hb) healthy, but stops reading the socket of
    its data connection.  The heartbeat that rides the data connection
    fails b; the one on the separate connection would never have noticed."""
    settings = {"interval": INTERVAL, "grace": GRACE}
    b = await make_node("b", listen="tcp://127.0.0.1:0", heartbeat=settings)
    b_hb = await make_node("b-hb", listen="tcp://127.0.0.1:0", heartbeat=settings)
    a = await make_node("a", listen="tcp://127.0.0.1:0",
                        heartbeat={**settings, "watch": [b.addresses[0], b_hb.addresses[0]]})
    ev = events(a)
    ha = a.extensions["heartbeat"]
    for peer in (b, b_hb):
        await a.send_message("msgr.ping", peer.addresses[0], b"", timeout=10)
    loop = asyncio.get_running_loop()
    data_link = b.get_connection("a").link
    assert data_link is not None
    blocked = loop.time()
    data_link.pause_reading()  # b's data path is blocked; b itself lives on
    t_failed = await ev.next("failed", "b", guard=10)
    assert t_failed - blocked <= GRACE + INTERVAL + SLACK
    # the separate heartbeat connection to the same "process" kept answering
    assert await a.send_message("msgr.ping", "b-hb", b"alive", timeout=5) == b"alive"
    assert ev.of("failed", "b-hb") == []
    hb_state = ha.peer("b-hb")
    assert hb_state is not None and not hb_state.failed and hb_state.rtt is not None
    data_link.resume_reading()
    await ev.next("recovered", "b", guard=10)
