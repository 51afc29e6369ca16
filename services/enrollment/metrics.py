"""The enrollment service's metrics. State gauges are read from the database at scrape time,
so every replica reports the same."""
from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from nameko.extensions import DependencyProvider
from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from services.enrollment.adapters.assignments import AssignmentRepository
from services.enrollment.adapters.tables import dep_devices, server_tokens
from services.enrollment.domain.server_tokens import STATUSES, token_status
from shared.storage import Database, utc_now

log = logging.getLogger(__name__)

APPLE_CALLS = Counter(
    "orchard_enrollment_apple_calls", "Device Assignment API responses by endpoint and HTTP status (0 = no answer).",
    ["endpoint", "status"])
SYNC_DURATION = Histogram(
    "orchard_enrollment_sync_duration_seconds", "Duration of ADE device syncs by kind and outcome.",
    ["kind", "outcome"], buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800))
AUTOMATED_PAIRINGS = Counter(
    "orchard_enrollment_automated_pairings", "Sign-ins on the enrollment page by result "
    "(paired, wrong_credentials, rate_limited, refused, bad_device_info, error).", ["result"])


def observe_apple_call(endpoint: str, status: int) -> None:
    APPLE_CALLS.labels(endpoint if endpoint.startswith("/") else "other", str(status)).inc()


class EnrollmentStateCollector:
    """Token expiry, status and last good sync, and devices by profile status, from the database."""

    def __init__(self) -> None:
        self.engine: sa.engine.Engine | None = None

    def describe(self) -> list:
        return []  # collected lazily: the engine exists only once the service runs

    def collect(self) -> Any:
        if self.engine is None:
            return
        expiry = GaugeMetricFamily("orchard_enrollment_token_expiry_timestamp_seconds",
                                   "When the server token's access token expires.", labels=["token_id", "name"])
        status = GaugeMetricFamily("orchard_enrollment_token_status", "1 for the server token's current status.",
                                   labels=["token_id", "name", "status"])
        last_sync = GaugeMetricFamily("orchard_enrollment_last_successful_sync_timestamp_seconds",
                                      "When the token's last successful device sync finished.", labels=["token_id", "name"])
        devices = GaugeMetricFamily("orchard_enrollment_devices", "ADE devices by profile status.",
                                    labels=["token_id", "profile_status"])
        assignment = GaugeMetricFamily("orchard_enrollment_device_assignments",
                                       "Known devices by assignment: user, shared (a group) or unassigned.",
                                       labels=["assignment"])
        now = utc_now()
        try:
            with self.engine.connect() as connection:
                for row in connection.execute(sa.select(server_tokens).where(server_tokens.c.sealed_credentials.is_not(None))):
                    expiry.add_metric([row.id, row.name], row.access_token_expiry.timestamp())
                    current = token_status(row.access_token_expiry, now, apple_refusal=row.apple_refusal)
                    for option in STATUSES:
                        status.add_metric([row.id, row.name, option], 1.0 if option == current else 0.0)
                    if row.last_successful_sync_at:
                        last_sync.add_metric([row.id, row.name], row.last_successful_sync_at.timestamp())
                c = dep_devices.c
                for token_id, profile_status, count in connection.execute(
                        sa.select(c.token_id, c.profile_status, sa.func.count()).group_by(c.token_id, c.profile_status)):
                    devices.add_metric([token_id, profile_status], count)
                with Session(bind=connection) as session:
                    for kind, count in AssignmentRepository(session).counts().items():
                        assignment.add_metric([kind], count)
        except sa.exc.SQLAlchemyError:
            log.warning("could not read enrollment state for metrics", exc_info=True)
            return
        yield from (expiry, status, last_sync, devices, assignment)


COLLECTOR = EnrollmentStateCollector()
REGISTRY.register(COLLECTOR)


class EnrollmentStateMetrics(DependencyProvider):
    """Points the process's collector at the service's database."""

    def start(self) -> None:
        database = next(d for d in self.container.dependencies if isinstance(d, Database))
        COLLECTOR.engine = database.engine
