"""The transport conformance kit over the emulated verbs backends
(``[rdma] backend = "emulated"`` and ``"emulated-ipc"``): the whole
protocol -- credits, receive buffer pool, fragmentation, rendezvous, close
and break handling -- runs for real over the strict emulation, in-process
and with the verbs carried over a socket between two emulated NICs."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from msgr_rdma import RdmaTransport
from msgr_rdma._oob import KIND_EMU_IPC, ConnInfo
from msgr_rdma._transport import accept_emulated, dial, parse_address
from msgr_rdma.emulation import EmuFabric
from msgr_rdma.verbs import Access, QPState

from msgr_core.testing import TransportHarness, TransportTests, kit_options

_HDR = struct.Struct("!BBH")


def rdma_malformed_inputs(max_frame_bytes: int) -> dict[str, bytes]:
    """Raw messages (each one SEND) a msgr-rdma listener must answer by
    ending that link with ProtocolError / FrameTooLarge."""

    def data(flags: int, body: bytes) -> bytes:
        return _HDR.pack(1, flags, 0) + body

    return {
        "a message shorter than its header": b"\x01",
        "an unknown message type": _HDR.pack(9, 0, 0),
        "a frame continued that never started": data(0, b"abc"),
        "a frame with zero segments": data(3, struct.pack("!IH", 0, 0)),
        "segment lengths that disagree with the frame length": data(3, struct.pack("!IHII", 5, 2, 1, 1) + b"12345"),
        "a frame announced over max_frame_bytes": data(3, struct.pack("!IHI", max_frame_bytes + 1, 1, 0)),
        "a rendezvous request over max_frame_bytes": _HDR.pack(2, 0, 0)
        + struct.pack("!IQIIH", 1, 0, 0, max_frame_bytes + 1, 1),
        "a FIN for no rendezvous": _HDR.pack(3, 0, 0) + struct.pack("!I", 77),
    }


async def _send_until_dropped(ctx: Any, data: bytes, connect: Callable[[Any], Awaitable[None]]) -> None:
    """Make a raw QP on ``ctx``, ``connect(qp)`` it to a listener, SEND
    ``data`` as one message, and return once the listener dropped the QP
    (ours is moved to the error state: its receives flush)."""
    cq = ctx.create_cq(64)
    qp = ctx.create_qp(cq, 8, 16)
    mr = ctx.reg_mr(16 * 4096 + len(data), Access.LOCAL_WRITE)
    qp.to_init()
    for i in range(16):
        qp.post_recv(i, mr, i * 4096, 4096)
    loop = asyncio.get_running_loop()
    woke = asyncio.Event()
    loop.add_reader(cq.fileno(), woke.set)
    try:
        async with asyncio.timeout(10):
            await connect(qp)
            mr.view[16 * 4096 :] = data
            qp.post_send(99, mr, 16 * 4096, len(data))
            while qp.state != QPState.ERR:
                # our completions (the send, then the flushed receives) wake us
                cq.req_notify()
                await woke.wait()
                woke.clear()
                cq.ack_events()
                cq.poll(64)
    finally:
        loop.remove_reader(cq.fileno())
        qp.destroy()
        cq.close()
        mr.dereg()


async def emulated_inject_raw(address: str, data: bytes) -> None:
    """SEND ``data`` from a raw emulated QP accepted by the listener at
    ``address`` (in-process fabric); return once the listener dropped it."""

    async def connect(qp: Any) -> None:
        accept_emulated(address, qp.qp_num, 16, 4096, qp)

    await _send_until_dropped(EmuFabric.shared().open(), data, connect)


def _harness(backend: str, inject_raw: Callable[[str, bytes], Awaitable[None]], **settings: object) -> TransportHarness:
    options = kit_options(settings={"backend": backend, **settings})
    return TransportHarness(
        RdmaTransport,
        "rdma://127.0.0.1:0",
        options=options,
        timeout=30.0,
        inject_raw=inject_raw,
        malformed_inputs=rdma_malformed_inputs,
    )


def emulated_harness(**settings: object) -> TransportHarness:
    return _harness("emulated", emulated_inject_raw, **settings)


class TestRdmaEmulatedConformance(TransportTests):
    @pytest.fixture
    def transport_harness(self) -> TransportHarness:
        return emulated_harness()


class TestRdmaEmulatedSmallBuffersConformance(TransportTests):
    """Few, small receive buffers: most frames are fragmented, credits run
    out constantly, and rendezvous starts at 4 KiB."""

    @pytest.fixture
    def transport_harness(self) -> TransportHarness:
        return emulated_harness(buffer_size=1024, recv_count=8, rendezvous_threshold=4096, max_reads=2)


async def ipc_inject_raw(address: str, data: bytes) -> None:
    """Like :func:`emulated_inject_raw` over ``emulated-ipc``: a raw QP on a
    NIC of its own dials the listener through the TCP setup exchange, SENDs
    ``data`` over the wire, and returns once the listener dropped it."""
    host, port = parse_address(address, listen=False)

    async def connect(qp: Any) -> None:
        await dial(host, port, qp, ConnInfo(KIND_EMU_IPC, qp.endpoint(), 16, 4096))

    await _send_until_dropped(EmuFabric().open("raw"), data, connect)


def ipc_harness(**settings: object) -> TransportHarness:
    return _harness("emulated-ipc", ipc_inject_raw, **settings)


class TestRdmaEmulatedIpcConformance(TransportTests):
    """The kit over ``emulated-ipc``: every link's verbs cross a real TCP
    socket between two emulated NICs (each transport has its own MR table),
    exactly as between two processes -- the kit keeps both ends in one."""

    @pytest.fixture
    def transport_harness(self) -> TransportHarness:
        return ipc_harness()


class TestRdmaEmulatedIpcSmallBuffersConformance(TransportTests):
    @pytest.fixture
    def transport_harness(self) -> TransportHarness:
        return ipc_harness(buffer_size=1024, recv_count=8, rendezvous_threshold=4096, max_reads=2)
