"""Licences by scope, end to end: roster + enrollment resolve "grade 7 students at A", vpp assigns at Apple."""
from __future__ import annotations

import httpx
import pytest

from services.enrollment.service import EnrollmentService
from services.roster.service import RosterService
from services.vpp.service import VppService
from shared.auth import Actor
from shared.errors import PermissionDenied, ValidationError
from tests.enrollment.conftest import dep_sandbox  # noqa: F401 (the DEP sandbox fixture: the devices are ADE devices)
from tests.enrollment.signing import assign_ade_devices
from tests.people import (DEVICES, GRADE_7_STUDENTS_AT_A, LOCATIONS, USERS, enroll, import_roster,
                          moved_to_grade_8)
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def serials_at_apple(sandbox, stoken: str, adam_id: str) -> list[str]:
    """What Apple itself lists as assigned, read through its own API."""
    answer = httpx.get(f"{sandbox.api_url}assignments", params={"adamId": adam_id},
                       headers={"Authorization": f"Bearer {stoken}"}).json()
    return sorted(row["serialNumber"] for row in answer["assignments"] if "serialNumber" in row)


def refusal(call) -> str:
    with pytest.raises(PermissionDenied) as refused:
        call()
    return refused.value.message


@pytest.fixture
def district(runner_factory, vpp_config, vpp_sandbox, rpc_as, dep_sandbox):
    vpp_config["SERVICES"]["enrollment"]["dep_url"] = dep_sandbox.url
    runner_factory(vpp_config, VppService, EnrollmentService, RosterService).start()
    with rpc_as() as rpc:
        assign_ade_devices(rpc, dep_sandbox, list(DEVICES))
    for serial in DEVICES:
        enroll(vpp_config, serial)
    stoken = vpp_sandbox.issue_token(locationName="Alpha School")
    vpp_sandbox.add_asset(stoken, "111", 10)
    with rpc_as() as rpc:
        import_roster(rpc, USERS)
        for serial, user_id in DEVICES.items():
            rpc.enrollment.assign_device(serial, user_id)
        token_id = rpc.vpp.add_content_token(stoken, name="Alpha", locations=["A"])["id"]
        rpc.vpp.sync_assets(token_id)
    return token_id, stoken


def test_a_scope_reaches_exactly_its_devices_at_apple(district, vpp_sandbox, rpc_as):
    token_id, stoken = district
    with rpc_as() as rpc:
        result = rpc.vpp.assign_licenses(token_id, "111", scope=GRADE_7_STUDENTS_AT_A)
        assert sorted(result["assigned"]["serial_numbers"]) == ["SER7A1", "SER7A2"]
        assert serials_at_apple(vpp_sandbox, stoken, "111") == ["SER7A1", "SER7A2"]

        import_roster(rpc, moved_to_grade_8("s7a2"))  # s7a2 leaves grade 7, and so does their iPad
        again = rpc.vpp.assign_licenses(token_id, "111", scope=GRADE_7_STUDENTS_AT_A)
        assert (again["assigned"]["serial_numbers"], again["already_assigned"]) == ([], ["SER7A1"])
        grade_8 = rpc.vpp.assign_licenses(token_id, "111", scope={"grade_levels": ["8"], "locations": ["A"]})
        assert (grade_8["assigned"]["serial_numbers"], grade_8["already_assigned"]) == (["SER8A1"], ["SER7A2"])
    assert serials_at_apple(vpp_sandbox, stoken, "111") == ["SER7A1", "SER7A2", "SER8A1"]


def test_a_token_of_one_location_refuses_devices_and_users_elsewhere(district, vpp_sandbox, rpc_as):
    token_id, stoken = district
    with rpc_as() as rpc:
        with pytest.raises(PermissionDenied, match="device SER7B1 is at location\\(s\\) B"):
            rpc.vpp.assign_licenses(token_id, "111", scope={"grade_levels": ["7"], "user_types": ["student"]})
        with pytest.raises(PermissionDenied, match="device SER7B1 is at location\\(s\\) B"):
            rpc.vpp.assign_licenses(token_id, "111", serial_numbers=["SER7A1", "SER7B1"])
        wait_for(lambda: "user s7b1 is at location(s) B" in refusal(lambda: rpc.vpp.assign_licenses(
            token_id, "111", user_ids=["s7b1"])), what="the refusal naming the user's location (once vpp knows them)")
    assert "assets/associate" not in vpp_sandbox.state()["requests"]  # refused before any Apple call
    assert serials_at_apple(vpp_sandbox, stoken, "111") == []


