"""The pytest side of the conformance kit, run in pytester sessions:
``TransportTests`` subclasses, the ``--msgr-transport`` plugin option and
``msgr_core.testing.suite``.

The transports under test are the in-memory ones of
``test_kit_memtransport.py``, copied in as the module ``kit_memtransport``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from msgr_core.testing.transport_tests import no_stray_event_loop

_MEMTRANSPORT = (Path(__file__).parent / "test_kit_memtransport.py").read_text()

_INI = """
[pytest]
addopts = -p no:cacheprovider -p no:hypothesispytest -ra
filterwarnings = error
asyncio_default_fixture_loop_scope = function
"""

_HARNESS_CLASS = """
import pytest
import kit_memtransport as mem
from msgr_core.testing import TransportHarness, TransportTests

class TestMem(TransportTests):
    @pytest.fixture
    def transport_harness(self):
        return TransportHarness(
            mem.{cls}, "mem://kit{{n}}", any_port_address="mem://",
            inject_raw=mem.mem_inject_raw, timeout={timeout},
        )
"""


@pytest.fixture(autouse=True)
def _no_stray_event_loop() -> Iterator[None]:
    # These tests are sync; see no_stray_event_loop for why this matters.
    with no_stray_event_loop():
        yield


@pytest.fixture
def kit(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytester directory holding ``kit_memtransport`` and a strict ini."""
    pytester.makeini(_INI)
    pytester.makepyfile(kit_memtransport=_MEMTRANSPORT)
    pytester.syspathinsert()
    return pytester


def test_kit_plugin_is_loaded(kit: pytest.Pytester) -> None:
    result = kit.runpytest_inprocess("--help")
    result.stdout.fnmatch_lines(["*--msgr-transport=SCHEME*", "*--msgr-listen=ADDRESS*"])


def test_kit_good_transport_passes_the_suite(kit: pytest.Pytester) -> None:
    kit.makepyfile(test_mem=_HARNESS_CLASS.format(cls="MemTransport", timeout=30))
    result = kit.runpytest_inprocess()
    # The messenger check needs the transport installed under its scheme.
    result.assert_outcomes(passed=19, skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED*the messenger finds transports by entry point*"])


def test_kit_class_attributes_are_enough_and_gaps_skip_with_reasons(kit: pytest.Pytester) -> None:
    kit.makepyfile(
        test_mem="""
        from kit_memtransport import MemTransport
        from msgr_core.testing import TransportTests

        class TestMem(TransportTests):
            transport_class = MemTransport
            listen_address = "mem://kit{n}"
        """
    )
    result = kit.runpytest_inprocess()
    result.assert_outcomes(passed=17, skipped=3)
    result.stdout.fnmatch_lines_random(
        [
            "SKIPPED*no any-port address*",
            "SKIPPED*no inject_raw capability*",
            "SKIPPED*messenger*",
        ]
    )


def test_kit_base_class_alone_collects_nothing(kit: pytest.Pytester) -> None:
    kit.makepyfile(test_mem="from msgr_core.testing import TransportTests  # noqa: F401\n")
    result = kit.runpytest_inprocess()
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED


def test_kit_subclass_without_a_transport_fails_clearly(kit: pytest.Pytester) -> None:
    kit.makepyfile(
        test_mem="""
        from msgr_core.testing import TransportTests

        class TestNothing(TransportTests):
            pass
        """
    )
    result = kit.runpytest_inprocess("-k", "test_listen_connect")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*set transport_class and listen_address, or scheme*"])


@pytest.mark.parametrize(
    ("cls", "test", "message"),
    [
        ("ReorderingTransport", "test_ordered_delivery", "*frames must arrive in the order sent*"),
        ("BoundaryDroppingTransport", "test_multi_buffer", "*buffer boundaries must be kept*"),
        ("SilentTransport", "test_close", "*timed out*waiting for*link_lost*"),
        ("OversizeAcceptingTransport", "test_frame_size_limit", "*it must raise FrameTooLarge*"),
        ("BufferReusingTransport", "test_received_buffers_owned", "*belong to the*receiver*"),
    ],
)
def test_kit_broken_transport_fails_the_right_test(kit: pytest.Pytester, cls: str, test: str, message: str) -> None:
    timeout = 1 if cls == "SilentTransport" else 30  # its failure is an endless wait
    kit.makepyfile(test_mem=_HARNESS_CLASS.format(cls=cls, timeout=timeout))
    result = kit.runpytest_inprocess(f"test_mem.py::TestMem::{test}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines_random([f"FAILED*::TestMem::{test}*", message])


def _install_mem_entry_point(pytester: pytest.Pytester) -> None:
    """A fake installed distribution serving ``mem`` (a .dist-info on sys.path)."""
    info = pytester.mkdir("kit_memtransport-0.1.dist-info")
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kit-memtransport\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[msgr.transports]\nmem = kit_memtransport\n")


def test_kit_suite_runs_against_an_installed_transport_by_scheme(kit: pytest.Pytester) -> None:
    _install_mem_entry_point(kit)
    result = kit.runpytest_inprocess(
        "--pyargs",
        "msgr_core.testing.suite",
        "--msgr-transport=mem",
        "--msgr-listen=mem://kit{n}",
        "-k",
        "not messenger",
    )
    result.assert_outcomes(passed=17, skipped=2, deselected=1)
    result.stdout.fnmatch_lines_random(["SKIPPED*no any-port address*", "SKIPPED*no inject_raw*"])


def test_kit_messenger_check_runs_over_an_installed_transport(kit: pytest.Pytester) -> None:
    _install_mem_entry_point(kit)
    result = kit.runpytest_inprocess(
        "--pyargs",
        "msgr_core.testing.suite",
        "--msgr-transport=mem",
        "--msgr-listen=mem://kit{n}",
        "-k",
        "messenger",
    )
    result.assert_outcomes(passed=1, deselected=19)


def test_kit_suite_without_a_transport_is_a_usage_error(kit: pytest.Pytester) -> None:
    _install_mem_entry_point(kit)
    result = kit.runpytest_inprocess("--pyargs", "msgr_core.testing.suite")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*msgr_core.testing.suite needs --msgr-transport=SCHEME*installed:*mem*"])


def test_kit_suite_with_an_unknown_scheme_is_a_usage_error(kit: pytest.Pytester) -> None:
    result = kit.runpytest_inprocess("--pyargs", "msgr_core.testing.suite", "--msgr-transport=nope")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--msgr-transport=nope: unknown transport 'nope' (installed:*"])
