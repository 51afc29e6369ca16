"""The import pipeline against SQLite and PostgreSQL: stored plans, batched writes, outbox."""
from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from services.roster.adapters import tables
from services.roster.adapters.api_tokens import ApiTokens
from services.roster.adapters.hierarchy import SqlHierarchy
from services.roster.adapters.imports import ImportRunner
from services.roster.adapters.mosyle_http import WRITE_ATTEMPTS, MosyleApi
from services.roster.domain.device_preassignment import DeviceAssignmentFailure
from services.roster.domain.planning import PlanOptions
from services.roster.domain.refusal_audits import RefusalAuditBudget
from shared.auth import Actor
from shared.contracts.roster import (
    ClassRecord, GradeLevelRecord, ImportBatch, LocationRecord, UserRecord,
)
from shared.errors import Conflict, NotFound, PermissionDenied
from shared.migrations import upgrade
from shared.storage import KernelTables, UnitOfWork, create_engine_for

pytestmark = pytest.mark.integration

ADMIN = Actor(id="admin", role="administrator")


@pytest.fixture
def unit(database_url):
    engine = create_engine_for(database_url.replace("postgresql://", "postgresql+psycopg2://"))
    upgrade(engine, "services.roster.migrations")
    work = UnitOfWork(sessionmaker(engine, expire_on_commit=False), KernelTables(tables.metadata),
                      after_commit=lambda: None)
    yield work
    work.close()
    engine.dispose()


def batch(users, classes=()):
    return ImportBatch(source="csv", locations=[LocationRecord(location_id="L1", name="North"),
                                                LocationRecord(location_id="L2", name="South")],
                       users=users, classes=list(classes))


def person(uid, email=None, kind="student", location="L1", **kw):
    kw.setdefault("locations", [location])
    return UserRecord(user_id=uid, user_type=kind, name=f"Person {uid}", email=email, **kw)


def run(unit, records, options=None, allow_mass_delete=False, actor=ADMIN):
    runner = ImportRunner(unit.session, unit.publish)
    summary = runner.preview(records, options or PlanOptions(), actor=actor)
    result = runner.apply(summary["plan_id"], actor=actor, allow_mass_delete=allow_mass_delete)
    unit.commit()
    return summary, result


def outbox_types(unit):
    outbox = tables.metadata.tables["outbox"]
    return [r.event_type for r in unit.session.execute(sa.select(outbox.c.event_type).order_by(outbox.c.id))]


def test_import_update_rename_and_delete(unit):
    maths = ClassRecord(class_id="c1", name="Maths", location_id="L1", teacher_ids=["t1"],
                        student_ids=["s1", "s2"])
    users = [person("t1", "t1@x.edu", "teacher"), person("s1", "s1@x.edu"), person("s2", "s2@x.edu")]
    summary, result = run(unit, batch(users, [maths]))
    assert result["events"] == 4
    assert outbox_types(unit) == ["UserImported"] * 3 + ["ClassImported"]

    # s1 gets a new user ID (same e-mail), s2 leaves the class and moves school
    renamed = [users[0], person("s1-new", "s1@x.edu"), person("s2", "s2@x.edu", location="L2")]
    smaller = ClassRecord(class_id="c1", name="Maths", location_id="L1", teacher_ids=["t1"],
                          student_ids=["s1-new"])
    summary, _ = run(unit, batch(renamed, [smaller]))
    assert summary["counts"]["user"] == {"add": 0, "update": 2, "delete": 0}
    assert summary["counts"]["membership"] == {"add": 1, "update": 0, "delete": 2}
    hierarchy = SqlHierarchy(unit.session)
    (stored_class,) = hierarchy.classes()
    assert stored_class.record.student_ids == ["s1-new"]
    located = unit.session.execute(sa.select(tables.user_locations.c.location_id).join(
        tables.users, tables.users.c.id == tables.user_locations.c.user_key)
        .where(tables.users.c.user_id == "s2")).scalars().all()
    assert located == ["L2"]

    # previewing the same again: nothing to do
    assert ImportRunner(unit.session, unit.publish).preview(
        batch(renamed, [smaller]), PlanOptions(), actor=ADMIN)["total_changes"] == 0

    summary, _ = run(unit, batch(renamed[:2], [smaller]), allow_mass_delete=True)
    assert summary["counts"]["user"]["delete"] == 1
    assert outbox_types(unit)[-1] == "UserDeleted"
    assert sorted(u.record.user_id for u in hierarchy.users()) == ["s1-new", "t1"]


