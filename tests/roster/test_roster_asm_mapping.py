"""Apple School Manager roster objects mapped by the sync preferences."""
from __future__ import annotations

import pytest

from services.roster.domain import planning
from services.roster.domain.asm_mapping import AsmPreferences, AsmRoster, map_roster
from shared.contracts.roster import UserUpdated
from shared.errors import ValidationError


def person(uid, **kw):
    base = {"unique_identifier": uid, "source_system_identifier": f"sis-{uid}",
            "person_id": f"pid-{uid}", "name": f"Name {uid}", "first_name": "First",
            "last_name": uid, "managed_apple_id": f"{uid}@appleid.school.edu",
            "email_address": f"{uid}@mail.school.edu", "sis_username": f"user.{uid}",
            "status": "Active", "source": "SIS"}
    base.update(kw)
    return base


def roster(**kw):
    persons = [person("T1"), person("S1", grade="7"), person("S2", grade="8"),
               person("X1"), person("S3", grade="7")]
    classes = [
        {"unique_identifier": "C1", "source_system_identifier": "cls-1", "name": "Maths 7",
         "class_number": "M7", "class_display_name": "Maths (7)", "room": "B1",
         "location": {"unique_identifier": "L1", "name": "North"},
         "course": {"unique_identifier": "CO1", "name": "Maths"},
         "instructor_unique_identifiers": ["T1"], "student_unique_identifiers": ["S1", "S2"],
         "status": "Active"},
        {"unique_identifier": "C2", "name": "Art", "location": {"unique_identifier": "L2",
                                                                "name": "South"},
         "course": {"unique_identifier": "CO2"}, "instructor_unique_identifiers": ["T1"],
         "student_unique_identifiers": ["S3"], "status": "Active"},
        {"unique_identifier": "C3", "name": "Old", "location": {"unique_identifier": "L1"},
         "instructor_unique_identifiers": ["X1"], "student_unique_identifiers": [],
         "status": "Inactive"},
    ]
    locations = [{"unique_identifier": "L1", "name": "North"},
                 {"unique_identifier": "L2", "name": "South"}]
    courses = [{"unique_identifier": "CO2", "name": "Art course"}]
    data = dict(persons=persons, classes=classes, locations=locations, courses=courses)
    data.update(kw)
    return AsmRoster(**data)


def users_by_id(mapping):
    return {u.user_id: u for u in mapping.batch.users}


def test_type_and_locations_follow_class_membership():
    mapping = map_roster(roster(), AsmPreferences())
    users = users_by_id(mapping)
    assert users["pid-T1"].user_type == "teacher" and users["pid-T1"].locations == ["L1", "L2"]
    assert users["pid-S1"].user_type == "student" and users["pid-S1"].grade_level == "7"
    assert users["pid-S3"].locations == ["L2"]
    assert "pid-X1" not in users  # only in an inactive class
    assert mapping.skipped_without_location == 1
    assert any("1 user(s) in no class were skipped" in w for w in mapping.warnings)
    classes = {c.class_id: c for c in mapping.batch.classes}
    assert set(classes) == {"C1", "C2"}
    assert classes["C1"].teacher_ids == ["pid-T1"] and classes["C1"].student_ids == ["pid-S1", "pid-S2"]
    assert classes["C2"].course_name == "Art course"  # looked up in the course list


def test_users_without_location_can_be_imported():
    mapping = map_roster(roster(), AsmPreferences(import_users_without_location=True))
    assert users_by_id(mapping)["pid-X1"].user_type == "staff"
    assert users_by_id(mapping)["pid-X1"].locations == []


@pytest.mark.parametrize("source,expected", [
    ("person_id", "pid-S1"), ("managed_apple_id_prefix", "S1"), ("sis_username", "user.S1"),
    ("email", "S1@mail.school.edu"), ("managed_apple_id", "S1@appleid.school.edu"),
])
def test_user_id_sources(source, expected):
    mapping = map_roster(roster(), AsmPreferences(user_id_source=source))
    assert expected in users_by_id(mapping)


def test_person_number_is_not_available_and_says_so():
    mapping = map_roster(roster(), AsmPreferences(user_id_source="person_number"))
    assert "pid-S1" in users_by_id(mapping)
    assert any("Person Number" in w and "Person ID is used instead" in w for w in mapping.warnings)


