"""The import pipeline: plans, applying them, and the events they publish."""
from __future__ import annotations

from dataclasses import replace

import pytest

from services.roster.domain import planning as p
from shared.contracts.roster import (
    ClassImported, ClassRecord, ClassUpdated, GradeLevelRecord, ImportBatch, LocationRecord, RejectedRow,
    UserDeleted, UserImported, UserRecord, UserUpdated,
)
from shared.errors import Conflict, ValidationError

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
    (event,) = apply(hierarchy, plan)
    assert [r.user_id for r, _ in hierarchy.user_rows.values()] == [new.user_id]
    assert [r.email for r, _ in hierarchy.user_rows.values()] == [new.email]
    # subscribers that keep the user under its ID learn which one it had
    assert (event.user_id, event.previous_user_id) == (("s1-new", "s1") if changed == "user_id" else ("s1", None))


def test_user_id_and_email_of_two_different_users_is_rejected(hierarchy):
    apply(hierarchy, p.build_plan(hierarchy, batch([user("s1", "a@x.edu"), user("s2", "b@x.edu")])))
    plan = p.build_plan(hierarchy, batch([user("s1", "b@x.edu"), user("s2", "b2@x.edu")]))
    (rejected,) = plan.summary.rejected
    assert rejected.sheet == "Users" and rejected.row == 1 and "two different" in rejected.reason
    # s1's row was rejected, so s1 stays: the file still lists it, in a row that could not be read
    assert plan.summary.counts["user"] == {"add": 0, "update": 1, "delete": 0}
    assert "user(s) s1 kept, not deleted, because their rows were rejected" in plan.summary.warnings[0]


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
    with pytest.raises(Conflict, match="allow_mass_delete") as refused:
        apply(hierarchy, plan)
    assert "--allow-mass-delete (`orchard roster apply`" in str(refused.value)  # the step a CLI user takes
    assert len(hierarchy.user_rows) == 20
    events = apply(hierarchy, plan, allow_mass_delete=True)
    assert sorted(e.user_id for e in events if isinstance(e, UserDeleted)) == ["s17", "s18", "s19"]
    assert len(hierarchy.user_rows) == 17


def test_the_mass_delete_guard_measures_against_the_users_the_import_may_delete(hierarchy):
    staff = [UserRecord(user_id=f"a{i}", user_type="staff", name="Asa", locations=["L1"]) for i in range(100)]
    apply(hierarchy, p.build_plan(hierarchy, batch(staff, source="asm")))
    apply(hierarchy, p.build_plan(hierarchy, batch([user(f"x{i}") for i in range(20)], source="xlsx")))
    # a spreadsheet listing half the users spreadsheets created: 10 of 20, not 10 of all 120
    plan = p.build_plan(hierarchy, batch([user(f"x{i}") for i in range(10)], source="csv"))
    assert plan.summary.counts["user"]["delete"] == 10 and plan.summary.existing_users == 20
    assert plan.summary.needs_mass_delete_approval
    with pytest.raises(Conflict, match="deletes 10 of the 20 users it may delete"):
        apply(hierarchy, plan)
    # deleting by ID may name any user, whatever source created them
    named = p.build_plan(hierarchy, batch([], source="api", locations=[]),
                         p.PlanOptions(delete_missing=False, delete_user_ids=("a1",)))
    assert named.summary.existing_users == 120 and not named.summary.needs_mass_delete_approval


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


