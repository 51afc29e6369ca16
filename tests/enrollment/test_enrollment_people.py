"""Devices meet people over the real broker: assignment, shared groups and scopes (enrollment + roster)."""
from __future__ import annotations

import re

import httpx
import pytest
from nameko.events import event_handler

from services.enrollment.service import EnrollmentService
from services.roster.service import RosterService
from shared.auth import Actor
from shared.contracts.roster import UserUpdated
from shared.errors import Conflict, NotFound, PermissionDenied, ValidationError
from tests.enrollment.signing import assign_ade_devices
from tests.people import GRADE_7_STUDENTS_AT_A, USERS, enroll, import_roster, moved_to_grade_8
from tests.reliability.conftest import publish
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

LEADER_A = Actor(id="leader@a", role="location_leader", locations=("A",))
RECEIVED: list[tuple[str, dict]] = []


class AssignmentEvents:
    name = "people_test_collector"

    @event_handler("enrollment", "DeviceUserAssigned")
    def assigned(self, payload):
        RECEIVED.append(("assigned", payload))

    @event_handler("enrollment", "DeviceUserUnassigned")
    def unassigned(self, payload):
        RECEIVED.append(("unassigned", payload))


@pytest.fixture
def people(runner_factory, orchard_config, rpc_as, dep_sandbox):
    RECEIVED.clear()
    orchard_config["SERVICES"]["enrollment"]["dep_url"] = dep_sandbox.url
    runner = runner_factory(orchard_config, EnrollmentService, RosterService, AssignmentEvents)
    runner.start()
    serials = ["SER7A1", "SER7A2", "SER8A1", "SER7B1", "SERT7A", "SERCART1", "SERCART2"]
    with rpc_as() as rpc:
        assign_ade_devices(rpc, dep_sandbox, serials)
    for serial in serials:
        enroll(orchard_config, serial)
    with rpc_as() as rpc:
        import_roster(rpc, USERS)
    return orchard_config


def test_assign_move_and_unassign_publish_events(people, rpc_as):
    with rpc_as() as rpc:
        assert rpc.enrollment.device_assignment("ser7a1")["user_id"] is None
        assigned = rpc.enrollment.assign_device("ser7a1", "s7a1")
        assert assigned == {"serial_number": "SER7A1", "user_id": "s7a1", "group_id": None, "locations": ["A"],
                            "source": "admin"}
        assert rpc.enrollment.assign_device("SER7A1", "s7a1") == assigned  # repeating changes nothing
        assert rpc.enrollment.assign_device("SER7A1", "s7a2")["user_id"] == "s7a2"  # a move
        assert rpc.enrollment.device_assignment("SER7A1")["user_id"] == "s7a2"
        assert rpc.enrollment.unassign_device("SER7A1")["user_id"] is None
        assert rpc.enrollment.device_assignment("SER7A1")["user_id"] is None
        assert [e["action"] for e in rpc.enrollment.audit_log("device:SER7A1")] == [
            "device.unassigned", "device.assigned", "device.assigned"]

    wait_for(lambda: len(RECEIVED) == 4, what="four assignment events")
    by_kind = {kind: [(p["serial_number"], p["user_id"]) for k, p in RECEIVED if k == kind]
               for kind in ("assigned", "unassigned")}  # each type arrives in order on its own queue
    assert by_kind == {"assigned": [("SER7A1", "s7a1"), ("SER7A1", "s7a2")],
                       "unassigned": [("SER7A1", "s7a1"), ("SER7A1", "s7a2")]}


def test_bad_assignments_are_refused_and_change_nothing(people, rpc_as):
    with rpc_as() as rpc:
        with pytest.raises(NotFound, match="knows no device NOPE"):
            rpc.enrollment.assign_device("NOPE", "s7a1")
        with pytest.raises(NotFound, match="no user 'ghost'"):
            rpc.enrollment.assign_device("SER7A1", "ghost")
        with pytest.raises(ValidationError):
            rpc.enrollment.assign_device("", "s7a1")
        group = rpc.enrollment.create_shared_group("Cart 1", "A")
        rpc.enrollment.add_devices_to_group(group["id"], ["SERCART1"])
        with pytest.raises(Conflict, match="remove it from the group first"):
            rpc.enrollment.assign_device("SERCART1", "s7a1")
        assert rpc.enrollment.device_assignment("SERCART1")["group_id"] == group["id"]
        assert rpc.enrollment.device_assignment("SER7A1")["user_id"] is None

    with rpc_as(LEADER_A) as rpc:
        with pytest.raises(NotFound):  # the roster hides users of other locations
            rpc.enrollment.assign_device("SER7B1", "s7b1")
        assert rpc.enrollment.assign_device("SER7A1", "s7a1")["user_id"] == "s7a1"

    # a device of location B's user is neither shown nor taken by location A's leader
    with rpc_as() as rpc:
        rpc.enrollment.assign_device("SER7B1", "s7b1")
    with rpc_as(LEADER_A) as rpc:
        shown = rpc.enrollment.device_assignment("SER7B1")
        assert (shown["user_id"], shown["locations"], shown["assigned_outside_your_locations"]) == (None, [], True)
        with pytest.raises(PermissionDenied, match="location\\(s\\) B"):
            rpc.enrollment.assign_device("SER7B1", "s7a1")
        with pytest.raises(PermissionDenied):
            rpc.enrollment.unassign_device("SER7B1")
    with rpc_as() as rpc:
        assert rpc.enrollment.device_assignment("SER7B1")["user_id"] == "s7b1"


