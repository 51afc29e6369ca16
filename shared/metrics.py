"""Prometheus metrics every Orchard service exports, and the endpoint that serves them.

Generic metrics carry a ``service`` label so one dashboard covers every service;
metrics a single service defines use the prefix ``orchard_<service>_``. The
``/metrics`` endpoint runs on its own port (``SERVICES.<name>.metrics_port``),
outside the worker pool, so it keeps answering when every worker is busy; ``/ready``
(``shared.readiness``) answers there too.
"""
from __future__ import annotations

import logging
import threading
import time
from socketserver import ThreadingMixIn
from importlib import metadata
from typing import Any, Callable, Iterable, Iterator
from weakref import WeakKeyDictionary
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from nameko.events import EventHandler
from nameko.extensions import DependencyProvider
from nameko.rpc import Rpc
from nameko.timer import Timer
from nameko.web.handlers import HttpRequestHandler
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, disable_created_metrics, make_wsgi_app
from prometheus_client.metrics_core import Metric
from sqlalchemy.engine import Engine

from shared import readiness
from shared.config import service_settings
from shared.errors import EXPECTED_ERRORS

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

ENTRYPOINT_CALLS = Counter(
    "orchard_entrypoint_calls",
    "Entrypoint calls by outcome (success, expected_error, error; abandoned: not run, its caller had given up).",
    ["service", "entrypoint", "kind", "outcome"],
)
ENTRYPOINT_DURATION = Histogram(
    "orchard_entrypoint_duration_seconds", "Time spent in an entrypoint.",
    ["service", "entrypoint", "kind"], buckets=LATENCY_BUCKETS,
)
RPC_CALLS_ABANDONED = Counter(
    "orchard_rpc_calls_abandoned",
    "RPC requests not run because their caller had stopped waiting before a worker was free (a sign of overload).",
    ["service", "method"],
)
WORKERS_IN_FLIGHT = Gauge("orchard_workers_in_flight", "Workers running now.", ["service"])
MAX_WORKERS = Gauge("orchard_max_workers", "Configured worker pool size.", ["service"])
SERVICE_INFO = Gauge("orchard_service_info", "Always 1; labels say which service and version run.", ["service", "version"])
EVENTS_PUBLISHED = Counter("orchard_events_published", "Events published from the outbox.", ["service", "event_type"])
OUTBOX_PENDING = Gauge("orchard_outbox_pending_events", "Events committed but not yet published.", ["service"])
EVENTS_DUPLICATE = Counter(
    "orchard_events_duplicate", "Redelivered events skipped because they were already handled.", ["service", "handler"],
)
EVENTS_RETRIED = Counter("orchard_events_retried", "Failed event deliveries scheduled for another attempt.", ["service", "handler"])
DEAD_LETTERS = Counter("orchard_dead_letters", "Events moved to a dead-letter queue.", ["service", "handler"])
SCHEDULED_RUNS = Counter(
    "orchard_scheduled_runs",
    "Scheduled job ticks by result (ran; skipped: another replica holds the lease; failed: the database was away).",
    ["service", "job", "result"],
)

_servers: dict[int, Any] = {}

disable_created_metrics()  # the _created series only add noise to dashboards


def orchard_version() -> str:
    try:
        return metadata.version("orchard")
    except metadata.PackageNotFoundError:
        return "0+unknown"


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # a scrape every 15 s is no news
        pass


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def serve_metrics(port: int, host: str = "0.0.0.0") -> None:
    """Start the /metrics and /ready endpoints once per process and port."""
    if port in _servers:
        return
    metrics_app = make_wsgi_app()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        return (readiness.app if environ.get("PATH_INFO") == "/ready" else metrics_app)(environ, start_response)

    server = make_server(host, port, app, _ThreadingServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name=f"metrics:{port}", daemon=True).start()
    _servers[port] = server


def entrypoint_kind(entrypoint: Any) -> str:
    if isinstance(entrypoint, Rpc):
        return "rpc"
    if isinstance(entrypoint, EventHandler):
        return "event"
    if isinstance(entrypoint, Timer):
        return "timer"
    if isinstance(entrypoint, HttpRequestHandler):
        return "http"
    return "other"