def test_applying_twice_and_stale_plans(unit):
    runner = ImportRunner(unit.session, unit.publish)
    first = runner.preview(batch([person("a")]), PlanOptions(), actor=ADMIN)
    second = runner.preview(batch([person("b")]), PlanOptions(), actor=ADMIN)
    runner.apply(first["plan_id"], actor=ADMIN)
    assert runner.apply(first["plan_id"], actor=ADMIN)["already_applied"]
    with pytest.raises(Conflict, match="preview again"):
        runner.apply(second["plan_id"], actor=ADMIN)
    unit.commit()
    assert [u.record.user_id for u in SqlHierarchy(unit.session).users()] == ["a"]


def test_a_plan_that_changes_nothing_leaves_the_plans_previewed_beside_it_current(unit):
    runner = ImportRunner(unit.session, unit.publish)
    run(unit, batch([person("a")]))
    pending = runner.preview(batch([person("a", grade_level="8")]), PlanOptions(), actor=ADMIN)
    unchanged = runner.preview(batch([person("a")]), PlanOptions(), actor=ADMIN)  # e.g. an API script's repeat
    assert unchanged["total_changes"] == 0
    assert runner.apply(unchanged["plan_id"], actor=ADMIN)["status"] == "applied"
    assert runner.apply(unchanged["plan_id"], actor=ADMIN)["already_applied"]
    assert runner.apply(pending["plan_id"], actor=ADMIN)["applied"]["user"]["update"] == 1
    unit.commit()
    assert [u.record.grade_level for u in SqlHierarchy(unit.session).users()] == ["8"]


def test_an_update_keeps_the_source_that_created_the_row(unit):
    maths = ClassRecord(class_id="c1", name="Maths", location_id="L1", teacher_ids=["t1"], student_ids=["s1"])
    users = [person("t1", kind="teacher"), person("s1"), person("s2")]
    run(unit, ImportBatch(source="asm", locations=[LocationRecord(location_id="L1", name="North")],
                          users=users, classes=[maths]))
    # a spreadsheet pre-assigns a device, renames the school and moves the class to another room
    summary, _ = run(unit, ImportBatch(
        source="xlsx", locations=[LocationRecord(location_id="L1", name="North Middle")],
        users=[person("s1", serial_numbers=["SER1"])], classes=[ClassRecord(**{**maths.to_dict(), "room": "B12"})]))
    assert [summary["counts"][entity]["update"] for entity in ("location", "user", "class")] == [1, 1, 1]
    for table in (tables.locations, tables.users, tables.classes):
        assert set(unit.session.execute(sa.select(table.c.source)).scalars()) == {"asm"}, table.name
    # so the next spreadsheet, listing other students, deletes none of them
    summary, _ = run(unit, ImportBatch(source="csv", locations=[LocationRecord(location_id="L1", name="North Middle")],
                                       users=[person("s2", serial_numbers=["SER2"])]))
    assert all(actions["delete"] == 0 for actions in summary["counts"].values())


def test_a_person_is_one_user_whatever_the_order_identifiers_move_in(unit):
    runner = ImportRunner(unit.session, unit.publish)

    def sync(users, identifiers):
        records = ImportBatch(source="asm", locations=[LocationRecord(location_id="L1", name="North")],
                              users=users)
        summary = runner.preview(records, PlanOptions(), actor=ADMIN, source_identifiers=identifiers)
        runner.apply(summary["plan_id"], actor=ADMIN)
        unit.commit()
        return SqlHierarchy(unit.session).users_by_source_identifier()

    assert sync([person("a"), person("b")], {"a": "P1", "b": "P2"}) == {"P1": "a", "P2": "b"}
    # identifiers move to other users, one to a new user: each is taken from the user that had it
    assert sync([person("a"), person("b"), person("c")], {"a": "P2", "b": "P3", "c": "P1"}) == {
        "P2": "a", "P3": "b", "P1": "c"}


def test_a_class_keeps_its_primary_teacher_first(unit):
    from services.roster.adapters.queries import RosterQueries
    from services.roster.domain import mosyle_api

    teachers = [person(uid, kind="teacher") for uid in ("zed", "amy", "bob")]
    maths = ClassRecord(class_id="c1", name="Maths", location_id="L1", teacher_ids=["zed", "bob", "amy"])
    run(unit, batch(teachers, [maths]))
    (listed,), _ = RosterQueries(unit.session).classes(locations=None, offset=0, limit=10)
    assert listed.teacher_ids == ["zed", "amy", "bob"]
    wire = mosyle_api.class_to_wire(listed, {}, ("idteacher", "coordinators"))
    assert wire == {"idteacher": "zed", "coordinators": ["amy", "bob"]}
    runner = ImportRunner(unit.session, unit.publish)
    assert runner.preview(batch(teachers, [maths]), PlanOptions(), actor=ADMIN)["total_changes"] == 0

    amy_leads = ClassRecord(class_id="c1", name="Maths", location_id="L1", teacher_ids=["amy", "zed", "bob"])
    summary, _ = run(unit, batch(teachers, [amy_leads]))
    assert summary["counts"]["class"]["update"] == 1 and summary["counts"]["membership"]["add"] == 0
    assert SqlHierarchy(unit.session).classes()[0].record.teacher_ids == ["amy", "bob", "zed"]


