"""The roster service over the real broker: RPC, stored plans, events, access and the HTTP API."""
from __future__ import annotations

import base64
import io
import json

import httpx
import openpyxl
import pytest
from nameko.events import event_handler
from nameko.rpc import rpc
from nameko.testing.utils import get_container

from services.roster.adapters import spreadsheets
from services.roster.service import RosterService
from shared.auth import Actor
from shared.errors import Conflict, NotFound, PermissionDenied, UpstreamError, ValidationError
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

LEADER_NORTH = Actor(id="leader@north", role="location_leader", locations=("north",))
TEACHER = Actor(id="teacher@north", role="teacher", locations=("north",))
MSP = Actor(id="msp@partner", role="msp")

RECEIVED: list[tuple[str, dict]] = []
ASM_PAGES: dict[str, list[dict]] = {}
FAULTY_CALLS: list[str] = []


class EventCollector:
    name = "roster_test_collector"

    @event_handler("roster", "UserImported")
    def user_imported(self, payload):
        RECEIVED.append(("UserImported", payload))

    @event_handler("roster", "ClassImported")
    def class_imported(self, payload):
        RECEIVED.append(("ClassImported", payload))


class FakeEnrollment:
    """Stands in for the enrollment service's fetch_roster, two pages per kind."""

    name = "enrollment"

    @rpc
    def get_server_token(self, token_id):
        if token_id == "tok-gone":
            raise NotFound(f"there is no server token {token_id}")
        return {"id": token_id}

    @rpc
    def fetch_roster(self, token_id, kind, cursor=None):
        if token_id == "tok-broken":
            raise UpstreamError("Apple School Manager answered 503; try again later")
        if token_id == "tok-faulty":
            FAULTY_CALLS.append(kind)
            raise RuntimeError("a fault that is none of Orchard's errors")
        items = ASM_PAGES.get(kind, [])
        if cursor is None:
            return {"kind": kind, "items": items[:1], "cursor": "page-2", "more_to_follow": len(items) > 1}
        return {"kind": kind, "items": items[1:], "cursor": "end", "more_to_follow": False}


def workbook(users, classes=(), locations=(("north", "North"), ("south", "South"))) -> str:
    book = openpyxl.Workbook()
    book.remove(book.active)
    rows = {"Users": users, "Locations": locations, "Grade Levels": (), "Classes": classes}
    for sheet, content in rows.items():
        ws = book.create_sheet(sheet)
        ws.append([h for h, _ in spreadsheets.COLUMNS[sheet]])
        for row in content:
            ws.append(list(row))
    out = io.BytesIO()
    book.save(out)
    return base64.b64encode(out.getvalue()).decode()


def user_row(uid, kind="Student", location="north", email=None):
    return [uid, kind, "First", uid.upper(), email or f"{uid}@school.example", "", location, "7", ""]


@pytest.fixture
def roster_runner(runner_factory, orchard_config):
    RECEIVED.clear()
    runner = runner_factory(orchard_config, RosterService, EventCollector, FakeEnrollment)
    runner.start()
    return runner


@pytest.fixture
def roster(roster_runner, orchard_config):
    return orchard_config


@pytest.fixture
def roster_container(roster_runner):
    """The running roster service, whose periodic entrypoints a test calls directly (a second container on the
    same SQLite file would be refused)."""
    return get_container(roster_runner, RosterService)


