"""The directory service's own metrics (generic entrypoint metrics come from the kernel)."""
from prometheus_client import Counter, Gauge, Histogram

SYNC_RUNS = Counter("orchard_directory_sync_runs", "Directory syncs by trigger, mode and outcome.",
                    ["trigger", "mode", "outcome"])
SYNC_DURATION = Histogram("orchard_directory_sync_duration_seconds", "Time to read, map and hand a directory to the roster.",
                          ["mode"], buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600))
ENTRIES_READ = Counter("orchard_directory_entries_read", "Directory entries read by syncs.", ["kind"])
BIND_FAILURES = Counter("orchard_directory_bind_failures", "Service-account binds the directory refused.")
AUTH_ATTEMPTS = Counter("orchard_directory_auth_attempts", "Password checks against the directory by result.",
                        ["result"])  # success, failure, rate_limited, refused, error
CERTIFICATE_EXPIRY = Gauge("orchard_directory_tls_certificate_expiry_timestamp_seconds",
                           "When each profile's directory server certificate expires (as last seen).", ["profile"])