def test_shared_groups(people, rpc_as):
    with rpc_as() as rpc:
        with pytest.raises(NotFound, match="the roster has no location 'nowhere'"):
            rpc.enrollment.create_shared_group("Cart 1", "nowhere")
        cart = rpc.enrollment.create_shared_group("Cart 1", "A")
        with pytest.raises(Conflict, match="already has a shared device group"):
            rpc.enrollment.create_shared_group("Cart 1", "A")
        rpc.enrollment.assign_device("SER7A1", "s7a1")
        with pytest.raises(Conflict, match="SER7A1 \\(user s7a1\\)"):  # all or nothing
            rpc.enrollment.add_devices_to_group(cart["id"], ["SERCART1", "SER7A1"])
        assert rpc.enrollment.list_shared_groups()[0]["devices"] == 0
        added = rpc.enrollment.add_devices_to_group(cart["id"], ["sercart1", "SERCART2"])
        assert added["serial_numbers"] == ["SERCART1", "SERCART2"] and added["added"] == ["SERCART1", "SERCART2"]
        removed = rpc.enrollment.remove_devices_from_group(cart["id"], ["SERCART2", "SER7A1"])
        assert (removed["removed"], removed["not_in_group"]) == (["SERCART2"], ["SER7A1"])
        assert rpc.enrollment.rename_shared_group(cart["id"], "Cart One")["name"] == "Cart One"
        other = rpc.enrollment.create_shared_group("Lab", "B")

    with rpc_as(LEADER_A) as rpc:
        assert [g["name"] for g in rpc.enrollment.list_shared_groups()] == ["Cart One"]
        with pytest.raises(PermissionDenied, match="location\\(s\\) B"):
            rpc.enrollment.create_shared_group("Mine", "B")
        with pytest.raises(NotFound):
            rpc.enrollment.delete_shared_group(other["id"])

    with rpc_as() as rpc:
        assert rpc.enrollment.delete_shared_group(cart["id"])["unassigned"] == ["SERCART1"]
        assert rpc.enrollment.device_assignment("SERCART1")["group_id"] is None
        assert [g["name"] for g in rpc.enrollment.list_shared_groups()] == ["Lab"]




def assignment_gauge(config: dict) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{config['SERVICES']['enrollment']['metrics_port']}/metrics").text
    return {kind: float(value) for kind, value in
            re.findall(r'^orchard_enrollment_device_assignments\{assignment="(\w+)"\} (\S+)$', text, re.M)}


def test_scope_follows_the_roster(people, rpc_as):
    with rpc_as() as rpc:
        for serial, user in (("SER7A1", "s7a1"), ("SER7A2", "s7a2"), ("SER8A1", "s8a1"), ("SER7B1", "s7b1"),
                             ("SERT7A", "t7a")):
            rpc.enrollment.assign_device(serial, user)
        cart = rpc.enrollment.create_shared_group("Cart 1", "A")
        rpc.enrollment.add_devices_to_group(cart["id"], ["SERCART1"])

        assert assignment_gauge(people) == {"user": 5, "shared": 1, "unassigned": 1}

        reached = rpc.enrollment.resolve_scope(GRADE_7_STUDENTS_AT_A)
        assert reached == [
            {"serial_number": "SER7A1", "user_id": "s7a1", "group_id": None, "locations": ["A"]},
            {"serial_number": "SER7A2", "user_id": "s7a2", "group_id": None, "locations": ["A"]},
        ]
        both = rpc.enrollment.resolve_scope({"grade_levels": ["7"], "user_types": ["student"],
                                             "groups": [cart["id"]], "devices": ["SERCART2"]})
        assert [r["serial_number"] for r in both] == ["SER7A1", "SER7A2", "SER7B1", "SERCART1", "SERCART2"]

        import_roster(rpc, moved_to_grade_8("s7a2"))
        assert [r["serial_number"] for r in rpc.enrollment.resolve_scope(GRADE_7_STUDENTS_AT_A)] == ["SER7A1"]

        with pytest.raises(ValidationError, match="a scope has no grades"):
            rpc.enrollment.resolve_scope({"grades": ["7"]})
        with pytest.raises(NotFound):
            rpc.enrollment.resolve_scope({"devices": ["UNKNOWN1"]})

    with rpc_as(LEADER_A) as rpc:
        with pytest.raises(PermissionDenied, match="location\\(s\\) B"):
            rpc.enrollment.resolve_scope({"locations": ["A", "B"], "grade_levels": ["7"]})
        # without naming a location, a leader reaches only their own
        assert [r["serial_number"] for r in rpc.enrollment.resolve_scope({"grade_levels": ["7"]})] == [
            "SER7A1", "SERT7A"]


