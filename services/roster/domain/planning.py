"""The one import pipeline: compare a batch of records with the hierarchy, then apply.

Every source (Apple School Manager, spreadsheets, the HTTP API, the directory) hands
over an ``ImportBatch``; ``build_plan`` turns it into a ``Plan`` (what would be added,
updated field by field, deleted, and which rows were rejected), and ``apply_plan``
writes exactly that plan through a ``HierarchyWriter`` and returns the events to publish.

The work is linear in the size of the batch and of the hierarchy: everything is looked
up in dicts built once. A plan is a flat list of small ``Change`` rows in the order in
which they must be written, so a service can store it as table rows and apply it in
chunks without holding anything else. Class memberships travel inside the class
changes (a class's members after the change); the summary still counts them.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field, fields, replace
from typing import Any, Iterable, Iterator, Mapping, Protocol

from services.roster.domain.options import check_flags, known_options, string_tuple
from shared.contracts.roster import (
    USER_TYPES,
    ClassDeleted,
    ClassImported,
    ClassRecord,
    ClassUpdated,
    GradeLevelRecord,
    ImportBatch,
    LocationRecord,
    RejectedRow,
    UserDeleted,
    UserImported,
    UserRecord,
    UserUpdated,
)
from shared.contracts.base import Event, utc_now_iso
from shared.errors import Conflict, NeedsApproval, ValidationError

# the lengths of the roster's text columns: what passes the planner must fit when applied
MAX_NAME_LENGTH = 255
MAX_ID_LENGTH = 128
MAX_SOURCE_LENGTH = 20
MAX_NATURAL_ID_LENGTH = 300  # a plan row's id; a grade level's is "location ID/name"
DEFAULT_MAX_USER_DELETE_SHARE = 0.10

# entities, in the order a reader expects them in a summary
LOCATION, GRADE_LEVEL, USER, CLASS, MEMBERSHIP = (
    "location", "grade_level", "user", "class", "membership")
ENTITIES = (LOCATION, GRADE_LEVEL, USER, CLASS, MEMBERSHIP)
ADD, UPDATE, DELETE = "add", "update", "delete"
ACTIONS = (ADD, UPDATE, DELETE)
# not a change of the hierarchy: the devices a user's record lists, handed to enrollment once the
# plan is applied; written last in a plan and not counted among its changes
DEVICES, ASSIGN = "devices", "assign"
# nor this: the source's own identifier of a user it lists (Apple's unique identifier of a person),
# recorded on apply where the roster lacks it, so the user is recognised when its user ID is missing
# or changes; written after the hierarchy, before the devices, and not counted either
SOURCE_IDENTIFIER, RECORD = "source_identifier", "record"

# the sheet names a rejection is reported under (the spreadsheet template uses the same)
SHEET_OF = {LOCATION: "Locations", GRADE_LEVEL: "Grade Levels", USER: "Users", CLASS: "Classes"}
_NOUNS = {LOCATION: "location(s)", GRADE_LEVEL: "grade level(s)", USER: "user(s)", CLASS: "class(es)"}

# the fields compared between an incoming record and the stored one
USER_FIELDS = ("user_id", "user_type", "first_name", "last_name", "name", "email",
               "managed_apple_id", "locations", "grade_level", "serial_numbers")
CLASS_FIELDS = ("name", "location_id", "course_name", "room", "teacher_ids", "student_ids")

# spreadsheets are one source whatever the file format, so a CSV import may delete
# what an XLSX import created, but never what Apple School Manager or the directory did
_SOURCE_FAMILY = {"csv": "spreadsheet", "xlsx": "spreadsheet"}


def source_family(source: str) -> str:
    return _SOURCE_FAMILY.get(source, source)


# ---------------------------------------------------------------- ports


@dataclass(frozen=True, slots=True)
class StoredUser:
    key: Any  # the storage's own identity; survives a change of user ID
    record: UserRecord
    source: str
    source_identifier: str | None = None  # the person's own identifier in the source, where recorded


@dataclass(frozen=True, slots=True)
class StoredClass:
    record: ClassRecord
    source: str


@dataclass(frozen=True, slots=True)
class StoredLocation:
    record: LocationRecord
    source: str


@dataclass(frozen=True, slots=True)
class StoredGradeLevel:
    record: GradeLevelRecord
    source: str


class HierarchyReader(Protocol):
    """The current hierarchy, as the planner needs it."""

    def version(self) -> int:
        """A number that changes whenever the hierarchy is written."""

    def locations(self) -> Iterable[StoredLocation]: ...

    def grade_levels(self) -> Iterable[StoredGradeLevel]: ...

    def users(self) -> Iterable[StoredUser]: ...

    def classes(self) -> Iterable[StoredClass]: ...


@dataclass
class HierarchySnapshot:
    """The hierarchy read into memory, so planning can run away from the database."""

    version_number: int
    stored_locations: list[StoredLocation]
    stored_grade_levels: list[StoredGradeLevel]
    stored_users: list[StoredUser]
    stored_classes: list[StoredClass]

    @classmethod
    def of(cls, reader: HierarchyReader) -> "HierarchySnapshot":
        return cls(reader.version(), list(reader.locations()), list(reader.grade_levels()),
                   list(reader.users()), list(reader.classes()))

    def version(self) -> int:
        return self.version_number

    def locations(self) -> list[StoredLocation]:
        return self.stored_locations

    def grade_levels(self) -> list[StoredGradeLevel]:
        return self.stored_grade_levels

    def users(self) -> list[StoredUser]:
        return self.stored_users

    def classes(self) -> list[StoredClass]:
        return self.stored_classes


class HierarchyWriter(Protocol):
    """Writes one run of changes of the same entity and action, in one batch.

    An add records ``source`` on the row; an update leaves the row's source as it is: it names the creator,
    the only source whose imports delete the row as missing, so updating a row never takes it over.
    A class add or update sets the class's members to ``after["teacher_ids"]`` and
    ``after["student_ids"]`` (user IDs as they are once the users are written); deleting
    a user or a class removes its memberships. Recording a source identifier gives it to the user
    ``target`` (or, for a user the plan adds, the user ``natural_id``) and takes it from any other.
    """

    def write(self, entity: str, action: str, changes: list["Change"], source: str) -> None: ...


# ---------------------------------------------------------------- plan


@dataclass(frozen=True, slots=True)
class Change:
    """One row of a plan.

    ``natural_id`` is the id the source knows (user ID, class ID, ...); ``target`` the
    stored key of the user an update or deletion touches. ``after`` is the whole record
    after an add or update; ``before`` holds the old values of the changed fields of an
    update, or the whole record of a deletion.
    """

    entity: str
    action: str
    natural_id: str
    after: dict[str, Any] | None = None
    before: dict[str, Any] | None = None
    target: Any = None

    def field_changes(self) -> dict[str, tuple[Any, Any]]:
        """For an update: field -> (before, after)."""
        if self.action != UPDATE or not self.before:
            return {}
        return {name: (old, (self.after or {}).get(name)) for name, old in self.before.items()}


@dataclass(frozen=True, kw_only=True)
class PlanOptions:
    only_add_new: bool = False  # skip updates and deletions of existing data
    delete_missing: bool = True  # a full import: what the source no longer lists goes
    delete_user_ids: tuple[str, ...] = ()  # explicit deletions (the API's "delete" operation)
    delete_class_ids: tuple[str, ...] = ()
    max_user_delete_share: float = DEFAULT_MAX_USER_DELETE_SHARE
    # False: a new location is added only if a user or class the plan keeps is in it (the API
    # names locations in its elements, so a refused element must not leave its location behind)
    add_unused_locations: bool = True
    # a location leader's import: only these locations are read, changed or deleted
    locations: tuple[str, ...] | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "PlanOptions":
        """The options of an RPC call (a JSON object, or None), checked."""
        data = known_options(data, "import option", {f.name for f in fields(cls)})
        check_flags(data, ("only_add_new", "delete_missing", "add_unused_locations"))
        for name in ("delete_user_ids", "delete_class_ids", "locations"):
            value = data.pop(name, None)
            if value is not None:  # None: no IDs to delete; for locations, every location
                data[name] = string_tuple(value, name)
        share = data.get("max_user_delete_share", DEFAULT_MAX_USER_DELETE_SHARE)
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
            raise ValidationError("max_user_delete_share must be a number from 0 to 1 "
                                  "(0.1 allows deleting 10 % of the users)")
        return cls(**data)


@dataclass(kw_only=True)
class PlanSummary:
    source: str
    base_version: int
    counts: dict[str, dict[str, int]] = field(
        default_factory=lambda: {e: {a: 0 for a in ACTIONS} for e in ENTITIES})
    skipped_updates: int = 0
    skipped_deletions: int = 0
    unchanged_users: int = 0
    existing_users: int = 0  # the stored users this import may delete, whom the deletion guard's share is of
    rejected: list[RejectedRow] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    max_user_delete_share: float = DEFAULT_MAX_USER_DELETE_SHARE
    locations: list[str] | None = None  # the import was limited to these locations

    @property
    def user_delete_share(self) -> float:
        if not self.existing_users:
            return 0.0
        return self.counts[USER][DELETE] / self.existing_users

    @property
    def needs_mass_delete_approval(self) -> bool:
        return self.user_delete_share > self.max_user_delete_share

    @property
    def total_changes(self) -> int:
        return sum(sum(actions.values()) for actions in self.counts.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "base_version": self.base_version,
            "counts": self.counts,
            "total_changes": self.total_changes,
            "skipped_updates": self.skipped_updates,
            "skipped_deletions": self.skipped_deletions,
            "unchanged_users": self.unchanged_users,
            "existing_users": self.existing_users,
            "user_delete_share": round(self.user_delete_share, 4),
            "max_user_delete_share": self.max_user_delete_share,
            "needs_mass_delete_approval": self.needs_mass_delete_approval,
            "rejected": [r.to_dict() for r in self.rejected],
            "warnings": list(self.warnings),
            "locations": self.locations,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PlanSummary":
        return cls(
            source=data["source"], base_version=data["base_version"],
            counts={e: dict(a) for e, a in data["counts"].items()},
            skipped_updates=data["skipped_updates"], skipped_deletions=data["skipped_deletions"],
            unchanged_users=data["unchanged_users"], existing_users=data["existing_users"],
            rejected=[RejectedRow.from_dict(r) for r in data["rejected"]],
            warnings=list(data["warnings"]), max_user_delete_share=data["max_user_delete_share"],
            locations=data.get("locations"),
        )


@dataclass
class Plan:
    summary: PlanSummary
    # in the order they must be written, then the source identifiers to record and the users' devices
    changes: list[Change]


# ---------------------------------------------------------------- building


def build_plan(
    hierarchy: HierarchyReader,
    batch: ImportBatch,
    options: PlanOptions | None = None,
    *,
    row_numbers: Mapping[str, Mapping[str, int]] | None = None,
    source_identifiers: Mapping[str, str] | None = None,
) -> Plan:
    """Compare ``batch`` with the hierarchy; nothing is written.

    ``row_numbers`` maps a sheet name to {natural id: row} so that a rejection names the
    row of the file it came from; without it, the position in the batch is used.
    ``source_identifiers`` maps a user ID of the batch to the person's own identifier in the
    source (Apple School Manager's); a user whose ID and e-mail both changed is matched by it.
    """
    if len(batch.source) > MAX_SOURCE_LENGTH:
        raise ValidationError(f"the batch's source is {len(batch.source)} characters long; "
                              f"at most {MAX_SOURCE_LENGTH} are allowed")
    return _Planner(hierarchy, batch, options or PlanOptions(), row_numbers or {},
                    source_identifiers or {}).build()


class _Planner:
    def __init__(self, hierarchy: HierarchyReader, batch: ImportBatch, options: PlanOptions,
                 row_numbers: Mapping[str, Mapping[str, int]], source_identifiers: Mapping[str, str]):
        self.hierarchy = hierarchy
        self.batch = batch
        self.options = options
        self.row_numbers = row_numbers
        self.source_identifiers = source_identifiers
        self.family = source_family(batch.source)
        self.summary = PlanSummary(source=batch.source, base_version=hierarchy.version(),
                                   rejected=list(batch.rejected),
                                   max_user_delete_share=options.max_user_delete_share,
                                   locations=list(options.locations) if options.locations is not None
                                   else None)
        # changes grouped by the phase in which they are written (see _PHASES)
        self.phases: dict[tuple[str, str], list[Change]] = {p: [] for p in _PHASES}
        self.devices: list[Change] = []  # the users' devices, handed to enrollment after the apply
        self.identified: list[Change] = []  # source identifiers to record on apply
        # in an import limited to some locations: the users who stay and are in none of them
        self.outsiders: set[str] = set()
        # what rejected rows name, per entity: kept even where the source no longer lists it,
        # since the row that lists it could not be read
        self.rejected_ids: dict[str, set[str]] = {entity: set() for entity in SHEET_OF}
        entity_of_sheet = {sheet.lower(): entity for entity, sheet in SHEET_OF.items()}
        for rejected in batch.rejected:
            entity = entity_of_sheet.get(rejected.sheet.lower())
            if entity is not None and rejected.id is not None:
                self.rejected_ids[entity].add(rejected.id)

    def build(self) -> Plan:
        location_ids = self._plan_locations()
        self._plan_grade_levels(location_ids)
        user_ids = self._plan_users(location_ids)
        self._plan_classes(location_ids, user_ids)
        if not self.options.add_unused_locations:
            self._drop_unused_new_locations()
        changes = [c for phase in _PHASES for c in self.phases[phase]]
        return Plan(summary=self.summary, changes=changes + self.identified + self.devices)

    # -- helpers

    def _reject(self, entity: str, natural_id: str, position: int, reason: str) -> None:
        sheet = SHEET_OF[entity]
        row = self.row_numbers.get(sheet, {}).get(natural_id, position)
        self.summary.rejected.append(RejectedRow(sheet=sheet, row=row, reason=reason, id=natural_id))
        self.rejected_ids[entity].add(natural_id)

    def _kept_for_rejected_rows(self, entity: str, natural_ids: list[str]) -> None:
        """Say which records stay only because their rows were rejected."""
        if natural_ids:
            self.summary.warnings.append(
                f"{_NOUNS[entity]} {_some(natural_ids)} kept, not deleted, because their rows were "
                f"rejected; fix those rows and import again")

    def _emit(self, change: Change) -> None:
        self.phases[(change.entity, change.action)].append(change)
        self.summary.counts[change.entity][change.action] += 1

    def _may_delete(self, source: str, locations: Iterable[str | None]) -> bool:
        return (self.options.delete_missing and source_family(source) == self.family
                and self._in_scope(locations))

    def _may_delete_user(self, stored: StoredUser) -> bool:
        """Whether this import could delete the stored user, were its source to stop listing them or name them
        for deletion: the users the deletion guard's share is of. A deletion by ID may name any user in scope."""
        if self.options.delete_user_ids:
            return self._in_scope(stored.record.locations)
        return self._may_delete(stored.source, stored.record.locations)

    def _in_scope(self, locations: Iterable[str | None]) -> bool:
        """Within the import's locations: always, unless the import is limited to some."""
        scope = self.options.locations
        if scope is None:
            return True
        locations = list(locations)
        return bool(locations) and all(lid in scope for lid in locations)

    def _out_of_scope(self, locations: Iterable[str | None]) -> str | None:
        if self._in_scope(locations):
            return None
        return ("outside the locations you manage "
                f"({', '.join(self.options.locations or ()) or 'none'})")

    def _skip_deletion(self) -> bool:
        if self.options.only_add_new:
            self.summary.skipped_deletions += 1
            return True
        return False

    # -- locations and grade levels

    def _plan_locations(self) -> set[str]:
        stored = {s.record.location_id: s for s in self.hierarchy.locations()}
        seen: set[str] = set()
        for position, location in enumerate(self.batch.locations, start=1):
            problem = _id_problem("location ID", location.location_id) or _name_problem(
                "location name", location.name, required=True)
            if not problem and location.location_id in seen:
                problem = f"location ID '{location.location_id}' appears more than once"
            problem = problem or self._out_of_scope([location.location_id])
            if problem:
                self._reject(LOCATION, location.location_id, position, problem)
                continue
            seen.add(location.location_id)
            old = stored.get(location.location_id)
            after = location.to_dict()
            if old is None:
                self._emit(Change(LOCATION, ADD, location.location_id, after=after))
            elif old.record.name != location.name:
                if self.options.only_add_new:
                    self.summary.skipped_updates += 1
                else:
                    self._emit(Change(LOCATION, UPDATE, location.location_id, after=after,
                                      before={"name": old.record.name}))
        missing = [s for lid, s in stored.items() if lid not in seen and self._may_delete(s.source, [lid])]
        rejected = self.rejected_ids[LOCATION]
        self.missing_locations = [s for s in missing if s.record.location_id not in rejected]
        self._kept_for_rejected_rows(
            LOCATION, [s.record.location_id for s in missing if s.record.location_id in rejected])
        return set(stored) | seen

    def _plan_grade_levels(self, location_ids: set[str]) -> None:
        self.stored_grade_levels = list(self.hierarchy.grade_levels())
        stored = {(s.record.name, s.record.location_id): s for s in self.stored_grade_levels}
        seen: set[tuple[str, str | None]] = set()
        for position, grade in enumerate(self.batch.grade_levels, start=1):
            key = (grade.name, grade.location_id)
            natural_id = grade_level_id(grade)
            problem = _name_problem("grade level name", grade.name, required=True)
            if not problem and grade.location_id is not None and grade.location_id not in location_ids:
                problem = f"unknown location ID '{grade.location_id}'; add it to the Locations sheet"
            if not problem and len(natural_id) > MAX_NATURAL_ID_LENGTH:
                problem = (f"grade level name is {len(grade.name)} characters long; with location "
                           f"ID '{grade.location_id}' at most "
                           f"{MAX_NATURAL_ID_LENGTH - len(natural_id) + len(grade.name)} are allowed")
            problem = problem or self._out_of_scope([grade.location_id])
            if problem:
                self._reject(GRADE_LEVEL, natural_id, position, problem)
                continue
            if key in seen:
                continue  # the same grade level listed twice is harmless
            seen.add(key)
            if key not in stored:
                self._emit(Change(GRADE_LEVEL, ADD, natural_id, after=grade.to_dict()))
        kept: list[str] = []
        for key, old in stored.items():
            if key in seen or not self._may_delete(old.source, [old.record.location_id]):
                continue
            natural_id = grade_level_id(old.record)
            if natural_id in self.rejected_ids[GRADE_LEVEL]:
                kept.append(natural_id)
            elif not self._skip_deletion():
                self._emit(Change(GRADE_LEVEL, DELETE, natural_id, before=old.record.to_dict()))
        self._kept_for_rejected_rows(GRADE_LEVEL, kept)

    # -- users

    def _plan_users(self, location_ids: set[str]) -> set[str]:
        """Plan user changes; returns the user IDs that exist once the plan is applied."""
        stored_users = self.stored_users = list(self.hierarchy.users())
        # the share of deletions is of the users this import may delete, not of every user stored
        self.summary.existing_users = sum(1 for stored in stored_users if self._may_delete_user(stored))
        by_id = {s.record.user_id: s for s in stored_users}
        by_email = {s.record.email.lower(): s for s in stored_users if s.record.email}
        by_identifier = {s.source_identifier: s for s in stored_users if s.source_identifier}
        listed_ids = {user.user_id for user in self.batch.users}
        matched: set[Any] = set()  # stored keys an incoming user matched
        named_by_rejected: set[Any] = set()  # stored keys a rejected row names (user ID, e-mail, identifier)
        final_ids: set[str] = set()
        explicit_deletes = set(self.options.delete_user_ids)
        seen_ids: set[str] = set()
        seen_emails: set[str] = set()
        for position, user in enumerate(self.batch.users, start=1):
            problem = _user_problem(user, location_ids) or self._out_of_scope(user.locations)
            email_key = user.email.lower() if user.email else None
            if not problem and user.user_id in seen_ids:
                problem = f"user ID '{user.user_id}' appears more than once"
            if not problem and email_key and email_key in seen_emails:
                problem = f"e-mail '{user.email}' belongs to another user in this import"
            by_own_id = by_id.get(user.user_id)
            by_own_email = by_email.get(email_key) if email_key else None
            by_own_identifier = self._by_identifier(user.user_id, by_identifier, listed_ids)
            if (not problem and by_own_id and by_own_email
                    and by_own_id.key != by_own_email.key):
                problem = (f"user ID '{user.user_id}' and e-mail '{user.email}' belong to two "
                           f"different existing users; fix one of them in the source")
            if problem:
                self._reject(USER, user.user_id, position, problem)
                named_by_rejected.update(old.key for old in (by_own_id, by_own_email, by_own_identifier)
                                         if old is not None)
                continue
            seen_ids.add(user.user_id)
            if email_key:
                seen_emails.add(email_key)
            old = by_own_id or by_own_email or by_own_identifier
            if old is not None and not self._in_scope(old.record.locations):
                self._reject(USER, user.user_id, position, "the existing user is "
                             + (self._out_of_scope(old.record.locations) or ""))
                continue
            final_ids.add(user.user_id)
            if old is None:
                self._emit(Change(USER, ADD, user.user_id, after=_user_dict(user)))
                self._record_identifier(user.user_id, None)
                self._hand_over_devices(user.user_id, user.serial_numbers)
                continue
            if old.key in matched:
                self._reject(USER, user.user_id, position,
                             f"matches the same existing user as another row "
                             f"(user ID '{old.record.user_id}')")
                final_ids.discard(user.user_id)
                continue
            matched.add(old.key)
            self._record_identifier(user.user_id, old)
            after = _user_dict(user)
            before = _differences(_user_dict(old.record), after, USER_FIELDS)
            if before and self.options.only_add_new:
                self.summary.skipped_updates += 1
                final_ids.discard(user.user_id)
                final_ids.add(old.record.user_id)
                self._hand_over_devices(old.record.user_id, old.record.serial_numbers)
                continue
            if before:
                self._emit(Change(USER, UPDATE, user.user_id, after=after, before=before,
                                  target=old.key))
            else:
                self.summary.unchanged_users += 1
            self._hand_over_devices(user.user_id, user.serial_numbers)
        kept: list[str] = []
        for stored in stored_users:
            if stored.key in matched:
                continue
            uid = stored.record.user_id
            wanted = (uid in explicit_deletes and self._in_scope(stored.record.locations)) or (
                self._may_delete(stored.source, stored.record.locations))
            if wanted and (stored.key in named_by_rejected or uid in self.rejected_ids[USER]):
                kept.append(uid)
            elif wanted and not self._skip_deletion():
                self._emit(Change(USER, DELETE, uid, before=_user_dict(stored.record),
                                  target=stored.key))
                continue
            final_ids.add(uid)
            if self.options.locations is not None and not any(
                    lid in self.options.locations for lid in stored.record.locations):
                self.outsiders.add(uid)
        self._kept_for_rejected_rows(USER, kept)
        self._reject_unknown_deletions(USER, self.options.delete_user_ids, set(by_id))
        return final_ids

    def _by_identifier(self, user_id: str, by_identifier: Mapping[str, StoredUser],
                       listed_ids: set[str]) -> StoredUser | None:
        """The stored user the source's identifier of ``user_id`` names, unless another row of the
        batch lists that user's ID: then that row is the one that matches it."""
        identifier = self.source_identifiers.get(user_id)
        stored = by_identifier.get(identifier) if identifier else None
        if stored is None or stored.record.user_id in listed_ids:
            return None
        return stored

    def _record_identifier(self, user_id: str, old: StoredUser | None) -> None:
        """Have the source's identifier of a user recorded on apply, where the roster lacks it."""
        identifier = self.source_identifiers.get(user_id)
        # one longer than the column holds stays unrecorded: it must not fail the apply
        if (identifier is None or len(identifier) > MAX_NAME_LENGTH
                or (old is not None and old.source_identifier == identifier)):
            return
        self.identified.append(Change(SOURCE_IDENTIFIER, RECORD, user_id,
                                      after={"source_identifier": identifier},
                                      target=old.key if old is not None else None))

    def _hand_over_devices(self, user_id: str, serial_numbers: list[str]) -> None:
        """Every device a listed user's record names goes to enrollment on apply, not only new ones:
        one enrollment refused before (not synced yet) is assigned once it is known."""
        if serial_numbers:
            self.devices.append(Change(DEVICES, ASSIGN, user_id,
                                       after={"serial_numbers": sorted(set(serial_numbers))}))

    def _reject_unknown_deletions(self, entity: str, natural_ids: Iterable[str], known: set[str]) -> None:
        """An explicit deletion (the API's) of what the roster does not hold is refused, not done."""
        noun = "user" if entity == USER else "class"
        for position, natural_id in enumerate(natural_ids, start=1):
            if natural_id not in known:
                self._reject(entity, natural_id, position,
                             f"{noun} '{natural_id}' does not exist; check the ID (nothing was deleted)")

    # -- classes and memberships

    def _plan_classes(self, location_ids: set[str], user_ids: set[str]) -> None:
        stored = {s.record.class_id: s for s in self.hierarchy.classes()}
        explicit_deletes = set(self.options.delete_class_ids)
        seen: set[str] = set()
        for position, cls in enumerate(self.batch.classes, start=1):
            old = stored.get(cls.class_id)
            problem = _class_problem(cls, location_ids) or self._out_of_scope([cls.location_id])
            if not problem and old is not None and not self._in_scope([old.record.location_id]):
                problem = "the existing class is " + (
                    self._out_of_scope([old.record.location_id]) or "")
            if not problem and cls.class_id in seen:
                problem = f"class ID '{cls.class_id}' appears more than once"
            if not problem:
                unknown_teachers = [t for t in cls.teacher_ids if t not in user_ids]
                if unknown_teachers:
                    problem = (f"unknown teacher ID(s) {', '.join(unknown_teachers)}; add them "
                               f"to the Users sheet or fix the class")
            if not problem and self.outsiders:
                problem = self._newcomers_from_outside(cls, old)
            if problem:
                self._reject(CLASS, cls.class_id, position, problem)
                continue
            seen.add(cls.class_id)
            cls = self._members_once(cls)
            unknown_students = [s for s in cls.student_ids if s not in user_ids]
            if unknown_students:
                self.summary.warnings.append(
                    f"class '{cls.class_id}': unknown student ID(s) {_some(unknown_students)} "
                    f"left out of the class")
                left_out = set(unknown_students)
                cls = replace(cls, student_ids=[s for s in cls.student_ids if s not in left_out])
            after = _class_dict(cls)
            if old is None:
                self._emit(Change(CLASS, ADD, cls.class_id, after=after))
                self._count_memberships({}, after)
                continue
            before = _differences(_class_dict(old.record), after, CLASS_FIELDS)
            if not before:
                continue
            if self.options.only_add_new:
                self.summary.skipped_updates += 1
                continue
            self._emit(Change(CLASS, UPDATE, cls.class_id, after=after, before=before))
            self._count_memberships(_class_dict(old.record), after)
        kept: list[str] = []
        for class_id, old in stored.items():
            if class_id in seen:
                continue
            in_scope = self._in_scope([old.record.location_id])
            wanted = (class_id in explicit_deletes and in_scope) or self._may_delete(
                old.source, [old.record.location_id])
            if wanted and class_id in self.rejected_ids[CLASS]:
                kept.append(class_id)
            elif wanted and not self._skip_deletion():
                before = _class_dict(old.record)
                self._emit(Change(CLASS, DELETE, class_id, before=before))
                self._count_memberships(before, {})
        self._kept_for_rejected_rows(CLASS, kept)
        self._reject_unknown_deletions(CLASS, self.options.delete_class_ids, set(stored))
        self._plan_location_deletions(stored)

    def _drop_unused_new_locations(self) -> None:
        """Add only the new locations that a user or class this plan writes is in."""
        used = {lid for phase in ((USER, ADD), (USER, UPDATE)) for change in self.phases[phase]
                for lid in change.after["locations"]}
        used.update(change.after["location_id"] for phase in ((GRADE_LEVEL, ADD), (CLASS, ADD), (CLASS, UPDATE))
                    for change in self.phases[phase])
        added = [change for change in self.phases[(LOCATION, ADD)] if change.natural_id in used]
        self.phases[(LOCATION, ADD)] = added
        self.summary.counts[LOCATION][ADD] = len(added)

    def _newcomers_from_outside(self, cls: ClassRecord, old: StoredClass | None) -> str | None:
        """A scoped import may not bring users of other locations into a class."""
        members = set(old.record.teacher_ids) | set(old.record.student_ids) if old else set()
        newcomers = sorted({u for u in (*cls.teacher_ids, *cls.student_ids)
                            if u in self.outsiders and u not in members})
        if not newcomers:
            return None
        return (f"user(s) {_some(newcomers)} are in none of the locations you manage "
                f"({', '.join(self.options.locations or ())}); only an administrator can add "
                f"them to a class")

    def _members_once(self, cls: ClassRecord) -> ClassRecord:
        """A person listed twice in a class is in it once (a membership is keyed by class,
        person and role)."""
        teacher_ids, student_ids = _unique(cls.teacher_ids), _unique(cls.student_ids)
        if len(teacher_ids) == len(cls.teacher_ids) and len(student_ids) == len(cls.student_ids):
            return cls
        repeated = sorted({uid for ids in (cls.teacher_ids, cls.student_ids)
                           for uid, count in Counter(ids).items() if count > 1})
        self.summary.warnings.append(
            f"class '{cls.class_id}': {_some(repeated)} listed more than once, kept once")
        return replace(cls, teacher_ids=teacher_ids, student_ids=student_ids)

    def _count_memberships(self, before: Mapping[str, Any], after: Mapping[str, Any]) -> None:
        counts = self.summary.counts[MEMBERSHIP]
        for key in ("teacher_ids", "student_ids"):
            old = set(before.get(key) or ())
            new = set(after.get(key) or ())
            counts[ADD] += len(new - old)
            counts[DELETE] += len(old - new)

    def _plan_location_deletions(self, stored_classes: Mapping[str, StoredClass]) -> None:
        if not self.missing_locations:
            return
        in_use = self._locations_in_use(stored_classes)
        for stored in self.missing_locations:
            lid = stored.record.location_id
            if lid in in_use:
                self.summary.warnings.append(
                    f"location '{lid}' is no longer listed but still in use, so it is kept")
            elif not self._skip_deletion():
                self._emit(Change(LOCATION, DELETE, lid, before=stored.record.to_dict()))

    def _locations_in_use(self, stored_classes: Mapping[str, StoredClass]) -> set[str | None]:
        """The locations of the users, classes and grade levels there are once the plan is applied, of any
        source (the users kept for their rejected rows too), and those the batch's user rows name.

        A location deleted is empty: nothing is left pointing at it, and no deletion happens that the plan
        does not list (deleting it does not take its grade levels along)."""
        users_changed = {c.target for phase in ((USER, UPDATE), (USER, DELETE)) for c in self.phases[phase]}
        classes_changed = {c.natural_id for phase in ((CLASS, UPDATE), (CLASS, DELETE)) for c in self.phases[phase]}
        grades_deleted = {c.natural_id for c in self.phases[(GRADE_LEVEL, DELETE)]}
        in_use: set[str | None] = {lid for user in self.batch.users for lid in user.locations}
        in_use.update(lid for stored in self.stored_users if stored.key not in users_changed
                      for lid in stored.record.locations)
        in_use.update(lid for phase in ((USER, ADD), (USER, UPDATE)) for change in self.phases[phase]
                      for lid in change.after["locations"])
        in_use.update(stored.record.location_id for class_id, stored in stored_classes.items()
                      if class_id not in classes_changed)
        in_use.update(change.after["location_id"] for phase in ((CLASS, ADD), (CLASS, UPDATE))
                      for change in self.phases[phase])
        in_use.update(stored.record.location_id for stored in self.stored_grade_levels
                      if grade_level_id(stored.record) not in grades_deleted)
        in_use.update(change.after["location_id"] for change in self.phases[(GRADE_LEVEL, ADD)])
        return in_use


# the order in which changes are written: classes (with their members) go before what
# they point to is removed, and after what they point to exists
_PHASES = (
    (CLASS, DELETE),
    (LOCATION, ADD), (LOCATION, UPDATE), (GRADE_LEVEL, ADD),
    (USER, ADD), (USER, UPDATE),
    (CLASS, ADD), (CLASS, UPDATE),
    (USER, DELETE), (GRADE_LEVEL, DELETE), (LOCATION, DELETE),
)


_USER_RECORD_FIELDS = tuple(f.name for f in fields(UserRecord))
_CLASS_RECORD_FIELDS = tuple(f.name for f in fields(ClassRecord))


def _user_dict(user: UserRecord) -> dict[str, Any]:
    # built by hand rather than with to_dict: this runs once per user of an import
    data = {name: getattr(user, name) for name in _USER_RECORD_FIELDS}
    # listed twice means listed once; a user's location rows are keyed by location
    data["locations"] = sorted(set(user.locations))
    data["serial_numbers"] = sorted(set(user.serial_numbers))
    return data


def _class_dict(cls: ClassRecord) -> dict[str, Any]:
    data = {name: getattr(cls, name) for name in _CLASS_RECORD_FIELDS}
    # the first teacher is the class's primary teacher (the API's idteacher); the others have no order
    data["teacher_ids"] = cls.teacher_ids[:1] + sorted(cls.teacher_ids[1:])
    data["student_ids"] = sorted(cls.student_ids)
    return data


def _unique(ids: list[str]) -> list[str]:
    return list(dict.fromkeys(ids))


def _some(ids: list[str]) -> str:
    """The first few IDs of a list, for a message."""
    return ", ".join(ids[:5]) + (" ..." if len(ids) > 5 else "")


def _differences(old: Mapping[str, Any], new: Mapping[str, Any],
                 fields: Iterable[str]) -> dict[str, Any]:
    """The old values of the fields that differ."""
    return {f: old.get(f) for f in fields if old.get(f) != new.get(f)}


def grade_level_id(grade: GradeLevelRecord) -> str:
    """A grade level's natural ID, as plans and rejected rows name it."""
    return f"{grade.location_id or ''}/{grade.name}"


def _id_problem(what: str, value: str) -> str | None:
    if not value or not value.strip():
        return f"{what} is empty"
    if len(value) > MAX_ID_LENGTH:
        return f"{what} is {len(value)} characters long; at most {MAX_ID_LENGTH} are allowed"
    return None


def _name_problem(what: str, value: str | None, *, required: bool = False) -> str | None:
    if value is None or not value.strip():
        return f"{what} is empty" if required else None
    if len(value) > MAX_NAME_LENGTH:
        return f"{what} is {len(value)} characters long; at most {MAX_NAME_LENGTH} are allowed"
    return None


# an address with a line break would end up in an invite e-mail's To: header, which refuses it
_SPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f]")