def test_spreadsheet_preview_apply_events_and_idempotence(roster, rpc_as):
    content = workbook(
        [user_row("t1", "Teacher"), user_row("s1"), user_row("s2"), user_row("s2"),
         user_row("s3", location="south")],
        classes=[["c1", "Maths", "Maths", "north", "B1", "t1", "s1, s2"]])
    with rpc_as() as rpc:
        template = rpc.roster.spreadsheet_template("xlsx")
        assert template["filename"].endswith(".xlsx")
        plan = rpc.roster.preview_spreadsheet("district.xlsx", content)
        assert plan["counts"]["user"]["add"] == 4 and plan["counts"]["class"]["add"] == 1
        assert [(r["sheet"], r["row"]) for r in plan["rejected"]] == [("Users", 5)]
        assert rpc.roster.list_users()["total"] == 0  # a preview writes nothing
        stored = rpc.roster.plan(plan["plan_id"], page_size=2)
        assert stored["status"] == "previewed" and len(stored["changes"]) == 2

        result = rpc.roster.apply_plan(plan["plan_id"])
        assert result["events"] == 5 and not result["already_applied"]
        again = rpc.roster.apply_plan(plan["plan_id"])
        assert again["already_applied"] and again["events"] == 0

        users = rpc.roster.list_users(location_id="north")
        assert [u["user_id"] for u in users["users"]] == ["s1", "s2", "t1"]
        assert rpc.roster.get_user("s1")["classes"] == [{"class_id": "c1", "role": "student"}]
        classes = rpc.roster.list_classes()["classes"]
        assert classes[0]["teacher_ids"] == ["t1"] and classes[0]["student_ids"] == ["s1", "s2"]

        same = rpc.roster.preview_spreadsheet("district.xlsx", content)
        assert same["total_changes"] == 0
        runs = rpc.roster.import_runs()
        assert [r["status"] for r in runs] == ["previewed", "applied"]

    wait_for(lambda: len(RECEIVED) == 5, what="five events")
    imported = {p["user_id"]: p for kind, p in RECEIVED if kind == "UserImported"}
    assert set(imported) == {"t1", "s1", "s2", "s3"}
    assert imported["s1"]["email"] == "s1@school.example" and imported["s1"]["source"] == "xlsx"
    assert imported["s1"]["locations"] == ["north"] and imported["s1"]["v"] == 1


def test_the_template_is_built_off_the_event_loop():
    """openpyxl takes most of a second of CPU to write it: the worker's heartbeats and the other workers go on."""
    import time

    import eventlet
    from nameko.testing.services import worker_factory

    beats: list[float] = []

    def beat():
        while True:
            beats.append(time.monotonic())
            eventlet.sleep(0.01)

    service = worker_factory(RosterService)
    beating = eventlet.spawn(beat)
    eventlet.sleep(0)
    try:
        started = time.monotonic()
        template = service.spreadsheet_template("xlsx")
        ended = time.monotonic()
    finally:
        beating.kill()
    assert template["filename"] == "orchard-roster-template.xlsx"
    during = [started] + [at for at in beats if started < at < ended] + [ended]
    assert max(b - a for a, b in zip(during, during[1:])) < 0.3, f"the hub stood still for {ended - started:.2f} s"


def test_renamed_user_is_updated_and_mass_delete_needs_consent(roster, rpc_as):
    users = [user_row(f"s{i}") for i in range(10)]
    with rpc_as() as rpc:
        rpc.roster.apply_plan(rpc.roster.preview_spreadsheet("a.xlsx", workbook(users))["plan_id"])
        renamed = [user_row("s0-new", email="s0@school.example")] + users[1:]
        plan = rpc.roster.preview_spreadsheet("b.xlsx", workbook(renamed))
        assert plan["counts"]["user"] == {"add": 0, "update": 1, "delete": 0}
        rpc.roster.apply_plan(plan["plan_id"])
        assert rpc.roster.get_user("s0-new")["email"] == "s0@school.example"

        plan = rpc.roster.preview_spreadsheet("c.xlsx", workbook(renamed[:8]))
        assert plan["needs_mass_delete_approval"]
        with pytest.raises(Conflict, match="allow_mass_delete"):
            rpc.roster.apply_plan(plan["plan_id"])
        assert rpc.roster.list_users()["total"] == 10
        rpc.roster.apply_plan(plan["plan_id"], allow_mass_delete=True)
        assert rpc.roster.list_users()["total"] == 8


