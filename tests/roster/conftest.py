"""An in-memory hierarchy for the roster's domain tests."""
from __future__ import annotations

import itertools

import pytest

from services.roster.domain import planning as p
from shared.contracts.roster import ClassRecord, GradeLevelRecord, LocationRecord, UserRecord


class InMemoryHierarchy:
    """Implements both ports of the planner with plain dicts, as the database does."""

    def __init__(self) -> None:
        self._version = 0
        self._keys = itertools.count(1)
        self.location_rows: dict[str, tuple[LocationRecord, str]] = {}
        self.grade_rows: dict[tuple, tuple[GradeLevelRecord, str]] = {}
        self.user_rows: dict[int, tuple[UserRecord, str]] = {}
        self.class_rows: dict[str, tuple[dict, str]] = {}
        self.memberships: dict[tuple[str, int, str], int] = {}  # (class, user key, role) -> position
        self.identifiers: dict[int, str] = {}  # user key -> the source's identifier of the person
        self.writes = 0

    # reader
    def version(self) -> int:
        return self._version

    def locations(self):
        return [p.StoredLocation(record=r, source=s) for r, s in self.location_rows.values()]

    def grade_levels(self):
        return [p.StoredGradeLevel(record=r, source=s) for r, s in self.grade_rows.values()]

    def users(self):
        return [p.StoredUser(key=k, record=r, source=s, source_identifier=self.identifiers.get(k))
                for k, (r, s) in self.user_rows.items()]

    def users_by_source_identifier(self):
        return {identifier: self.user_rows[k][0].user_id for k, identifier in self.identifiers.items()}

    def classes(self):
        ids = {k: r.user_id for k, (r, _) in self.user_rows.items()}
        out = []
        in_order = sorted(self.memberships, key=self.memberships.__getitem__)
        for class_id, (data, source) in self.class_rows.items():
            members = {"teacher": [], "student": []}
            for cid, key, role in in_order:
                if cid == class_id:
                    members[role].append(ids[key])
            out.append(p.StoredClass(record=ClassRecord(
                class_id=class_id, teacher_ids=members["teacher"], student_ids=members["student"],
                **data), source=source))
        return out

    # writer
    def write(self, entity, action, changes, source):
        self.writes += 1
        self._version += 1
        for c in changes:
            getattr(self, f"_{entity}_{action}")(c, source)

    def _location_add(self, c, source):
        self.location_rows[c.natural_id] = (LocationRecord.from_dict(c.after), source)

    # an update keeps the row's source (its creator's), as the database does
    def _location_update(self, c, source):
        self.location_rows[c.natural_id] = (LocationRecord.from_dict(c.after), self.location_rows[c.natural_id][1])

    def _location_delete(self, c, source):
        del self.location_rows[c.natural_id]

    def _grade_level_add(self, c, source):
        r = GradeLevelRecord.from_dict(c.after)
        self.grade_rows[(r.name, r.location_id)] = (r, source)

    def _grade_level_delete(self, c, source):
        del self.grade_rows[(c.before["name"], c.before["location_id"])]

    def _user_add(self, c, source):
        self.user_rows[next(self._keys)] = (UserRecord.from_dict(c.after), source)

    def _user_update(self, c, source):
        self.user_rows[c.target] = (UserRecord.from_dict(c.after), self.user_rows[c.target][1])

    def _user_delete(self, c, source):
        del self.user_rows[c.target]
        self.identifiers.pop(c.target, None)
        self.memberships = {m: at for m, at in self.memberships.items() if m[1] != c.target}

    def _source_identifier_record(self, c, source):
        identifier = c.after["source_identifier"]
        self.identifiers = {k: i for k, i in self.identifiers.items() if i != identifier}
        key = c.target if c.target is not None else next(
            k for k, (r, _) in self.user_rows.items() if r.user_id == c.natural_id)
        self.identifiers[key] = identifier

    def _class_add(self, c, source):
        self._set_class(c, source)

    def _class_update(self, c, source):
        self._set_class(c, self.class_rows[c.natural_id][1])

    def _set_class(self, c, source):
        data = {k: v for k, v in c.after.items() if k not in ("class_id", "teacher_ids", "student_ids")}
        self.class_rows[c.natural_id] = (data, source)
        self.memberships = {m: at for m, at in self.memberships.items() if m[0] != c.natural_id}
        keys = {r.user_id: k for k, (r, _) in self.user_rows.items()}
        for role in ("teacher", "student"):
            for position, user_id in enumerate(c.after[f"{role}_ids"]):
                self.memberships[(c.natural_id, keys[user_id], role)] = position

    def _class_delete(self, c, source):
        del self.class_rows[c.natural_id]
        self.memberships = {m: at for m, at in self.memberships.items() if m[0] != c.natural_id}


@pytest.fixture
def hierarchy() -> InMemoryHierarchy:
    return InMemoryHierarchy()