def test_a_teacher_installs_study_apps_on_their_class_devices(district, vpp_sandbox, rpc_as):
    token_id, stoken = district
    maths_7a = {"class_id": "maths-7a", "name": "Maths 7A", "location_id": "A",
                "teacher_ids": ["t7a"], "student_ids": ["s7a1", "s7a2"]}
    # a class across both schools: s7b1's iPad is at B, which the token (limited to A) does not serve
    art_7 = {"class_id": "art-7", "name": "Art 7", "location_id": "A", "teacher_ids": ["t7a"], "student_ids": ["s7a1", "s7b1"]}
    with rpc_as() as rpc:
        batch = {"source": "api", "locations": LOCATIONS, "grade_levels": [{"name": "7"}, {"name": "8"}],
                 "users": USERS, "classes": [maths_7a, art_7]}
        rpc.roster.apply_plan(rpc.roster.preview_records(batch)["plan_id"])
        rpc.vpp.update_content_token(token_id, allow_teacher_study_apps=True)
    with rpc_as(Actor("t7a", "teacher", ("A",))) as rpc:
        with pytest.raises(ValidationError, match="either a class"):
            rpc.vpp.install_study_apps(token_id, ["111"])
        # named devices: only those of the teacher's own students, as through a class
        for elsewhere in (["SER8A1"], ["SER7A1", "SER7B1"], ["SERT7A"]):  # grade 8 at A; one at B; their own iPad
            with pytest.raises(PermissionDenied, match="not those of your students"):
                rpc.vpp.install_study_apps(token_id, ["111"], serial_numbers=elsewhere)
    with rpc_as(Actor("t7a", "teacher", ("A", "B"))) as rpc:  # teaching at both schools: B's devices are still not A's token's
        for named in ({"class_id": "art-7"}, {"serial_numbers": ["SER7B1"]}):
            with pytest.raises(PermissionDenied, match="device SER7B1 is at location\\(s\\) B"):
                rpc.vpp.install_study_apps(token_id, ["111"], **named)
    assert "assets/associate" not in vpp_sandbox.state()["requests"]  # refused before any Apple call

    with rpc_as(Actor("t7a", "teacher", ("A",))) as rpc:
        (one,) = rpc.vpp.install_study_apps(token_id, ["111"], serial_numbers=["SER7A2"])
        assert one["assigned"]["serial_numbers"] == ["SER7A2"]
        (installed,) = rpc.vpp.install_study_apps(token_id, ["111"], class_id="maths-7a")
        assert (installed["assigned"]["serial_numbers"], installed["already_assigned"]) == (["SER7A1"], ["SER7A2"])
    assert serials_at_apple(vpp_sandbox, stoken, "111") == ["SER7A1", "SER7A2"]
    with rpc_as(Actor("t-other", "teacher", ("A",))) as rpc:
        with pytest.raises(PermissionDenied):  # not their class (nor a user the roster knows)
            rpc.vpp.install_study_apps(token_id, ["111"], class_id="maths-7a")
        with pytest.raises(PermissionDenied, match="not those of your students"):
            rpc.vpp.install_study_apps(token_id, ["111"], serial_numbers=["SER7A1"])

    # asking enrollment directly, a teacher reaches their own classes' devices, never the school's
    with rpc_as(Actor("t7a", "teacher", ("A",))) as rpc:
        students = rpc.enrollment.resolve_scope({"classes": ["maths-7a"], "user_types": ["student"]})
        assert [d["serial_number"] for d in students] == ["SER7A1", "SER7A2"]
        for wider in ({"locations": ["A"]}, {"grade_levels": ["7"]}, {"user_types": ["student"]},
                      {"classes": ["maths-7a"], "devices": ["SER8A1"]}, {"users": ["s8a1"]}):
            with pytest.raises(PermissionDenied, match="a teacher's scope names classes they teach"):
                rpc.enrollment.resolve_scope(wider)
    with rpc_as(Actor("t-other", "teacher", ("A",))) as rpc:
        with pytest.raises(PermissionDenied, match="you do not teach class\\(es\\) maths-7a"):
            rpc.enrollment.resolve_scope({"classes": ["maths-7a"]})


def test_a_leader_sees_only_the_licence_holders_at_their_locations(district, vpp_sandbox, rpc_as):
    both = vpp_sandbox.issue_token(locationName="District Office")
    vpp_sandbox.add_asset(both, "222", 10)
    with rpc_as() as rpc:
        token_id = rpc.vpp.add_content_token(both, name="District", locations=["A", "B"])["id"]
        vpp_sandbox.post("assignments", sToken=both, adamId="222", serialNumbers=["OLDMDM1"])  # a previous MDM's
        rpc.vpp.sync_assets(token_id)
        rpc.vpp.assign_licenses(token_id, "222", serial_numbers=["SER7A1", "SER7B1"])
        assert rpc.vpp.get_asset(token_id, "222")["serial_numbers"] == ["OLDMDM1", "SER7A1", "SER7B1"]
    with rpc_as(Actor("leader@school.example", "location_leader", ("A",))) as rpc:
        # SER7B1's user is at B; enrollment knows nothing of OLDMDM1
        assert rpc.vpp.get_asset(token_id, "222")["serial_numbers"] == ["SER7A1"]
    with rpc_as(Actor("t7a@school.example", "teacher", ("A",))) as rpc:
        with pytest.raises(PermissionDenied):  # a teacher names classes, never devices
            rpc.enrollment.device_locations(["SER7B1"])
