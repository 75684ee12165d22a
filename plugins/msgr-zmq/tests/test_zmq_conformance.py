"""The transport conformance kit (msgr_core.testing) against zmq+tcp and
zmq+ipc, with a raw ZMTP client for the malformed-input check: it speaks
ZMTP 3.1 by hand (greeting, READY, frames) and then sends what a msgr-zmq
peer never would."""

from __future__ import annotations

import asyncio
import contextlib
import struct

import pytest
from msgr_zmq import ZmqTransport, parse_address

from msgr_core.testing import NotSupported, TransportHarness, TransportTests

_GREETING = b"\xff" + bytes(7) + b"\x01\x7f" + b"\x03\x01" + b"NULL".ljust(20, b"\x00") + b"\x00" + bytes(31)


def _zmtp_frame(body: bytes, *, more: bool = False, command: bool = False) -> bytes:
    flags = (0x01 if more else 0) | (0x04 if command else 0)
    if len(body) > 255:
        return bytes((flags | 0x02,)) + struct.pack("!Q", len(body)) + body
    return bytes((flags, len(body))) + body


def _zmtp_client(*messages: list[bytes], mechanism: bytes = b"NULL") -> bytes:
    """What a ZMTP 3.1 DEALER sends: greeting, READY, then ``messages``."""
    greeting = _GREETING[:12] + mechanism.ljust(20, b"\x00") + _GREETING[32:]
    ready = b"\x05READY" + b"\x0bSocket-Type" + struct.pack("!I", 6) + b"DEALER"
    out = [greeting, _zmtp_frame(ready, command=True)]
    for msg in messages:
        for i, part in enumerate(msg):
            out.append(_zmtp_frame(part, more=i < len(msg) - 1))
    return b"".join(out)


def _hello(magic: bytes = b"msgr-zmq", version: int = 1, max_bytes: int = 1 << 20) -> bytes:
    return b"H" + struct.pack("!8sBQ", magic, version, max_bytes)


def zmtp_malformed_inputs(max_frame_bytes: int) -> dict[str, bytes]:
    """Raw ZMTP byte streams a msgr-zmq listener must answer by dropping
    the connection (after ending the link, when one was made)."""
    hello = _hello()
    return {
        "a ZMTP greeting with an unknown security mechanism": _zmtp_client(mechanism=b"BOGUS"),
        "a message that is not a hello": _zmtp_client([b"\x01junk"]),
        "a hello with another magic": _zmtp_client([_hello(magic=b"not-msgr")]),
        "a hello of another protocol version": _zmtp_client([_hello(version=99)]),
        "a batch whose table disagrees with its bytes": _zmtp_client(
            [hello], [b"\x01" + struct.pack("!III", 2, 1, 100) + b"short"]
        ),
        "a frame announced over max_frame_bytes": _zmtp_client(
            [hello], [b"\x02" + struct.pack("!II", 1, max_frame_bytes + 1), b"x"]
        ),
        "a frame whose parts disagree with its head": _zmtp_client(
            [hello], [b"\x02" + struct.pack("!III", 2, 3, 3), b"abc", b"de"]
        ),
        "a message with extra parts": _zmtp_client([hello], [b"C", b"extra"]),
        "an unknown message type": _zmtp_client([hello], [b"?"]),
        "an empty message": _zmtp_client([hello], [b""]),
    }


async def zmtp_inject_raw(address: str, data: bytes) -> None:
    """Send ``data`` over a raw connection to a zmq+tcp / zmq+ipc listener;
    return once the listener has closed it."""
    scheme, endpoint, _ = parse_address(address, listen=False)
    if scheme == "zmq+tcp":
        host, _, port = endpoint[len("tcp://") :].rpartition(":")
        reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
    elif scheme == "zmq+ipc":
        reader, writer = await asyncio.open_unix_connection(endpoint[len("ipc://") :])
    else:  # pragma: no cover
        raise NotSupported(f"no raw connection to {address}")
    try:
        # greeting and READY each wait for the listener's, as libzmq expects
        # (it refuses messages before its own side of the handshake is done)
        ready_end = 64 + 2 + data[65]
        writer.write(data[:64])
        await writer.drain()
        await _read_zmtp_step(reader, greeting=True)
        writer.write(data[64:ready_end])
        await writer.drain()
        await _read_zmtp_step(reader, greeting=False)
        writer.write(data[ready_end:])
        await writer.drain()
        while await reader.read(65536):
            pass
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _read_zmtp_step(reader: asyncio.StreamReader, *, greeting: bool) -> None:
    """Read the listener's greeting, or its next command frame.

    :raises asyncio.IncompleteReadError: it closed the connection instead.
    """
    if greeting:
        await reader.readexactly(64)
        return
    flags, size = await reader.readexactly(2)
    if flags & 0x02:
        size = struct.unpack("!Q", bytes((size,)) + await reader.readexactly(7))[0]
    await reader.readexactly(size)


def _harness(address: str) -> TransportHarness:
    return TransportHarness(
        ZmqTransport,
        address,
        inject_raw=zmtp_inject_raw,
        malformed_inputs=zmtp_malformed_inputs,
        timeout=10.0,
    )


class TestZmqTcpConformance(TransportTests):
    @pytest.fixture
    def transport_harness(self) -> TransportHarness:
        return _harness("zmq+tcp://127.0.0.1:0")


class TestZmqIpcConformance(TransportTests):
    @pytest.fixture
    def transport_harness(self) -> TransportHarness:
        return _harness("zmq+ipc://{tmp}/z{n}.sock")


def test_default_harness_addresses_listen() -> None:
    """``ZmqTransport.test_addresses`` are usable listen templates."""
    for scheme, template in ZmqTransport.test_addresses.items():
        assert template.startswith(scheme + "://")
        assert "{tmp}" in template or template.endswith(":0")
