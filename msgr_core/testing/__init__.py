"""The transport conformance kit: the executable form of :mod:`msgr_core.transport`.

Three ways to use it.

Run the whole suite against an installed transport, by scheme::

    pytest --pyargs msgr_core.testing.suite --msgr-transport=tcp

Subclass :class:`TransportTests` in your plugin's tests (pytest collects the
subclass, never the base)::

    from msgr_core.testing import TransportHarness, TransportTests, stream_inject_raw

    class TestMyTransport(TransportTests):
        transport_class = MyTransport
        listen_address = "my://127.0.0.1:0"

        # optional: capabilities (raw injection, pause_reading, ...)
        @pytest.fixture
        def transport_harness(self):
            return TransportHarness(MyTransport, "my://127.0.0.1:0", inject_raw=stream_inject_raw)

Or call the plain ``check_*`` coroutines anywhere (no pytest needed)::

    await check_ordered_delivery(TransportHarness(MyTransport, "my://127.0.0.1:0"))

A failed check raises :class:`ConformanceError` (an ``AssertionError``)
saying what the contract wanted and what happened; a check the harness
cannot run raises :class:`NotSupported` with the reason (a skip in pytest).
:data:`ALL_CHECKS` lists every check.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .checks import (
    ALL_CHECKS,
    ConformanceError,
    RecordingHandler,
    check_any_port,
    check_backpressure,
    check_bad_address,
    check_bidirectional,
    check_break_detection,
    check_close,
    check_close_from_callback,
    check_dead_address,
    check_frame_size_limit,
    check_link_made_first,
    check_listen_connect,
    check_listener_close,
    check_malformed_input,
    check_many_links,
    check_messenger_roundtrip,
    check_multi_buffer,
    check_ordered_delivery,
    check_oversize_received,
    check_received_buffers_owned,
    check_send_after_close,
    run_check,
)
from .harness import (
    NotSupported,
    TransportHarness,
    harness_for_scheme,
    kit_options,
    stream_inject_raw,
    stream_malformed_inputs,
)

if TYPE_CHECKING:
    from .transport_tests import TransportTests

__all__ = [
    "ALL_CHECKS",
    "ConformanceError",
    "NotSupported",
    "RecordingHandler",
    "TransportHarness",
    "TransportTests",
    "check_any_port",
    "check_backpressure",
    "check_bad_address",
    "check_bidirectional",
    "check_break_detection",
    "check_close",
    "check_close_from_callback",
    "check_dead_address",
    "check_frame_size_limit",
    "check_link_made_first",
    "check_listen_connect",
    "check_listener_close",
    "check_malformed_input",
    "check_many_links",
    "check_messenger_roundtrip",
    "check_multi_buffer",
    "check_ordered_delivery",
    "check_oversize_received",
    "check_received_buffers_owned",
    "check_send_after_close",
    "harness_for_scheme",
    "kit_options",
    "run_check",
    "stream_inject_raw",
    "stream_malformed_inputs",
]


def __getattr__(name: str) -> Any:
    # TransportTests needs pytest; the checks do not.
    if name == "TransportTests":
        from .transport_tests import TransportTests

        return TransportTests
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
