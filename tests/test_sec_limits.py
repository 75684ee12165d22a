"""Resource limits against hostile or runaway peers, over real TCP."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import msgpack
import pytest

from msgr_core import Message, Messenger
from msgr_core import message as m
from msgr_core.errors import PeerBusy
from msgr_core.framing import BANNER, encode_prefix


def _server(**limits: Any) -> Messenger:
    return Messenger.from_config({"messenger": {"name": "server", "listen": ["tcp://127.0.0.1:0"]},
                                  "limits": limits})


async def _open(ms: Messenger) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = ms.addresses[0][len("tcp://"):].rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


async def _close(writer: asyncio.StreamWriter) -> None:
    """Close a raw client and wait until its transport is gone (a transport
    still closing when the test's loop closes warns later, in another test)."""
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def _closed_by_server(reader: asyncio.StreamReader) -> None:
    try:
        while await asyncio.wait_for(reader.read(4096), 10):
            pass
    except ConnectionResetError:
        pass


async def test_slow_writer_is_dropped_at_the_deadline_from_accept() -> None:
    """One byte every 50 ms of a valid HELLO never resets the handshake clock."""
    server = _server(handshake_timeout=0.5)
    hello = {"v": m.PROTOCOL_VERSION, "name": "slow", "type": "client", "incarnation": 1, "mode": "lossy",
             "policy": "lossy_client", "addrs": [], "sid": 1, "peer_sid": 0, "in_seq": 0}
    frame = [m.pack_header(m.HELLO, 0, 0, 1, 0, 0, ""), msgpack.packb(hello)]
    data = BANNER + encode_prefix(frame, 1 << 16) + b"".join(frame)
    async with server:
        reader, writer = await _open(server)
        start = time.monotonic()
        closed = asyncio.ensure_future(_closed_by_server(reader))
        sent = 0
        for byte in data:
            if closed.done():
                break
            writer.write(bytes([byte]))
            sent += 1
            await asyncio.wait([closed], timeout=0.05)  # the attack's pace, not a wait for a result
        await closed
        elapsed = time.monotonic() - start
        await _close(writer)
        assert sent < len(data)  # it never got to finish its HELLO
        assert 0.4 < elapsed < 2.0
        assert server.stats["rejected"] == {"handshake_timeout": 1}


async def test_pending_links_are_bounded() -> None:
    server = _server(max_pending=3, handshake_timeout=30.0)
    async with server:
        idle = [await _open(server) for _ in range(3)]
        for _r, w in idle:
            w.write(BANNER)
        extra_reader, extra_writer = await _open(server)
        await _closed_by_server(extra_reader)  # refused at once, not after the handshake timeout
        await _close(extra_writer)
        assert server.stats["rejected"] == {"max_pending": 1}
        assert len(server._accepted) == 3
        for _r, w in idle:
            await _close(w)
        # once they are gone, a real peer gets in
        client = Messenger.from_config({"messenger": {"name": "c", "transports": ["tcp"]}})
        async with client:
            assert await client.send_message("msgr.ping", server.addresses[0], b"x", timeout=10) == b"x"


async def test_sessions_are_bounded() -> None:
    server = _server(max_sessions=2)
    async with server:
        clients = [Messenger.from_config({"messenger": {"name": f"c{i}", "transports": ["tcp"]},
                                          "policy": {"default": "lossy_client"}}) for i in range(3)]
        for c in clients:
            await c.start()
        try:
            for c in clients[:2]:
                assert await c.send_message("msgr.ping", server.addresses[0], b"ok", timeout=10) == b"ok"
            with pytest.raises(Exception, match="too many sessions"):
                await clients[2].send_message("msgr.ping", server.addresses[0], b"no", timeout=10)
            assert server.stats["rejected"] == {"max_sessions": 1}
            assert server.stats["sessions"] == 2
        finally:
            for c in clients:
                await c.stop()


async def test_requests_in_flight_per_peer_are_bounded() -> None:
    """Beyond limits.max_requests_in_flight, requests are refused with PeerBusy
    (nothing runs); async oneway handlers wait their turn (no extra tasks)."""
    server = _server(max_requests_in_flight=4)
    release = asyncio.Event()
    running: list[int] = []
    peak = 0

    async def slow(msg: Message) -> Any:
        nonlocal peak
        running.append(1)
        peak = max(peak, len(running))
        await release.wait()
        running.pop()
        return msg.payload

    server.register_handler("slow", slow)
    server.register_handler_oneway("slow1", slow)
    async with server:
        client = Messenger.from_config({"messenger": {"name": "c", "transports": ["tcp"]}})
        async with client:
            conn = client.get_connection(server.addresses[0])
            calls = [asyncio.ensure_future(conn.request("slow", i, timeout=10)) for i in range(6)]
            for refused in calls[4:]:  # over the limit: refused at once, nothing ran
                with pytest.raises(PeerBusy, match=r"limits\.max_requests_in_flight"):
                    await refused
            for _ in range(10):
                await conn.send("slow1", b"oneway")
            await conn.request("msgr.ping", timeout=10)  # handled after the oneways arrived
            assert len(running) == 4
            (session,) = server.connections
            assert len(session._waiting_oneway) == 10
            release.set()
            assert [(await c).payload for c in calls[:4]] == [0, 1, 2, 3]
            await conn.request("msgr.ping", timeout=10)
            assert peak == 4


@pytest.mark.parametrize("announced", [1024 * 1024, 32 * 1024 * 1024], ids=["1MiB", "32MiB"])
async def test_large_frame_before_the_handshake_is_refused_on_its_prefix(announced: int) -> None:
    """A peer that has not completed the handshake announces a frame far
    over the handshake's size but under ``max_frame_bytes``: the link ends on
    the length prefix alone (no buffer reserved for the body, no waiting for
    the handshake deadline), counted as ``frame_too_large``."""
    server = _server(handshake_timeout=60.0)
    prefix = encode_prefix([memoryview(bytearray(announced))], 1 << 30)
    async with server:
        reader, writer = await _open(server)
        writer.write(BANNER + prefix + b"x" * 100)  # and then nothing: the body never comes
        await _closed_by_server(reader)  # well before the 60 s deadline (the read's guard is 10 s)
        await _close(writer)
        assert server.stats["rejected"] == {"frame_too_large": 1}


async def test_after_the_handshake_large_frames_flow() -> None:
    """The pre-handshake limit is lifted once the session is open."""
    server = _server()
    server.register_handler("size", lambda msg: len(msg.payload))
    client = Messenger.from_config({"messenger": {"name": "client", "transports": ["tcp"]}})
    async with server, client:
        big = bytes(8 * 1024 * 1024)
        assert await client.send_message("size", server.addresses[0], big, timeout=30) == len(big)