def test_many_devices_are_assigned_in_one_call_and_each_refusal_is_reported(people, rpc_as):
    with rpc_as() as rpc:
        for bad in ([], [{"serial_number": "SER7A1"}], "SER7A1"):
            with pytest.raises(ValidationError):
                rpc.enrollment.assign_devices(bad)
        answer = rpc.enrollment.assign_devices([
            {"serial_number": "ser7a1", "user_id": "s7a1"}, {"serial_number": "SER7A2", "user_id": "s7a2"},
            {"serial_number": "X" * 65, "user_id": "s8a1"},  # one bad value fails its pair, not the call
            {"serial_number": ["SER7A2"], "user_id": "s7a2"}, {"serial_number": "SER7A2", "user_id": 5},
            {"serial_number": "NOPE", "user_id": "s7a1"}, {"serial_number": "SER8A1", "user_id": "ghost"},
            {"serial_number": "SER7B1", "user_id": "s7b1"}, {"serial_number": "SER7B1", "user_id": "s7a1"}])
        assert answer["assigned"] == 2
        assert [(f["serial_number"][:9], f["reason"].split(":")[0]) for f in answer["failed"]] == [
            ("XXXXXXXXX", "a serial number must be a non-empty string of at most 64 characters"),
            ("['SER7A2'", "a serial number must be a non-empty string of at most 64 characters"),
            ("SER7A2", "user_id must be the roster's user ID, a non-empty string of at most 128 characters"),
            ("NOPE", "enrollment knows no device NOPE"),
            ("SER8A1", "there is no user 'ghost' in your locations"),
            ("SER7B1", "device SER7B1 is listed for more than one user (s7b1, s7a1); list it for one"),
            ("SER7B1", "device SER7B1 is listed for more than one user (s7b1, s7a1); list it for one")]
        assert rpc.enrollment.device_assignment("SER7A1")["source"] == "roster"
        assert rpc.enrollment.device_assignment("SER7B1")["user_id"] is None
        again = rpc.enrollment.assign_devices([{"serial_number": "SER7A1", "user_id": "s7a1"}])
        assert again == {"assigned": 1, "failed": []}  # a repeat changes nothing
        assert len(rpc.enrollment.audit_log("device:SER7A1")) == 1
    with rpc_as(LEADER_A) as rpc:  # B's student is not A's leader's to give a device to
        answer = rpc.enrollment.assign_devices([{"serial_number": "SER7B1", "user_id": "s7b1"}])
        assert answer["assigned"] == 0 and answer["failed"][0]["reason"] == "there is no user 's7b1' in your locations"
    wait_for(lambda: sorted(p["serial_number"] for k, p in RECEIVED if k == "assigned") == ["SER7A1", "SER7A2"],
             what="one event per device assigned")


