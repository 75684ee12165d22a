"""The messenger API over real transports (in-process loop and TCP)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from msgr_core import Dispatcher, Message, Priority, Reply
from msgr_core.errors import (
    Backpressure,
    ConnectionReset,
    FrameTooLarge,
    MessengerStopped,
    PeerUnreachable,
    RemoteError,
    RequestTimeout,
    UnknownVerb,
)

from .conftest import VIRTUAL_TIME_SCHEMES, MakeMessenger


async def test_request_response_and_oneway(make_messenger: MakeMessenger) -> None:
    a = await make_messenger("a")
    b = await make_messenger("b")
    got: list[Message] = []
    done = asyncio.Event()

    def note(msg: Message) -> None:
        got.append(msg)
        if len(got) == 3:
            done.set()

    b.register_handler("add", lambda msg: msg.payload["x"] + msg.payload["y"])
    b.register_handler_oneway("note", note)
    assert await a.send_message("add", b.addresses[0], {"x": 2, "y": 3}, timeout=5) == 5
    for i in range(3):
        await a.send_message_oneway("note", b.addresses[0], f"n{i}".encode())
    await asyncio.wait_for(done.wait(), 5)
    assert [bytes(m.payload) for m in got] == [b"n0", b"n1", b"n2"]
    assert got[0].peer == "a" and got[0].verb == "note"


async def test_async_handlers_and_attachments(make_messenger: MakeMessenger) -> None:
    a = await make_messenger("a")
    b = await make_messenger("b")

    async def slow_echo(msg: Message) -> Reply:
        await asyncio.sleep(0)
        return Reply(msg.payload, attachments=[bytes(a)[::-1] for a in msg.attachments])

    b.register_handler("echo", slow_echo)
    blob = bytes(range(256)) * 1000
    reply = await a.request("echo", b.addresses[0], b"head", attachments=[blob, b"xy"], timeout=5)
    assert bytes(reply.payload) == b"head"
    assert [bytes(x) for x in reply.attachments] == [blob[::-1], b"yx"]


async def test_remote_errors_are_typed(make_messenger: MakeMessenger) -> None:
    a = await make_messenger("a")
    b = await make_messenger("b")

    def boom(msg: Message) -> None:
        raise KeyError("no such object")

    b.register_handler("boom", boom)
    with pytest.raises(RemoteError) as ei:
        await a.send_message("boom", b.addresses[0], b"", timeout=5)
    assert ei.value.remote_type == "KeyError" and "no such object" in ei.value.remote_message
    assert ei.value.verb == "boom" and ei.value.peer == "b"
    with pytest.raises(UnknownVerb) as ei2:
        await a.send_message("nope", b.addresses[0], b"", timeout=5)
    assert ei2.value.verb == "nope"
    # the session survives both
    assert await a.send_message("msgr.ping", b.addresses[0], b"ok", timeout=5) == b"ok"


@pytest.mark.looptime
@pytest.mark.parametrize("scheme", VIRTUAL_TIME_SCHEMES)
async def test_request_timeout(make_messenger: MakeMessenger) -> None:
    a = await make_messenger("a")
    b = await make_messenger("b")
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def hang(msg: Message) -> None:
        await never

    b.register_handler("hang", hang)
    with pytest.raises(RequestTimeout) as ei:
        await a.send_message("hang", b.addresses[0], b"", timeout=2.5)
    assert ei.value.timeout == 2.5 and ei.value.verb == "hang"


async def test_unreachable_peer_lossy(make_messenger: MakeMessenger, scheme: str) -> None:
    a = await make_messenger("a", policy={"default": "lossy_client"})
    b = await make_messenger("b")
    dead = b.addresses[0]
    await b.stop()
    with pytest.raises(PeerUnreachable):
        await a.send_message("msgr.ping", dead, b"", timeout=5)
    with pytest.raises(PeerUnreachable, match="no known address"):
        a.get_connection("never-heard-of")


@pytest.mark.looptime
@pytest.mark.parametrize("scheme", VIRTUAL_TIME_SCHEMES)
async def test_lossless_session_keeps_dialling_until_the_peer_comes(make_messenger: MakeMessenger, scheme: str) -> None:
    a = await make_messenger("a")  # default policy: lossless_peer
    b = await make_messenger("b")
    address = b.addresses[0]
    await b.stop()
    conn = a.get_connection(address)
    conn.send_nowait("x", b"kept")
    with pytest.raises(RequestTimeout):
        await conn.request("msgr.ping", b"", timeout=3)
    assert not conn.is_closed
    # the peer comes back at the same address: the queued message is delivered
    got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    b2 = await make_messenger("b", messenger={"listen": [address]})
    b2.register_handler_oneway("x", lambda msg: got.set_result(bytes(msg.payload)))
    assert await asyncio.wait_for(got, 60) == b"kept"


async def test_peer_by_name_after_handshake(make_messenger: MakeMessenger) -> None:
    a = await make_messenger("a")
    b = await make_messenger("b")
    await a.send_message("msgr.ping", b.addresses[0], b"", timeout=5)
    conn = a.get_connection("b")
    assert conn.peer_name == "b" and conn.peer_addrs == tuple(b.addresses)
    # b can reach a by name too: it learned a's addresses from the handshake
    assert await b.send_message("msgr.ping", "a", b"back", timeout=5) == b"back"


async def test_peer_by_name_from_known_address(make_messenger: MakeMessenger) -> None:
    a = await make_messenger("a")
    b = await make_messenger("b")
    with pytest.raises(PeerUnreachable):
        a.get_connection("b")
    a.add_known_address("b", b.addresses)
    assert await a.send_message("msgr.ping", "b", b"hi", timeout=5) == b"hi"
    a.add_known_address("c", [])  # forgetting an unknown name is harmless

class Recorder(Dispatcher):
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.changed = asyncio.Event()

    def _add(self, kind: str, conn: object) -> None:
        self.events.append((kind, getattr(conn, "peer_name", "")))
        self.changed.set()

    def handle_connect(self, conn: object) -> None:
        self._add("connect", conn)

    def handle_accept(self, conn: object) -> None:
        self._add("accept", conn)

    def handle_reset(self, conn: object, reason: str) -> None:
        self._add("reset", conn)

    async def wait_for(self, event: tuple[str, str]) -> None:
        while event not in self.events:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), 5)


async def test_lossy_reset_notifies_both_ends_and_fails_pending(make_messenger: MakeMessenger) -> None:
    a = await make_messenger("a", policy={"default": "lossy_client"})
    b = await make_messenger("b", policy={"default": "stateless_server"})
    ra, rb = Recorder(), Recorder()
    a.add_dispatcher(ra)
    b.add_dispatcher(rb)
    started = asyncio.Event()
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def hang(msg: Message) -> None:
        started.set()
        await never

    b.register_handler("hang", hang)
    conn = a.get_connection(b.addresses[0])
    pending = asyncio.ensure_future(conn.request("hang", b"", timeout=30))
    await asyncio.wait_for(started.wait(), 5)
    await ra.wait_for(("connect", "b"))
    await rb.wait_for(("accept", "a"))
    b_side = b.get_connection("a")
    b_side._link.abort()  # the link breaks under the session
    with pytest.raises(ConnectionReset):
        await pending
    await ra.wait_for(("reset", "b"))
    await rb.wait_for(("reset", "a"))
    assert conn.is_closed
    with pytest.raises(ConnectionReset):
        conn.send_nowait("x", b"")
    # a new session replaces it
    assert await a.send_message("msgr.ping", b.addresses[0], b"again", timeout=5) == b"again"


async def test_mark_down_fails_pending_requests(make_messenger: MakeMessenger) -> None:
    a = await make_messenger("a")
    b = await make_messenger("b")
    b.register_handler("hang", lambda msg: asyncio.get_running_loop().create_future())
    conn = a.get_connection(b.addresses[0])
    pending = asyncio.ensure_future(conn.request("hang", b"", timeout=30))
    await asyncio.sleep(0)
    conn.mark_down()
    with pytest.raises(ConnectionReset, match="marked down"):
        await pending


async def test_order_kept_and_priority_overtakes_queued_normal(make_messenger: MakeMessenger) -> None:
    a = await make_messenger("a")
    b = await make_messenger("b")
    got: list[tuple[int, int]] = []
    done = asyncio.Event()
    n = 2000

    def rec(msg: Message) -> None:
        got.append((msg.priority, int(msg.payload)))
        if len(got) == n + 1:
            done.set()

    b.register_handler_oneway("seq", rec)
    conn = a.get_connection(b.addresses[0])
    # queued before the handshake completes, so all wait in the session queues
    for i in range(n):
        conn.send_nowait("seq", i)
    conn.send_nowait("seq", -1, priority=Priority.HIGH)
    await asyncio.wait_for(done.wait(), 10)
    assert got[0] == (Priority.HIGH, -1)
    assert [v for p, v in got[1:]] == list(range(n))


async def test_backpressure_bounds_the_queue(make_messenger: MakeMessenger) -> None:
    a = await make_messenger("a", limits={"max_queued_bytes": 10_000})
    b = await make_messenger("b")
    conn = a.get_connection(b.addresses[0])  # not yet open: everything queues
    conn.send_nowait("x", bytes(6000))
    with pytest.raises(Backpressure) as ei:
        conn.send_nowait("x", bytes(6000))
    assert ei.value.limit == 10_000 and ei.value.queued == 6000 + 32  # payload + header allowance
    # the awaitable form waits for room instead
    await asyncio.wait_for(conn.send("x", bytes(6000)), 5)
    await asyncio.wait_for(conn.drain(), 5)
    assert conn.queued_bytes == 0


async def test_oversize_message_is_refused_at_send(make_messenger: MakeMessenger) -> None:
    a = await make_messenger("a", limits={"max_frame_bytes": 4096})
    b = await make_messenger("b")
    conn = a.get_connection(b.addresses[0])
    with pytest.raises(FrameTooLarge) as ei:
        conn.send_nowait("x", bytes(5000))
    assert ei.value.limit == 4096
    assert await a.send_message("msgr.ping", b.addresses[0], b"fine", timeout=5) == b"fine"


async def test_graceful_stop_flushes_queued_messages(make_messenger: MakeMessenger) -> None:
    a = await make_messenger("a")
    b = await make_messenger("b")
    got = 0
    all_in = asyncio.Event()

    def rec(msg: Message) -> None:
        nonlocal got
        got += 1
        if got == 5000:
            all_in.set()

    b.register_handler_oneway("x", rec)
    conn = a.get_connection(b.addresses[0])
    for _ in range(5000):
        conn.send_nowait("x", b"y" * 100)
    await a.stop()
    await asyncio.wait_for(all_in.wait(), 5)
    assert got == 5000
    with pytest.raises(MessengerStopped):
        a.get_connection(b.addresses[0])


async def test_handler_exceptions_never_break_the_session(
    make_messenger: MakeMessenger, caplog: pytest.LogCaptureFixture
) -> None:
    a = await make_messenger("a")
    b = await make_messenger("b")
    b.register_handler_oneway("bad", lambda msg: 1 / 0)
    conn = a.get_connection(b.addresses[0])
    with caplog.at_level(logging.ERROR, "msgr.connection"):
        conn.send_nowait("bad", b"")
        assert await a.send_message("msgr.ping", b.addresses[0], b"alive", timeout=5) == b"alive"
    assert b.get_connection("a").stats["handler_errors"] == 1
    assert "ZeroDivisionError" in caplog.text


async def test_stats_count_messages_and_bytes(make_messenger: MakeMessenger) -> None:
    a = await make_messenger("a")
    b = await make_messenger("b")
    for _ in range(10):
        await a.send_message("msgr.ping", b.addresses[0], b"12345678", timeout=5)
    s = a.get_connection("b").stats
    assert s["msgs_out"] >= 10 and s["msgs_in"] >= 10 and s["bytes_out"] >= 80
    total = a.stats
    assert total["sessions"] == 1 and total["msgs_out"] >= 10
    status = await a.send_message("msgr.status", "b", b"", timeout=5)
    assert status["name"] == "b" and status["stats"]["sessions"] == 1


async def test_unclaimed_oneway_goes_to_dispatch(make_messenger: MakeMessenger) -> None:
    a = await make_messenger("a")
    b = await make_messenger("b")
    seen = asyncio.Event()

    class Catch(Dispatcher):
        def dispatch(self, conn: object, message: Message) -> bool:
            seen.set()
            return message.verb == "mine"

    b.add_dispatcher(Catch())
    a.get_connection(b.addresses[0]).send_nowait("mine", b"")
    await asyncio.wait_for(seen.wait(), 5)
    seen.clear()
    a.get_connection(b.addresses[0]).send_nowait("other", b"")
    await asyncio.wait_for(seen.wait(), 5)
    assert b.get_connection("a").stats["unhandled"] == 1


@pytest.mark.looptime
@pytest.mark.parametrize("scheme", ["loop"])
async def test_each_request_times_out_at_its_own_deadline(make_messenger: MakeMessenger) -> None:
    a = await make_messenger("a")
    b = await make_messenger("b")
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def hang(msg: Message) -> None:
        await never

    b.register_handler("hang", hang)
    b.register_handler("fast", lambda msg: msg.payload)
    conn = a.get_connection(b.addresses[0])
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    async def timed(timeout: float) -> float:
        with pytest.raises(RequestTimeout):
            await conn.request("hang", b"", timeout=timeout)
        return loop.time() - t0

    # a later, shorter deadline and an answered request share the one timer
    slow = asyncio.ensure_future(timed(9.0))
    quick = asyncio.ensure_future(timed(3.0))
    assert (await conn.request("fast", b"ok", timeout=1.0)).payload == b"ok"
    assert await quick == pytest.approx(3.0, abs=0.1)
    assert await slow == pytest.approx(9.0, abs=0.1)
    assert conn.stats["pending_requests"] == 0