def test_missing_id_source_rejects_that_person():
    persons = [person("T1"), person("S1", sis_username=None), person("S2"), person("S3")]
    mapping = map_roster(roster(persons=persons), AsmPreferences(user_id_source="sis_username"))
    assert "user.S1" not in users_by_id(mapping)
    (rejected,) = mapping.batch.rejected
    assert "no sis username" in rejected.reason


@pytest.mark.parametrize("source,expected", [
    ("asm_email", "S1@mail.school.edu"), ("managed_apple_id", "S1@appleid.school.edu"),
    ("managed_apple_id_without_subdomain", "S1@school.edu"),
])
def test_email_sources(source, expected):
    mapping = map_roster(roster(), AsmPreferences(email_source=source))
    assert users_by_id(mapping)["pid-S1"].email == expected


def test_do_not_import_email_for_students():
    users = users_by_id(map_roster(roster(), AsmPreferences(skip_student_email=True)))
    assert users["pid-S1"].email is None and users["pid-T1"].email == "T1@mail.school.edu"


@pytest.mark.parametrize("source,expected", [
    ("class_id", "cls-1"), ("class_number", "M7"), ("name", "Maths 7"), ("display_name", "Maths (7)"),
])
def test_class_name_sources(source, expected):
    mapping = map_roster(roster(), AsmPreferences(class_name_source=source))
    names = {c.class_id: c.name for c in mapping.batch.classes}
    assert names["C1"] == expected
    if source != "name":  # C2 has only a name
        assert names["C2"] == "Art" and any("1 class(es)" in w for w in mapping.warnings)


def test_only_chosen_locations_are_synced():
    mapping = map_roster(roster(), AsmPreferences(locations=("L2",)))
    assert [loc.location_id for loc in mapping.batch.locations] == ["L2"]
    assert [c.class_id for c in mapping.batch.classes] == ["C2"]
    assert users_by_id(mapping)["pid-T1"].locations == ["L2"]
    assert "pid-S1" not in users_by_id(mapping)


@pytest.mark.parametrize("without_location", [False, True])
def test_people_of_locations_not_synced_are_skipped_as_such_not_taken_for_people_in_no_class(
        hierarchy, without_location):
    prefs = AsmPreferences(locations=("L1",), import_users_without_location=without_location)
    mapping = map_roster(roster(), prefs)
    # S3 attends only C2 (L2); X1 is in no active class; T1 teaches in both and stays, with L1 only
    assert sorted(users_by_id(mapping)) == ["pid-S1", "pid-S2", "pid-T1"]
    assert users_by_id(mapping)["pid-T1"].locations == ["L1"]
    assert (mapping.skipped_elsewhere, mapping.skipped_without_location) == (1, 1)
    assert mapping.warnings == [
        "1 user(s) only in classes of locations this token does not sync were skipped",
        "1 user(s) in no class were skipped: their location is unknown, and a sync limited to some locations "
        "imports only people of those locations"]
    plan = planning.build_plan(hierarchy, mapping.batch, planning.PlanOptions(locations=prefs.locations))
    assert plan.summary.rejected == [] and plan.summary.counts["user"]["add"] == 3


def test_repeated_objects_from_sync_endpoints_are_deduplicated():
    data = roster()
    data.persons.append(person("S1", grade="9"))
    users = users_by_id(map_roster(data, AsmPreferences()))
    assert users["pid-S1"].grade_level == "9"


def test_duplicate_user_ids_are_rejected():
    persons = [person("T1"), person("S1", person_id="same"), person("S2", person_id="same"),
               person("S3")]
    mapping = map_roster(roster(persons=persons), AsmPreferences())
    assert "shared with row" in mapping.batch.rejected[0].reason


# ---------------------------------------------------------------- persons the roster already holds

MANAGED_APPLE_ID = AsmPreferences(user_id_source="managed_apple_id")


def sync(hierarchy, data, prefs):
    """Preview and apply Apple's roster as the service does; returns the plan and its events."""
    mapping = map_roster(data, prefs, hierarchy.users_by_source_identifier())
    plan = planning.build_plan(hierarchy, mapping.batch, source_identifiers=mapping.source_identifiers)
    return plan, list(planning.apply_plan(plan.changes, hierarchy, "asm"))


def stored_ids(hierarchy):
    return sorted(u.record.user_id for u in hierarchy.users())


def members(hierarchy):
    return {c.record.class_id: (c.record.teacher_ids, c.record.student_ids) for c in hierarchy.classes()}


