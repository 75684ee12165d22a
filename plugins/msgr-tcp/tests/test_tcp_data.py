"""Frames over real sockets: ordering, buffer boundaries, large frames, back-pressure."""

from __future__ import annotations

import asyncio
import hashlib
import random
from typing import Any

import pytest

from msgr_core.errors import FrameTooLarge, LinkClosed
from msgr_core.framing import BANNER


def _frames(count: int, seed: int) -> list[list[Any]]:
    """Numbered frames of 1 to 5 buffers of mixed types and sizes (0 B to 100 KiB)."""
    rng = random.Random(seed)
    frames: list[list[Any]] = []
    for i in range(count):
        frame: list[Any] = [i.to_bytes(4, "big")]
        for _ in range(rng.randrange(5)):
            n = rng.choice((0, 1, 7, 100, 1000, 3000)) if rng.random() < 0.98 else 100_000
            data = rng.randbytes(n)
            kind = rng.randrange(3)
            frame.append(data if kind == 0 else bytearray(data) if kind == 1 else memoryview(data))
        frames.append(frame)
    return frames


def _as_bytes(frames: list[list[Any]]) -> list[list[bytes]]:
    return [[bytes(b) for b in f] for f in frames]


async def _pump(link: Any, frames: list[list[Any]], batch: int = 100) -> None:
    for n, start in enumerate(range(0, len(frames), batch)):
        chunk = frames[start : start + batch]
        if n % 2:
            link.send_many(chunk)
        else:
            for frame in chunk:
                link.send(frame)
        await asyncio.sleep(0)  # let the loop flush and read


async def test_listen_port_0_reports_the_bound_address(net: Any, listen_address: str) -> None:
    link, _client, server, listener = await net.pair(listen_address)
    if listen_address.startswith("tcp://"):
        assert listener.address != listen_address
        host = listen_address[len("tcp://") :].rsplit(":", 1)[0]
        assert listener.address.startswith(f"tcp://{host}:")
        assert int(listener.address.rsplit(":", 1)[1]) > 0
        assert link.peer_address == listener.address
        assert server.link.local_address == listener.address
        assert server.link.peer_address == link.local_address
    else:
        assert listener.address == listen_address  # a path is what it is
        assert link.peer_address == listener.address
        assert server.link.local_address == listener.address
    link.send([b"ping"])
    await server.wait_frames(1)
    assert server.frames == [[b"ping"]]


async def test_many_multi_buffer_frames_arrive_in_order_both_ways(net: Any, listen_address: str) -> None:
    link, client, server, _ = await net.pair(listen_address)
    up, down = _frames(3000, seed=1), _frames(3000, seed=2)
    await asyncio.gather(_pump(link, up), _pump(server.link, down))
    await server.wait_frames(len(up))
    await client.wait_frames(len(down))
    assert _as_bytes(server.frames) == _as_bytes(up)
    assert _as_bytes(client.frames) == _as_bytes(down)
    assert link.write_buffer_size() == 0
    assert server.link.write_buffer_size() == 0