def _user_problem(user: UserRecord, location_ids: set[str]) -> str | None:
    problem = _id_problem("user ID", user.user_id)
    if problem:
        return problem
    if user.user_type not in USER_TYPES:
        return f"user type '{user.user_type}' is not one of {', '.join(USER_TYPES)}"
    names = (user.first_name, user.last_name, user.name, user.email, user.managed_apple_id,
             user.grade_level)
    # the common case (every value short and not blank) is checked without building messages
    if any(v is not None and (len(v) > MAX_NAME_LENGTH or not v.strip()) for v in names):
        for what, value in zip(("first name", "last name", "name", "e-mail", "Managed Apple ID",
                                "grade level"), names):
            problem = _name_problem(what, value)
            if problem:
                return problem
    if not (user.name or user.first_name or user.last_name):
        return "the user has no name"
    if user.email and ("@" not in user.email or _SPACE_OR_CONTROL.search(user.email)):
        return f"e-mail {user.email!r} is not an e-mail address"  # repr: a line break shows as \n
    if user.managed_apple_id and _SPACE_OR_CONTROL.search(user.managed_apple_id):
        return f"Managed Apple ID {user.managed_apple_id!r} holds a space or a control character"
    if not location_ids.issuperset(user.locations):
        unknown = [lid for lid in user.locations if lid not in location_ids]
        return f"unknown location ID(s) {', '.join(unknown)}; add them to the Locations sheet"
    return None


