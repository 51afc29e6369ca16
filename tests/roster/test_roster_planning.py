"""The import pipeline: plans, applying them, and the events they publish."""
from __future__ import annotations

import pytest

from services.roster.domain import planning as p
from shared.contracts.roster import (
    ClassImported, ClassRecord, ClassUpdated, GradeLevelRecord, ImportBatch, LocationRecord,
    UserDeleted, UserImported, UserRecord, UserUpdated,
)
from shared.errors import Conflict

LOC = [LocationRecord(location_id="L1", name="North School")]


def user(uid, email=None, kind="student", **kw):
    return UserRecord(user_id=uid, user_type=kind, first_name="Ann", last_name=kw.pop("last_name", "Lee"),
                      email=email, locations=["L1"], **kw)


def batch(users=(), classes=(), source="csv", locations=LOC, grades=()):
    return ImportBatch(source=source, locations=list(locations), users=list(users),
                       classes=list(classes), grade_levels=list(grades))


def apply(hierarchy, plan, allow_mass_delete=False):
    p.check_can_apply(plan.summary, hierarchy.version(), allow_mass_delete=allow_mass_delete)
    return list(p.apply_plan(plan.changes, hierarchy, plan.summary.source))


def test_first_import_adds_everything_and_publishes_events(hierarchy):
    cls = ClassRecord(class_id="C1", name="Maths 7A", location_id="L1",
                      teacher_ids=["t1"], student_ids=["s1", "s2"])
    plan = p.build_plan(hierarchy, batch(
        [user("t1", "t1@x.edu", "teacher"), user("s1", "s1@x.edu"), user("s2")], [cls],
        grades=[GradeLevelRecord(name="7", location_id="L1")]))
    counts = plan.summary.counts
    assert counts["user"]["add"] == 3 and counts["class"]["add"] == 1
    assert counts["membership"]["add"] == 3 and counts["location"]["add"] == 1
    assert counts["grade_level"]["add"] == 1
    assert hierarchy.user_rows == {}  # preview writes nothing
    events = apply(hierarchy, plan)
    assert sorted(type(e).__name__ for e in events) == ["ClassImported"] + ["UserImported"] * 3
    imported = next(e for e in events if isinstance(e, UserImported) and e.user_id == "s1")
    assert imported.name == "Ann Lee" and imported.email == "s1@x.edu"
    assert imported.locations == ["L1"] and imported.source == "csv"
    class_event = next(e for e in events if isinstance(e, ClassImported))
    assert class_event.student_ids == ["s1", "s2"] and class_event.teacher_ids == ["t1"]
    assert len(hierarchy.memberships) == 3


def test_applying_the_same_import_again_changes_nothing(hierarchy):
    cls = ClassRecord(class_id="C1", name="Maths", location_id="L1", teacher_ids=["t1"],
                      student_ids=["s1"])
    same = batch([user("t1", kind="teacher"), user("s1")], [cls])
    apply(hierarchy, p.build_plan(hierarchy, same))
    again = p.build_plan(hierarchy, same)
    assert again.changes == [] and again.summary.total_changes == 0
    assert again.summary.unchanged_users == 2
    writes = hierarchy.writes
    assert apply(hierarchy, again) == [] and hierarchy.writes == writes


def test_a_stale_plan_is_refused(hierarchy):
    first = p.build_plan(hierarchy, batch([user("s1")]))
    second = p.build_plan(hierarchy, batch([user("s1")]))
    apply(hierarchy, first)
    with pytest.raises(Conflict, match="preview again"):
        apply(hierarchy, second)
    assert len(hierarchy.user_rows) == 1


def test_update_is_field_by_field(hierarchy):
    apply(hierarchy, p.build_plan(hierarchy, batch([user("s1", "a@x.edu")])))
    plan = p.build_plan(hierarchy, batch([user("s1", "a@x.edu", grade_level="8")]))
    (change,) = plan.changes
    assert change.action == "update"
    assert change.field_changes() == {"grade_level": (None, "8")}
    (event,) = apply(hierarchy, plan)
    assert isinstance(event, UserUpdated) and event.grade_level == "8"


@pytest.mark.parametrize("changed", ["user_id", "email"])
def test_changing_user_id_or_email_updates_instead_of_duplicating(hierarchy, changed):
    apply(hierarchy, p.build_plan(hierarchy, batch([user("s1", "a@x.edu")])))
    new = user("s1-new", "a@x.edu") if changed == "user_id" else user("s1", "b@x.edu")
    plan = p.build_plan(hierarchy, batch([new]))
    assert plan.summary.counts["user"] == {"add": 0, "update": 1, "delete": 0}
    (change,) = plan.changes
    assert list(change.field_changes()) == [changed]
    apply(hierarchy, plan)
    assert [r.user_id for r, _ in hierarchy.user_rows.values()] == [new.user_id]
    assert [r.email for r, _ in hierarchy.user_rows.values()] == [new.email]