def test_preview_records_from_another_service(roster, rpc_as):
    batch = {"source": "ldap", "locations": [{"location_id": "north", "name": "North"}],
             "users": [{"user_id": "d1", "user_type": "staff", "name": "Dee",
                        "locations": ["north"]}]}
    with rpc_as() as rpc:
        plan = rpc.roster.preview_records(batch, {"only_add_new": True})
        assert plan["source"] == "ldap" and plan["counts"]["user"]["add"] == 1
        with pytest.raises(ValidationError, match="batch.users\\[0\\].user_id must be a string"):
            rpc.roster.preview_records({"source": "ldap", "users": [{"user_id": 1, "user_type": "staff"}]})
        with pytest.raises(ValidationError, match="unknown import option"):
            rpc.roster.preview_records(batch, {"colour": "red"})
        with pytest.raises(NotFound):
            rpc.roster.apply_plan("no-such-plan")


def test_one_directory_never_deletes_another_directorys_users(roster, rpc_as):
    def batch(source, user_id):
        return {"source": source, "locations": [{"location_id": "north", "name": "North"}],
                "users": [{"user_id": user_id, "user_type": "staff", "name": user_id, "locations": ["north"]}]}

    with rpc_as() as rpc:
        for source, user_id in (("ldap:1", "from-one"), ("ldap:2", "from-two"), ("ldap:2", "from-two")):
            plan = rpc.roster.preview_records(batch(source, user_id))
            assert plan["counts"]["user"]["delete"] == 0
            rpc.roster.apply_plan(plan["plan_id"])
        assert sorted(u["user_id"] for u in rpc.roster.list_users()["users"]) == ["from-one", "from-two"]


def test_access_by_role_and_location(roster, rpc_as):
    content = workbook([user_row("n1"), user_row("s1", location="south")])
    with rpc_as() as rpc:
        rpc.roster.apply_plan(rpc.roster.preview_spreadsheet("a.xlsx", content)["plan_id"])
    with rpc_as(LEADER_NORTH) as rpc:
        assert [u["user_id"] for u in rpc.roster.list_users()["users"]] == ["n1"]
        assert [loc["location_id"] for loc in rpc.roster.list_locations()] == ["north"]
        with pytest.raises(NotFound):
            rpc.roster.get_user("s1")
        with pytest.raises(NotFound):
            rpc.roster.list_users(location_id="south")
        # the leader's import may not touch the south school, nor delete its users
        plan = rpc.roster.preview_spreadsheet("north.xlsx", workbook(
            [user_row("n2"), user_row("s9", location="south")], locations=[("north", "North")]))
        assert plan["counts"]["user"] == {"add": 1, "update": 0, "delete": 1}  # n2 in, n1 out
        assert "outside the locations you manage" in plan["rejected"][0]["reason"]
        # the leader sees their own plan, not the administrator's district-wide one
        assert [r["plan_id"] for r in rpc.roster.import_runs()] == [plan["plan_id"]]
        with pytest.raises(PermissionDenied):
            rpc.roster.create_api_token("mine")
    for reader in (TEACHER, MSP):
        with rpc_as(reader) as rpc:
            assert rpc.roster.list_users()["total"] >= 1
            with pytest.raises(PermissionDenied):
                rpc.roster.preview_spreadsheet("a.xlsx", content)


def test_asm_preview_follows_preferences_and_warns(roster, rpc_as):
    ASM_PAGES.update({
        "location": [{"unique_identifier": "L1", "name": "North"}],
        "course": [],
        "class": [{"unique_identifier": "C1", "name": "Maths", "location": {"unique_identifier": "L1"},
                     "instructor_unique_identifiers": ["P1"], "student_unique_identifiers": ["P2"]}],
        "person": [{"unique_identifier": "P1", "person_id": "t-1", "name": "Tea Cher",
                     "email_address": "t@school.example"},
                    {"unique_identifier": "P2", "person_id": "s-1", "name": "Stu Dent",
                     "email_address": "s@school.example", "grade": "7"},
                    {"unique_identifier": "P3", "person_id": "x-1", "name": "No Class"}],
    })
    with rpc_as() as rpc:
        rpc.roster.set_asm_preferences("tok-1", {"user_id_source": "person_number",
                                                 "skip_student_email": True})
        assert rpc.roster.get_asm_preferences("tok-1")["preferences"]["skip_student_email"]
        plan = rpc.roster.preview_asm("tok-1")
        assert plan["source"] == "asm" and plan["counts"]["user"]["add"] == 2
        assert any("Person Number" in w for w in plan["warnings"])
        assert any("in no class were skipped" in w for w in plan["warnings"])
        rpc.roster.apply_plan(plan["plan_id"])
        student = rpc.roster.get_user("s-1")
        assert student["user_type"] == "student" and student["email"] is None
        assert rpc.roster.get_user("t-1")["user_type"] == "teacher"
        with pytest.raises(ValidationError, match="email_source"):
            rpc.roster.set_asm_preferences("tok-1", {"email_source": "carrier pigeon"})
        with pytest.raises(NotFound, match="no server token tok-gone"):
            rpc.roster.set_asm_preferences("tok-gone", {"sync_time": "02:30"})
        with pytest.raises(NotFound, match="no server token tok-gone"):
            rpc.roster.get_asm_preferences("tok-gone")