def test_a_location_leader_cannot_apply_an_unscoped_plan(unit):
    runner = ImportRunner(unit.session, unit.publish)
    plan = runner.preview(batch([person("a")]), PlanOptions(), actor=ADMIN)
    leader = Actor(id="lead", role="location_leader", locations=("L1",))
    with pytest.raises(PermissionDenied):
        runner.apply(plan["plan_id"], actor=leader)
    scoped = runner.preview(batch([person("a")]), PlanOptions(locations=("L1",)), actor=leader)
    assert runner.apply(scoped["plan_id"], actor=leader)["events"] == 1


def test_plan_changes_page_in_order(unit):
    runner = ImportRunner(unit.session, unit.publish)
    plan = runner.preview(batch([person(f"u{i:03}") for i in range(120)]), PlanOptions(), actor=ADMIN)
    changes = list(runner.plans.changes(plan["plan_id"], after_seq=99, limit=50, batch=7))
    assert len(changes) == 22  # 2 locations + 120 users, from the 101st on
    assert [c.natural_id for c in changes[:2]] == ["u098", "u099"]


def test_a_person_or_location_listed_twice_is_written_once(unit):
    maths = ClassRecord(class_id="c1", name="Maths", location_id="L1", teacher_ids=["t1", "t1"],
                        student_ids=["s1", "s1"])
    twice = person("s1", locations=["L1", "L1"])
    records = batch([person("t1", kind="teacher"), twice], [maths])
    summary, result = run(unit, records)
    assert result["events"] == 3 and summary["counts"]["membership"]["add"] == 2
    (stored,) = SqlHierarchy(unit.session).classes()
    assert (stored.record.teacher_ids, stored.record.student_ids) == (["t1"], ["s1"])
    assert ImportRunner(unit.session, unit.publish).preview(
        records, PlanOptions(), actor=ADMIN)["total_changes"] == 0


def test_what_the_tables_cannot_hold_is_refused_by_the_preview(unit):
    long_id = "L" * 128
    records = ImportBatch(
        source="xlsx",
        locations=[LocationRecord(location_id="L1", name="North"),
                   LocationRecord(location_id=long_id, name="Far")],
        grade_levels=[GradeLevelRecord(name="G" * 255, location_id=long_id),
                      GradeLevelRecord(name="7", location_id=long_id)],
        users=[person("s1", grade_level="9" * 256), person("s2", grade_level="7")])
    runner = ImportRunner(unit.session, unit.publish)
    filename = "district-" + "x" * 300 + ".xlsx"
    summary = runner.preview(records, PlanOptions(), actor=ADMIN, origin=filename)
    assert sorted((r["sheet"], r["row"]) for r in summary["rejected"]) == [
        ("Grade Levels", 1), ("Users", 1)]
    runner.apply(summary["plan_id"], actor=ADMIN)
    unit.commit()
    origin = runner.plans.get(summary["plan_id"]).origin
    assert len(origin) == 200 and origin.startswith("district-xxx") and origin.endswith("xxx.xlsx")
    assert [u.record.user_id for u in SqlHierarchy(unit.session).users()] == ["s2"]
    assert [g.record.name for g in SqlHierarchy(unit.session).grade_levels()] == ["7"]


@pytest.mark.parametrize("token_id", [10**30, -10**30])
def test_an_api_token_id_beyond_the_column_is_not_found(unit, token_id):
    with pytest.raises(NotFound, match=f"there is no API token {token_id}"):
        ApiTokens(unit.session).revoke(token_id)


def test_the_planner_limits_every_text_column_an_apply_writes():
    from services.roster.domain import planning
    from shared.contracts.roster import USER_TYPES

    # columns whose values the code chooses, not the source
    chosen = {"user_type": USER_TYPES, "role": ("teacher", "student"),
              "entity": (*planning.ENTITIES, planning.DEVICES, planning.SOURCE_IDENTIFIER),
              "action": (*planning.ACTIONS, planning.ASSIGN, planning.RECORD),
              "plan_id": ("00000000-0000-0000-0000-000000000000",)}
    limits = {"source": planning.MAX_SOURCE_LENGTH, "natural_id": planning.MAX_NATURAL_ID_LENGTH,
              "user_id": planning.MAX_ID_LENGTH, "location_id": planning.MAX_ID_LENGTH,
              "class_id": planning.MAX_ID_LENGTH}
    written = (tables.locations, tables.grade_levels, tables.users, tables.user_locations,
               tables.classes, tables.memberships, tables.plan_changes)
    for table in written:
        for column in table.columns:
            if not isinstance(column.type, sa.String) or column.type.length is None:
                continue  # numbers, JSON and unbounded text
            if column.name in chosen:
                assert max(map(len, chosen[column.name])) <= column.type.length, column
            else:
                assert limits.get(column.name, planning.MAX_NAME_LENGTH) == column.type.length, column


