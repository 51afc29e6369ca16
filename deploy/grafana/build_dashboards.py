"""Writes Orchard's Grafana dashboards (deploy/grafana/dashboards/*.json).

Dashboards are generated so that every panel follows the same conventions; run
``python deploy/grafana/build_dashboards.py`` after changing a panel. A test checks
that every metric a dashboard queries is one the services really export.
"""
from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parent / "dashboards"
DAYS_LEFT = "({expr} - time()) / 86400"


def panel(title: str, expr: str, legend: str = "", unit: str = "short", kind: str = "timeseries") -> dict:
    return {"title": title, "type": kind, "unit": unit, "targets": [{"expr": expr, "legendFormat": legend}]}


def red(service_filter: str, by: str) -> list[dict]:
    """Rate, errors and duration of entrypoints, split ``by`` service or entrypoint."""
    selector = f"{{{service_filter}}}"
    return [
        panel("Calls per second", f"sum by ({by}, kind) (rate(orchard_entrypoint_calls_total{selector}[5m]))",
              f"{{{{{by}}}}} ({{{{kind}}}})", "reqps"),
        panel("Error ratio (internal errors)",
              f'sum by ({by}) (rate(orchard_entrypoint_calls_total{{{service_filter},outcome="error"}}[5m])) '
              f"/ sum by ({by}) (rate(orchard_entrypoint_calls_total{selector}[5m]))", f"{{{{{by}}}}}", "percentunit"),
        panel("Latency p95", f"histogram_quantile(0.95, sum by ({by}, le) "
              f"(rate(orchard_entrypoint_duration_seconds_bucket{selector}[5m])))", f"{{{{{by}}}}}", "s"),
        panel("Workers busy", f"orchard_workers_in_flight{selector} / orchard_max_workers{selector}",
              "{{service}} {{instance}}", "percentunit"),
        panel("Events published per second",
              f"sum by (event_type) (rate(orchard_events_published_total{selector}[5m]))", "{{event_type}}", "ops"),
        panel("Outbox backlog", f"sum by (service) (orchard_outbox_pending_events{selector})",
              "pending {{service}}"),
    ]


SERVICE_PANELS = {
    "push": [
        panel("Days until each push certificate expires",
              DAYS_LEFT.format(expr="orchard_push_certificate_expiry_timestamp_seconds"), "{{topic}}", "d", "stat"),
        panel("Devices per topic", "orchard_push_devices", "{{topic}}", kind="stat"),
        panel("Push results by APNs reason", "sum by (reason) (rate(orchard_push_results_total[5m]))", "{{reason}}", "ops"),
        panel("Push latency p95", "histogram_quantile(0.95, sum by (le) (rate(orchard_push_latency_seconds_bucket[5m])))",
              "p95", "s"),
    ],
    "enrollment": [
        panel("Days until each server token expires",
              DAYS_LEFT.format(expr="orchard_enrollment_token_expiry_timestamp_seconds"), "{{name}}", "d", "stat"),
        panel("Token status", "orchard_enrollment_token_status == 1", "{{name}}: {{status}}", kind="table"),
        panel("Hours since the last successful device sync",
              "(time() - orchard_enrollment_last_successful_sync_timestamp_seconds) / 3600", "{{name}}", "h", "stat"),
        panel("Devices by profile status", "sum by (profile_status) (orchard_enrollment_devices)", "{{profile_status}}"),
        panel("Sync duration p95", "histogram_quantile(0.95, sum by (kind, le) "
              "(rate(orchard_enrollment_sync_duration_seconds_bucket[1h])))", "{{kind}}", "s"),
        panel("Apple calls by endpoint and status", "sum by (endpoint, status) (rate(orchard_enrollment_apple_calls_total[5m]))",
              "{{endpoint}} {{status}}", "reqps"),
        panel("Devices by assignment", "orchard_enrollment_device_assignments", "{{assignment}}", kind="stat"),
        panel("Automated pairings by result", "sum by (result) (increase(orchard_enrollment_automated_pairings_total[1h]))",
              "{{result}}"),
        panel("Check-ins refused by reason", "sum by (reason) (increase(orchard_enrollment_checkins_rejected_total[1h]))",
              "{{reason}}"),
        panel("Devices polling after a wake-up, by status",
              "sum by (status) (rate(orchard_enrollment_command_polls_total[5m]))", "{{status}}", "reqps"),
    ],
    "vpp": [
        panel("Days until each content token expires",
              DAYS_LEFT.format(expr="orchard_vpp_token_expiry_timestamp_seconds"), "{{name}}", "d", "stat"),
        panel("Token status", "orchard_vpp_token_status == 1", "{{name}}: {{status}}", kind="table"),
        panel("Hours since the last successful sync",
              "(time() - orchard_vpp_last_successful_sync_timestamp_seconds) / 3600", "{{name}}", "h", "stat"),
        panel("Licence headroom per token (available)", 'orchard_vpp_token_licences{state="available"}',
              "{{token_id}}"),
        panel("Licence headroom of the largest assets and those short of licences",
              'sum by (token_id, adam_id) (orchard_vpp_licences{state="available"})', "{{token_id}} {{adam_id}}"),
        panel("Assignments waiting for licences", "orchard_vpp_assignments_waiting_for_licences", "{{adam_id}}"),
        panel("Invites by status", "sum by (status) (orchard_vpp_invites)", "{{status}}"),
        panel("Invites registered per second", "sum by (method) (rate(orchard_vpp_invites_registered_total[5m]))",
              "{{method}}", "ops"),
        panel("Apple calls by endpoint and error", "sum by (endpoint, error) (rate(orchard_vpp_apple_calls_total[5m]))",
              "{{endpoint}} {{error}}", "reqps"),
        panel("Syncs whose asset name lookup failed (6 h)",
              "sum(increase(orchard_vpp_name_lookup_failures_total[6h]))", "failed lookups"),
    ],
    "roster": [
        panel("Import runs by source and outcome", "sum by (source, outcome) (increase(orchard_roster_import_runs_total[1h]))",
              "{{source}} {{outcome}}"),
        panel("Applied changes by entity and action", "sum by (entity, action) (rate(orchard_roster_import_rows_total[5m]))",
              "{{entity}} {{action}}", "ops"),
        panel("Rejected rows by source", "sum by (source) (increase(orchard_roster_rejected_rows_total[1h]))", "{{source}}"),
        panel("Preview to apply p95", "histogram_quantile(0.95, sum by (le) (rate(orchard_roster_plan_to_apply_seconds_bucket[1h])))",
              "p95", "s"),
        panel("API requests by endpoint and status", "sum by (endpoint, status) (rate(orchard_roster_api_requests_total[5m]))",
              "{{endpoint}} {{status}}", "reqps"),
    ],
    "directory": [
        panel("Sync runs by profile and outcome",
              "sum by (profile, mode, outcome) (increase(orchard_directory_sync_runs_total[1h]))",
              "{{profile}} {{mode}} {{outcome}}"),
        panel("Sync duration p95", "histogram_quantile(0.95, sum by (mode, le) "
              "(rate(orchard_directory_sync_duration_seconds_bucket[1h])))", "{{mode}}", "s"),
        panel("Entries read per second", "sum by (kind) (rate(orchard_directory_entries_read_total[5m]))", "{{kind}}", "ops"),
        panel("Password checks by result", "sum by (result) (rate(orchard_directory_auth_attempts_total[5m]))",
              "{{result}}", "ops"),
        panel("Service-account bind failures by profile",
              "sum by (profile) (increase(orchard_directory_bind_failures_total[1h]))", "{{profile}}"),
        panel("Days until directory TLS certificates expire",
              DAYS_LEFT.format(expr="orchard_directory_tls_certificate_expiry_timestamp_seconds"), "{{profile}}", "d", "stat"),
    ],
}