def test_mosyle_compatible_api(roster, rpc_as):
    base = f"http://{roster['SERVICES']['roster']['http_address']}"
    with rpc_as() as rpc:
        open_token = rpc.roster.create_api_token("script")
        locked = rpc.roster.create_api_token("locked", ["203.0.113.0/24"])
        assert "token" not in rpc.roster.list_api_tokens()[0]

    token = open_token["token"]
    write = httpx.post(f"{base}/v2/users", json={"accessToken": token, "elements": [
        {"operation": "save", "id": "m1", "name": "Mo Syle", "type": "S",
         "locations": [["North Campus", "5"]]},
        {"operation": "save", "id": "m2", "name": "Bad Type", "type": "X"},
        {"operation": "save", "id": "m3", "name": "Tea Cher", "type": "T",
         "locations": [{"name": "North Campus", "grade_level": ""}]},
    ]})
    assert write.status_code == 200
    assert [e["status"] for e in write.json()["response"]] == ["OK", "ERROR", "OK"]

    classes = httpx.post(f"{base}/v2/classes", data={"content": json.dumps({
        "accessToken": token, "elements": [
            {"id": "k1", "class_name": "Maths", "location": "North Campus", "idteacher": "m3",
             "students": ["m1"]},
            {"id": "k2", "class_name": "Art", "location": "North Campus", "idteacher": "ghost"}]})})
    assert [e["status"] for e in classes.json()["response"]] == ["OK", "ERROR"]

    listed = httpx.post(f"{base}/v2/listusers", json={
        "accessToken": token, "options": {"types": ["S"], "specific_columns": ["id", "locations"],
                                          "page_size": 10}}).json()
    assert listed == {"status": "OK", "response": {
        "users": [{"id": "m1", "locations": [{"name": "North Campus", "grade_level": "5"}]}],
        "rows": 1, "page": 1, "page_size": 10}}
    listed = httpx.post(f"{base}/v2/listclasses", json={"accessToken": token}).json()
    assert listed["response"]["classes"][0]["students"] == ["m1"]

    deleted = httpx.post(f"{base}/v2/users", json={"accessToken": token, "elements": [
        {"operation": "delete", "id": "m1"}]})
    assert deleted.json()["response"][0]["status"] == "OK"

    assert httpx.post(f"{base}/v2/listusers", json={"accessToken": locked["token"]}).status_code == 403
    for _ in range(3):  # the same refusal again is counted, not written to the audit log again
        assert httpx.post(f"{base}/v2/listusers", json={"accessToken": "nope"}).status_code == 401
    assert httpx.post(f"{base}/v2/listusers", content=b"{not json").status_code == 400
    # bodies beyond what any request needs are refused before they are read, as are forms of countless parts
    too_large = httpx.post(f"{base}/v2/listusers", content=b"[" * (9 * 1024 * 1024))
    assert too_large.status_code == 413 and too_large.json()["error"] == "RequestEntityTooLarge"
    parts = httpx.post(f"{base}/v2/listusers", files={f"part{n}": (f"f{n}", b"x") for n in range(200)})
    assert parts.status_code == 413
    with rpc_as() as rpc:
        rpc.roster.revoke_api_token(open_token["token_id"])
        assert rpc.roster.list_users()["total"] == 1  # m3 stays, m1 was deleted
    assert httpx.post(f"{base}/v2/listusers", json={"accessToken": token}).status_code == 401
    with rpc_as() as rpc:
        refused = [e for e in rpc.roster.audit_log() if e["action"] == "api.refused"]
        assert sorted(e["details"]["reason"] for e in refused) == [
            "address not allowed", "revoked access token", "unknown access token"]
        assert all(token not in json.dumps(e) for e in rpc.roster.audit_log())

    document = httpx.get(f"{base}/v2/openapi.json").json()
    assert document["servers"][0]["url"] == base and "/v2/users" in document["paths"]

    metrics = httpx.get(f"http://127.0.0.1:{roster['SERVICES']['roster']['metrics_port']}/metrics").text
    assert 'orchard_roster_api_requests_total{endpoint="listusers",status="401"} 4.0' in metrics
    assert 'orchard_roster_api_refusals_not_audited_total{reason="unknown access token"} 2.0' in metrics
    assert 'orchard_roster_import_runs_total{outcome="applied",source="api"}' in metrics


