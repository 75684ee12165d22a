"""Two real processes over TCP; hostile bytes from raw sockets."""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Iterator

import msgpack
import pytest

from msgr_core import Messenger
from msgr_core.framing import BANNER, encode_prefix

from .procs import Node


@pytest.fixture
def peer_process() -> Iterator[str]:
    """A node in a separate process; yields its TCP address."""
    peer = Node("remote")
    try:
        yield peer.address
        assert peer.stop() == 0
    finally:
        peer.kill()


@pytest.mark.slow
async def test_a_million_oneway_messages_and_100k_requests_between_processes(peer_process: str) -> None:
    async with Messenger.from_config({"messenger": {"name": "local", "transports": ["tcp"]}}) as ms:
        conn = ms.get_connection(peer_process)
        total = 1_000_000
        pad = b"." * 56  # 64-byte payloads
        batch = 10_000
        for start in range(0, total, batch):
            for i in range(start, start + batch):
                conn.send_nowait("seq", i.to_bytes(8, "big") + pad)
            await conn.drain()
        # the report request travels behind every oneway message on the session
        report = await ms.send_message("report", peer_process, b"", timeout=60)
        assert (report["count"], report["disorder"], report["next"]) == (total, 0, total)

        # 100,000 request/responses, 64 outstanding, each reply checked
        n_requests = 100_000

        async def checked(w: int) -> int:
            bad = 0
            for i in range(w, n_requests, 64):
                body = i.to_bytes(8, "big") + bytes([w])
                reply = await conn.request("echo", body, timeout=60)
                if bytes(reply.payload) != body:
                    bad += 1
            return bad

        bad = await asyncio.gather(*(checked(w) for w in range(64)))
        assert sum(bad) == 0
        assert conn.stats["msgs_in"] >= n_requests + 1


def _frame(header: object, payload: bytes = b"") -> bytes:
    if isinstance(header, tuple):  # (type, seq, ack, flags, priority, cid, verb): the session header
        mtype, seq, ack, flags, priority, cid, verb = header
        head = struct.pack("!BBBQQQ", mtype, flags, priority, seq, ack, cid) + verb.encode()
    else:
        head = msgpack.packb(header)
    return encode_prefix([head, payload], 1 << 30) + head + payload


HELLO = {"v": 2, "name": "raw", "type": "node", "incarnation": 1, "features": [], "policy": "lossy_client",
         "mode": "lossy", "addrs": []}

HOSTILE = {
    "garbage": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "truncated frame": BANNER + struct.pack("!IHI", 100, 1, 100) + b"only part of it",
    "oversize frame": BANNER + struct.pack("!IHI", 2**31, 1, 2**31),
    "bad header": BANNER + encode_prefix([b"\xc1\xc1\xc1", b""], 1 << 20) + b"\xc1\xc1\xc1",
    "header not a message": BANNER + _frame("just a string"),
    "bad handshake": BANNER + _frame((1, 0, 0, 1, 0, 0, ""), msgpack.packb({"v": "one"})),
    "verb before handshake": BANNER + _frame((5, 1, 0, 0, 0, 1, "msgr.ping")),
    "bad msgpack payload after hello": BANNER + _frame((1, 0, 0, 1, 0, 0, ""), msgpack.packb(HELLO))
    + _frame((4, 1, 0, 1, 0, 0, "x"), b"\xc1"),
}


@pytest.mark.parametrize("attack", sorted(HOSTILE))
async def test_hostile_bytes_close_only_that_connection(attack: str, caplog: pytest.LogCaptureFixture) -> None:
    server = Messenger.from_config({"messenger": {"name": "server", "listen": ["tcp://127.0.0.1:0"]},
                                    "limits": {"max_frame_bytes": 1 << 20, "handshake_timeout": 5.0}})
    client = Messenger.from_config({"messenger": {"name": "good", "transports": ["tcp"]}})
    got = 0
    server.register_handler("count", lambda msg: msg.payload)
    async with server, client:
        address = server.addresses[0]
        host, port = address[len("tcp://"):].rsplit(":", 1)
        assert await client.send_message("count", address, 0, timeout=5) == 0
        stop = asyncio.Event()
        progressed = asyncio.Event()
        target = 0

        async def good_traffic() -> None:
            nonlocal got
            while not stop.is_set():
                got += 1
                assert await client.send_message("count", address, got, timeout=5) == got
                if target and got >= target:
                    progressed.set()

        traffic = asyncio.create_task(good_traffic())
        with caplog.at_level(logging.WARNING):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(HOSTILE[attack])
            await writer.drain()
            if attack == "truncated frame":
                writer.write_eof()
            # the server closes this connection (EOF or reset), without waiting for us
            try:
                rest = await asyncio.wait_for(reader.read(), 5)
            except ConnectionResetError:
                rest = b""
            writer.close()
        # the good peer's traffic is still flowing, on the same session
        target = got + 50
        await asyncio.wait_for(progressed.wait(), 10)
        stop.set()
        await traffic
        assert client.get_connection(address).stats["msgs_in"] >= got
        errors = server.stats["errors"]
        assert sum(errors.values()) >= 1, errors
        # a truncated frame is a link that ended mid-frame: LinkClosed
        assert set(errors) <= {"ProtocolError", "FrameTooLarge", "LinkClosed"}
        logged = [r.getMessage() for r in caplog.records if r.name.startswith("msgr")]
        assert any(t in text for text in logged for t in errors), logged
        assert BANNER not in rest[len(BANNER):]  # nothing but (maybe) a banner / refusal went back


async def test_handshake_timeout_drops_a_silent_client() -> None:
    server = Messenger.from_config({"messenger": {"name": "server", "listen": ["tcp://127.0.0.1:0"]},
                                    "limits": {"handshake_timeout": 0.2}})
    async with server:
        host, port = server.addresses[0][len("tcp://"):].rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(BANNER)  # then nothing
        data = await asyncio.wait_for(reader.read(), 10)
        assert data.startswith(BANNER) or data == b""
        writer.close()
        assert server.stats["errors"].get("ProtocolError") == 1
        assert server.connections == []

