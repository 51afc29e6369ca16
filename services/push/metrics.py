"""The push service's own metrics (generic entrypoint metrics come from the kernel).

Certificate expiry and devices per topic are read from the database when Prometheus
scrapes, so every replica reports the same, current values.
"""
from __future__ import annotations

from typing import Iterator

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from services.push.adapters.repository import PushRepository
from shared.metrics import DatabaseGauges

PUSH_RESULTS = Counter("orchard_push_results", "MDM pushes by APNs outcome (delivered, or Apple's reason).", ["reason"])
PUSH_LATENCY = Histogram(
    "orchard_push_latency_seconds", "From sending a push to APNs's final answer, retries included.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


def certificate_gauges(engine: Engine) -> Iterator[GaugeMetricFamily]:
    expiry = GaugeMetricFamily(
        "orchard_push_certificate_expiry_timestamp_seconds", "When each push certificate expires (Unix time).",
        labels=["topic"],
    )
    enrolled = GaugeMetricFamily("orchard_push_devices", "Devices enrolled under each topic.", labels=["topic"])
    with Session(engine) as session:
        repository = PushRepository(session)
        expiries = {row.topic: row.not_after.timestamp() for row in repository.certificates()}
        counts = {**dict.fromkeys(expiries, 0), **repository.device_counts()}  # 0, not absent
    for topic, timestamp in expiries.items():
        expiry.add_metric([topic], timestamp)
    for topic, count in counts.items():
        enrolled.add_metric([topic], count)
    yield expiry
    yield enrolled


CERTIFICATES = DatabaseGauges("push certificates", certificate_gauges)