def test_user_id_and_email_of_two_different_users_is_rejected(hierarchy):
    apply(hierarchy, p.build_plan(hierarchy, batch([user("s1", "a@x.edu"), user("s2", "b@x.edu")])))
    plan = p.build_plan(hierarchy, batch([user("s1", "b@x.edu"), user("s2", "b2@x.edu")]))
    (rejected,) = plan.summary.rejected
    assert rejected.sheet == "Users" and rejected.row == 1 and "two different" in rejected.reason
    # s1 is not deleted just because its row was rejected? it is missing from the file, so it is
    assert plan.summary.counts["user"]["update"] == 1


def test_only_add_new_skips_updates_and_deletions(hierarchy):
    apply(hierarchy, p.build_plan(hierarchy, batch([user("s1", "a@x.edu"), user("s2")])))
    plan = p.build_plan(hierarchy, batch([user("s1", "new@x.edu"), user("s3")]),
                        p.PlanOptions(only_add_new=True))
    assert plan.summary.counts["user"] == {"add": 1, "update": 0, "delete": 0}
    assert plan.summary.skipped_updates == 1 and plan.summary.skipped_deletions == 1
    apply(hierarchy, plan)
    emails = {r.user_id: r.email for r, _ in hierarchy.user_rows.values()}
    assert emails == {"s1": "a@x.edu", "s2": None, "s3": None}


def test_mass_delete_guard(hierarchy):
    apply(hierarchy, p.build_plan(hierarchy, batch([user(f"s{i}") for i in range(20)])))
    plan = p.build_plan(hierarchy, batch([user(f"s{i}") for i in range(17)]))
    assert plan.summary.counts["user"]["delete"] == 3
    assert plan.summary.needs_mass_delete_approval  # 15% > 10%
    with pytest.raises(Conflict, match="allow_mass_delete"):
        apply(hierarchy, plan)
    assert len(hierarchy.user_rows) == 20
    events = apply(hierarchy, plan, allow_mass_delete=True)
    assert sorted(e.user_id for e in events if isinstance(e, UserDeleted)) == ["s17", "s18", "s19"]
    assert len(hierarchy.user_rows) == 17


def test_mass_delete_share_is_configurable(hierarchy):
    apply(hierarchy, p.build_plan(hierarchy, batch([user(f"s{i}") for i in range(10)])))
    plan = p.build_plan(hierarchy, batch([user(f"s{i}") for i in range(8)]),
                        p.PlanOptions(max_user_delete_share=0.25))
    assert not plan.summary.needs_mass_delete_approval
    apply(hierarchy, plan)


def test_deletions_stay_within_the_source(hierarchy):
    apply(hierarchy, p.build_plan(hierarchy, batch([user("a1")], source="asm")))
    plan = p.build_plan(hierarchy, batch([user("s1")], source="xlsx"))
    assert plan.summary.counts["user"]["delete"] == 0
    apply(hierarchy, plan)
    # a CSV import is the same source family as XLSX
    plan = p.build_plan(hierarchy, batch([user("s2")], source="csv"))
    assert [c.natural_id for c in plan.changes if c.action == "delete"] == ["s1"]


def test_partial_batches_delete_only_what_they_name(hierarchy):
    apply(hierarchy, p.build_plan(hierarchy, batch([user("s1"), user("s2")], source="api")))
    plan = p.build_plan(hierarchy, batch([], source="api", locations=[]),
                        p.PlanOptions(delete_missing=False, delete_user_ids=("s2", "nobody")))
    assert [(c.entity, c.action, c.natural_id) for c in plan.changes] == [("user", "delete", "s2")]
    assert "user 'nobody' to delete does not exist" in plan.summary.warnings


def test_class_with_unknown_teacher_is_rejected_and_the_rest_stands(hierarchy):
    good = ClassRecord(class_id="C1", name="Art", location_id="L1", teacher_ids=["t1"])
    bad = ClassRecord(class_id="C2", name="Music", location_id="L1", teacher_ids=["ghost"])
    plan = p.build_plan(hierarchy, batch([user("t1", kind="teacher")], [good, bad]),
                        row_numbers={"Classes": {"C2": 7}})
    (rejected,) = plan.summary.rejected
    assert (rejected.sheet, rejected.row) == ("Classes", 7) and "ghost" in rejected.reason
    assert [c.natural_id for c in plan.changes if c.entity == "class"] == ["C1"]


def test_bad_rows_are_rejected_with_reasons(hierarchy):
    plan = p.build_plan(hierarchy, batch([
        user("s1"), user("s1"), user("x" * 200), UserRecord(user_id="s3", user_type="parent", name="P"),
        UserRecord(user_id="s4", user_type="student", name="N" * 300),
        UserRecord(user_id="s5", user_type="student", name="Z", locations=["nowhere"]),
    ]))
    reasons = {r.row: r.reason for r in plan.summary.rejected}
    assert "more than once" in reasons[2]
    assert "200 characters" in reasons[3]
    assert "parent" in reasons[4]
    assert "300 characters" in reasons[5]
    assert "nowhere" in reasons[6]
    assert plan.summary.counts["user"]["add"] == 1


