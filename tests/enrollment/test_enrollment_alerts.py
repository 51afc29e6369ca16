"""The enrollment alert rules are valid Prometheus rules and cover what the issue asks for."""
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

RULES = Path(__file__).resolve().parents[2] / "services" / "enrollment" / "alerts.yml"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_rules():
    result = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_expiry_invalid_and_stale_sync_alerts_exist():
    rules = {rule["alert"]: rule["expr"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]}
    assert "30 * 86400" in rules["EnrollmentServerTokenExpiresIn30Days"]
    assert "7 * 86400" in rules["EnrollmentServerTokenExpiresIn7Days"]
    assert "revoked_or_invalid" in rules["EnrollmentServerTokenInvalid"]
    assert "6 * 3600" in rules["EnrollmentNoSuccessfulSync"]
