"""The conformance kit against fifo://, from the plugin's own tests.

With ``inject_raw`` (raw bytes through a hand-made FIFO pair), so the kit's
malformed-input check runs too; ``pause_reading`` is the link's own.
"""

from __future__ import annotations

import asyncio
import os
import tempfile

import pytest
from msgr_fifo import FifoTransport

from msgr_core.testing import TransportHarness, TransportTests


class _Drain(asyncio.Protocol):
    def __init__(self) -> None:
        self.first = asyncio.Event()
        self.closed = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        self.first.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.first.set()
        self.closed.set()


async def fifo_inject_raw(address: str, data: bytes) -> None:
    """Connect to a fifo:// listener by hand, send ``data`` raw, return once
    the listener has closed that link (the kit bounds the wait)."""
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory(prefix="msgr-fifo-raw-") as tmp:
        up, down = os.path.join(tmp, "up"), os.path.join(tmp, "down")
        os.mkfifo(up)
        os.mkfifo(down)
        drain = _Drain()
        read_fd = os.open(down, os.O_RDONLY | os.O_NONBLOCK)
        transport, _ = await loop.connect_read_pipe(lambda: drain, os.fdopen(read_fd, "rb", 0))
        try:
            fd = os.open(address.removeprefix("fifo://"), os.O_WRONLY | os.O_NONBLOCK)
            os.write(fd, f"MSGRFIFO1 {up} {down}\n".encode())
            os.close(fd)
            await drain.first.wait()  # the listener's banner: its ends are open
            up_fd = os.open(up, os.O_WRONLY)
            try:
                os.write(up_fd, data)  # small: fits the pipe buffer
                # Keep our end open: the listener must close on the bytes, not on an EOF.
                await drain.closed.wait()
            finally:
                os.close(up_fd)
        finally:
            transport.close()


class TestFifoConformance(TransportTests):
    """Every check of msgr_core.testing over fifo://."""

    @pytest.fixture
    def transport_harness(self) -> TransportHarness:
        return TransportHarness(
            FifoTransport,
            "fifo://{tmp}/l{n}",
            any_port_address="fifo://",
            inject_raw=fifo_inject_raw,
        )
