"""The enrollment service's metrics. State gauges are read from the database at scrape time,
so every replica reports the same."""
from __future__ import annotations

from typing import Iterator

import sqlalchemy as sa
from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from services.enrollment.adapters.assignments import AssignmentRepository
from services.enrollment.adapters.tables import dep_devices, server_tokens
from services.enrollment.domain.checkin import COMMAND_STATUSES
from services.enrollment.domain.device_identity import REJECTION_REASONS
from services.enrollment.domain.server_tokens import STATUSES, token_status
from shared.metrics import DatabaseGauges
from shared.storage import utc_now

APPLE_CALLS = Counter(
    "orchard_enrollment_apple_calls", "Device Assignment API responses by endpoint and HTTP status (0 = no answer).",
    ["endpoint", "status"])
SYNC_DURATION = Histogram(
    "orchard_enrollment_sync_duration_seconds", "Duration of ADE device syncs by kind and outcome.",
    ["kind", "outcome"], buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800))
AUTOMATED_PAIRINGS = Counter(
    "orchard_enrollment_automated_pairings", "Sign-ins on the enrollment page by result "
    "(paired, wrong_credentials, rate_limited, refused, bad_device_info, error).", ["result"])

CHECKINS_REJECTED = Counter(
    "orchard_enrollment_checkins_rejected", "Check-ins refused with HTTP 401 by reason (unsigned, malformed_signature, "
    "digest_mismatch, bad_signature, unknown_issuer, expired_certificate, other_device, not_bound_identity, "
    "retired_identity).", ["reason"])
COMMAND_POLLS = Counter(
    "orchard_enrollment_command_polls", "Devices at the server URL (after a push wake-up) by the status they reported.",
    ["status"])
for _reason in REJECTION_REASONS:  # every reason reports from the start, so a rate() sees the first rejection
    CHECKINS_REJECTED.labels(_reason)
for _status in COMMAND_STATUSES:
    COMMAND_POLLS.labels(_status)


def observe_apple_call(endpoint: str, status: int) -> None:
    APPLE_CALLS.labels(endpoint if endpoint.startswith("/") else "other", str(status)).inc()


def state_gauges(engine: Engine) -> Iterator[GaugeMetricFamily]:
    """Token expiry, status and last good sync, devices by profile status and by assignment."""
    expiry = GaugeMetricFamily("orchard_enrollment_token_expiry_timestamp_seconds",
                               "When the server token's access token expires.", labels=["token_id", "name"])
    status = GaugeMetricFamily("orchard_enrollment_token_status", "1 for the server token's current status.",
                               labels=["token_id", "name", "status"])
    last_sync = GaugeMetricFamily("orchard_enrollment_last_successful_sync_timestamp_seconds",
                                  "When the token's last successful device sync finished; before its first, when the "
                                  "token was connected.", labels=["token_id", "name"])
    devices = GaugeMetricFamily("orchard_enrollment_devices", "ADE devices by profile status.",
                                labels=["token_id", "profile_status"])
    assignment = GaugeMetricFamily("orchard_enrollment_device_assignments",
                                   "Known devices by assignment: user, shared (a group) or unassigned.",
                                   labels=["assignment"])
    now = utc_now()
    with engine.connect() as connection:
        for row in connection.execute(sa.select(server_tokens).where(server_tokens.c.sealed_credentials.is_not(None))):
            expiry.add_metric([row.id, row.name], row.access_token_expiry.timestamp())
            current = token_status(row.access_token_expiry, now, apple_refusal=row.apple_refusal)
            for option in STATUSES:
                status.add_metric([row.id, row.name, option], 1.0 if option == current else 0.0)
            # a token that has never synced counts from its connection, so the no-sync alert covers it too
            synced = row.last_successful_sync_at or row.integrated_at or row.created_at
            last_sync.add_metric([row.id, row.name], synced.timestamp())
        c = dep_devices.c
        for token_id, profile_status, count in connection.execute(
                sa.select(c.token_id, c.profile_status, sa.func.count()).group_by(c.token_id, c.profile_status)):
            devices.add_metric([token_id, profile_status], count)
        with Session(bind=connection) as session:
            for kind, count in AssignmentRepository(session).counts().items():
                assignment.add_metric([kind], count)
    yield from (expiry, status, last_sync, devices, assignment)


STATE = DatabaseGauges("enrollment state", state_gauges)
