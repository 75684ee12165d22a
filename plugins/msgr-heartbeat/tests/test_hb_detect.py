"""Failure detection under virtual time over loop://: detection bound,
recovery, no false alarms under jitter, and the Ceph point (a blocked data
path is failed while a separate heartbeat connection would still answer)."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import msgr_loopback
import pytest
from msgr_heartbeat import Heartbeat

from msgr_core.errors import RequestTimeout

INTERVAL, GRACE = 6.0, 20.0  # the defaults (Ceph's)


def hb(ms: Any) -> Heartbeat:
    h = ms.extensions["heartbeat"]
    assert isinstance(h, Heartbeat)
    return h


def test_hb_defaults_are_cephs() -> None:
    import msgr_heartbeat

    assert msgr_heartbeat.msgr_config_sections() == {
        "heartbeat": {"interval": 6.0, "grace": 20.0, "watch": [], "op": "hb"}}


@pytest.mark.looptime
@pytest.mark.parametrize("how", ["abort", "kill_node"])
async def test_hb_killed_peer_failed_within_grace_plus_interval_then_recovered(
        make_node: Any, events: Any, how: str) -> None:
    loop = asyncio.get_running_loop()
    b = await make_node("b")
    a = await make_node("a", heartbeat={"watch": ["loop://b"]}, session={"reconnect_max": 2.0})
    ev = events(a)
    ha = hb(a)
    assert hb(b) is not ha  # one detector per messenger
    await asyncio.sleep(60)
    st = ha.peer("b")
    assert st is not None and st.name == "b" and st.target == "loop://b"
    assert not st.failed and st.rtt is not None and st.rtt < 0.01
    assert ev.log == [] and ha.stats()["peers"]["b"]["pings_in"] >= 9

    killed = loop.time()
    if how == "abort":
        await b.abort()
    else:
        net = msgr_loopback.get_network()
        net.kill_node("b")  # the host crashes: links break, nothing said
    t_failed = await ev.next("failed", "b", guard=GRACE + 2 * INTERVAL)
    assert killed + GRACE - 2 * INTERVAL <= t_failed <= killed + GRACE + INTERVAL
    assert ev.reasons and "grace 20" in ev.reasons[0]
    await asyncio.sleep(3 * GRACE)
    assert [k for _t, k, _p in ev.log] == ["failed"]  # reported once

    if how == "kill_node":
        await b.abort()
        msgr_loopback.get_network().revive_node("b")
    restarted = loop.time()
    await make_node("b")  # the peer comes back at the same name and address
    t_rec = await ev.next("recovered", "b", guard=60)
    assert t_rec - restarted <= 2.0 + 3 * INTERVAL  # redial backoff + two ping rounds
    s = ha.stats()
    assert s["detections"] == 1 and s["recoveries"] == 1
    assert s["peers"]["b"]["detections"] == 1 and s["peers"]["b"]["recoveries"] == 1
    assert not ha.is_failed("b") and s["peers"]["b"]["misses"] >= 3
    assert [e[1] for e in ha.history] == ["failed", "recovered"]


@pytest.mark.looptime(noop_cycles=1)  # thousands of distinct timer instants: fast-forward at once
async def test_hb_no_false_detection_in_an_hour_of_jittered_delays(make_node: Any, events: Any) -> None:
    net = msgr_loopback.get_network()
    # one way 0.5 .. 3.5 s: the newest echo is at most 2 intervals + 2 delays old (< 20 s)
    net.set_delay(None, None, 0.5, jitter=3.0)
    names = ["n0", "n1", "n2", "n3"]
    nodes = [await make_node(n, heartbeat={"watch": [f"loop://{m}" for m in names if m != n]})
             for n in names]
    recorders = [events(ms) for ms in nodes]
    await asyncio.sleep(3600)
    for ms, rec in zip(nodes, recorders, strict=True):
        assert rec.log == [], rec.log
        s = hb(ms).stats()
        assert s["detections"] == 0
        assert sorted(s["peers"]) == sorted(set(names) - {ms.name})
        for peer in s["peers"].values():
            assert peer["pings_in"] >= 590  # one per 6 s for an hour
            assert 1.0 <= peer["rtt_min"] <= peer["rtt_avg"] <= peer["rtt_max"] <= 7.0 + 1e-6
            assert peer["confirmed_ago"] < GRACE
    # the jitter was real: pings arrived late enough to miss some checks
    assert sum(hb(ms).stats()["misses"] for ms in nodes) > 0
    net.clear_rules()  # teardown runs in real time


@pytest.mark.looptime
async def test_hb_blocked_data_path_fails_while_a_separate_heartbeat_link_answers(
        make_node: Any, events: Any) -> None:
    """Ceph's point.  ``osd.1`` is one process with two messengers: its data
    messenger (node ``osd.1``) and a separate heartbeat messenger (node
    ``osd.1-hb``), as Ceph OSDs have.  The data messenger stops reading its
    socket while the process lives.  msgr-heartbeat, riding the data
    session, declares it failed; the separate heartbeat connection to the
    same process keeps answering, so a detector on it would not."""
    loop = asyncio.get_running_loop()
    net = msgr_loopback.get_network()
    osd1 = await make_node("osd.1")
    osd1_hb = await make_node("osd.1-hb")
    mon = await make_node("mon", heartbeat={"watch": ["loop://osd.1", "loop://osd.1-hb"]})
    ev = events(mon)
    hmon = hb(mon)
    await mon.send_message("msgr.ping", "loop://osd.1", b"", timeout=10)
    await asyncio.sleep(30)
    assert ev.log == []

    stalled = loop.time()
    net.stall("osd.1")  # frames to osd.1 are held; it still writes
    with pytest.raises(RequestTimeout):
        await mon.send_message("msgr.ping", "osd.1", b"data", timeout=5)
    t_failed = await ev.next("failed", "osd.1", guard=GRACE + 2 * INTERVAL)
    assert stalled + GRACE - 2 * INTERVAL <= t_failed <= stalled + GRACE + INTERVAL

    data = hmon.stats()["peers"]["osd.1"]
    separate = hmon.stats()["peers"]["osd.1-hb"]
    # the process is alive: its pings on the data session still arrive ...
    assert data["last_seen_ago"] <= INTERVAL and data["pings_in"] > 0
    # ... but it has echoed none of ours since the stall
    assert data["failed"] and data["confirmed_ago"] > GRACE
    # the separate heartbeat connection to the same process keeps answering
    assert not separate["failed"] and separate["confirmed_ago"] < 2 * INTERVAL
    assert await mon.send_message("msgr.ping", "osd.1-hb", b"still here", timeout=5) == b"still here"
    # and osd.1's own process sees nothing wrong from its side of the separate link
    assert hb(osd1_hb).stats()["detections"] == 0
    assert ev.of("failed") == [t_failed]

    net.unstall("osd.1")  # it reads again: the held frames arrive, echoes resume
    t_rec = await ev.next("recovered", "osd.1", guard=3 * INTERVAL)
    assert t_rec - t_failed < 3 * INTERVAL
    assert not hmon.is_failed("osd.1") and not hmon.is_failed("osd.1-hb")
    # osd.1 heard nothing while stalled: its own detector failed mon, and saw it come back
    assert hb(osd1).stats()["peers"]["mon"]["detections"] == 1
    await asyncio.sleep(3 * INTERVAL)
    assert not hb(osd1).stats()["peers"]["mon"]["failed"]
    assert hb(osd1_hb).stats()["detections"] == 0


@pytest.mark.looptime
async def test_hb_unwatched_peers_are_judged_once_heard_and_forgotten_on_goodbye(
        make_node: Any, events: Any) -> None:
    a = await make_node("a")  # watch = []: every peer that sends heartbeats
    b = await make_node("b")
    c = await make_node("c")
    ev = events(a)
    ha = hb(a)
    for peer in (b, c):
        await peer.send_message("msgr.ping", "loop://a", b"", timeout=10)
    await asyncio.sleep(30)
    assert sorted(ha.stats()["peers"]) == ["b", "c"]
    await b.stop()  # graceful: goodbye, not a failure
    killed = asyncio.get_running_loop().time()
    await c.abort()  # a crash
    t_failed = await ev.next("failed", "c", guard=GRACE + 2 * INTERVAL)
    assert killed + GRACE - 2 * INTERVAL <= t_failed <= killed + GRACE + INTERVAL
    assert ev.of("failed", "b") == []
    assert sorted(ha.stats()["peers"]) == ["c"]
    a.install_view({"a"})  # c is out of the cluster: no longer tracked
    assert ha.stats()["peers"] == {} and ha.stats()["detections"] == 1


@pytest.mark.looptime
async def test_hb_peer_without_the_extension_is_not_judged_unless_watched(make_node: Any, events: Any) -> None:
    a = await make_node("a")
    plain = await make_node("plain", messenger={"extensions": []})
    ev = events(a)
    await plain.send_message("msgr.ping", "loop://a", b"", timeout=10)
    await asyncio.sleep(5 * GRACE)
    assert ev.log == [] and hb(a).stats()["detections"] == 0
    watched = asyncio.get_running_loop().time()
    hb(a).watch("plain")  # watched, it must answer: it never echoes
    t_failed = await ev.next("failed", "plain", guard=GRACE + 2 * INTERVAL)
    assert watched + GRACE < t_failed <= watched + GRACE + INTERVAL
    assert "no heartbeat from plain" in ev.reasons[0]


@pytest.mark.looptime
async def test_hb_misconfigured_interval_is_a_config_error(make_node: Any) -> None:
    from msgr_core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"heartbeat\.interval"):
        await make_node("a", heartbeat={"interval": 0.0})
    assert math.isclose(hb(await make_node("b", heartbeat={"interval": 1})).interval, 1.0)
