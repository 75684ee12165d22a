"""Repository-wide pytest setup (every distribution's tests run under it)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Generator
from typing import Any

import pytest


def _current_loop(policy: Any) -> Any:
    return getattr(getattr(policy, "_local", None), "_loop", None)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, Any, Any]:
    """Close the event loop that looptime's ``pytest_pyfunc_call`` creates
    (through ``policy.get_event_loop()``) around a *synchronous* test: nobody
    closes it, and with warnings as errors its ``ResourceWarning`` later
    fails an unrelated test.  Only a loop that appeared during the call is
    closed; pytest-asyncio's own loops are left alone."""
    sync = not inspect.iscoroutinefunction(pyfuncitem.obj)
    policy = pyfuncitem.funcargs.get("event_loop_policy") or asyncio.get_event_loop_policy()
    before = _current_loop(policy)
    try:
        return (yield)
    finally:
        loop = _current_loop(policy)
        if sync and loop is not None and loop is not before and not loop.is_running() and not loop.is_closed():
            loop.close()
            policy.set_event_loop(before)
