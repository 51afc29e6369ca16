"""The vpp alert rules fire on the metrics the service exports (checked with promtool)."""
import shutil
import subprocess
from pathlib import Path

import pytest

RULES = Path(__file__).resolve().parents[2] / "services" / "vpp" / "alerts.yml"

CASES = f"""
rule_files: [{RULES}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'orchard_vpp_token_expiry_timestamp_seconds{{token_id="t1",name="North"}}'
        values: '{5 * 86400}'
      - series: 'orchard_vpp_token_status{{token_id="t2",name="South",status="conflict"}}'
        values: '1'
      - series: 'orchard_vpp_licences{{token_id="t1",adam_id="111",product_type="App",state="available"}}'
        values: '0x20'
      - series: 'orchard_vpp_assignments_waiting_for_licences{{token_id="t1",adam_id="111"}}'
        values: '3x20'
      - series: 'orchard_vpp_licences{{token_id="t1",adam_id="222",product_type="App",state="available"}}'
        values: '4x20'
    alert_rule_test:
      - eval_time: 0m
        alertname: VppContentTokenExpiresThisWeek
        exp_alerts:
          - exp_labels: {{severity: critical, token_id: t1, name: North}}
            exp_annotations:
              summary: "Content token North expires within 7 days"
              description: "Once it expires no licence can be assigned or revoked. Renew it now (orchard vpp token renew)."
      - eval_time: 0m
        alertname: VppContentTokenManagedByAnotherMdm
        exp_alerts:
          - exp_labels: {{severity: critical, token_id: t2, name: South, status: conflict}}
            exp_annotations:
              summary: "Another MDM manages the location of content token South"
              description: "Delete the token from the other MDM, then re-add it here with take_over."
      - eval_time: 16m
        alertname: VppAssetOutOfLicences
        exp_alerts:
          - exp_labels: {{severity: warning, token_id: t1, adam_id: "111", product_type: App, state: available}}
            exp_annotations:
              summary: "No licence left for app/book 111 while assignments wait"
              description: "Buy more licences in Apple School Manager or revoke unused ones, then assign again."
      - eval_time: 0m
        alertname: VppContentTokenRevoked
        exp_alerts: []
"""


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_alert_rules_fire_on_the_exported_metrics(tmp_path):
    cases = tmp_path / "vpp_alert_cases.yml"
    cases.write_text(CASES)
    result = subprocess.run(["promtool", "test", "rules", str(cases)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
