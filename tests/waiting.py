"""One way for a test to wait: poll a condition until it holds, or fail.

Why: a test that sleeps and then asserts passes or fails with the machine's
load, and one that sleeps "long enough" is slow everywhere. Waiting on the
condition itself returns as soon as it holds; the timeout only bounds a
broken run and says what never happened.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float, what: str, poll: float = 0.05) -> T:
    """Return the first truthy value of ``predicate()``; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)
