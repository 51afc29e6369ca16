"""The directory service's own metrics (generic entrypoint metrics come from the kernel).

Certificate expiry is read from the database when Prometheus scrapes, so every
replica reports the same value: the one seen at the last connection test, sync or sign-in.
"""
from __future__ import annotations

from typing import Iterator

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy.engine import Engine

from services.directory.adapters.profiles import certificate_expiries
from shared.metrics import DatabaseGauges

SYNC_RUNS = Counter("orchard_directory_sync_runs", "Directory syncs by profile (id), trigger, mode and outcome.",
                    ["profile", "trigger", "mode", "outcome"])
SYNC_DURATION = Histogram("orchard_directory_sync_duration_seconds",
                          "Time to read and map a directory and hand it to the roster.", ["mode"],
                          buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600))
ENTRIES_READ = Counter("orchard_directory_entries_read", "Directory entries read and mapped by syncs.", ["kind"])
BIND_FAILURES = Counter("orchard_directory_bind_failures", "Service-account binds the directory refused, by profile "
                        "(id).", ["profile"])
AUTH_ATTEMPTS = Counter("orchard_directory_auth_attempts", "Password checks against the directory by result "
                        "(success, failure, rate_limited, refused, error).", ["result"])


def certificate_gauges(engine: Engine) -> Iterator[GaugeMetricFamily]:
    expiry = GaugeMetricFamily("orchard_directory_tls_certificate_expiry_timestamp_seconds",
                               "When each profile's directory server certificate expires (Unix time), "
                               "as seen at the last test, sync or sign-in.", labels=["profile"])
    for profile, timestamp in certificate_expiries(engine).items():
        expiry.add_metric([profile], timestamp)
    yield expiry


CERTIFICATE_EXPIRY = DatabaseGauges("directory certificate expiries", certificate_gauges)