def test_daily_asm_sync_applies_and_stops_at_the_deletion_guard(roster, rpc_as, roster_container):
    import sqlalchemy as sa
    from nameko.testing.services import entrypoint_hook

    from services.roster.adapters import tables

    persons = [{"unique_identifier": f"P{i}", "person_id": f"p-{i}", "name": f"Person {i}"}
               for i in range(4)]
    ASM_PAGES.update({
        "location": [{"unique_identifier": "L1", "name": "North"}], "course": [],
        "class": [{"unique_identifier": "C1", "name": "Maths", "location": {"unique_identifier": "L1"},
                   "instructor_unique_identifiers": ["P0"],
                   "student_unique_identifiers": ["P1", "P2", "P3"]}],
        "person": persons,
    })
    container = roster_container
    engine = sa.create_engine(roster["SERVICES"]["roster"]["database_url"])

    def sync_now():
        with engine.begin() as connection:  # make the token due again
            connection.execute(tables.asm_preferences.update().values(last_sync_at=None))
        with entrypoint_hook(container, "daily_asm_sync") as daily_sync:
            daily_sync()
        with rpc_as() as rpc:
            return rpc.roster.get_asm_preferences("tok-daily")["last_sync_outcome"]

    with rpc_as() as rpc:
        rpc.roster.set_asm_preferences("tok-daily", {"sync_time": "00:00"})
    assert sync_now().startswith("applied plan")
    with rpc_as() as rpc:
        assert rpc.roster.list_users()["total"] == 4

    ASM_PAGES["class"][0]["student_unique_identifiers"] = ["P1"]  # two students leave
    outcome = sync_now()
    assert outcome.startswith("stopped before applying plan") and "allow_mass_delete" in outcome
    with rpc_as() as rpc:
        assert rpc.roster.list_users()["total"] == 4
        stopped = [e for e in rpc.roster.audit_log() if e["action"] == "asm.sync_stopped"]
        assert stopped and rpc.roster.apply_plan(stopped[0]["details"]["plan_id"],
                                                 allow_mass_delete=True)["events"] == 3  # two UserDeleted, one ClassUpdated
        assert rpc.roster.list_users()["total"] == 2
    engine.dispose()


def test_a_failing_daily_asm_sync_is_recorded(roster, rpc_as, roster_container):
    from nameko.testing.services import entrypoint_hook

    container = roster_container
    with rpc_as() as rpc:
        rpc.roster.set_asm_preferences("tok-broken", {"sync_time": "00:00"})
        with pytest.raises(UpstreamError, match="503"):
            rpc.roster.preview_asm("tok-broken")
    with entrypoint_hook(container, "daily_asm_sync") as daily_sync:
        daily_sync()
    with rpc_as() as rpc:
        outcome = rpc.roster.get_asm_preferences("tok-broken")["last_sync_outcome"]
        assert outcome == "failed: Apple School Manager answered 503; try again later"
        assert [e["action"] for e in rpc.roster.audit_log()][0] == "asm.sync_failed"


