"""Apple School Manager roster objects -> roster records, following the sync preferences.

Apple's roster endpoints return RosterPerson, RosterClass, RosterLocation and
RosterCourse objects. Persons carry no type and no location: a person who teaches a
class is a teacher, one who attends a class is a student, and their locations are
those of their classes. A preference Apple's API cannot satisfy (the Person Number is
not exposed) is reported as a warning in the preview, together with the fallback used.

A person is known by Apple's ``unique_identifier`` whatever the user ID preference: a person
rejected here (no value in the field chosen as user ID, or one shared with another person)
names the user the roster already holds for them, so a gap in Apple's data never deletes it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any, Iterable, Mapping

from services.roster.domain.options import check_flags, known_options, string_tuple
from shared.contracts.roster import (
    ClassRecord, ImportBatch, LocationRecord, RejectedRow, UserRecord,
)
from shared.errors import ValidationError

USER_ID_SOURCES = ("person_number", "person_id", "managed_apple_id_prefix", "sis_username",
                   "email", "managed_apple_id")
EMAIL_SOURCES = ("asm_email", "managed_apple_id", "managed_apple_id_without_subdomain")
CLASS_NAME_SOURCES = ("class_id", "class_number", "name", "display_name")
# ASCII digits only: "²".isdigit() is true, but int("²") fails
_CLOCK_TIME = re.compile(r"([01]?[0-9]|2[0-3]):[0-5][0-9]")


@dataclass(frozen=True, kw_only=True)
class AsmPreferences:
    """How one server token's roster is imported."""

    sync_time: str | None = None  # "HH:MM" UTC for the daily automatic sync; None: manual
    only_add_new: bool = False
    user_id_source: str = "person_id"
    email_source: str = "asm_email"
    skip_student_email: bool = False  # "do not import e-mail for students"
    import_users_without_location: bool = False
    class_name_source: str = "name"
    locations: tuple[str, ...] | None = None  # location unique identifiers to sync; None: all

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("user_id_source", self.user_id_source, USER_ID_SOURCES),
            ("email_source", self.email_source, EMAIL_SOURCES),
            ("class_name_source", self.class_name_source, CLASS_NAME_SOURCES),
        ):
            if value not in allowed:
                raise ValidationError(f"{name} '{value}' is not one of {', '.join(allowed)}")
        if self.sync_time is not None and not _is_clock_time(self.sync_time):
            raise ValidationError(f"sync_time '{self.sync_time}' must be HH:MM (UTC), "
                                  f"for example 02:30")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "AsmPreferences":
        """Preferences from a JSON object (or None for the defaults), checked."""
        data = known_options(data, "preference", {f.name for f in fields(cls)})
        check_flags(data, ("only_add_new", "skip_student_email", "import_users_without_location"))
        if data.get("locations") is not None:
            data["locations"] = string_tuple(data["locations"], "locations")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["locations"] = list(self.locations) if self.locations is not None else None
        return data


def _is_clock_time(value: Any) -> bool:
    return isinstance(value, str) and _CLOCK_TIME.fullmatch(value) is not None


@dataclass
class AsmRoster:
    """What the four roster endpoints returned (lists of Apple's JSON objects)."""

    persons: list[dict[str, Any]] = field(default_factory=list)
    classes: list[dict[str, Any]] = field(default_factory=list)
    locations: list[dict[str, Any]] = field(default_factory=list)
    courses: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class AsmMapping:
    batch: ImportBatch
    warnings: list[str]
    skipped_without_location: int  # in no class
    skipped_elsewhere: int  # only in classes of locations the preferences do not sync
    # user ID -> Apple's unique identifier of the person, for the batch's users
    source_identifiers: dict[str, str]