@pytest.mark.parametrize("direct_send", [True, False], ids=["direct", "via-asyncio"])
async def test_16_mib_frames_both_ways(net: Any, listen_address: str, direct_send: bool) -> None:
    size = 16 * 1024 * 1024
    link, client, server, _ = await net.pair(
        listen_address, max_frame_bytes=2 * size, settings={"direct_send": direct_send}
    )
    rng = random.Random(16)
    big = [rng.randbytes(size), rng.randbytes(size // 2)]
    up = [[b"header-1", big[0]], [b"small"], [b"header-2", big[1], b"trailer"]]
    down = [[big[1]], [b"x" * 10, bytearray(big[0])]]
    for frame in up:
        link.send(frame)
    for frame in down:
        server.link.send(frame)
    await server.wait_frames(len(up))
    await client.wait_frames(len(down))

    def digest(frames: list[list[Any]]) -> list[list[str]]:
        return [[hashlib.sha256(b).hexdigest() for b in f] for f in frames]

    assert [[len(b) for b in f] for f in server.frames] == [[len(b) for b in f] for f in up]
    assert digest(server.frames) == digest(up)
    assert digest(client.frames) == digest(down)


async def test_write_buffer_size_counts_frames_not_yet_flushed(net: Any) -> None:
    link, _client, server, _ = await net.pair("tcp://127.0.0.1:0")
    await asyncio.sleep(0)  # let the banner go
    link.send([b"abc", b"defg"])  # the first frame of a loop iteration is written at once
    before = link.write_buffer_size()
    link.send([b"abc", b"defg"])  # the others wait for the end of the iteration, counted
    # prefix: u32 body length + u16 count + 2 * u32 lengths = 14 bytes
    assert link.write_buffer_size() == before + 14 + 7
    link.send_many([[b"x"], [b"y" * 10]])
    assert link.write_buffer_size() == before + 14 + 7 + (10 + 1) + (10 + 10)
    await server.wait_frames(4)
    assert link.write_buffer_size() == 0


@pytest.mark.parametrize("direct_send", [True, False], ids=["direct", "via-asyncio"])
async def test_backpressure_when_the_peer_stops_reading(net: Any, listen_address: str, direct_send: bool) -> None:
    high, low = 256 * 1024, 64 * 1024
    link, client, server, _ = await net.pair(
        listen_address,
        high_watermark=high,
        low_watermark=low,
        settings={"direct_send": direct_send},
    )
    # the peer's asyncio transport stops reading: its kernel buffers fill up
    server.link.pause_reading()
    chunk = b"z" * (64 * 1024)
    sent = 0
    while client.pauses == 0:
        assert sent < 1024, "pause_writing never fired after 64 MiB to a peer that does not read"
        link.send([sent.to_bytes(4, "big"), chunk])
        sent += 1
        await asyncio.sleep(0)
    assert client.size_at_pause is not None and client.size_at_pause > high
    # send keeps queueing (never blocks, never refuses) while paused
    for _ in range(8):
        link.send([sent.to_bytes(4, "big"), chunk])
        sent += 1
    assert link.write_buffer_size() > high
    assert client.resumes == 0
    server.link.resume_reading()
    await client.until(lambda: client.resumes > 0)
    assert client.size_at_resume is not None and client.size_at_resume <= low
    await server.wait_frames(sent)
    assert [int.from_bytes(f[0], "big") for f in server.frames] == list(range(sent))
    assert all(bytes(f[1]) == chunk for f in server.frames)
    assert client.pauses == client.resumes
    assert link.write_buffer_size() == 0


async def test_send_over_the_limit_raises_and_the_link_stays_up(net: Any) -> None:
    link, _client, server, _ = await net.pair("tcp://127.0.0.1:0", max_frame_bytes=1000)
    with pytest.raises(FrameTooLarge) as info:
        link.send([b"a" * 600, b"b" * 401])
    assert (info.value.size, info.value.limit) == (1001, 1000)
    assert link.peer_address in str(info.value)
    with pytest.raises(FrameTooLarge):
        link.send_many([[b"ok-1"], [b"c" * 1001], [b"never"]])
    assert not link.is_closing()
    link.send([b"a" * 600, b"b" * 400])  # exactly at the limit
    link.send([b"after"])
    await server.wait_frames(3)
    assert _as_bytes(server.frames) == [[b"ok-1"], [b"a" * 600, b"b" * 400], [b"after"]]


async def test_bad_frames_are_refused_by_send(net: Any) -> None:
    link, *_ = await net.pair("tcp://127.0.0.1:0")
    with pytest.raises(ValueError):
        link.send([])
    with pytest.raises(ValueError):
        link.send([b""] * 1025)
    assert not link.is_closing()


async def test_send_after_close_or_abort_raises_link_closed(net: Any, listen_address: str) -> None:
    link, client, server, _ = await net.pair(listen_address)
    link.close()
    assert link.is_closing()
    with pytest.raises(LinkClosed):
        link.send([b"late"])
    with pytest.raises(LinkClosed):
        link.send_many([[b"late"]])
    assert await server.wait_lost() is None
    # the peer closed: the server side's link is closed too
    assert server.link.is_closing()
    with pytest.raises(LinkClosed):
        server.link.send([b"late"])
    assert await client.wait_lost() is None

    link2, client2, server2, _ = await net.pair(listen_address.replace("l.sock", "l2.sock"))
    link2.abort()
    link2.abort()
    with pytest.raises(LinkClosed):
        link2.send([b"late"])
    assert await client2.wait_lost() is None
    await server2.wait_lost()


async def test_close_flushes_everything_then_both_ends_see_none(net: Any, listen_address: str) -> None:
    link, client, server, _ = await net.pair(listen_address)
    frames = [*_frames(500, seed=3), [b"big", b"q" * (4 * 1024 * 1024)]]
    for frame in frames:
        link.send(frame)
    link.close()
    link.close()
    assert await server.wait_lost() is None
    assert _as_bytes(server.frames) == _as_bytes(frames)
    assert await client.wait_lost() is None


async def test_close_from_the_accepting_side(net: Any, listen_address: str) -> None:
    _link, client, server, _ = await net.pair(listen_address)
    for i in range(100):
        server.link.send([b"%d" % i])
    server.link.close()
    assert await client.wait_lost() is None
    assert [bytes(f[0]) for f in client.frames] == [b"%d" % i for i in range(100)]
    assert await server.wait_lost() is None


async def test_no_frame_is_delivered_after_close_from_a_callback(net: Any) -> None:
    def close_on_first(rec: Any, frame: Any) -> None:
        rec.link.close()

    link, client, server, _ = await net.pair("tcp://127.0.0.1:0", server={"on_frame": close_on_first})
    link.send_many([[b"%d" % i] for i in range(50)])  # all in one write
    assert await server.wait_lost() is None
    assert server.frames == [[b"0"]]
    assert await client.wait_lost() is None


async def test_link_made_may_send(net: Any, listen_address: str) -> None:
    def greet(rec: Any, link: Any) -> None:
        link.send([b"hello from " + rec.name.encode()])

    scheme = listen_address.split(":", 1)[0]
    t = net.transport(scheme)
    listener, accepted = await net.listen(t, listen_address, on_made=greet)
    client = net.recorder("client", on_made=greet)
    await t.connect(listener.address, client)
    await client.wait_frames(1)
    await accepted[0].wait_frames(1)
    assert client.frames == [[b"hello from server link #0"]]
    assert accepted[0].frames == [[b"hello from client"]]


async def test_the_stream_starts_with_the_banner(net: Any, raw_connect: Any) -> None:
    t = net.transport()
    listener, accepted = await net.listen(t, "tcp://127.0.0.1:0")
    reader, writer = await raw_connect(listener.address)
    try:
        assert await asyncio.wait_for(reader.readexactly(len(BANNER)), 10) == BANNER
        writer.write(BANNER + b"\x00\x00\x00\x02\x00\x01\x00\x00\x00\x02hi")
        await accepted[0].wait_frames(1)
        assert accepted[0].frames == [[b"hi"]]
    finally:
        writer.close()
    assert await accepted[0].wait_lost() is None  # EOF at a frame boundary