def test_an_update_never_takes_over_what_another_source_created(hierarchy):
    maths = ClassRecord(class_id="C1", name="Maths", location_id="L1", teacher_ids=["t1"], student_ids=["s1"])
    asm = [user("t1", kind="teacher"), *(user(f"s{i}") for i in range(1, 5))]
    apply(hierarchy, p.build_plan(hierarchy, batch(asm, [maths], source="asm")))
    # a spreadsheet pre-assigns devices to s1 and s2, renames the school and moves the class
    renamed = [LocationRecord(location_id="L1", name="North Middle")]
    moved = replace(maths, room="B12")
    devices = batch([user("s1", serial_numbers=["SER1"]), user("s2", serial_numbers=["SER2"])], [moved],
                    source="xlsx", locations=renamed)
    plan = p.build_plan(hierarchy, devices)
    assert {(c.entity, c.action) for c in plan.changes if c.entity != "devices"} == {
        ("location", "update"), ("user", "update"), ("class", "update")}
    apply(hierarchy, plan)
    assert {source for _, source in hierarchy.user_rows.values()} == {"asm"}
    assert hierarchy.class_rows["C1"][1] == "asm" and hierarchy.location_rows["L1"][1] == "asm"

    # the next spreadsheet, for s3's devices, deletes nothing Apple School Manager created
    plan = p.build_plan(hierarchy, batch([user("s3", serial_numbers=["SER3"])], source="csv", locations=renamed))
    assert [c.action for c in plan.changes if c.entity != "devices"] == ["update"]
    assert plan.summary.existing_users == 0 and not plan.summary.needs_mass_delete_approval
    # while Apple School Manager, which created them, still deletes those it no longer lists
    plan = p.build_plan(hierarchy, batch(asm[:-1], [maths], source="asm"), p.PlanOptions(max_user_delete_share=1))
    assert [c.natural_id for c in plan.changes if c.action == "delete"] == ["s4"]


def test_partial_batches_delete_only_what_they_name(hierarchy):
    apply(hierarchy, p.build_plan(hierarchy, batch([user("s1"), user("s2")], source="api")))
    plan = p.build_plan(hierarchy, batch([], source="api", locations=[]),
                        p.PlanOptions(delete_missing=False, delete_user_ids=("s2", "nobody")))
    assert [(c.entity, c.action, c.natural_id) for c in plan.changes] == [("user", "delete", "s2")]
    (missing,) = plan.summary.rejected
    assert (missing.sheet, missing.row, missing.id) == ("Users", 2, "nobody")
    assert missing.reason.startswith("user 'nobody' does not exist")


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


def test_a_person_listed_twice_in_a_class_or_a_location_twice_counts_once(hierarchy):
    cls = ClassRecord(class_id="C1", name="Maths", location_id="L1", teacher_ids=["t1", "t1"],
                      student_ids=["s1", "s2", "s1"])
    twice = UserRecord(user_id="s2", user_type="student", name="Sue", locations=["L1", "L1"])
    users = [user("t1", kind="teacher"), user("s1"), twice]
    plan = p.build_plan(hierarchy, batch(users, [cls]))
    assert plan.summary.counts["membership"]["add"] == 3
    assert "class 'C1': s1, t1 listed more than once, kept once" in plan.summary.warnings
    (class_change,) = [c for c in plan.changes if c.entity == "class"]
    assert class_change.after["teacher_ids"] == ["t1"]
    assert class_change.after["student_ids"] == ["s1", "s2"]
    assert next(c for c in plan.changes if c.natural_id == "s2").after["locations"] == ["L1"]
    apply(hierarchy, plan)
    assert p.build_plan(hierarchy, batch(users, [cls])).changes == []  # and stays so


def test_the_planner_rejects_what_the_tables_cannot_hold(hierarchy):
    long_location = LocationRecord(location_id="L" * 128, name="Long")
    plan = p.build_plan(hierarchy, batch(
        [user("s1", grade_level="9" * 256), user("s2", grade_level="9" * 255)],
        locations=[*LOC, long_location],
        grades=[GradeLevelRecord(name="G" * 172, location_id="L" * 128),
                GradeLevelRecord(name="G" * 171, location_id="L" * 128)]))
    reasons = {(r.sheet, r.row): r.reason for r in plan.summary.rejected}
    assert reasons == {
        ("Users", 1): "grade level is 256 characters long; at most 255 are allowed",
        ("Grade Levels", 1): (f"grade level name is 172 characters long; with location ID "
                              f"'{'L' * 128}' at most 171 are allowed")}
    assert [c.natural_id for c in plan.changes if c.entity == "user"] == ["s2"]
    assert [len(c.natural_id) for c in plan.changes if c.entity == "grade_level"] == [300]
    with pytest.raises(ValidationError, match="source is 21 characters long; at most 20"):
        p.build_plan(hierarchy, batch([user("s1")], source="ldap:" + "x" * 16))