def map_roster(roster: AsmRoster, prefs: AsmPreferences,
               known_users: Mapping[str, str] | None = None) -> AsmMapping:
    """Map Apple's roster to an import batch; ``known_users`` maps Apple's unique identifier of a
    person to the user ID the roster holds for them (imported before, maybe under another ID)."""
    known_users = known_users or {}
    warnings: list[str] = []
    rejected: list[RejectedRow] = []
    wanted_locations = set(prefs.locations) if prefs.locations is not None else None

    locations = []
    for loc in _dedupe(roster.locations):
        if wanted_locations is None or loc["unique_identifier"] in wanted_locations:
            locations.append(LocationRecord(location_id=loc["unique_identifier"],
                                            name=loc.get("name") or loc["unique_identifier"]))
    synced_locations = {loc.location_id for loc in locations}
    course_names = {c["unique_identifier"]: c.get("name") for c in _dedupe(roster.courses)}

    user_id_source = prefs.user_id_source
    if user_id_source == "person_number":
        warnings.append("the user ID is set to come from the Person Number, which Apple's roster "
                        "API does not provide; the Person ID is used instead")
        user_id_source = "person_id"

    # a person's type and locations follow from the classes they are in; whether they are in a class
    # at all, from every active class, those of locations not synced too
    active = [c for c in _dedupe(roster.classes) if (c.get("status") or "Active") == "Active"]
    in_any_class = {person for cls in active for key in ("instructor_unique_identifiers",
                                                         "student_unique_identifiers")
                    for person in cls.get(key) or ()}
    classes = [c for c in active if (c.get("location") or {}).get("unique_identifier") in synced_locations]
    teaches: dict[str, set[str]] = {}
    attends: dict[str, set[str]] = {}
    for cls in classes:
        location_id = cls["location"]["unique_identifier"]
        for person in cls.get("instructor_unique_identifiers") or ():
            teaches.setdefault(person, set()).add(location_id)
        for person in cls.get("student_unique_identifiers") or ():
            attends.setdefault(person, set()).add(location_id)

    users: list[UserRecord] = []
    user_id_of: dict[str, str] = {}  # Apple's unique identifier -> our user ID
    source_identifiers: dict[str, str] = {}  # the reverse, for the batch's users only
    skipped = skipped_elsewhere = 0
    name_source_missing = 0
    # a sync limited to some locations cannot hold people in none (its plan would refuse them)
    without_location = prefs.import_users_without_location and wanted_locations is None
    listed: list[tuple[int, dict[str, Any], str | None]] = []  # row, person, user ID
    for row, person in enumerate(_dedupe(roster.persons), start=1):
        apple_id = person["unique_identifier"]
        if apple_id not in teaches and apple_id not in attends:
            if apple_id in in_any_class:
                skipped_elsewhere += 1
                continue
            if not without_location:
                skipped += 1
                continue
        listed.append((row, person, _user_id(person, user_id_source)))
    keepers = _id_keepers(listed, known_users)
    for row, person, user_id in listed:
        apple_id = person["unique_identifier"]
        keeper_row = keepers.get(user_id) if user_id else None
        if keeper_row != row:
            known_id = known_users.get(apple_id)
            rejected.append(_rejected_person(person, row, user_id, user_id_source, keeper_row, known_id))
            if known_id:  # their user stays as it is, in their classes too
                user_id_of[apple_id] = known_id
            continue
        user_id_of[apple_id] = user_id
        source_identifiers[user_id] = apple_id
        user_type = ("teacher" if apple_id in teaches else
                     "student" if apple_id in attends or person.get("grade") else "staff")
        email = None if (user_type == "student" and prefs.skip_student_email) else _email(
            person, prefs.email_source)
        users.append(UserRecord(
            user_id=user_id, user_type=user_type, first_name=person.get("first_name"),
            last_name=person.get("last_name"), name=person.get("name"), email=email,
            managed_apple_id=person.get("managed_apple_id"),
            locations=sorted(teaches.get(apple_id, set()) | attends.get(apple_id, set())),
            grade_level=person.get("grade") or None))

    records = []
    for cls in classes:
        name = _class_name(cls, prefs.class_name_source)
        if name is None:
            name_source_missing += 1
            name = cls.get("name") or cls["unique_identifier"]
        course = cls.get("course") or {}
        records.append(ClassRecord(
            class_id=cls["unique_identifier"], name=name,
            location_id=cls["location"]["unique_identifier"],
            course_name=course.get("name") or course_names.get(course.get("unique_identifier")),
            room=cls.get("room") or None,
            teacher_ids=[user_id_of[p] for p in cls.get("instructor_unique_identifiers") or ()
                         if p in user_id_of],
            student_ids=[user_id_of[p] for p in cls.get("student_unique_identifiers") or ()
                         if p in user_id_of]))

    if skipped_elsewhere:
        warnings.append(f"{skipped_elsewhere} user(s) only in classes of locations this token does not "
                        f"sync were skipped")
    if skipped and wanted_locations is not None:
        warnings.append(f"{skipped} user(s) in no class were skipped: their location is unknown, and a "
                        f"sync limited to some locations imports only people of those locations")
    elif skipped:
        warnings.append(f"{skipped} user(s) in no class were skipped (their location is "
                        f"unknown); allow importing users without a location to import them")
    if name_source_missing:
        warnings.append(f"{name_source_missing} class(es) have no "
                        f"{prefs.class_name_source.replace('_', ' ')} in Apple School Manager; "
                        f"their name is used instead")
    batch = ImportBatch(source="asm", locations=locations, users=users, classes=records,
                        rejected=rejected)
    return AsmMapping(batch=batch, warnings=warnings, skipped_without_location=skipped,
                      skipped_elsewhere=skipped_elsewhere, source_identifiers=source_identifiers)


