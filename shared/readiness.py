"""``/ready``, beside ``/metrics``: can this process serve now? For Kubernetes' readinessProbe.

Each running service in the process is ready when its own database answers and its broker
accepts a connection from here. The service's ``health`` RPC cannot tell that: whichever
replica takes the message answers it, so one pod would pass its probe on another's health.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from kombu import Connection
from nameko.constants import AMQP_URI_CONFIG_KEY

log = logging.getLogger(__name__)

BROKER_TIMEOUT_SECONDS = 5

_checks: dict[int, Callable[[], list[str]]] = {}
_lock = threading.Lock()


def watch(container: Any) -> None:
    """Count ``container`` in the process's readiness until ``forget``."""
    with _lock:
        _checks[id(container)] = lambda: _problems_of(container)


def forget(container: Any) -> None:
    with _lock:
        _checks.pop(id(container), None)


def problems() -> list[str]:
    """What keeps this process from serving; empty when it is ready."""
    with _lock:
        checks = list(_checks.values())
    if not checks:
        return ["no service is running in this process"]
    return [problem for check in checks for problem in check()]


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """A WSGI app: 200 when ready, 503 naming what is not (the details go to the log, not to the prober)."""
    found = problems()
    start_response("503 Service Unavailable" if found else "200 OK", [("Content-Type", "text/plain; charset=utf-8")])
    return ["".join(f"{problem}\n" for problem in found).encode() or b"ready\n"]


def _problems_of(container: Any) -> list[str]:
    from shared.storage import Database

    service = container.service_name
    found = []
    database = next((d for d in container.dependencies if isinstance(d, Database)), None)
    if database is not None:
        try:
            with database.engine.connect() as connection:
                connection.execute(sa.text("SELECT 1"))
        except Exception:
            log.warning("%s is not ready: its database does not answer", service, exc_info=True)
            found.append(f"{service}: its database does not answer")
    try:
        with Connection(container.config[AMQP_URI_CONFIG_KEY], connect_timeout=BROKER_TIMEOUT_SECONDS) as broker:
            broker.ensure_connection(max_retries=1)
    except Exception:
        log.warning("%s is not ready: RabbitMQ does not accept a connection", service, exc_info=True)
        found.append(f"{service}: RabbitMQ does not accept a connection")
    return found