def test_a_daily_asm_sync_that_fails_unexpectedly_is_recorded_backs_off_and_holds_up_no_other(
        roster, rpc_as, roster_container):
    import sqlalchemy as sa
    from nameko.testing.services import entrypoint_hook

    from services.roster.adapters import tables
    from shared.storage import utc_now

    ASM_PAGES.update({"location": [{"unique_identifier": "L1", "name": "North"}], "course": [], "class": [],
                      "person": []})
    FAULTY_CALLS.clear()
    container = roster_container
    with rpc_as() as rpc:  # the failing token is first in the table, and neither has ever run
        rpc.roster.set_asm_preferences("tok-faulty", {"sync_time": "00:00"})
        rpc.roster.set_asm_preferences("tok-fine", {"sync_time": "00:00"})

    def tick():
        with entrypoint_hook(container, "daily_asm_sync") as daily_sync:
            daily_sync()

    for _ in range(3):
        tick()
    with rpc_as() as rpc:
        faulty, fine = (rpc.roster.get_asm_preferences(t) for t in ("tok-faulty", "tok-fine"))
        assert fine["last_sync_outcome"].startswith("applied plan")
        assert faulty["last_sync_outcome"] == "failed: internal error, see the roster service's log"
        (failed,) = [e for e in rpc.roster.audit_log() if e["action"] == "asm.sync_failed"]
        assert failed["target"] == "server_token:tok-faulty" and failed["details"]["retry_at"] == faulty["retry_at"]
    assert FAULTY_CALLS == ["location"]  # tried once: the third tick found it backing off

    engine = sa.create_engine(roster["SERVICES"]["roster"]["database_url"])
    with engine.begin() as connection:  # its retry time comes
        connection.execute(tables.asm_preferences.update().where(tables.asm_preferences.c.token_id == "tok-faulty")
                           .values(retry_at=utc_now()))
    engine.dispose()
    tick()
    with rpc_as() as rpc:
        again = rpc.roster.get_asm_preferences("tok-faulty")
        assert FAULTY_CALLS == ["location", "location"] and again["retry_at"] > faulty["retry_at"]


def test_a_daily_asm_sync_whose_plan_went_stale_is_tried_again_soon(roster, rpc_as, roster_container, monkeypatch):
    from nameko.testing.services import entrypoint_hook

    from services.roster.adapters.hierarchy import SqlHierarchy
    from services.roster.adapters.imports import ImportRunner

    ASM_PAGES.update({"location": [{"unique_identifier": "L1", "name": "North"}], "course": [], "class": [],
                      "person": []})
    preview = ImportRunner.preview

    def another_apply_lands(self, *args, **kwargs):  # between the sync's preview and its apply
        summary = preview(self, *args, **kwargs)
        SqlHierarchy(self.session).claim_version(summary["base_version"])
        return summary

    monkeypatch.setattr(ImportRunner, "preview", another_apply_lands)
    with rpc_as() as rpc:
        rpc.roster.set_asm_preferences("tok-raced", {"sync_time": "00:00"})
    with entrypoint_hook(roster_container, "daily_asm_sync") as daily_sync:
        daily_sync()
    with rpc_as() as rpc:
        status = rpc.roster.get_asm_preferences("tok-raced")
        assert status["last_sync_outcome"].startswith("failed: the roster changed since this plan was previewed")
        assert status["retry_at"] is not None  # minutes from now, not tomorrow
        actions = [e["action"] for e in rpc.roster.audit_log()]
        assert "asm.sync_failed" in actions and "asm.sync_stopped" not in actions