def test_a_person_whose_user_id_field_was_emptied_keeps_their_user_and_classes(hierarchy):
    sync(hierarchy, roster(), MANAGED_APPLE_ID)
    users, classes = stored_ids(hierarchy), members(hierarchy)
    persons = [person("T1"), person("S1", grade="7", managed_apple_id=None), person("S2", grade="8"),
               person("S3", grade="7")]
    plan, events = sync(hierarchy, roster(persons=persons), MANAGED_APPLE_ID)
    assert plan.summary.total_changes == 0 and events == []
    (rejected,) = plan.summary.rejected
    assert rejected.id == "S1@appleid.school.edu"
    assert rejected.reason == (
        "Name S1 has no managed apple id in Apple School Manager, which the sync preferences use as user ID; "
        "user 'S1@appleid.school.edu', imported before for this person, is not deleted")
    assert plan.summary.warnings == ["user(s) S1@appleid.school.edu kept, not deleted, because their rows "
                                     "were rejected; fix those rows and import again"]
    assert stored_ids(hierarchy) == users and members(hierarchy) == classes


def test_persons_imported_under_another_user_id_source_keep_their_users_and_a_new_one_is_only_rejected(hierarchy):
    sync(hierarchy, roster(), AsmPreferences())  # person IDs
    persons = [person("T1", managed_apple_id=None), person("S1", grade="7", managed_apple_id=None),
               person("S2", grade="8"), person("S3", grade="7"), person("N1", grade="7", managed_apple_id=None)]
    data = roster(persons=persons)
    data.classes[0]["student_unique_identifiers"].append("N1")
    plan, events = sync(hierarchy, data, MANAGED_APPLE_ID)
    assert sorted((r.id or "", r.row) for r in plan.summary.rejected) == [("", 5), ("pid-S1", 2), ("pid-T1", 1)]
    assert plan.summary.counts["user"] == {"add": 0, "update": 2, "delete": 0}
    assert {e.user_id: e.previous_user_id for e in events if isinstance(e, UserUpdated)} == {
        "S2@appleid.school.edu": "pid-S2", "S3@appleid.school.edu": "pid-S3"}
    assert stored_ids(hierarchy) == ["S2@appleid.school.edu", "S3@appleid.school.edu", "pid-S1", "pid-T1"]
    assert members(hierarchy) == {"C1": (["pid-T1"], ["S2@appleid.school.edu", "pid-S1"]),
                                  "C2": (["pid-T1"], ["S3@appleid.school.edu"])}


def test_a_person_whose_user_id_is_now_shared_keeps_their_user(hierarchy):
    sync(hierarchy, roster(), AsmPreferences())
    persons = [person("T1"), person("S1", grade="7"), person("S2", grade="8", person_id="pid-S1"),
               person("S3", grade="7")]
    plan, _ = sync(hierarchy, roster(persons=persons), AsmPreferences())
    (rejected,) = plan.summary.rejected
    assert rejected.id == "pid-S2"
    assert rejected.reason.startswith("user ID 'pid-S1' (person id) is shared with row 2")
    assert plan.summary.counts["user"]["delete"] == 0 and "pid-S2" in stored_ids(hierarchy)


def test_a_shared_user_id_stays_with_the_person_it_was_imported_for_whatever_the_order(hierarchy):
    sync(hierarchy, roster(), AsmPreferences())
    # S2 is listed first with S1's person ID: S1 keeps it, and S2 keeps their own user
    persons = [person("S2", grade="8", person_id="pid-S1"), person("T1"), person("S1", grade="7"),
               person("S3", grade="7")]
    plan, events = sync(hierarchy, roster(persons=persons), AsmPreferences())
    (rejected,) = plan.summary.rejected
    assert (rejected.row, rejected.id) == (1, "pid-S2")
    assert rejected.reason.startswith("user ID 'pid-S1' (person id) is shared with row 3")
    assert plan.summary.total_changes == 0 and events == []
    assert hierarchy.users_by_source_identifier() == {"T1": "pid-T1", "S1": "pid-S1", "S2": "pid-S2", "S3": "pid-S3"}