def test_a_location_goes_only_once_nothing_is_left_in_it_and_takes_nothing_along(unit):
    north, south = LocationRecord(location_id="L1", name="North"), LocationRecord(location_id="L2", name="South")
    run(unit, ImportBatch(source="csv", locations=[north, south], users=[person("s1")],
                          grade_levels=[GradeLevelRecord(name="7", location_id="L2")]))
    run(unit, ImportBatch(source="asm", grade_levels=[GradeLevelRecord(name="9", location_id="L2")]),
        PlanOptions(delete_missing=False))
    summary, _ = run(unit, ImportBatch(source="csv", locations=[north], users=[person("s1")]))
    # the file's grade level of L2 goes, listed; Apple School Manager's keeps L2
    assert summary["counts"]["grade_level"]["delete"] == 1 and summary["counts"]["location"]["delete"] == 0
    hierarchy = SqlHierarchy(unit.session)
    assert [(g.record.name, g.record.location_id) for g in hierarchy.grade_levels()] == [("9", "L2")]
    assert sorted(loc.record.location_id for loc in hierarchy.locations()) == ["L1", "L2"]


def test_an_api_assign_device_operation_hands_its_pair_to_enrollment(unit):
    _, token = ApiTokens(unit.session).create("sis", None, "admin")
    handed: list[list[tuple[str, str]]] = []

    def assign_devices(pairs):  # enrollment's answer: it knows the device, but no user "ghost"
        handed.append(pairs)
        refused = [DeviceAssignmentFailure(user_id, serial, f"there is no user '{user_id}' in your locations")
                   for serial, user_id in pairs if user_id == "ghost"]
        return len(pairs) - len(refused), refused

    api = MosyleApi(unit.session, unit.publish, unit.audit, assign_devices, RefusalAuditBudget())
    request = Request(EnvironBuilder(method="POST", json={"accessToken": token, "elements": [
        {"id": "user.staff.1", "operation": "assign_device", "serial_number": "AAAAAAAAAAAA"},
        {"id": "user.staff.1", "name": "Sam", "type": "STAFF", "assign_device": {"serial_number": "BBBB"}},
        {"id": "ghost", "operation": "assign_device", "serial_number": "CCCC"}]}).get_environ())
    answer = json.loads(api.handle(request, "users").get_data())
    # the saved user's device first, then the operations', once the user is written
    assert handed == [[("BBBB", "user.staff.1"), ("AAAAAAAAAAAA", "user.staff.1"), ("CCCC", "ghost")]]
    assert [(r["id"], r["operation"], r["status"], r.get("error")) for r in answer["response"]] == [
        ("user.staff.1", "assign_device", "OK", None), ("user.staff.1", "save", "OK", None),
        ("ghost", "assign_device", "ERROR", "device CCCC was not assigned: there is no user 'ghost' in your locations")]
    assert [u.record.user_id for u in SqlHierarchy(unit.session).users()] == ["user.staff.1"]


def test_an_api_write_is_previewed_again_when_another_apply_lands_before_its_own(unit):
    _, token = ApiTokens(unit.session).create("sis", None, "admin")
    unit.commit()
    api = MosyleApi(unit.session, unit.publish, unit.audit, lambda pairs: (0, []), RefusalAuditBudget())
    preview, stale_previews = api.runner.preview, 0

    def another_apply_lands(*args, **kwargs):  # between the write's preview and its apply, stale_previews times
        nonlocal stale_previews
        summary = preview(*args, **kwargs)
        if stale_previews:
            stale_previews -= 1
            SqlHierarchy(unit.session).claim_version(summary["base_version"])
        return summary

    def save(user_id):
        request = Request(EnvironBuilder(method="POST", json={"accessToken": token, "elements": [
            {"id": user_id, "name": "Sam", "type": "STAFF"}]}).get_environ())
        answer = json.loads(api.handle(request, "users").get_data())
        unit.commit()
        return [(r["status"], r.get("error")) for r in answer["response"]]

    api.runner.preview = another_apply_lands
    stale_previews = 1  # the first attempt goes stale, the second is applied
    assert save("a") == [("OK", None)]
    stale_previews = WRITE_ATTEMPTS  # every attempt goes stale: the client is told to retry
    assert save("b") == [("ERROR", "the roster was being changed by other imports and nothing of this request "
                                   "was saved; send the same request again")]
    assert [u.record.user_id for u in SqlHierarchy(unit.session).users()] == ["a"]
    (used,) = ApiTokens(unit.session).all()
    assert used.last_used_at is not None  # recorded once the work is done, which a retry rolls back before