def test_membership_changes_update_the_class(hierarchy):
    cls = ClassRecord(class_id="C1", name="Maths", location_id="L1", teacher_ids=["t1"],
                      student_ids=["s1"])
    users = [user("t1", kind="teacher"), user("s1"), user("s2")]
    apply(hierarchy, p.build_plan(hierarchy, batch(users, [cls])))
    moved = ClassRecord(class_id="C1", name="Maths", location_id="L1", teacher_ids=["t1"],
                        student_ids=["s2"])
    plan = p.build_plan(hierarchy, batch(users, [moved]))
    assert [(c.entity, c.action) for c in plan.changes] == [("class", "update")]
    assert plan.changes[0].field_changes() == {"student_ids": (["s1"], ["s2"])}
    assert plan.summary.counts["membership"] == {"add": 1, "update": 0, "delete": 1}
    (event,) = apply(hierarchy, plan)
    assert isinstance(event, ClassUpdated) and event.student_ids == ["s2"]
    classes = hierarchy.classes()
    assert classes[0].record.student_ids == ["s2"]


def test_a_user_id_change_keeps_class_membership(hierarchy):
    cls = ClassRecord(class_id="C1", name="Maths", location_id="L1", teacher_ids=["t1"],
                      student_ids=["s1"])
    apply(hierarchy, p.build_plan(hierarchy, batch([user("t1", kind="teacher"), user("s1", "a@x.edu")], [cls])))
    renamed = ClassRecord(class_id="C1", name="Maths", location_id="L1", teacher_ids=["t1"],
                          student_ids=["s1b"])
    apply(hierarchy, p.build_plan(hierarchy, batch(
        [user("t1", kind="teacher"), user("s1b", "a@x.edu")], [renamed])))
    assert len(hierarchy.user_rows) == 2
    assert hierarchy.classes()[0].record.student_ids == ["s1b"]
    assert p.build_plan(hierarchy, batch(
        [user("t1", kind="teacher"), user("s1b", "a@x.edu")], [renamed])).changes == []


def test_locations_in_use_are_not_deleted(hierarchy):
    two = [LocationRecord(location_id="L1", name="North"), LocationRecord(location_id="L2", name="South")]
    apply(hierarchy, p.build_plan(hierarchy, batch([user("s1")], locations=two)))
    plan = p.build_plan(hierarchy, batch([user("s1")], locations=[]))
    assert [(c.entity, c.natural_id) for c in plan.changes] == [("location", "L2")]
    assert any("L1" in w for w in plan.summary.warnings)


def test_plan_summary_round_trips(hierarchy):
    plan = p.build_plan(hierarchy, batch([user("s1"), user("s1")]))
    again = p.PlanSummary.from_dict(plan.summary.to_dict())
    assert again.to_dict() == plan.summary.to_dict()


def test_planning_scales_linearly(hierarchy):
    import time
    users = [user(f"s{i}", f"s{i}@x.edu") for i in range(20000)]
    classes = [ClassRecord(class_id=f"C{c}", name=f"Class {c}", location_id="L1",
                           teacher_ids=[], student_ids=[f"s{(c * 50 + k) % 20000}" for k in range(50)])
               for c in range(800)]
    started = time.perf_counter()
    plan = p.build_plan(hierarchy, batch(users, classes))
    elapsed = time.perf_counter() - started
    assert plan.summary.counts["membership"]["add"] == 40000
    assert elapsed < 3.0


def test_an_import_limited_to_locations_touches_nothing_else(hierarchy):
    two = [LocationRecord(location_id="L1", name="North"), LocationRecord(location_id="L2", name="South")]
    south = UserRecord(user_id="s9", user_type="student", name="Sam", locations=["L2"])
    apply(hierarchy, p.build_plan(hierarchy, batch([user("s1"), user("s2"), south], locations=two)))
    plan = p.build_plan(hierarchy, batch(
        [user("s1", grade_level="9"), UserRecord(user_id="s9", user_type="student", name="Sam Two",
                                                 locations=["L1"])],
        locations=[LocationRecord(location_id="L1", name="North")]),
        p.PlanOptions(locations=("L1",), max_user_delete_share=1))
    # s2 (L1) goes; s9 lives in L2, which this import may neither change nor delete
    assert sorted((c.action, c.natural_id) for c in plan.changes) == [
        ("delete", "s2"), ("update", "s1")]
    (rejected,) = plan.summary.rejected
    assert "existing user is outside the locations you manage (L1)" in rejected.reason
