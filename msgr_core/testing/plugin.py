"""The msgr pytest plugin (entry point ``pytest11``: ``msgr``).

Loaded automatically wherever ``msgr-core`` is installed.  It adds:

``--msgr-transport=SCHEME``
    the installed transport the conformance suite runs against::

        pytest --pyargs msgr_core.testing.suite --msgr-transport=tcp

``--msgr-loop=asyncio|uvloop``
    the event loop the checks run on.

``--msgr-listen=ADDRESS``
    the listen address template for it (``{n}``: a counter, ``{tmp}``: a
    temporary directory), when the default for the scheme does not fit.

and the fixture ``msgr_transport_harness``: the
:class:`~msgr_core.testing.TransportHarness` those options describe.

Collecting :mod:`msgr_core.testing.suite` without ``--msgr-transport`` is a
usage error (exit status 4), not a run that silently passes; so is naming
a scheme no installed plugin serves.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .harness import TransportHarness

_SUITE_MODULE = "msgr_core.testing.suite"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("msgr", "msgr transport conformance kit")
    group.addoption(
        "--msgr-transport",
        metavar="SCHEME",
        default=None,
        help="run msgr_core.testing.suite against the installed transport serving SCHEME",
    )
    group.addoption(
        "--msgr-loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="event loop the conformance checks run on (default: asyncio)",
    )
    group.addoption(
        "--msgr-listen",
        metavar="ADDRESS",
        default=None,
        help="listen address template for --msgr-transport ({n}: counter, {tmp}: temp dir)",
    )


def _installed_schemes() -> list[str]:
    from importlib.metadata import entry_points

    return sorted({ep.name for ep in entry_points(group="msgr.transports")})


def _harness_from_options(config: pytest.Config) -> TransportHarness:
    from ..errors import PluginError
    from .harness import harness_for_scheme

    scheme = config.getoption("msgr_transport")
    if not scheme:
        have = ", ".join(_installed_schemes()) or "none"
        raise pytest.UsageError(
            f"{_SUITE_MODULE} needs --msgr-transport=SCHEME to know which transport to test (installed: {have})"
        )
    try:
        harness = harness_for_scheme(scheme, config.getoption("msgr_listen"))
    except (PluginError, ValueError) as exc:
        raise pytest.UsageError(f"--msgr-transport={scheme}: {exc}") from None
    if config.getoption("msgr_loop") == "uvloop":
        try:
            import uvloop
        except ImportError:
            raise pytest.UsageError("--msgr-loop=uvloop: uvloop is not installed") from None
        harness.loop_factory = uvloop.new_event_loop
    return harness


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Fail fast and clearly: the whole suite would be meaningless.
    for item in items:
        module = getattr(item, "module", None)
        if module is not None and module.__name__ == _SUITE_MODULE:
            config.stash[_HARNESS_KEY] = _harness_from_options(config)
            return


_HARNESS_KEY = pytest.StashKey["TransportHarness"]()


@pytest.fixture
def msgr_transport_harness(pytestconfig: pytest.Config) -> TransportHarness:
    """The harness for ``--msgr-transport`` / ``--msgr-listen``.

    A fresh harness per test; without ``--msgr-transport`` the test errors
    with a usage message.
    """
    cached = pytestconfig.stash.get(_HARNESS_KEY, None)
    if cached is None:
        try:
            cached = _harness_from_options(pytestconfig)
        except pytest.UsageError as exc:
            pytest.fail(str(exc), pytrace=False)
        pytestconfig.stash[_HARNESS_KEY] = cached
    # A copy: its own address counter and temporary directory.
    return dataclasses.replace(cached)
