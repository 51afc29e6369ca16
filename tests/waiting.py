"""Waiting for asynchronous outcomes by watching real state, with a deadline."""
import time
from typing import Callable, TypeVar

import eventlet

T = TypeVar("T")


def wait_for(check: Callable[[], T], timeout: float = 30, interval: float = 0.05, what: str = "condition") -> T:
    """Call ``check`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last value: {result!r})")
        eventlet.sleep(interval)
