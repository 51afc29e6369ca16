"""The roster service's own metrics."""
from prometheus_client import Counter, Histogram

IMPORT_RUNS = Counter(
    "orchard_roster_import_runs", "Import previews and applies by source and outcome "
    "(previewed, applied, refused).", ["source", "outcome"])
IMPORT_ROWS = Counter(
    "orchard_roster_import_rows", "Applied changes by entity and action.", ["entity", "action"])
REJECTED_ROWS = Counter(
    "orchard_roster_rejected_rows", "Import rows rejected in previews, by source.", ["source"])
PLAN_TO_APPLY = Histogram(
    "orchard_roster_plan_to_apply_seconds", "Time from a plan's preview to its apply.",
    buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600))
API_REQUESTS = Counter(
    "orchard_roster_api_requests", "Mosyle-compatible API requests by endpoint and HTTP status.",
    ["endpoint", "status"])
API_REFUSALS_NOT_AUDITED = Counter(
    "orchard_roster_api_refusals_not_audited",
    "Refused API calls left out of the audit log: the same refusal again within a minute, or past 60 a minute.",
    ["reason"])
WELCOME_EMAILS = Counter(
    "orchard_roster_welcome_emails", "Welcome e-mails to new users by outcome (sent, refused by the relay for good, "
    "retried later).", ["outcome"])