def _class_problem(cls: ClassRecord, location_ids: set[str]) -> str | None:
    return (
        _id_problem("class ID", cls.class_id)
        or _name_problem("class name", cls.name, required=True)
        or _name_problem("course name", cls.course_name)
        or _name_problem("room", cls.room)
        or (None if cls.location_id in location_ids else
            f"unknown location ID '{cls.location_id}'; add it to the Locations sheet")
    )


# ---------------------------------------------------------------- applying


def check_can_apply(summary: PlanSummary, current_version: int, *,
                    allow_mass_delete: bool) -> None:
    """Refuse a plan that is stale or deletes too many users without explicit consent."""
    if summary.needs_mass_delete_approval and not allow_mass_delete:
        raise NeedsApproval(
            f"this plan deletes {summary.counts[USER][DELETE]} of the {summary.existing_users} "
            f"users it may delete ({summary.user_delete_share:.0%}), more than the allowed "
            f"{summary.max_user_delete_share:.0%}; check the source, then, if the deletions are intended, "
            f"apply again with --allow-mass-delete (`orchard roster apply` or `orchard roster import --apply`) "
            f"or allow_mass_delete=True (the apply_plan RPC)")
    if current_version != summary.base_version:
        raise Conflict("the roster changed since this plan was previewed; "
                       "preview again and apply the new plan")