OVERVIEW = red('service=~"$service"', by="service") + [
    panel("Days until expiry: push certificates", DAYS_LEFT.format(expr="orchard_push_certificate_expiry_timestamp_seconds"),
          "{{topic}}", "d", "stat"),
    panel("Days until expiry: ASM server tokens", DAYS_LEFT.format(expr="orchard_enrollment_token_expiry_timestamp_seconds"),
          "{{name}}", "d", "stat"),
    panel("Days until expiry: content tokens", DAYS_LEFT.format(expr="orchard_vpp_token_expiry_timestamp_seconds"),
          "{{name}}", "d", "stat"),
    panel("Hours since last ADE sync", "(time() - orchard_enrollment_last_successful_sync_timestamp_seconds) / 3600",
          "{{name}}", "h", "stat"),
    panel("Hours since last Apps and Books sync", "(time() - orchard_vpp_last_successful_sync_timestamp_seconds) / 3600",
          "{{name}}", "h", "stat"),
    panel("Days until expiry: directory TLS certificates",
          DAYS_LEFT.format(expr="orchard_directory_tls_certificate_expiry_timestamp_seconds"), "{{profile}}", "d", "stat"),
    panel("Licence headroom", 'orchard_vpp_token_licences{state="available"}', "{{token_id}}"),
    panel("Roster import runs", "sum by (source, outcome) (increase(orchard_roster_import_runs_total[1h]))",
          "{{source}} {{outcome}}"),
    panel("Dead-lettered events", "sum by (service, handler) (increase(orchard_dead_letters_total[1h]))",
          "{{service}}.{{handler}}"),
]


def dashboard(uid: str, title: str, panels: list[dict], variable: bool = False) -> dict:
    laid_out = []
    for index, spec in enumerate(panels):
        laid_out.append({
            "id": index + 1, "title": spec["title"], "type": spec["type"],
            "gridPos": {"h": 8, "w": 12, "x": (index % 2) * 12, "y": (index // 2) * 8},
            "datasource": {"type": "prometheus", "uid": "prometheus"},
            "fieldConfig": {"defaults": {"unit": spec["unit"]}, "overrides": []},
            "targets": [{**target, "refId": chr(65 + n)} for n, target in enumerate(spec["targets"])],
        })
    templating = {"list": []}
    if variable:
        templating["list"].append({
            "name": "service", "type": "query", "datasource": {"type": "prometheus", "uid": "prometheus"},
            "query": "label_values(orchard_service_info, service)", "includeAll": True, "multi": True,
            "current": {"text": "All", "value": "$__all"},
        })
    return {"uid": uid, "title": title, "tags": ["orchard"], "timezone": "browser", "schemaVersion": 39,
            "refresh": "30s", "time": {"from": "now-6h", "to": "now"}, "templating": templating, "panels": laid_out}


def main() -> None:
    OUT.mkdir(exist_ok=True)
    boards = {"overview": dashboard("orchard-overview", "Orchard overview", OVERVIEW, variable=True)}
    for service, panels in SERVICE_PANELS.items():
        boards[service] = dashboard(f"orchard-{service}", f"Orchard {service}", red(f'service="{service}"', by="entrypoint") + panels)
    for name, board in boards.items():
        (OUT / f"{name}.json").write_text(json.dumps(board, indent=2) + "\n")


if __name__ == "__main__":
    main()
