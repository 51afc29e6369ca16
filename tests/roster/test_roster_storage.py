"""The import pipeline against SQLite and PostgreSQL: stored plans, batched writes, outbox."""
from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

from services.roster.adapters import tables
from services.roster.adapters.hierarchy import SqlHierarchy
from services.roster.adapters.imports import ImportRunner
from services.roster.domain.planning import PlanOptions
from shared.auth import Actor
from shared.contracts.roster import ClassRecord, ImportBatch, LocationRecord, UserRecord
from shared.errors import Conflict, PermissionDenied
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
    return UserRecord(user_id=uid, user_type=kind, name=f"Person {uid}", email=email,
                      locations=[location], **kw)


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