def test_bad_rpc_arguments_are_refused_with_typed_errors(roster, rpc_as):
    with rpc_as() as rpc:
        for options in ("abc", {"delete_user_ids": 5}, {"only_add_new": "no"}):
            with pytest.raises(ValidationError):
                rpc.roster.preview_records({"source": "ldap"}, options)
        with pytest.raises(ValidationError, match="source is 30 characters long"):
            rpc.roster.preview_records({"source": "x" * 30})
        for prefs in ({"sync_time": 5}, {"sync_time": "²:05"}, {"locations": 5},
                      {"only_add_new": "no"}):
            with pytest.raises(ValidationError):
                rpc.roster.set_asm_preferences("tok-1", prefs)
        with pytest.raises(ValidationError, match="token_id is 101 characters long"):
            rpc.roster.set_asm_preferences("t" * 101, {})
        with pytest.raises(ValidationError, match="name is 201 characters long"):
            rpc.roster.create_api_token("n" * 201)
        with pytest.raises(ValidationError, match="page must be a whole number from 1 to"):
            rpc.roster.list_users(page=10**20)
        with pytest.raises(ValidationError, match="token_id must be a whole number from 1"):
            rpc.roster.revoke_api_token(10**30)
        with pytest.raises(NotFound, match="no API token"):
            rpc.roster.revoke_api_token(2**63 - 1)
        assert rpc.roster.list_users()["total"] == 0 and rpc.roster.list_api_tokens() == []
        for bad in (5, "u1", [""], [1]):
            with pytest.raises(ValidationError, match="user_ids must be a list of non-empty strings"):
                rpc.roster.users_in_scope(user_ids=bad)
        with pytest.raises(ValidationError, match="at most 1000 user_ids"):
            rpc.roster.users_in_scope(user_ids=["u"] * 1001)


def test_a_location_leader_cannot_loosen_the_deletion_guard(roster, rpc_as):
    content = workbook([user_row("n1")], locations=[("north", "North")])
    with rpc_as(LEADER_NORTH) as rpc:
        with pytest.raises(PermissionDenied, match="cannot raise max_user_delete_share"):
            rpc.roster.preview_spreadsheet("north.xlsx", content, {"max_user_delete_share": 0.5})
        stricter = rpc.roster.preview_spreadsheet("north.xlsx", content,
                                                  {"max_user_delete_share": 0.05})
        assert stricter["max_user_delete_share"] == 0.05
        with pytest.raises(PermissionDenied, match="cannot approve a mass deletion; ask an administrator"):
            rpc.roster.apply_plan(stricter["plan_id"], allow_mass_delete=True)
        assert rpc.roster.list_users()["total"] == 0


def test_mosyle_api_answers_bad_input_with_400_and_reports_the_right_element(roster, rpc_as):
    base = f"http://{roster['SERVICES']['roster']['http_address']}"
    with rpc_as() as rpc:
        token = rpc.roster.create_api_token("script")["token"]
    for body in (b'{"accessToken": "\\ud800"}',
                 b'{"accessToken": "x", "options": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                 json.dumps({"accessToken": token, "options": {"page": "²"}}).encode(),
                 json.dumps({"accessToken": token, "options": {"page": 10**20}}).encode()):
        answer = httpx.post(f"{base}/v2/listusers", content=body,
                            headers={"content-type": "application/json"})
        assert answer.status_code == 400 and answer.json()["status"] == "ERROR", answer.text

    saved = httpx.post(f"{base}/v2/users", json={"accessToken": token, "elements": [
        {"id": "a1", "name": "Ann", "type": "S", "locations": [["Alpha"]]},
        {"id": "a2", "name": "Bob", "type": "S", "locations": [["Alpha"]]},
        {"id": "a3", "name": "Cy", "type": "S", "locations": [["X" * 200]]}]})
    assert [e["status"] for e in saved.json()["response"]] == ["OK", "OK", "ERROR"]
    twice = httpx.post(f"{base}/v2/classes", json={"accessToken": token, "elements": [
        {"id": "k1", "class_name": "Maths", "location": "Alpha", "students": ["a1", "a1", "a2"]}]})
    assert twice.status_code == 200 and twice.json()["response"][0]["status"] == "OK"
    listed = httpx.post(f"{base}/v2/listclasses", json={"accessToken": token}).json()
    assert listed["response"]["classes"][0]["students"] == ["a1", "a2"]
