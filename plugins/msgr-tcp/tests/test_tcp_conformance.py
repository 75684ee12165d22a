"""The transport conformance kit (msgr_core.testing) run against tcp:// and unix://,
on asyncio's default loop and on uvloop."""

from __future__ import annotations

import asyncio

import pytest
from msgr_tcp import TcpTransport

from msgr_core.testing import TransportHarness, TransportTests, stream_inject_raw

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is optional
    uvloop = None

_needs_uvloop = pytest.mark.skipif(uvloop is None, reason="uvloop is not installed")


def _harness(address: str, loop_factory: object = None) -> TransportHarness:
    # pause_reading / resume_reading: StreamLink's own methods (the default)
    return TransportHarness(
        TcpTransport,
        address,
        inject_raw=stream_inject_raw,
        loop_factory=loop_factory,  # type: ignore[arg-type]
    )


class TestTcpConformance(TransportTests):
    """Every check of the kit over tcp://127.0.0.1, default asyncio loop."""

    @pytest.fixture
    def transport_harness(self) -> TransportHarness:
        return _harness("tcp://127.0.0.1:0", asyncio.SelectorEventLoop)


class TestUnixConformance(TransportTests):
    """Every check over unix:// sockets, default asyncio loop (no port 0 here)."""

    @pytest.fixture
    def transport_harness(self) -> TransportHarness:
        return _harness("unix://{tmp}/s{n}.sock", asyncio.SelectorEventLoop)


@_needs_uvloop
class TestTcpConformanceUvloop(TransportTests):
    """Every check over tcp://127.0.0.1 on uvloop."""

    @pytest.fixture
    def transport_harness(self) -> TransportHarness:
        return _harness("tcp://127.0.0.1:0", uvloop.new_event_loop if uvloop else None)


@_needs_uvloop
class TestUnixConformanceUvloop(TransportTests):
    """Every check over unix:// sockets on uvloop."""

    @pytest.fixture
    def transport_harness(self) -> TransportHarness:
        return _harness("unix://{tmp}/s{n}.sock", uvloop.new_event_loop if uvloop else None)
