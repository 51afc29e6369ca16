"""How long to wait before trying again something that keeps failing (a mail relay, Apple)."""
from __future__ import annotations

from datetime import timedelta


def doubling_delay(failures: int, first: timedelta = timedelta(seconds=30),
                   longest: timedelta = timedelta(hours=1)) -> timedelta:
    """After ``failures`` failures in a row: ``first``, twice as long after each further failure, at most
    ``longest``."""
    doublings = min(max(failures, 0), 40)  # past that any delay is the longest, and timedelta would overflow
    return min(first * 2 ** doublings, longest)