def test_a_person_whose_user_id_and_email_both_changed_keeps_their_user_under_the_new_id(hierarchy):
    prefs = AsmPreferences(user_id_source="email")
    sync(hierarchy, roster(), prefs)
    persons = [person("T1"), person("S1", grade="7", email_address="s1.new@mail.school.edu"),
               person("S2", grade="8"), person("S3", grade="7")]
    plan, events = sync(hierarchy, roster(persons=persons), prefs)
    assert plan.summary.counts["user"] == {"add": 0, "update": 1, "delete": 0}
    (updated,) = [e for e in events if isinstance(e, UserUpdated)]
    assert (updated.user_id, updated.previous_user_id) == ("s1.new@mail.school.edu", "S1@mail.school.edu")
    assert members(hierarchy)["C1"] == (["T1@mail.school.edu"], ["S2@mail.school.edu", "s1.new@mail.school.edu"])


def test_an_old_user_id_another_person_now_has_goes_to_that_person(hierarchy):
    prefs = AsmPreferences(user_id_source="sis_username")
    sync(hierarchy, roster(), prefs)
    # S2 gets a new username and S1 takes S2's old one; neither keeps an e-mail the roster knows
    persons = [person("T1"), person("S2", grade="8", sis_username="user.S2b", email_address="s2b@mail.school.edu"),
               person("S1", grade="7", sis_username="user.S2", email_address="s1b@mail.school.edu"),
               person("S3", grade="7")]
    plan, _ = sync(hierarchy, roster(persons=persons), prefs)
    assert plan.summary.rejected == []  # whatever the order of the rows
    assert plan.summary.counts["user"] == {"add": 1, "update": 1, "delete": 1}
    assert hierarchy.users_by_source_identifier() == {
        "T1": "user.T1", "S1": "user.S2", "S2": "user.S2b", "S3": "user.S3"}


def test_identifiers_are_recorded_where_the_roster_lacks_them_without_changing_anything(hierarchy):
    earlier = planning.build_plan(hierarchy, map_roster(roster(), AsmPreferences()).batch)
    list(planning.apply_plan(earlier.changes, hierarchy, "asm"))  # imported before identifiers were kept
    assert hierarchy.users_by_source_identifier() == {}

    plan, events = sync(hierarchy, roster(), AsmPreferences())
    assert plan.summary.total_changes == 0 and events == []
    assert {c.natural_id: c.after for c in plan.changes} == {
        f"pid-{uid}": {"source_identifier": uid} for uid in ("T1", "S1", "S2", "S3")}
    assert hierarchy.users_by_source_identifier() == {uid: f"pid-{uid}" for uid in ("T1", "S1", "S2", "S3")}
    again, _ = sync(hierarchy, roster(), AsmPreferences())
    assert again.changes == []


def test_preferences_validate_and_round_trip():
    prefs = AsmPreferences.from_dict({"sync_time": "02:30", "locations": ["L1"],
                                      "user_id_source": "sis_username"})
    assert AsmPreferences.from_dict(prefs.to_dict()) == prefs
    with pytest.raises(ValidationError, match="sync_time"):
        AsmPreferences.from_dict({"sync_time": "25:00"})
    with pytest.raises(ValidationError, match="user_id_source"):
        AsmPreferences.from_dict({"user_id_source": "shoe_size"})
    with pytest.raises(ValidationError, match="unknown preference"):
        AsmPreferences.from_dict({"colour": "red"})


@pytest.mark.parametrize("prefs,match", [
    ("abc", "must be an object"),
    ({"sync_time": 5}, "sync_time '5' must be HH:MM"),
    ({"sync_time": "²:05"}, "must be HH:MM"),
    ({"sync_time": "24:00"}, "must be HH:MM"),
    ({"locations": 5}, "locations must be a list of non-empty strings"),
    ({"locations": "L1"}, "locations must be a list"),
    ({"only_add_new": "no"}, "only_add_new must be true or false"),
    ({"skip_student_email": 1}, "skip_student_email must be true or false"),
    ({"import_users_without_location": None}, "import_users_without_location must be true"),
    ({"user_id_source": ["email"]}, "user_id_source .* is not one of"),
])
def test_preferences_are_type_checked(prefs, match):
    with pytest.raises(ValidationError, match=match):
        AsmPreferences.from_dict(prefs)


def test_clock_times_with_one_or_two_digit_hours():
    assert AsmPreferences.from_dict({"sync_time": "2:05"}).sync_time == "2:05"
    assert AsmPreferences.from_dict({"sync_time": "23:59", "locations": ["L1"]}).locations == ("L1",)
