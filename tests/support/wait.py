"""Waiting for a condition instead of sleeping for a fixed time.

A test that sleeps "long enough" is slow when the machine is idle and flaky when it is
loaded (CI has two cores and runs servers beside the tests). These helpers poll a
predicate until it holds and fail the test, naming what was awaited, when the deadline
passes. Deadlines are generous because a passing test returns as soon as the condition
holds; only a failing one waits the whole time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

DEFAULT_TIMEOUT = 20.0


def wait_until(predicate: Callable[[], object], *, timeout: float = DEFAULT_TIMEOUT,
               interval: float = 0.02, what: str = "condition") -> None:
    """Poll ``predicate`` (in this thread) until it is true; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


async def async_wait_until(predicate: Callable[[], object | Awaitable[object]], *,
                           timeout: float = DEFAULT_TIMEOUT, interval: float = 0.02,
                           what: str = "condition") -> None:
    """Like ``wait_until`` inside a running event loop: the loop keeps serving while we
    wait. ``predicate`` may be a plain function or return an awaitable."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)
