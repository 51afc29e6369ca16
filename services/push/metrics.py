"""The push service's own metrics (generic entrypoint metrics come from the kernel).

Certificate expiry and devices per topic are read from the database when Prometheus
scrapes, so every replica reports the same, current values.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Iterator

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger(__name__)

PUSH_RESULTS = Counter("orchard_push_results", "MDM pushes by APNs outcome (delivered, or Apple's reason).", ["reason"])
PUSH_LATENCY = Histogram(
    "orchard_push_latency_seconds", "From sending a push to APNs's final answer, retries included.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


class CertificateCollector:
    """Scrape-time gauges from each running push service's database (one per process)."""

    def __init__(self) -> None:
        self._sources: dict[int, Callable[[], tuple[dict[str, float], dict[str, int]]]] = {}
        self._lock = threading.Lock()

    def add_source(self, key: int, read: Callable[[], tuple[dict[str, float], dict[str, int]]]) -> None:
        with self._lock:
            self._sources[key] = read

    def remove_source(self, key: int) -> None:
        with self._lock:
            self._sources.pop(key, None)

    def collect(self) -> Iterator[Any]:
        expiry = GaugeMetricFamily(
            "orchard_push_certificate_expiry_timestamp_seconds", "When each push certificate expires (Unix time).",
            labels=["topic"],
        )
        enrolled = GaugeMetricFamily("orchard_push_devices", "Devices enrolled under each topic.", labels=["topic"])
        with self._lock:
            sources = list(self._sources.values())
        for read in sources:
            try:
                expiries, counts = read()
            except Exception:  # a scrape must not fail because one database is briefly unavailable
                log.warning("could not read push certificates for metrics", exc_info=True)
                continue
            for topic, timestamp in expiries.items():
                expiry.add_metric([topic], timestamp)
            for topic, count in counts.items():
                enrolled.add_metric([topic], count)
        yield expiry
        yield enrolled


CERTIFICATES = CertificateCollector()
REGISTRY.register(CERTIFICATES)