def test_devices_follow_their_user_when_the_roster_moves_or_deletes_them(people, rpc_as):
    with rpc_as() as rpc:
        rpc.enrollment.assign_device("SER7A1", "s7a1")
        rpc.enrollment.assign_device("SER7B1", "s7b1")
        token = rpc.roster.create_api_token("sis")["token"]
    with rpc_as(LEADER_A) as rpc:
        assert rpc.enrollment.device_assignment("SER7B1")["user_id"] is None  # B's student: not A's to see

    api = f"http://{people['SERVICES']['roster']['http_address']}/v2/users"
    written = httpx.post(api, json={"accessToken": token, "elements": [
        {"operation": "save", "id": "s7b1", "name": "s7b1", "type": "S", "locations": [["Alpha", "7"]]},
        {"operation": "delete", "id": "s7a1"},
    ]}).json()["response"]
    assert [e["status"] for e in written] == ["OK", "OK"], written

    with rpc_as(LEADER_A) as rpc:  # the student moved to A: their device is A's leader's to manage now
        moved = wait_for(lambda: rpc.enrollment.device_assignment("SER7B1")["locations"] == ["A"] or None,
                         what="the device to follow its user to location A")
        assert moved and rpc.enrollment.unassign_device("SER7B1")["user_id"] is None
    with rpc_as() as rpc:  # the deleted student's device is free, and no scope reaches it through them
        wait_for(lambda: rpc.enrollment.device_assignment("SER7A1")["user_id"] is None,
                 what="the deleted user's device freed")
        assert rpc.enrollment.resolve_scope({"users": ["s7a1"]}) == []
        (entry,) = rpc.enrollment.audit_log("user:s7a1")
        assert (entry["action"], entry["details"]["serial_numbers"]) == ("device.unassigned", ["SER7A1"])
    wait_for(lambda: ("unassigned", "SER7A1", "s7a1") in [(k, p["serial_number"], p["user_id"]) for k, p in RECEIVED],
             what="the freed device announced")

    # the roster gives s8a1 a new user ID: their device goes along, announced as leaving the old ID for the new
    with rpc_as() as rpc:
        rpc.enrollment.assign_device("SER8A1", "s8a1")
    publish(people, UserUpdated(user_id="s8a1-new", previous_user_id="s8a1", user_type="student", locations=["A"],
                                source="api"))
    with rpc_as() as rpc:
        wait_for(lambda: rpc.enrollment.device_assignment("SER8A1")["user_id"] == "s8a1-new",
                 what="the device to follow the new user ID")
        (entry,) = rpc.enrollment.audit_log("user:s8a1-new")
        assert entry["details"]["previous_user_id"] == "s8a1"
    wait_for(lambda: {("unassigned", "s8a1"), ("assigned", "s8a1-new")} <= {
        (k, p["user_id"]) for k, p in RECEIVED if p["serial_number"] == "SER8A1"}, what="the change announced")


def test_imports_and_the_api_pre_assign_devices_through_enrollment(people, rpc_as):
    with rpc_as() as rpc:
        users = [dict(u, serial_numbers=["SER7A1", "NOSUCHDEVICE"]) if u["user_id"] == "s7a1" else u for u in USERS]
        applied = import_roster(rpc, users, source="csv")
        assert applied["device_assignments"]["assigned"] == 1
        assert applied["device_assignments"]["failed"] == [{
            "user_id": "s7a1", "serial_number": "NOSUCHDEVICE",
            "reason": "enrollment knows no device NOSUCHDEVICE: sync the server token from Apple School Manager "
                      "or enroll the device first"}]
        assert rpc.enrollment.device_assignment("SER7A1")["user_id"] == "s7a1"
        token = rpc.roster.create_api_token("sis")["token"]

    api = f"http://{people['SERVICES']['roster']['http_address']}/v2/users"
    written = httpx.post(api, json={"accessToken": token, "elements": [
        {"operation": "save", "id": "s8a1", "name": "s8a1", "type": "S", "locations": [["Alpha", "8"]],
         "assign_device": {"serial_number": "ser8a1"}},
        {"operation": "save", "id": "s7b1", "name": "s7b1", "type": "S", "locations": [["Beta", "7"]],
         "assign_device": {"serial_number": "GHOST1"}},
    ]}).json()["response"]
    assert [e["status"] for e in written] == ["OK", "ERROR"]
    assert "device GHOST1 was not assigned" in written[1]["error"]
    with rpc_as() as rpc:
        assert rpc.enrollment.device_assignment("SER8A1")["user_id"] == "s8a1"
        assert rpc.roster.get_user("s7b1")["serial_numbers"] == ["GHOST1"]  # the user was saved all the same


def test_cli_assigns_groups_and_resolves_a_scope(people, tmp_path, monkeypatch):
    import yaml
    from click.testing import CliRunner

    from orchard_cli.main import cli

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(people))
    monkeypatch.setenv("ORCHARD_CONFIG", str(path))
    runner = CliRunner()

    def orchard(*args: str, code: int = 0) -> str:
        result = runner.invoke(cli, list(args))
        assert result.exit_code == code, result.output
        return result.output

    assert "s7a1" in orchard("devices", "assign", "SER7A1", "s7a1")
    orchard("devices", "assign", "SER7A2", "s7a2")
    assert "NotFound: enrollment knows no device NOPE" in orchard("devices", "assign", "NOPE", "s7a1", code=1)
    group_id = re.search(r"^([0-9a-f-]{36}) ", orchard("groups", "create", "Cart 1", "--location", "A"), re.M).group(1)
    orchard("groups", "add", group_id, "SERCART1")
    assert "Cart 1" in orchard("groups", "list")
    table = orchard("scope", "resolve", "--grade", "7", "--location", "A", "--type", "student")
    assert re.findall(r"^(SER\w*\d)\s", table, re.M) == ["SER7A1", "SER7A2"] and "2 device(s)" in table
    assert "SERCART1" in orchard("scope", "resolve", "--group", group_id)
    assert "s7a1" not in orchard("devices", "unassign", "SER7A1")
    assert "SER7A1" not in orchard("scope", "resolve", "--grade", "7", "--location", "A")
    assert "deleted" in orchard("groups", "delete", group_id)
