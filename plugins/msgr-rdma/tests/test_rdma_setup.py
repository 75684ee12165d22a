"""Connection setup out of band over TCP (msgr_rdma._oob): the INFO codec,
and the exchange between two asyncio endpoints over real sockets --
refusals with a reason, malformed or silent peers, a peer leaving
mid-setup.  Run with the emulated-ipc backend (the verbs backend uses the
same exchange)."""

from __future__ import annotations

import asyncio
import dataclasses
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
from msgr_rdma import RdmaTransport
from msgr_rdma._oob import (
    _INFO,
    KIND_EMU_IPC,
    KIND_VERBS,
    M_INFO,
    M_READY,
    SETUP_MAX,
    ConnInfo,
    decode_info,
    encode_info,
)
from msgr_rdma._transport import dial, parse_address
from msgr_rdma.emulation import EmuFabric
from msgr_rdma.verbs import Access, QPEndpoint

from msgr_core.errors import ProtocolError
from msgr_core.transport import TransportOptions

from .conftest import Rec

INFO = ConnInfo(KIND_VERBS, QPEndpoint(0x1234, 0xABCDEF, 7, bytes(range(16)), 3), 64, 8192)


def test_info_round_trip() -> None:
    assert decode_info(encode_info(INFO)) == INFO
    assert len(encode_info(INFO)) == _INFO.size == 44


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"MSGRRDMA", "INFO of 8 bytes"),
        (b"NOTRDMA!" + encode_info(INFO)[8:], "bad magic"),
        (encode_info(INFO)[:8] + b"\x09" + encode_info(INFO)[9:], "version 9"),
        (encode_info(INFO)[:9] + b"\x07" + encode_info(INFO)[10:], "unknown backend kind 7"),
        (encode_info(dataclasses.replace(INFO, recv_count=2)), "out of range"),
    ],
    ids=["short", "magic", "version", "kind", "credits"],
)
def test_malformed_info_is_a_protocol_error(body: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode_info(body, "peer")


@pytest.mark.parametrize(
    "info",
    [
        dataclasses.replace(INFO, endpoint=QPEndpoint(1 << 24)),
        dataclasses.replace(INFO, endpoint=QPEndpoint(1, psn=1 << 24)),
        dataclasses.replace(INFO, endpoint=QPEndpoint(1, gid=b"short")),
        dataclasses.replace(INFO, recv_count=1 << 16),
    ],
)
def test_out_of_range_info_is_not_encoded(info: ConnInfo) -> None:
    with pytest.raises(ValueError):
        encode_info(info)


@pytest.fixture
async def ipc_listener() -> AsyncIterator[tuple[RdmaTransport, Any, list[Rec]]]:
    """An emulated-ipc listener (setup timeout 1 s) and the handlers of
    the links it made."""
    t = RdmaTransport("rdma", TransportOptions(connect_timeout=1.0, settings={"backend": "emulated-ipc"}))
    made = Made()

    def factory() -> Rec:
        made.append(Rec())
        made.event.set()
        return made[-1]

    listener = await t.listen("rdma://127.0.0.1:0", factory)
    yield t, listener, made
    await listener.aclose()
    await t.aclose()  # aborts the links left and waits for their sockets


class Made(list[Rec]):
    """The handlers of the links a listener made; ``await made.first()``."""

    def __init__(self) -> None:
        super().__init__()
        self.event = asyncio.Event()

    async def first(self) -> Rec:
        await asyncio.wait_for(self.event.wait(), 10)
        return self[0]


async def _raw(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = parse_address(address, listen=False)
    return await asyncio.open_connection(host, port)


async def _until_closed(reader: asyncio.StreamReader) -> bytes:
    got = b""
    async with asyncio.timeout(10):
        while chunk := await reader.read(65536):
            got += chunk
    return got


def _raw_qp() -> Any:
    ctx = EmuFabric().open("raw")
    cq = ctx.create_cq(64)
    qp = ctx.create_qp(cq, 8, 16)
    mr = ctx.reg_mr(16 * 1024, Access.LOCAL_WRITE)
    qp.to_init()
    for i in range(16):
        qp.post_recv(i, mr, i * 1024, 1024)
    return qp


async def test_a_connect_sets_up_both_ends(ipc_listener: Any) -> None:
    t, listener, made = ipc_listener
    rec = Rec()
    link = await t.connect(listener.address, rec)
    link.send([b"over the emulated wire"])
    await made.first()
    await made[0].wait_frames(1)
    assert bytes(made[0].frames[0][0]) == b"over the emulated wire"
    assert link.peer_address == listener.address
    assert made[0].link is not None and made[0].link.peer_address.startswith("rdma://127.0.0.1:")


async def test_a_backend_mismatch_is_refused_with_the_reason(ipc_listener: Any) -> None:
    _t, listener, made = ipc_listener
    host, port = parse_address(listener.address, listen=False)
    qp = _raw_qp()
    with pytest.raises(ConnectionRefusedError, match="'emulated-ipc' backend, the peer 'verbs'"):
        async with asyncio.timeout(10):
            await dial(host, port, qp, ConnInfo(KIND_VERBS, qp.endpoint(), 16, 1024))
    assert not made


async def test_garbage_instead_of_info_closes_the_connection(ipc_listener: Any) -> None:
    _t, listener, made = ipc_listener
    reader, writer = await _raw(listener.address)
    writer.write(struct.pack("!IB", 5, M_INFO) + b"junk")
    assert await _until_closed(reader) == b""
    writer.close()
    await writer.wait_closed()
    assert not made


async def test_an_oversize_setup_message_closes_the_connection(ipc_listener: Any) -> None:
    _t, listener, made = ipc_listener
    reader, writer = await _raw(listener.address)
    writer.write(struct.pack("!IB", SETUP_MAX + 1, M_INFO))
    assert await _until_closed(reader) == b""
    writer.close()
    await writer.wait_closed()
    assert not made


async def test_a_silent_client_is_dropped_after_the_setup_timeout(ipc_listener: Any) -> None:
    _t, listener, made = ipc_listener
    reader, writer = await _raw(listener.address)
    assert await _until_closed(reader) == b""  # connect_timeout = 1 s
    writer.close()
    await writer.wait_closed()
    assert not made


async def test_a_client_leaving_before_ready_leaves_no_link(ipc_listener: Any) -> None:
    """INFO, the listener's INFO back, then the client goes: no link, its QP
    released, and the listener serves the next client."""
    t, listener, made = ipc_listener
    reader, writer = await _raw(listener.address)
    qp = _raw_qp()
    body = encode_info(ConnInfo(KIND_EMU_IPC, qp.endpoint(), 16, 1024))
    writer.write(struct.pack("!IB", 1 + len(body), M_INFO) + body)
    header = await asyncio.wait_for(reader.readexactly(5), 10)
    length, kind = struct.unpack("!IB", header)
    assert kind == M_INFO
    assert decode_info(await reader.readexactly(length - 1)).kind == KIND_EMU_IPC
    writer.close()
    await writer.wait_closed()
    rec = Rec()
    await t.connect(listener.address, rec)  # the next one is served
    await made.first()
    assert len(made) == 1


async def test_dialing_something_that_is_not_msgr_rdma(unused_tcp_port: int) -> None:
    answered = asyncio.Event()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        bogus = b"X" * _INFO.size
        writer.write(struct.pack("!IB", 1 + len(bogus), M_INFO) + bogus)
        writer.close()
        await writer.wait_closed()
        answered.set()

    server = await asyncio.start_server(answer, "127.0.0.1", unused_tcp_port)
    qp = _raw_qp()
    try:
        with pytest.raises(ProtocolError, match="bad magic"):
            async with asyncio.timeout(10):
                await dial("127.0.0.1", unused_tcp_port, qp, ConnInfo(KIND_EMU_IPC, qp.endpoint(), 16, 1024))
        await asyncio.wait_for(answered.wait(), 10)
    finally:
        server.close()
        await server.wait_closed()


async def test_ready_is_what_starts_the_listener_side(ipc_listener: Any) -> None:
    """The listener makes its link on READY, not before."""
    _t, listener, made = ipc_listener
    reader, writer = await _raw(listener.address)
    qp = _raw_qp()
    body = encode_info(ConnInfo(KIND_EMU_IPC, qp.endpoint(), 16, 1024))
    writer.write(struct.pack("!IB", 1 + len(body), M_INFO) + body)
    length, _kind = struct.unpack("!IB", await asyncio.wait_for(reader.readexactly(5), 10))
    await reader.readexactly(length - 1)
    assert not made
    writer.write(struct.pack("!IB", 1, M_READY))
    await made.first()
    assert made[0].link is not None
    writer.close()
    await writer.wait_closed()