def test_an_address_with_a_line_break_is_refused_before_it_reaches_an_invite_email(hierarchy):
    plan = p.build_plan(hierarchy, batch([user("s1", email="ann@school.example\r\nBcc: all@school.example"),
                                          user("s2", managed_apple_id="ann smith@appleid.school.example"),
                                          user("s3", email="ann@school.example")]))
    reasons = {r.row: r.reason for r in plan.summary.rejected}
    assert reasons == {1: "e-mail 'ann@school.example\\r\\nBcc: all@school.example' is not an e-mail address",
                       2: "Managed Apple ID 'ann smith@appleid.school.example' holds a space or a control character"}
    assert [c.natural_id for c in plan.changes if c.entity == "user"] == ["s3"]


@pytest.mark.parametrize("options,match", [
    ("abc", "must be an object"),
    (["only_add_new"], "must be an object"),
    ({"delete_user_ids": 5}, "delete_user_ids must be a list of non-empty strings"),
    ({"delete_class_ids": "c1"}, "delete_class_ids must be a list"),
    ({"delete_user_ids": ["a", 1]}, "delete_user_ids must be a list"),
    ({"locations": "L1"}, "locations must be a list"),
    ({"only_add_new": "no"}, "only_add_new must be true or false"),
    ({"delete_missing": 0}, "delete_missing must be true or false"),
    ({"max_user_delete_share": "0.5"}, "max_user_delete_share must be a number from 0 to 1"),
    ({"max_user_delete_share": 1.5}, "max_user_delete_share must be a number from 0 to 1"),
    ({"max_user_delete_share": True}, "max_user_delete_share must be a number from 0 to 1"),
    ({"max_user_delete_share": float("nan")}, "max_user_delete_share must be a number"),
    ({"colour": "red"}, "unknown import option"),
])
def test_plan_options_are_checked(options, match):
    with pytest.raises(ValidationError, match=match):
        p.PlanOptions.from_dict(options)


def test_plan_options_from_dict():
    options = p.PlanOptions.from_dict({"only_add_new": True, "delete_user_ids": ["a"],
                                       "delete_class_ids": None, "locations": None,
                                       "max_user_delete_share": 0})
    assert options == p.PlanOptions(only_add_new=True, delete_user_ids=("a",),
                                    max_user_delete_share=0)
    assert p.PlanOptions.from_dict(None) == p.PlanOptions()


TWO_SCHOOLS = [LocationRecord(location_id="L1", name="North"), LocationRecord(location_id="L2", name="South")]


def test_a_scoped_import_cannot_bring_users_of_other_locations_into_a_class(hierarchy):
    south = UserRecord(user_id="s9", user_type="student", name="Sam", locations=["L2"])
    both = UserRecord(user_id="t2", user_type="teacher", name="Tia", locations=["L1", "L2"])
    north = [user("t1", kind="teacher"), user("s1")]
    apply(hierarchy, p.build_plan(hierarchy, batch([*north, south, both], locations=TWO_SCHOOLS)))
    scoped = p.PlanOptions(locations=("L1",))

    def lead(*classes):
        return p.build_plan(hierarchy, batch(north, classes, locations=LOC), scoped)

    stolen = ClassRecord(class_id="C1", name="Maths", location_id="L1", teacher_ids=["t1"],
                         student_ids=["s1", "s9"])
    plan = lead(stolen)
    (rejected,) = plan.summary.rejected
    assert (rejected.sheet, rejected.row) == ("Classes", 1)
    assert rejected.reason == ("user(s) s9 are in none of the locations you manage (L1); only an "
                               "administrator can add them to a class")
    assert plan.summary.counts["class"]["add"] == 0
    # a user who is also in one of the leader's locations may join
    shared = ClassRecord(class_id="C2", name="Art", location_id="L1", teacher_ids=["t2"])
    assert lead(shared).summary.counts["class"]["add"] == 1
    # an administrator may put s9 in; the leader can then keep (or remove) them
    apply(hierarchy, p.build_plan(hierarchy, batch([*north, south, both], [stolen],
                                                   locations=TWO_SCHOOLS)))
    renamed = ClassRecord(class_id="C1", name="Maths 7", location_id="L1", teacher_ids=["t1"],
                          student_ids=["s1", "s9"])
    plan = lead(renamed)
    assert plan.summary.rejected == [] and plan.summary.counts["class"]["update"] == 1