def apply_plan(changes: Iterable[Change], writer: HierarchyWriter, source: str, *,
               chunk_size: int = 5000) -> Iterator[Event]:
    """Write ``changes`` (in plan order) in batches; yields the events to publish.

    Consecutive changes of the same entity and action are written together, at most
    ``chunk_size`` at a time. Events for a chunk are yielded after it is written.
    """
    run: list[Change] = []
    for change in changes:
        if change.entity == DEVICES:
            continue  # enrollment's to write, once the plan is committed
        if run and ((run[0].entity, run[0].action) != (change.entity, change.action)
                    or len(run) >= chunk_size):
            yield from _write_run(run, writer, source)
            run = []
        run.append(change)
    if run:
        yield from _write_run(run, writer, source)


def _write_run(run: list[Change], writer: HierarchyWriter, source: str) -> Iterator[Event]:
    writer.write(run[0].entity, run[0].action, run, source)
    occurred_at = utc_now_iso()  # the whole run was written at once
    for change in run:
        event = event_for(change, source, occurred_at)
        if event is not None:
            yield event


_USER_EVENTS = {ADD: UserImported, UPDATE: UserUpdated, DELETE: UserDeleted}
_CLASS_EVENTS = {ADD: ClassImported, UPDATE: ClassUpdated, DELETE: ClassDeleted}
_USER_EVENT_FIELDS = ("user_id", "user_type", "email", "managed_apple_id", "locations",
                      "grade_level", "welcome_email")


