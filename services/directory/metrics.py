"""The directory service's own metrics (generic entrypoint metrics come from the kernel).

Certificate expiry is read from the database when Prometheus scrapes, so every
replica reports the same value: the one seen at the last connection test or sync.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Iterator

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger(__name__)

SYNC_RUNS = Counter("orchard_directory_sync_runs", "Directory syncs by trigger, mode and outcome.",
                    ["trigger", "mode", "outcome"])
SYNC_DURATION = Histogram("orchard_directory_sync_duration_seconds",
                          "Time to read and map a directory and hand it to the roster.", ["mode"],
                          buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600))
ENTRIES_READ = Counter("orchard_directory_entries_read", "Directory entries read and mapped by syncs.", ["kind"])
BIND_FAILURES = Counter("orchard_directory_bind_failures", "Service-account binds the directory refused.")
AUTH_ATTEMPTS = Counter("orchard_directory_auth_attempts", "Password checks against the directory by result "
                        "(success, failure, rate_limited, refused, error).", ["result"])


class CertificateExpiryCollector:
    """Scrape-time gauge from each running directory service's database (one collector per process)."""

    def __init__(self) -> None:
        self._sources: dict[int, Callable[[], dict[str, float]]] = {}
        self._lock = threading.Lock()

    def add_source(self, key: int, read: Callable[[], dict[str, float]]) -> None:
        with self._lock:
            self._sources[key] = read

    def remove_source(self, key: int) -> None:
        with self._lock:
            self._sources.pop(key, None)

    def collect(self) -> Iterator[Any]:
        expiry = GaugeMetricFamily("orchard_directory_tls_certificate_expiry_timestamp_seconds",
                                   "When each profile's directory server certificate expires (Unix time), "
                                   "as seen at the last test or sync.", labels=["profile"])
        with self._lock:
            sources = list(self._sources.values())
        for read in sources:
            try:
                for profile, timestamp in read().items():
                    expiry.add_metric([profile], timestamp)
            except Exception:  # a scrape must not fail because one database is briefly unavailable
                log.warning("could not read directory certificate expiries for metrics", exc_info=True)
        yield expiry


CERTIFICATE_EXPIRY = CertificateExpiryCollector()
REGISTRY.register(CERTIFICATE_EXPIRY)
