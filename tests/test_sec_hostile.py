"""Hostile load: a lossless stream between two legitimate messengers keeps
going while 200 hostile clients attack the receiving one.

The receiver is a ``peer_node.py`` process (so its memory is measured
alone); the legitimate sender and the hostile clients run here, over real
TCP on loopback.  Bounded: 200 hostile connections (plus the repeated
authentication attempts), every one closed by the server within
``limits.handshake_timeout`` (2 s); the whole test takes a few seconds.
Throughput under attack is a performance figure: see the ``hostile`` case
in ``benchmarks/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import struct
from typing import Any

import msgpack
import psutil
import pytest

from msgr_core import Messenger
from msgr_core import message as m
from msgr_core.auth import NONCE_BYTES, generate_key
from msgr_core.framing import BANNER, StreamDecoder, encode_prefix

from .procs import Node

KEY = generate_key()
HOSTILE_PER_KIND = 40  # x 5 kinds = 200 hostile clients
AUTH_ATTEMPTS = 3  # each failed-authentication client tries this many times
HANDSHAKE_TIMEOUT = 2.0
#: the receiver's resident memory may grow by at most this much under attack
RSS_BOUND = 64 * 1024 * 1024
SEED = 20261122


def _frame(mtype: int, body: Any) -> bytes:
    frame = [m.pack_header(mtype, 0, 0, m.PACKED, 0, 0, ""), msgpack.packb(body)]
    return encode_prefix(frame, 1 << 20) + b"".join(frame)


def _hello(name: str, nonce: bytes) -> dict[str, Any]:
    return {"v": m.PROTOCOL_VERSION, "name": name, "type": "client", "incarnation": 1, "features": [],
            "policy": "lossy_client", "mode": "lossy", "addrs": [], "sid": 1, "peer_sid": 0, "peer_inc": 0,
            "in_seq": 0, "auth": nonce}


class Hostile:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.connections = 0
        self.closed_by_server = 0

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        self.connections += 1
        return await asyncio.open_connection(self.host, self.port)

    async def _until_closed(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            trickle: bytes = b"") -> None:
        """Wait for the server to close (EOF or reset), trickling ``trickle``
        one byte at a time meanwhile; fail if it does not within the bound."""
        pending = memoryview(trickle)
        try:
            while True:
                read = asyncio.ensure_future(reader.read(65536))
                done, _ = await asyncio.wait([read], timeout=0.1 if pending else HANDSHAKE_TIMEOUT + 8)
                if not done:
                    if not pending:
                        read.cancel()
                        raise AssertionError("hostile connection still open after the handshake deadline")
                    read.cancel()
                    writer.write(pending[:1])
                    pending = pending[1:]
                    continue
                if not read.result():
                    break
        except (ConnectionResetError, BrokenPipeError):
            pass
        self.closed_by_server += 1
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()  # gone before the test's loop closes

    async def random_bytes(self, rng: random.Random) -> None:
        reader, writer = await self._connect()
        junk = bytes(rng.getrandbits(8) for _ in range(rng.randint(16, 4096)))
        writer.write(b"X" + junk)  # never a banner
        await self._until_closed(reader, writer)

    async def wrong_lengths(self, rng: random.Random) -> None:
        reader, writer = await self._connect()
        a, b = rng.randint(1, 1000), rng.randint(1, 1000)
        writer.write(BANNER + struct.pack("!IHII", a + b + rng.randint(1, 50), 2, a, b) + os.urandom(a + b))
        await self._until_closed(reader, writer)

    async def oversize(self, rng: random.Random) -> None:
        reader, writer = await self._connect()
        writer.write(BANNER + struct.pack("!IHI", 0xFFFF0000 + rng.randint(0, 0xFFFF), 1, 0xFFFF0000))
        await self._until_closed(reader, writer)

    async def half_open_or_slow(self, rng: random.Random) -> None:
        """Half a HELLO then silence, or a HELLO one byte at a time (never
        finished before the deadline)."""
        reader, writer = await self._connect()
        hello = BANNER + _frame(m.HELLO, _hello("slowpoke", os.urandom(NONCE_BYTES)))
        if rng.random() < 0.5:
            writer.write(hello[: len(hello) // 2])
            await self._until_closed(reader, writer)
        else:
            await self._until_closed(reader, writer, trickle=hello)

    async def failed_auth(self, rng: random.Random) -> None:
        for attempt in range(AUTH_ATTEMPTS):
            reader, writer = await self._connect()
            writer.write(BANNER + _frame(m.HELLO, _hello(f"mallory.{attempt}", os.urandom(NONCE_BYTES))))
            frames: list[Any] = []
            dec = StreamDecoder(frames.append, 1 << 20)
            while not frames:
                data = await asyncio.wait_for(reader.read(65536), 10)
                assert data, "closed before the challenge"
                dec.feed(data)
            head = m.unpack_header(frames[0][0])
            assert head[0] == m.AUTH
            writer.write(_frame(m.AUTH, {"proof": os.urandom(32)}))
            await self._until_closed(reader, writer)


@pytest.mark.slow
async def test_lossless_stream_survives_200_hostile_clients() -> None:
    node = Node("receiver", config={"auth": {"cluster_key": KEY},
                                    "limits": {"handshake_timeout": HANDSHAKE_TIMEOUT}})
    proc = psutil.Process(node.proc.pid)
    sender = Messenger.from_config({"messenger": {"name": "sender", "type": "client", "transports": ["tcp"]},
                                    "policy": {"default": "lossless_client"}, "auth": {"cluster_key": KEY}})
    try:
        async with sender:
            conn = sender.get_connection(node.address)
            await conn.request("msgr.ping", b"", timeout=30)
            baseline = proc.memory_info().rss
            peak = baseline
            attack_done = asyncio.Event()
            sent = 0

            async def stream() -> None:
                nonlocal sent
                pad = b"." * 56
                while not attack_done.is_set() or sent < 20000:
                    await conn.send("seq", sent.to_bytes(8, "big") + pad)
                    sent += 1
                    if sent % 64 == 0:
                        await asyncio.sleep(0)

            async def watch_memory() -> None:
                nonlocal peak
                while not attack_done.is_set():
                    peak = max(peak, proc.memory_info().rss)
                    await asyncio.sleep(0.05)  # a sampling period, not a wait for an outcome

            streaming = asyncio.ensure_future(stream())
            watching = asyncio.ensure_future(watch_memory())
            host, port = node.address[len("tcp://"):].rsplit(":", 1)
            hostile = Hostile(host, int(port))
            rng = random.Random(SEED)
            kinds = [hostile.random_bytes, hostile.wrong_lengths, hostile.oversize, hostile.half_open_or_slow,
                     hostile.failed_auth]
            attacks = [kind(random.Random(rng.random())) for kind in kinds for _ in range(HOSTILE_PER_KIND)]
            await asyncio.wait_for(asyncio.gather(*attacks), HANDSHAKE_TIMEOUT + 30)
            attack_done.set()
            await watching
            await asyncio.wait_for(streaming, 60)
            report = (await conn.request("report", b"", timeout=60)).payload
            status = await sender.send_message("msgr.status", node.address, timeout=30)
    finally:
        code = node.stop()
    rejected = status["stats"]["rejected"]
    expected_connections = HOSTILE_PER_KIND * (len(kinds) - 1) + HOSTILE_PER_KIND * AUTH_ATTEMPTS
    print(f"\nhostile connections: {hostile.connections}, closed by the server: {hostile.closed_by_server}")
    print(f"rejected by reason: {rejected}")
    print(f"legitimate stream: {sent} messages, received {report['count']}, out of order {report['disorder']}")
    print(f"receiver RSS: {baseline / 2**20:.1f} MiB before, {peak / 2**20:.1f} MiB peak "
          f"(bound: +{RSS_BOUND / 2**20:.0f} MiB)")
    assert code == 0
    # nothing lost, nothing reordered
    assert report["count"] == sent and report["next"] == sent and report["disorder"] == 0
    # every hostile connection was closed by the server
    assert hostile.connections == hostile.closed_by_server == expected_connections
    # each is counted once, under the reason it was refused for
    assert rejected.get("protocol_error", 0) == 2 * HOSTILE_PER_KIND  # random bytes, wrong lengths
    assert rejected.get("frame_too_large", 0) == HOSTILE_PER_KIND
    assert rejected.get("handshake_timeout", 0) == HOSTILE_PER_KIND  # half-open, slow writers
    assert rejected.get("auth_failed", 0) == HOSTILE_PER_KIND * AUTH_ATTEMPTS
    assert sum(rejected.values()) == expected_connections
    assert status["stats"]["sessions"] == 1  # only the legitimate one
    assert peak - baseline < RSS_BOUND