def event_for(change: Change, source: str, occurred_at: str | None = None) -> Event | None:
    """The event an applied change publishes."""
    when = {"occurred_at": occurred_at} if occurred_at else {}
    if change.entity == USER:
        record = change.after if change.action != DELETE else change.before
        assert record is not None
        fields = {f: record.get(f) for f in _USER_EVENT_FIELDS}
        fields["locations"] = list(fields["locations"] or [])
        fields["welcome_email"] = bool(fields["welcome_email"]) and change.action == ADD
        if change.action == UPDATE and "user_id" in (change.before or {}):
            fields["previous_user_id"] = change.before["user_id"]  # matched by e-mail, given a new ID
        return _USER_EVENTS[change.action](name=display_name(record), source=source, **fields,
                                           **when)
    if change.entity == CLASS:
        record = change.after if change.action != DELETE else change.before
        assert record is not None
        return _CLASS_EVENTS[change.action](
            class_id=change.natural_id, name=record["name"], location_id=record["location_id"],
            course_name=record.get("course_name"), teacher_ids=list(record["teacher_ids"]),
            student_ids=list(record["student_ids"]), source=source, **when)
    return None


def display_name(user: Mapping[str, Any]) -> str | None:
    if user.get("name"):
        return user["name"]
    parts = [p for p in (user.get("first_name"), user.get("last_name")) if p]
    return " ".join(parts) or None
