"""The vpp service's metrics. Gauges are read from the database at scrape time, so every replica reports the same."""
from __future__ import annotations

from typing import Iterator

import sqlalchemy as sa
from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy.engine import Engine

from services.vpp.adapters import tables as t
from services.vpp.domain.tokens import TokenStatus, token_status
from shared.metrics import DatabaseGauges
from shared.storage import utc_now

TOP_ASSETS_PER_TOKEN = 50

APPLE_CALLS = Counter(
    "orchard_vpp_apple_calls", "Apps and Books API responses by endpoint and Apple error number (none = success).",
    ["endpoint", "error"])
NAME_LOOKUP_FAILURES = Counter(
    "orchard_vpp_name_lookup_failures", "Syncs whose content metadata lookup (asset names) failed; names stay as they were.")
INVITES_REGISTERED = Counter("orchard_vpp_invites_registered", "Users registered (invited) with Apple, by method.", ["method"])
INVITE_EMAILS = Counter(
    "orchard_vpp_invite_emails",
    "Invite e-mails by outcome: sent; refused (the relay refused the address: not tried again until the invite is "
    "resent or invited again); retried (the relay failed or put it off: tried again later).", ["outcome"])


def observe_apple_call(endpoint: str, outcome: int | None) -> None:
    APPLE_CALLS.labels(endpoint, "none" if outcome is None else str(outcome)).inc()


def state_gauges(engine: Engine) -> Iterator[GaugeMetricFamily]:
    """Token expiry, status and last successful sync, licence counts and invites."""
    expiry = GaugeMetricFamily("orchard_vpp_token_expiry_timestamp_seconds", "When a content token expires.", labels=["token_id", "name"])
    status = GaugeMetricFamily("orchard_vpp_token_status", "1 for the content token's current status.", labels=["token_id", "name", "status"])
    licences = GaugeMetricFamily(
        "orchard_vpp_licences",
        f"Licences per asset by state: the {TOP_ASSETS_PER_TOKEN} largest per token and every asset with assignments "
        "waiting for licences.", labels=["token_id", "adam_id", "product_type", "state"])
    token_licences = GaugeMetricFamily(
        "orchard_vpp_token_licences", "Licences of all the content token's assets together, by state.",
        labels=["token_id", "state"])
    waiting = GaugeMetricFamily(
        "orchard_vpp_assignments_waiting_for_licences", "Assignments refused because no licence was left.",
        labels=["token_id", "adam_id"])
    invites = GaugeMetricFamily("orchard_vpp_invites", "Invites by status (failed: Apple did not register the user).",
                                labels=["token_id", "status"])
    synced = GaugeMetricFamily(
        "orchard_vpp_last_successful_sync_timestamp_seconds",
        "When the content token's assets, assignments and users were last read from Apple (tokens still in use).",
        labels=["token_id", "name"])
    now = utc_now()
    with engine.connect() as connection:
        for row in connection.execute(sa.select(t.content_tokens)):
            expiry.add_metric([row.id, row.name], row.expires_at.timestamp())
            current = token_status(row.expires_at, now, revoked=row.revoked, conflict=row.conflict_with is not None)
            for option in TokenStatus:
                status.add_metric([row.id, row.name, option.value], 1.0 if option is current else 0.0)
            if row.last_sync_at is not None and not row.revoked:  # a revoked token is not synced; it has its own alert
                synced.add_metric([row.id, row.name], row.last_sync_at.timestamp())
        ranked = sa.select(
            t.assets, sa.func.row_number().over(partition_by=t.assets.c.token_id, order_by=t.assets.c.total_count.desc()).label("rank"),
        ).subquery()
        # a series per asset would be thousands per district; an asset that needs attention is always among them
        shown = sa.or_(ranked.c.rank <= TOP_ASSETS_PER_TOKEN, ranked.c.refused_for_licences > 0)
        for row in connection.execute(sa.select(ranked).where(shown)):
            for state in ("total", "assigned", "available"):
                licences.add_metric([row.token_id, row.adam_id, row.product_type, state], getattr(row, f"{state}_count"))
            waiting.add_metric([row.token_id, row.adam_id], row.refused_for_licences)
        a = t.assets.c
        totals = sa.select(a.token_id, sa.func.sum(a.total_count), sa.func.sum(a.assigned_count),
                           sa.func.sum(a.available_count)).group_by(a.token_id)
        for token_id, *by_state in connection.execute(totals):
            for state, count in zip(("total", "assigned", "available"), by_state):
                token_licences.add_metric([token_id, state], count)
        counts = sa.select(t.invites.c.token_id, t.invites.c.status, sa.func.count()).group_by(t.invites.c.token_id, t.invites.c.status)
        for token_id, invite_status, count in connection.execute(counts):
            invites.add_metric([token_id, invite_status], count)
    yield from (expiry, status, licences, token_licences, waiting, invites, synced)


STATE = DatabaseGauges("vpp state", state_gauges)
