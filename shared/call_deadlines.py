"""When an RPC's caller stops waiting, sent with the request.

RabbitMQ withdraws a request still queued when its caller gives up (the publish's
expiration). A request a replica has already taken may wait there for a free
worker, since Nameko's pool is shared with timers and event handlers; the deadline
lets that replica see that nobody awaits the answer any more and not run the call,
whose caller was told it failed and may have tried again.

The deadline is the caller's clock, compared with the replica's: hosts are expected
to keep time (NTP), which puts their difference far below any RPC timeout.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, NoReturn

from nameko.extensions import DependencyProvider
from nameko.rpc import MethodProxy, Rpc

from shared import errors, metrics

log = logging.getLogger(__name__)

# a context key travels as a ``nameko.``-prefixed header and arrives in the worker's context
DEADLINE_KEY = "call_deadline"


def deadline_after(timeout: float) -> dict[str, float]:
    """Context data saying that the caller waits ``timeout`` seconds from now."""
    return {DEADLINE_KEY: time.time() + timeout}


class DeadlineMethodProxy(MethodProxy):
    """Nameko's method proxy, stamping each request with when its caller stops waiting.

    The stamp replaces any deadline the calling worker received: each call has its own.
    """

    def __init__(self, *args: Any, timeout: float, **options: Any):
        super().__init__(*args, **options)
        self._timeout = timeout

    def get_message_headers(self, worker_ctx: Any) -> dict[str, Any]:
        headers = super().get_message_headers(worker_ctx)
        headers.update({self._get_header_name(key): value for key, value in deadline_after(self._timeout).items()})
        return headers


class CallerDeadline(DependencyProvider):
    """Does not run an RPC whose caller had stopped waiting by the time a worker took it up."""

    def setup(self) -> None:
        # each method's count exists from the start, at zero: Prometheus's increase() takes a series' first value
        # as its start, so the first calls abandoned would not count
        for entrypoint in self.container.entrypoints:
            if isinstance(entrypoint, Rpc):
                metrics.RPC_CALLS_ABANDONED.labels(self.container.service_name, entrypoint.method_name)

    def worker_setup(self, worker_ctx: Any) -> None:
        deadline = _seconds(worker_ctx.data.pop(DEADLINE_KEY, None))  # popped: not passed on to calls it makes
        if deadline is None or not isinstance(worker_ctx.entrypoint, Rpc):
            return
        late = time.time() - deadline
        if late <= 0:
            return
        service, method = self.container.service_name, worker_ctx.entrypoint.method_name
        metrics.RPC_CALLS_ABANDONED.labels(service, method).inc()
        worker_ctx.data[metrics.ABANDONED] = True
        log.warning("%s.%s was not run: its caller had stopped waiting %.1f s before a worker was free",
                    service, method, late)
        # the worker's own service instance: Nameko looks the method up on it after this setup
        setattr(worker_ctx.service, method, _not_run(method, late))


def _not_run(method: str, late: float) -> Callable[..., NoReturn]:
    """What runs instead of ``method``, whatever arguments it is given."""
    def refuse(*args: Any, **kwargs: Any) -> NoReturn:
        raise errors.UpstreamError(f"{method} was not run: its caller had stopped waiting {late:.1f} s before")
    return refuse


def _seconds(value: Any) -> float | None:
    """A deadline as sent, or None for one missing or unreadable (the call then runs)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) else None
