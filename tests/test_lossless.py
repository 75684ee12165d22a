"""Lossless sessions, OOB priority, views and fault injection, in one process
over the loop and TCP transports (the multi-process proofs are in
test_integration_lossless.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from msgr_core import Dispatcher, Message, Messenger, Priority
from msgr_core.errors import ConnectionReset, PeerUnreachable

from .conftest import VIRTUAL_TIME_SCHEMES, MakeMessenger


class Sink:
    """Receives ``seq`` messages (payload: an 8-byte counter) and checks
    exactly-once, in-order delivery per sender."""

    def __init__(self, ms: Messenger, verb: str = "seq") -> None:
        self.next: dict[str, int] = {}
        self.errors: list[str] = []
        self.count = 0
        self._target = 0
        self._reached = asyncio.Event()
        ms.register_handler_oneway(verb, self.on_message)

    def on_message(self, msg: Message) -> None:
        n = int.from_bytes(msg.payload[:8], "big")
        want = self.next.get(msg.peer, 0)
        if n != want:
            self.errors.append(f"from {msg.peer}: got {n}, expected {want}")
        self.next[msg.peer] = n + 1
        self.count += 1
        if self.count >= self._target:
            self._reached.set()

    async def wait_for(self, total: int, timeout: float = 60) -> None:
        self._target = total
        if self.count < total:
            self._reached.clear()
            await asyncio.wait_for(self._reached.wait(), timeout)
        assert self.errors == []
        assert self.count == total


def seq(i: int) -> bytes:
    return i.to_bytes(8, "big") + b"payload!"


async def test_stream_survives_links_broken_mid_stream(make_messenger: MakeMessenger) -> None:
    a = await make_messenger("a")
    b = await make_messenger("b")
    sink = Sink(b)
    conn = a.get_connection(b.addresses[0])
    await conn.request("msgr.ping", b"", timeout=10)
    total = 30_000
    for i in range(total):
        await conn.send("seq", seq(i))
        if i % 250 == 0:
            await asyncio.sleep(0)  # let the links move
        if i % 3000 == 1500:
            # break the link from either side, wherever the stream is
            side = conn if (i // 3000) % 2 else b.get_connection("a")
            assert side.link is not None
            side.link.abort()
            # queued behind everything sent so far: answered once resumed and replayed
            await conn.request("msgr.ping", b"", timeout=30)
    await sink.wait_for(total)
    assert conn.stats["reconnects"] == 10 and conn.stats["links"] == 11
    await conn.wait_acked()
    assert conn.stats["unacked_msgs"] == 0


async def test_injected_socket_failures_lose_nothing(make_messenger: MakeMessenger) -> None:
    inject = {"socket_failures": 50, "seed": 7}
    a = await make_messenger("a", inject=inject)
    b = await make_messenger("b", inject=inject)
    sink = Sink(b)
    back = Sink(a)
    conn = a.get_connection(b.addresses[0])
    await conn.request("msgr.ping", b"", timeout=10)
    total = 20_000
    for i in range(total):
        await conn.send("seq", seq(i))
        if i % 10 == 0:
            await b.get_connection("a").send("seq", seq(i // 10))
        if i % 10 == 0:
            await asyncio.sleep(0)  # let the links move: each batch is one "link operation"
    await sink.wait_for(total)
    await back.wait_for(total // 10)
    assert a.stats["injected_failures"] + b.stats["injected_failures"] > 10


async def test_requests_survive_link_failures_client_server(make_messenger: MakeMessenger) -> None:
    client = await make_messenger("client", messenger={"type": "client"},
                                  policy={"default": "lossless_client"},
                                  inject={"socket_failures": 40, "seed": 3})
    server = await make_messenger("server", policy={"client": "stateful_server"})
    calls: dict[int, int] = {}

    def handle(msg: Message) -> int:
        calls[msg.payload] = calls.get(msg.payload, 0) + 1
        return int(msg.payload) * 2

    server.register_handler("double", handle)
    conn = client.get_connection(server.addresses[0])

    async def worker(w: int) -> None:
        for i in range(w, 3000, 16):
            assert (await conn.request("double", i, timeout=60)).payload == i * 2

    await asyncio.gather(*(worker(w) for w in range(16)))
    assert sorted(calls) == list(range(3000))
    assert set(calls.values()) == {1}  # each request handled exactly once
    assert client.stats["injected_failures"] > 0
    assert server.get_connection("client").policy.name == "stateful_server"


async def test_connection_race_storm(make_messenger: MakeMessenger) -> None:
    a = await make_messenger("a")
    b = await make_messenger("b")
    sink_b, sink_a = Sink(b), Sink(a)
    ab = a.get_connection(b.addresses[0])
    await ab.request("msgr.ping", b"", timeout=10)
    ba = b.get_connection("a")
    sent = 0
    for _round in range(200):
        # both ends lose the link at once with data in flight: both dial
        ab.send_nowait("seq", seq(sent))
        ba.send_nowait("seq", seq(sent))
        sent += 1
        for c in (ab, ba):
            if c.link is not None:
                c.link.abort()
        await ab.request("msgr.ping", b"", timeout=10)
        await ba.request("msgr.ping", b"", timeout=10)
        # exactly one link survives: each side's session uses the same one
        assert ab.is_open and ba.is_open
        assert ab.link is not None and ba.link is not None
        assert ab.link.local_address == ba.link.peer_address or ab.link.peer_address == ba.link.local_address
    await sink_b.wait_for(sent)
    await sink_a.wait_for(sent)
    assert a.connections == [ab] and b.connections == [ba]


async def test_peer_restart_is_a_remote_reset_and_nothing_old_is_replayed(
        make_messenger: MakeMessenger) -> None:
    a = await make_messenger("a")
    b = await make_messenger("b")
    address = b.addresses[0]
    resets: list[str] = []
    reset_seen = asyncio.Event()
    undelivered: list[tuple[str, Any]] = []

    class Watch(Dispatcher):
        def handle_remote_reset(self, conn: Any) -> None:
            resets.append(conn.peer_name)
            reset_seen.set()

        def handle_undeliverable(self, conn: Any, messages: list[tuple[str, Any]], reason: str) -> None:
            undelivered.extend(messages)

    a.add_dispatcher(Watch())
    conn = a.get_connection(address)
    await conn.request("msgr.ping", b"", timeout=10)
    b_sink = Sink(b, verb="old")
    await b.abort()  # b dies: no goodbye
    for i in range(100):
        conn.send_nowait("old", seq(i))  # queued for the old incarnation
    b2 = await make_messenger("b", messenger={"listen": [address]})
    old_seen: list[Message] = []
    b2.register_handler_oneway("old", old_seen.append)
    new_sink = Sink(b2, verb="new")
    # a dials again (it has queued data); the handshake shows b restarted
    await asyncio.wait_for(reset_seen.wait(), 30)
    assert resets == ["b"]
    assert conn.is_closed and len(undelivered) == 100
    fresh = a.get_connection("b")
    assert fresh is not conn and fresh.peer_incarnation == b2.incarnation
    for i in range(50):
        fresh.send_nowait("new", seq(i))
    await new_sink.wait_for(50)
    assert old_seen == [] and b_sink.count == 0


async def test_oob_overtakes_64_mib_of_queued_traffic(make_messenger: MakeMessenger, scheme: str) -> None:
    a = await make_messenger("a", limits={"max_queued_bytes": 128 << 20})
    b = await make_messenger("b")
    order: list[str] = []
    normal_done = asyncio.Event()
    n_normal = 64

    def bulk(msg: Message) -> None:
        order.append("normal")
        if order.count("normal") == n_normal:
            normal_done.set()

    b.register_handler_oneway("bulk", bulk)
    b.register_oob_handler("hb", lambda conn, op, payload: order.append("oob"))
    conn = a.get_connection(b.addresses[0])
    await conn.request("msgr.ping", b"", timeout=10)
    chunk = bytes(1 << 20)
    for _ in range(n_normal):  # 64 MiB queued on the session
        conn.send_nowait("bulk", chunk)
    assert conn.queued_bytes > 32 << 20
    conn.register_oob_message("hb", lambda: {"t": 1}, interval=0.001)
    await asyncio.wait_for(normal_done.wait(), 60)
    first_oob = order.index("oob")
    assert first_oob < n_normal // 2, f"OOB arrived after {first_oob} of {n_normal} MiB"


@pytest.mark.looptime
@pytest.mark.parametrize("scheme", VIRTUAL_TIME_SCHEMES)
async def test_oob_payloads_share_one_frame_per_interval(make_messenger: MakeMessenger) -> None:
    a = await make_messenger("a")
    b = await make_messenger("b")
    seen: list[tuple[str, Any]] = []
    for op in ("osd_ping", "linger_ping", "watch_ping"):
        b.register_oob_handler(op, lambda conn, op, payload: seen.append((op, payload)))
    conn = a.get_connection(b.addresses[0])
    await conn.request("msgr.ping", b"", timeout=10)
    counter = {"n": 0}

    def make(op: str) -> Any:
        def produce() -> dict[str, Any]:
            counter["n"] += 1
            return {"op": op}
        return produce

    for op in ("osd_ping", "linger_ping", "watch_ping"):
        conn.register_oob_message(op, make(op), interval=6.0)
    await asyncio.sleep(60.5)
    frames = b.get_connection("a").stats["oob_in"]
    assert 9 <= frames <= 11  # one frame per 6 s interval ...
    assert len(seen) == 3 * frames  # ... carrying all three payloads
    assert conn.stats["oob_out"] == frames


async def test_install_view_tears_down_leavers_and_reports_undeliverable(make_messenger: MakeMessenger) -> None:
    a = await make_messenger("a")
    b = await make_messenger("b")
    c = await make_messenger("c")
    reported: list[tuple[str, str, int]] = []

    class Watch(Dispatcher):
        def handle_undeliverable(self, conn: Any, messages: list[tuple[str, Any]], reason: str) -> None:
            reported.append((conn.peer_name, reason, len(messages)))

    a.add_dispatcher(Watch())
    for peer in (b, c):
        await a.send_message("msgr.ping", peer.addresses[0], b"", timeout=10)
    a.install_view({"a", "b", "c"})
    conn_c = a.get_connection("c")
    await c.abort()  # c is gone; messages to it pile up
    for i in range(10):
        conn_c.send_nowait("x", seq(i))
    pending = asyncio.ensure_future(conn_c.request("msgr.ping", b"", timeout=60))
    await asyncio.sleep(0)
    a.install_view({"a", "b"})
    with pytest.raises(ConnectionReset, match="left the view"):
        await pending
    assert reported == [("c", "c left the view", 10)]
    assert a.send("x", b"hi", ["b", "c", "zed"]) == {"c", "zed"}
    with pytest.raises(PeerUnreachable, match="not in the installed view"):
        a.get_connection("c")


@pytest.mark.looptime
@pytest.mark.parametrize("scheme", ["loop"])  # a silent link needs the simulated network (TCP: the netns test)
async def test_keepalive_drops_a_silent_link_and_the_session_resumes(make_messenger: MakeMessenger,
                                                                      scheme: str) -> None:
    import msgr_loopback

    session = {"keepalive_interval": 1.0, "keepalive_timeout": 5.0}
    a = await make_messenger("a", session=session)
    b = await make_messenger("b", session=session)
    sink = Sink(b)
    conn = a.get_connection(b.addresses[0])
    conn.send_nowait("seq", seq(0))
    await sink.wait_for(1)
    net = msgr_loopback.get_network()
    net.stall("b")  # b's host stops taking frames; nothing is closed
    conn.send_nowait("seq", seq(1))
    # virtual time: detection is due within keepalive_timeout + one interval
    await asyncio.sleep(5.0 + 1.0 + 0.5)
    assert conn.link is None or conn.stats["links"] > 1
    net.unstall("b")
    await sink.wait_for(2)
    assert a.stats["errors"].get("KeepaliveTimeout", 0) + b.stats["errors"].get("KeepaliveTimeout", 0) >= 1


async def test_injected_delays_keep_order(make_messenger: MakeMessenger) -> None:
    a = await make_messenger("a")
    b = await make_messenger("b", inject={"delay_type": "*", "delay_max": 0.01, "delay_probability": 0.05})
    sink = Sink(b)
    conn = a.get_connection(b.addresses[0])
    for i in range(2000):
        await conn.send("seq", seq(i))
    await sink.wait_for(2000)


async def test_blackholed_peer_type_is_dropped(make_messenger: MakeMessenger) -> None:
    a = await make_messenger("a", messenger={"type": "client"})
    b = await make_messenger("b", inject={"blackhole_types": ["client"]})
    got: list[Message] = []
    b.register_handler_oneway("x", got.append)
    conn = a.get_connection(b.addresses[0])
    conn.send_nowait("x", b"")
    with pytest.raises(asyncio.TimeoutError):
        await conn.request("msgr.ping", b"", timeout=0.2)
    assert got == [] and b.get_connection("a").stats["msgs_in"] == 2


async def test_priority_classes_keep_their_own_order(make_messenger: MakeMessenger) -> None:
    a = await make_messenger("a")
    b = await make_messenger("b")
    got: list[tuple[int, int]] = []
    done = asyncio.Event()
    b.register_handler_oneway("p", lambda msg: (got.append((msg.priority, msg.payload)),
                                                len(got) == 300 and done.set()))
    conn = a.get_connection(b.addresses[0])
    for i in range(100):
        for prio in (Priority.NORMAL, Priority.HIGH, Priority.OOB):
            conn.send_nowait("p", i, priority=prio)
    await asyncio.wait_for(done.wait(), 10)
    for prio in (Priority.NORMAL, Priority.HIGH, Priority.OOB):
        assert [v for p, v in got if p == prio] == list(range(100))
    # queued before the handshake: every OOB-class message went first, then HIGH
    assert [p for p, _ in got[:100]] == [Priority.OOB] * 100
    assert [p for p, _ in got[100:200]] == [Priority.HIGH] * 100


@pytest.mark.looptime
@pytest.mark.parametrize("scheme", VIRTUAL_TIME_SCHEMES)
async def test_first_contact_race_makes_one_session_and_loses_nothing(make_messenger: MakeMessenger,
                                                                      scheme: str) -> None:
    """Two peers that never talked dial each other at the same moment, both
    with messages queued, then their link breaks.  One session per side
    (so the reconnect resumes it instead of resetting a twin with what it
    had queued), every message once and in order, nothing undeliverable,
    OOB traffic attached to the session either way."""
    import msgr_loopback

    a = await make_messenger("a")
    b = await make_messenger("b")
    if scheme == "loop":
        msgr_loopback.get_network().set_delay(None, None, 0.01)  # both HELLOs are in flight at once
    lost: list[Any] = []
    opened: list[str] = []

    class Watch(Dispatcher):
        def handle_undeliverable(self, conn: Any, messages: list[tuple[str, Any]], reason: str) -> None:
            lost.append((reason, len(messages)))

        def handle_connect(self, conn: Any) -> None:
            opened.append(conn.peer_name)

        def handle_accept(self, conn: Any) -> None:
            opened.append(conn.peer_name)

    oob: list[str] = []
    for ms in (a, b):
        ms.add_dispatcher(Watch())
        ms.register_oob_handler("race_ping", lambda conn, op, payload: oob.append(conn.peer_name))
    sink_a, sink_b = Sink(a), Sink(b)
    ab = a.get_connection(b.addresses[0])
    ba = b.get_connection(a.addresses[0])
    for conn in (ab, ba):
        conn.register_oob_message("race_ping", lambda: "ping", interval=1.0)
    for i in range(100):
        ab.send_nowait("seq", seq(i))
        ba.send_nowait("seq", seq(i))
    await sink_b.wait_for(100)
    await sink_a.wait_for(100)
    assert len(a.connections) == 1 and len(b.connections) == 1
    assert sorted(opened) == ["a", "b"]  # one session opened on each side
    link = a.connections[0].link
    assert link is not None
    link.abort()
    for i in range(100, 200):
        a.get_connection(b.addresses[0]).send_nowait("seq", seq(i))
        b.get_connection(a.addresses[0]).send_nowait("seq", seq(i))
    await sink_b.wait_for(200)
    await sink_a.wait_for(200)
    assert lost == []
    assert len(a.connections) == 1 and len(b.connections) == 1
    await asyncio.sleep(3)
    assert "a" in oob and "b" in oob  # each side's OOB payloads reach the other


@pytest.mark.looptime
@pytest.mark.parametrize("scheme", VIRTUAL_TIME_SCHEMES)
async def test_messages_to_a_name_before_its_handshake_share_one_session(make_messenger: MakeMessenger,
                                                                          scheme: str) -> None:
    """Sending to a peer by name, message after message, while its first
    session is still dialling (and the peer dials back by name at the same
    time): every call finds that one session.  Each call used to dial a
    session of its own — messages arrived out of order, and the peer reset
    the earlier sessions with what they still had queued."""
    import msgr_loopback

    a = await make_messenger("a")
    b = await make_messenger("b")
    if scheme == "loop":
        msgr_loopback.get_network().set_delay(None, None, 0.01)
    lost: list[Any] = []

    class Watch(Dispatcher):
        def handle_undeliverable(self, conn: Any, messages: list[tuple[str, Any]], reason: str) -> None:
            lost.append((reason, len(messages)))

    for ms in (a, b):
        ms.add_dispatcher(Watch())
    a.add_known_address("b", b.addresses)
    b.add_known_address("a", a.addresses)
    sink_a, sink_b = Sink(a), Sink(b)
    for i in range(50):
        a.get_connection("b").send_nowait("seq", seq(i))
        b.get_connection("a").send_nowait("seq", seq(i))
    assert len(a.connections) == 1 and len(b.connections) == 1
    await sink_b.wait_for(50)
    await sink_a.wait_for(50)
    for i in range(50, 100):
        a.get_connection("b").send_nowait("seq", seq(i))
        b.get_connection("a").send_nowait("seq", seq(i))
    await sink_b.wait_for(100)
    await sink_a.wait_for(100)
    assert lost == []
    assert len(a.connections) == 1 and len(b.connections) == 1


@pytest.mark.looptime
@pytest.mark.parametrize("scheme", VIRTUAL_TIME_SCHEMES)
async def test_close_one_session_flushes_and_the_peer_does_not_reconnect(make_messenger: MakeMessenger,
                                                                         scheme: str) -> None:
    """``Connection.close()`` ends one session gracefully: everything queued
    arrives, the peer closes its side on the goodbye instead of
    reconnecting, other sessions are untouched, and the next message
    starts a new session."""
    a = await make_messenger("a")
    b = await make_messenger("b")
    c = await make_messenger("c")
    resets: list[tuple[str, str]] = []
    closed = asyncio.Event()

    class Watch(Dispatcher):
        def handle_reset(self, conn: Any, reason: str) -> None:
            resets.append((conn.peer_name, reason))
            closed.set()

    b.add_dispatcher(Watch())
    sink_b, sink_c = Sink(b), Sink(c)
    ab, ac = a.get_connection(b.addresses[0]), a.get_connection(c.addresses[0])
    for i in range(100):
        ab.send_nowait("seq", seq(i))
        ac.send_nowait("seq", seq(i))
    await ab.close()
    assert ab.is_closed and ab.close_reason == "closed"
    await sink_b.wait_for(100)  # nothing queued was dropped
    await asyncio.wait_for(closed.wait(), 10)
    assert resets == [("a", "peer said goodbye")]
    assert b.connections == []
    await asyncio.sleep(5)  # virtual: a lossless peer would have redialled by now
    assert b.connections == [] and [x.peer_name for x in a.connections] == ["c"]
    await sink_c.wait_for(100)
    a.get_connection(b.addresses[0]).send_nowait("seq", seq(0))  # a new session, counting from 0
    sink_b.next.clear()
    await sink_b.wait_for(101)
    assert len(b.connections) == 1 and b.connections[0].msgs_in == 1  # a new session
    # a close still in progress when the messenger stops: one goodbye, both return
    ab = a.get_connection(b.addresses[0])
    ab.send_nowait("seq", seq(1))
    closing = asyncio.ensure_future(ab.close())
    await a.stop()
    await closing
    await sink_b.wait_for(102)
    assert ab.is_closed and a.connections == []
