"""Bad input, broken peers and failed connects: each ends one link, typed and logged."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from msgr_core.errors import FrameTooLarge, LinkClosed, ProtocolError
from msgr_core.framing import BANNER


def _raw_peer(writer: asyncio.StreamWriter, scheme: str) -> str:
    """How the listener names a raw client in its messages."""
    name = writer.get_extra_info("sockname")
    if scheme == "tcp" and isinstance(name, tuple):
        host = f"[{name[0]}]" if ":" in name[0] else name[0]
        return f"tcp://{host}:{name[1]}"
    return ""


async def _drain_until_closed(reader: asyncio.StreamReader) -> None:
    """Read (and drop) until the listener closes the connection."""
    try:
        async with asyncio.timeout(10):
            while await reader.read(65536):
                pass
    except ConnectionError:
        pass


async def _round_trip(link: Any, client: Any, server: Any, tag: bytes) -> None:
    n, m = len(server.frames), len(client.frames)
    link.send([tag])
    await server.wait_frames(n + 1)
    server.link.send([tag + b"/reply"])
    await client.wait_frames(m + 1)
    assert bytes(client.frames[-1][0]) == tag + b"/reply"


async def test_an_oversize_frame_closes_only_its_link(
    net: Any, listen_address: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="msgr.tcp")
    scheme = listen_address.split(":", 1)[0]
    server_t = net.transport(scheme, max_frame_bytes=1024 * 1024)
    big_t = net.transport(scheme, max_frame_bytes=4 * 1024 * 1024)
    listener, accepted = await net.listen(server_t, listen_address)
    bystander = net.recorder("bystander")
    blink = await server_t.connect(listener.address, bystander)
    offender = net.recorder("offender")
    olink = await big_t.connect(listener.address, offender)
    await bystander.until(lambda: len(accepted) == 2 and accepted[1].link is not None)

    olink.send([b"h", b"x" * (2 * 1024 * 1024)])
    exc = await accepted[1].wait_lost()
    assert isinstance(exc, FrameTooLarge)
    assert (exc.size, exc.limit) == (2 * 1024 * 1024 + 1, 1024 * 1024)
    assert accepted[1].frames == []
    await offender.wait_lost()  # the sender sees its link end too

    await _round_trip(blink, bystander, accepted[0], b"still here")
    later = net.recorder("later")
    llink = await server_t.connect(listener.address, later)
    await later.until(lambda: len(accepted) == 3 and accepted[2].link is not None)
    await _round_trip(llink, later, accepted[2], b"new link")

    [record] = [r for r in caplog.records if r.name == "msgr.tcp"]
    assert record.levelno == logging.WARNING
    if scheme == "tcp":
        assert olink.local_address and olink.local_address in record.getMessage()
        assert exc.peer == olink.local_address
    assert "max_frame_bytes" in record.getMessage()


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="garbage"),
        pytest.param(BANNER + struct.pack("!IHII", 10, 2, 3, 4) + b"0123456789", id="lengths"),
        pytest.param(BANNER + struct.pack("!IH", 0, 0), id="no-segments"),
        pytest.param(BANNER + struct.pack("!IH", 5, 2000), id="too-many-segments"),
    ],
)
async def test_malformed_bytes_from_a_raw_socket_close_only_that_link(
    net: Any, listen_address: str, raw_connect: Any, caplog: pytest.LogCaptureFixture, data: bytes
) -> None:
    caplog.set_level(logging.WARNING, logger="msgr.tcp")
    link, client, server, listener = await net.pair(listen_address)
    accepted_before = len(net.recorders)
    reader, writer = await raw_connect(listener.address)
    peer = _raw_peer(writer, listen_address.split(":", 1)[0])
    try:
        writer.write(data)
        await _drain_until_closed(reader)
    finally:
        writer.close()
    [victim] = net.recorders[accepted_before:]
    exc = await victim.wait_lost()
    assert type(exc) is ProtocolError
    assert victim.frames == []
    [record] = [r for r in caplog.records if r.name == "msgr.tcp"]
    assert record.levelno == logging.WARNING
    if peer:
        assert exc.peer == peer
        assert peer in record.getMessage()
    await _round_trip(link, client, server, b"unaffected")


async def test_eof_inside_a_frame_is_link_closed(net: Any, listen_address: str, raw_connect: Any) -> None:
    t = net.transport(listen_address.split(":", 1)[0])
    listener, accepted = await net.listen(t, listen_address)
    reader, writer = await raw_connect(listener.address)
    writer.write(BANNER + struct.pack("!IHI", 100, 1, 100) + b"only ten b")
    async with asyncio.timeout(10):
        await writer.drain()
        await reader.readexactly(len(BANNER))
    writer.write_eof()
    try:
        await net.until(lambda: accepted)
        [victim] = accepted
        exc = await victim.wait_lost()
    finally:
        writer.close()
    assert isinstance(exc, LinkClosed)
    assert "inside a frame" in str(exc)


async def test_a_reset_is_reported_as_connection_reset(net: Any, raw_connect: Any) -> None:
    t = net.transport()
    listener, accepted = await net.listen(t, "tcp://127.0.0.1:0")
    reader, writer = await raw_connect(listener.address)
    await asyncio.wait_for(reader.readexactly(len(BANNER)), 10)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await net.until(lambda: accepted)
    writer.transport.abort()  # close with linger 0: RST
    [victim] = accepted
    assert isinstance(await victim.wait_lost(), ConnectionResetError)


async def test_a_peer_that_aborts_mid_stream_ends_the_link(net: Any, listen_address: str) -> None:
    link, client, server, _ = await net.pair(listen_address)
    for i in range(200):
        link.send([i.to_bytes(4, "big"), b"p" * 50_000])
    await server.wait_frames(1)
    link.abort()
    assert await client.wait_lost() is None
    await server.wait_lost()  # None (EOF between frames), LinkClosed or a reset
    got = [int.from_bytes(f[0], "big") for f in server.frames]
    assert got == list(range(len(got)))


async def test_a_killed_peer_process_ends_the_link(net: Any, listen_address: str) -> None:
    """A real process connects, sends half a frame and is SIGKILLed."""
    t = net.transport(listen_address.split(":", 1)[0])
    listener, accepted = await net.listen(t, listen_address)
    script = (
        "import socket, sys, struct\n"
        "kind, where = sys.argv[1], sys.argv[2]\n"
        "if kind == 'unix':\n"
        "    s = socket.socket(socket.AF_UNIX); s.connect(where)\n"
        "else:\n"
        "    host, port = where.rsplit(':', 1)\n"
        "    s = socket.create_connection((host.strip('[]'), int(port)))\n"
        f"s.sendall({BANNER!r} + struct.pack('!IHI', 1000, 1, 1000) + b'half')\n"
        "got = b''\n"
        "while len(got) < 8: got += s.recv(8 - len(got))\n"
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n"
    )
    kind, _, where = listener.address.partition("://")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        kind,
        where,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line == b"ready\n"
        await net.until(lambda: accepted)
        os.kill(proc.pid, signal.SIGKILL)
        [victim] = accepted
        exc = await victim.wait_lost()
        assert isinstance(exc, LinkClosed)
        assert "inside a frame" in str(exc)
    finally:
        if proc.returncode is None:
            proc.kill()
        await asyncio.wait_for(proc.wait(), 30)


async def test_a_raising_frame_handler_closes_its_link(net: Any, caplog: pytest.LogCaptureFixture) -> None:
    def explode(rec: Any, frame: Any) -> None:
        raise RuntimeError("handler bug")

    link, client, server, _ = await net.pair("tcp://127.0.0.1:0", server={"on_frame": explode})
    link.send_many([[b"1"], [b"2"]])
    exc = await server.wait_lost()
    assert isinstance(exc, RuntimeError) and str(exc) == "handler bug"
    assert server.frames == [[b"1"]]
    await client.wait_lost()
    assert any(r.levelno == logging.ERROR and r.name == "msgr.tcp" for r in caplog.records)


async def test_a_raising_link_made_closes_the_link(net: Any) -> None:
    def explode(rec: Any, link: Any) -> None:
        raise RuntimeError("link_made bug")

    t = net.transport()
    listener, _ = await net.listen(t, "tcp://127.0.0.1:0")
    rec = net.recorder("client", on_made=explode)
    await t.connect(listener.address, rec)
    exc = await rec.wait_lost()
    assert isinstance(exc, RuntimeError) and str(exc) == "link_made bug"


async def test_close_gives_up_on_a_peer_that_never_closes(net: Any, raw_connect: Any) -> None:
    t = net.transport(settings={"close_timeout": 0.2})
    listener, accepted = await net.listen(t, "tcp://127.0.0.1:0")
    reader, writer = await raw_connect(listener.address)
    try:
        await asyncio.wait_for(reader.readexactly(len(BANNER)), 10)
        [server] = accepted
        server.link.send([b"bye"])
        server.link.close()
        # the raw peer reads everything, sees EOF, and never closes its side
        assert await asyncio.wait_for(reader.read(), 10) == struct.pack("!IHI", 3, 1, 3) + b"bye"
        assert await server.wait_lost() is None
    finally:
        writer.close()


async def test_connect_refused(net: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, not listening: connects are refused
        port = s.getsockname()[1]
        rec = net.recorder("client")
        with pytest.raises(ConnectionRefusedError):
            await net.transport().connect(f"tcp://127.0.0.1:{port}", rec)
    assert rec.link is None


async def test_connect_refused_on_a_stale_unix_socket(net: Any, sock_dir: Path) -> None:
    path = sock_dir / "stale.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))  # a socket file nobody listens on
    t = net.transport("unix")
    with pytest.raises(ConnectionRefusedError):
        await t.connect(f"unix://{path}", net.recorder())
    with pytest.raises(FileNotFoundError):
        await t.connect(f"unix://{sock_dir}/missing.sock", net.recorder())


async def test_connect_times_out(net: Any) -> None:
    # A listener with backlog 0 that never accepts: once one connection
    # waits in its queue, the kernel drops further SYNs.
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(0)
        port = lsock.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            t = net.transport(connect_timeout=0.3)
            rec = net.recorder()
            with pytest.raises(TimeoutError):
                await t.connect(f"tcp://127.0.0.1:{port}", rec)
            assert rec.link is None
