"""Green threads whose failure belongs to whoever waits for them.

An exception that ends an eventlet green thread is also printed by the hub, as a bare
traceback on stderr, even when the thread's waiter catches and handles it: outside the
JSON logs, and alarming for an Apple outage the caller already reports. Here the
thread hands its exception to ``wait()``, which raises it, and the hub prints nothing.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

import eventlet
from eventlet.greenpool import GreenPool
from eventlet.greenthread import GreenThread

T = TypeVar("T")


class _Failed:
    def __init__(self, exc: Exception):
        self.exc = exc


class Pending(Generic[T]):
    """A function running in a green thread."""

    def __init__(self, thread: GreenThread):
        self._thread = thread

    @property
    def dead(self) -> bool:
        return self._thread.dead

    def wait(self) -> T:
        """Its result, or the exception it raised, raised here."""
        outcome = self._thread.wait()
        if isinstance(outcome, _Failed):
            raise outcome.exc
        return outcome

    def kill(self) -> None:
        self._thread.kill()


def spawn(function: Callable[..., T], *args: Any, **kwargs: Any) -> Pending[T]:
    return Pending(eventlet.spawn(_outcome, function, *args, **kwargs))


def imap(function: Callable[[Any], T], items: Iterable[Any], size: int) -> Iterator[T]:
    """``GreenPool(size).imap``: results in order, the first failure raised here when its turn comes."""
    for outcome in GreenPool(size).imap(functools.partial(_outcome, function), items):
        if isinstance(outcome, _Failed):
            raise outcome.exc
        yield outcome


def _outcome(function: Callable[..., T], *args: Any, **kwargs: Any) -> T | _Failed:
    try:
        return function(*args, **kwargs)
    except Exception as exc:
        return _Failed(exc)
