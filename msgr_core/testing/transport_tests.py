"""``TransportTests``: the conformance suite as a pytest base class.

Subclass it in your transport's tests; pytest collects the subclass (its
name starts with ``Test``) and never the base.  Either name the transport
with class attributes::

    from msgr_core.testing import TransportTests

    class TestMyTransport(TransportTests):
        transport_class = MyTransport          # or: scheme = "my" (installed plugin)
        listen_address = "my://127.0.0.1:0"    # optional for installed schemes

or override the ``transport_harness`` fixture to give capabilities::

    class TestMyTransport(TransportTests):
        @pytest.fixture
        def transport_harness(self):
            return TransportHarness(MyTransport, "my://127.0.0.1:0", inject_raw=stream_inject_raw)

Each test runs one :mod:`~msgr_core.testing.checks` coroutine in a fresh
event loop (``harness.loop_factory``), so the suite needs no async pytest
plugin.  A check the harness cannot run is skipped with the reason.
Override a single ``test_*`` method to adapt or mark it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import ClassVar

import pytest

from ..transport import Transport, TransportOptions
from . import checks
from .harness import NotSupported, TransportHarness, harness_for_scheme, kit_options

__all__ = ["TransportTests"]


@contextlib.contextmanager
def no_stray_event_loop() -> Iterator[None]:
    """Make sure no event loop is created behind a sync test and left unclosed.

    Some plugins (looptime 0.9) ask the event loop policy for a loop around
    every test, sync ones too; with none set, the policy makes one that
    nobody closes, and its ResourceWarning, whenever the garbage collector
    finds it, fails an unrelated test under ``filterwarnings = error``.  So
    when no loop is set, set one for the test and close it afterwards.
    """
    policy = asyncio.get_event_loop_policy()
    local = getattr(policy, "_local", None)  # asyncio's default policies
    if local is None or getattr(local, "_loop", None) is not None:
        yield
        return
    loop = policy.new_event_loop()
    policy.set_event_loop(loop)
    try:
        yield
    finally:
        if getattr(local, "_loop", None) is loop:
            policy.set_event_loop(None)
        loop.close()


def _run(check: checks.Check, harness: TransportHarness) -> None:
    __tracebackhide__ = True
    try:
        checks.run_check(check, harness)
    except NotSupported as exc:
        skip, fail = exc.reason, ""
    except checks.ConformanceError as exc:
        # The message is the report; a traceback into the kit is noise.
        skip, fail = "", "\n".join([f"{check.__name__}: {exc}", *getattr(exc, "__notes__", ())])
    else:
        return
    if fail:
        pytest.fail(fail, pytrace=False)
    pytest.skip(skip)


class TransportTests:
    """The transport conformance suite; see the module docstring.

    :cvar transport_class: the transport under test, or ``None`` to look it
        up by :attr:`scheme` among the installed plugins.
    :cvar scheme: the scheme under test (with :attr:`transport_class`,
        defaults to the listen address's).
    :cvar listen_address: listen address template (``{n}``, ``{tmp}``).
    :cvar options: transport options (default :func:`~msgr_core.testing.kit_options`).
    """

    transport_class: ClassVar[type[Transport] | None] = None
    scheme: ClassVar[str] = ""
    listen_address: ClassVar[str | None] = None
    options: ClassVar[TransportOptions | None] = None

    @pytest.fixture(autouse=True)
    def _msgr_no_stray_event_loop(self) -> Iterator[None]:
        with no_stray_event_loop():
            yield

    @pytest.fixture
    def transport_harness(self) -> TransportHarness:
        """The harness every test gets; override for capabilities."""
        options = self.options or kit_options()
        if self.transport_class is not None:
            if not self.listen_address:
                pytest.fail(f"{type(self).__name__}: set listen_address (or override transport_harness)")
            return TransportHarness(self.transport_class, self.listen_address, options=options, scheme=self.scheme)
        if not self.scheme:
            pytest.fail(
                f"{type(self).__name__}: set transport_class and listen_address, or scheme, "
                "or override the transport_harness fixture",
                pytrace=False,
            )
        harness = harness_for_scheme(self.scheme, self.listen_address)
        harness.options = options
        return harness

    def test_listen_connect(self, transport_harness: TransportHarness) -> None:
        _run(checks.check_listen_connect, transport_harness)

    def test_any_port(self, transport_harness: TransportHarness) -> None:
        _run(checks.check_any_port, transport_harness)

    def test_link_made_first(self, transport_harness: TransportHarness) -> None:
        _run(checks.check_link_made_first, transport_harness)

    def test_multi_buffer(self, transport_harness: TransportHarness) -> None:
        _run(checks.check_multi_buffer, transport_harness)

    def test_ordered_delivery(self, transport_harness: TransportHarness) -> None:
        _run(checks.check_ordered_delivery, transport_harness)

    def test_bidirectional(self, transport_harness: TransportHarness) -> None:
        _run(checks.check_bidirectional, transport_harness)

    def test_frame_size_limit(self, transport_harness: TransportHarness) -> None:
        _run(checks.check_frame_size_limit, transport_harness)

    def test_oversize_received(self, transport_harness: TransportHarness) -> None:
        _run(checks.check_oversize_received, transport_harness)

    def test_received_buffers_owned(self, transport_harness: TransportHarness) -> None:
        _run(checks.check_received_buffers_owned, transport_harness)

    def test_many_links(self, transport_harness: TransportHarness) -> None:
        _run(checks.check_many_links, transport_harness)

    def test_close(self, transport_harness: TransportHarness) -> None:
        _run(checks.check_close, transport_harness)

    def test_close_from_callback(self, transport_harness: TransportHarness) -> None:
        _run(checks.check_close_from_callback, transport_harness)

    def test_send_after_close(self, transport_harness: TransportHarness) -> None:
        _run(checks.check_send_after_close, transport_harness)

    def test_break_detection(self, transport_harness: TransportHarness) -> None:
        _run(checks.check_break_detection, transport_harness)

    def test_listener_close(self, transport_harness: TransportHarness) -> None:
        _run(checks.check_listener_close, transport_harness)

    def test_dead_address(self, transport_harness: TransportHarness) -> None:
        _run(checks.check_dead_address, transport_harness)

    def test_bad_address(self, transport_harness: TransportHarness) -> None:
        _run(checks.check_bad_address, transport_harness)

    def test_backpressure(self, transport_harness: TransportHarness) -> None:
        _run(checks.check_backpressure, transport_harness)

    def test_malformed_input(self, transport_harness: TransportHarness) -> None:
        _run(checks.check_malformed_input, transport_harness)

    def test_messenger_roundtrip(self, transport_harness: TransportHarness) -> None:
        _run(checks.check_messenger_roundtrip, transport_harness)