def _id_keepers(listed: list[tuple[int, dict[str, Any], str | None]],
                known_users: Mapping[str, str]) -> dict[str, int]:
    """The row that keeps each user ID: the person the roster already holds it for, wherever Apple lists them;
    otherwise the first row giving it. Every other person giving that ID is rejected."""
    keepers: dict[str, int] = {}
    for row, person, user_id in listed:
        if user_id and (user_id not in keepers or known_users.get(person["unique_identifier"]) == user_id):
            keepers[user_id] = row
    return keepers


def _rejected_person(person: Mapping[str, Any], row: int, user_id: str | None, user_id_source: str,
                     shared_with: int | None, known_id: str | None) -> RejectedRow:
    """A person without a user ID of their own; the row names the user the roster holds for them, if any."""
    source = user_id_source.replace("_", " ")
    if not user_id:
        reason = (f"{person.get('name') or person['unique_identifier']} has no {source} in Apple School "
                  f"Manager, which the sync preferences use as user ID")
    else:
        reason = (f"user ID '{user_id}' ({source}) is shared with row {shared_with}; choose a user ID "
                  f"source that is unique")
    if known_id:
        reason += f"; user '{known_id}', imported before for this person, is not deleted"
    return RejectedRow(sheet="Users", row=row, id=known_id or user_id or None, reason=reason)


def _dedupe(objects: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Apple's sync endpoints may repeat an object; the last copy wins."""
    return list({o["unique_identifier"]: o for o in objects}.values())


def _user_id(person: Mapping[str, Any], source: str) -> str | None:
    if source == "person_id":
        return person.get("person_id") or person.get("source_system_identifier")
    if source == "managed_apple_id_prefix":
        maid = person.get("managed_apple_id") or ""
        return maid.split("@", 1)[0] or None
    if source == "sis_username":
        return person.get("sis_username")
    if source == "email":
        return person.get("email_address")
    return person.get("managed_apple_id")


def _email(person: Mapping[str, Any], source: str) -> str | None:
    if source == "asm_email":
        return person.get("email_address") or None
    maid = person.get("managed_apple_id") or None
    if maid is None or source == "managed_apple_id":
        return maid
    local, _, domain = maid.partition("@")
    labels = domain.split(".")
    # appleid.school.edu -> school.edu: drop the first label of a domain with three or more
    return f"{local}@{'.'.join(labels[1:])}" if len(labels) > 2 else maid


def _class_name(cls: Mapping[str, Any], source: str) -> str | None:
    key = {"class_id": "source_system_identifier", "class_number": "class_number",
           "name": "name", "display_name": "class_display_name"}[source]
    return cls.get(key) or None