# set in a worker's context data for an RPC not run because its caller had given up (``shared.call_deadlines``)
ABANDONED = "orchard_abandoned"


def outcome_of(exc_info: Any) -> str:
    if exc_info is None:
        return "success"
    return "expected_error" if isinstance(exc_info[1], EXPECTED_ERRORS) else "error"


class Metrics(DependencyProvider):
    """Times and counts every entrypoint of the service and serves ``/metrics``."""

    def setup(self) -> None:
        self.service = self.container.service_name
        self.started: WeakKeyDictionary = WeakKeyDictionary()
        settings = service_settings(self.container.config, self.service)
        port = settings.get("metrics_port")
        if port is not None:
            serve_metrics(int(port))
        SERVICE_INFO.labels(self.service, orchard_version()).set(1)
        MAX_WORKERS.labels(self.service).set(int(self.container.config.get("max_workers", 10)))

    def start(self) -> None:
        readiness.watch(self.container)

    def stop(self) -> None:
        readiness.forget(self.container)

    kill = stop

    def worker_setup(self, worker_ctx: Any) -> None:
        self.started[worker_ctx] = time.perf_counter()
        WORKERS_IN_FLIGHT.labels(self.service).inc()

    def worker_result(self, worker_ctx: Any, result: Any = None, exc_info: Any = None) -> None:
        started = self.started.pop(worker_ctx, None)
        WORKERS_IN_FLIGHT.labels(self.service).dec()
        entrypoint = worker_ctx.entrypoint
        kind = entrypoint_kind(entrypoint)
        name = entrypoint.method_name
        if worker_ctx.data.get(ABANDONED):  # not run: no duration of the method's to observe
            ENTRYPOINT_CALLS.labels(self.service, name, kind, "abandoned").inc()
            return
        ENTRYPOINT_CALLS.labels(self.service, name, kind, outcome_of(exc_info)).inc()
        if started is not None:
            ENTRYPOINT_DURATION.labels(self.service, name, kind).observe(time.perf_counter() - started)


class DatabaseGauges:
    """Gauges read from a service's database when Prometheus scrapes.

    Values such as certificate expiries or devices per topic must be the same on
    every replica and current at each scrape, so they are read from the database
    rather than kept in memory. One collector per process and kind of gauge;
    every running container of the service attaches its engine (tests run several
    in one process). ``read(engine)`` yields the metric families; a source that
    fails is logged and skipped, because a raising collector would truncate the
    whole ``/metrics`` page.
    """

    def __init__(self, name: str, read: Callable[[Engine], Iterable[Metric]]):
        self.name = name
        self.read = read
        self._engines: dict[int, Engine] = {}
        self._lock = threading.Lock()
        REGISTRY.register(self)

    def attach(self, key: int, engine: Engine) -> None:
        with self._lock:
            self._engines[key] = engine

    def detach(self, key: int) -> None:
        with self._lock:
            self._engines.pop(key, None)

    def describe(self) -> list[Metric]:
        return []  # nothing to describe until a service attaches its database

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            engines = list(self._engines.values())
        merged: dict[str, Metric] = {}
        for engine in engines:
            try:
                families = list(self.read(engine))
            except Exception:
                log.warning("could not read %s for metrics", self.name, exc_info=True)
                continue
            for family in families:
                if family.name in merged:
                    merged[family.name].samples.extend(family.samples)
                else:
                    merged[family.name] = family
        yield from merged.values()


class GaugesFromDatabase(DependencyProvider):
    """Attaches the service's database to a ``DatabaseGauges`` collector while the service runs."""

    def __init__(self, gauges: DatabaseGauges):
        self.gauges = gauges

    def start(self) -> None:
        from shared.storage import Database

        database = next(d for d in self.container.dependencies if isinstance(d, Database))
        self.gauges.attach(id(self), database.engine)

    def stop(self) -> None:
        self.gauges.detach(id(self))

    kill = stop