def test_a_scoped_import_measures_deletions_against_its_own_locations(hierarchy):
    north = [user(f"n{i}") for i in range(4)]
    south = [UserRecord(user_id=f"s{i}", user_type="student", name="Sam", locations=["L2"])
             for i in range(36)]
    apply(hierarchy, p.build_plan(hierarchy, batch(north + south, locations=TWO_SCHOOLS)))
    plan = p.build_plan(hierarchy, batch(north[:2], locations=LOC), p.PlanOptions(locations=("L1",)))
    assert plan.summary.counts["user"]["delete"] == 2
    assert plan.summary.existing_users == 4
    assert plan.summary.needs_mass_delete_approval  # half the leader's users, not 5 % of all
    with pytest.raises(Conflict, match="allow_mass_delete"):
        apply(hierarchy, plan)


SOUTH = LocationRecord(location_id="L2", name="South")


def location_deletions(plan):
    return [c.natural_id for c in plan.changes if (c.entity, c.action) == ("location", "delete")]


def test_a_location_is_kept_while_users_of_another_source_or_kept_for_rejected_rows_are_in_it(hierarchy):
    apply(hierarchy, p.build_plan(hierarchy, batch([user("s1"), user("s2")], locations=[*LOC, SOUTH])))
    api_user = UserRecord(user_id="w", user_type="staff", name="Wes", locations=["L2"])
    apply(hierarchy, p.build_plan(hierarchy, batch([api_user], source="api", locations=[]),
                                  p.PlanOptions(delete_missing=False)))
    plan = p.build_plan(hierarchy, batch([user("s1"), user("s2")]))  # the file no longer lists L2
    assert plan.changes == [] and location_deletions(plan) == []
    assert "location 'L2' is no longer listed but still in use, so it is kept" in plan.summary.warnings

    # s3, in L2, is kept because its row was rejected (a formula, say): so is L2
    apply(hierarchy, p.build_plan(hierarchy, batch([], source="api", locations=[]),
                                  p.PlanOptions(delete_user_ids=("w",), delete_missing=False, max_user_delete_share=1)))
    south = UserRecord(user_id="s3", user_type="student", name="Sue", locations=["L2"])
    apply(hierarchy, p.build_plan(hierarchy, batch([user("s1"), user("s2"), south], locations=[*LOC, SOUTH])))
    rejected = ImportBatch(source="csv", locations=LOC, users=[user("s1"), user("s2")],
                           rejected=[RejectedRow(sheet="Users", row=4, reason="holds a formula", id="s3")])
    plan = p.build_plan(hierarchy, rejected)
    assert location_deletions(plan) == [] and [c.action for c in plan.changes] == []
    # once s3 is gone, so is L2
    plan = p.build_plan(hierarchy, batch([user("s1"), user("s2")]), p.PlanOptions(max_user_delete_share=1))
    assert [(c.entity, c.action, c.natural_id) for c in plan.changes] == [
        ("user", "delete", "s3"), ("location", "delete", "L2")]


def test_a_location_deletion_takes_no_grade_level_the_plan_does_not_list(hierarchy):
    grades = [GradeLevelRecord(name="7", location_id="L2"), GradeLevelRecord(name="8", location_id="L2")]
    apply(hierarchy, p.build_plan(hierarchy, batch([user("s1")], locations=[*LOC, SOUTH], grades=grades)))
    # a grade level the file still lists keeps its location
    plan = p.build_plan(hierarchy, batch([user("s1")], grades=grades[:1]))
    assert location_deletions(plan) == []
    assert [(c.entity, c.action, c.natural_id) for c in plan.changes] == [("grade_level", "delete", "L2/8")]
    assert "location 'L2' is no longer listed but still in use, so it is kept" in plan.summary.warnings
    # and so does one of another source
    hierarchy.grade_rows[("9", "L2")] = (GradeLevelRecord(name="9", location_id="L2"), "asm")
    plan = p.build_plan(hierarchy, batch([user("s1")]))
    assert location_deletions(plan) == [] and sorted(c.natural_id for c in plan.changes) == ["L2/7", "L2/8"]
    # once none is left, the location goes, each of its grade levels in the plan
    del hierarchy.grade_rows[("9", "L2")]
    plan = p.build_plan(hierarchy, batch([user("s1")]))
    assert [(c.entity, c.action, c.natural_id) for c in plan.changes] == [
        ("grade_level", "delete", "L2/7"), ("grade_level", "delete", "L2/8"), ("location", "delete", "L2")]
    assert plan.summary.counts["grade_level"]["delete"] == 2
