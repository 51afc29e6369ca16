"""Devices listed in a spreadsheet reach the real enrollment service, also when it learns of them later."""
from __future__ import annotations

import base64

import pytest

from services.enrollment.service import EnrollmentService
from services.roster.service import RosterService
from tests.enrollment.conftest import dep_sandbox  # noqa: F401 (the fixture: Apple's side on a real socket)
from tests.enrollment.signing import assign_ade_devices
from tests.roster.test_roster_spreadsheets import student, workbook

pytestmark = pytest.mark.integration


def test_a_device_enrollment_did_not_know_is_assigned_by_the_next_import_of_the_same_rows(
        runner_factory, orchard_config, rpc_as, dep_sandbox):
    orchard_config["SERVICES"]["enrollment"]["dep_url"] = dep_sandbox.url
    runner_factory(orchard_config, EnrollmentService, RosterService).start()
    content = base64.b64encode(workbook(users=[
        student("s1", **{"Device Serial Numbers": "serlate1"}), student("s2")])).decode()
    with rpc_as() as rpc:
        first = rpc.roster.apply_plan(rpc.roster.preview_spreadsheet("district.xlsx", content)["plan_id"])
        assert first["device_assignments"]["assigned"] == 0
        assert [f["serial_number"] for f in first["device_assignments"]["failed"]] == ["SERLATE1"]
        assert rpc.roster.get_user("s1")["serial_numbers"] == ["SERLATE1"]  # the user is saved as the file says

        assign_ade_devices(rpc, dep_sandbox, ["SERLATE1"])  # the device comes from Apple School Manager later
        again = rpc.roster.preview_spreadsheet("district.xlsx", content)
        assert again["total_changes"] == 0  # the roster holds the rows as they are
        applied = rpc.roster.apply_plan(again["plan_id"])
        assert applied["device_assignments"] == {"assigned": 1, "failed": []}
        assert rpc.enrollment.device_assignment("SERLATE1")["user_id"] == "s1"

        # once more: enrollment takes the repeated assignment as a no-op, and the device stays with s1
        rpc.roster.apply_plan(rpc.roster.preview_spreadsheet("district.xlsx", content)["plan_id"])
        assert [e["action"] for e in rpc.enrollment.audit_log("device:SERLATE1")] == ["device.assigned"]
