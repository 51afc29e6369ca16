"""Directory entries to roster records, following a profile's sync settings.

Entries are fed in the order a sync reads them: grade-level groups first (so each
user's grade is known when the user arrives), then users, then class groups (whose
members must be known users). Anything that cannot become a record becomes a
``RejectedRow`` with the entry's DN and the reason, shown in the roster's preview.
"""
from __future__ import annotations

from typing import Iterable

from services.directory.domain.entries import DirectoryEntry, normalize_dn, rdn_value, split_dn
from services.directory.domain.profile import SyncSettings
from shared.contracts.roster import (
    ClassRecord,
    GradeLevelRecord,
    ImportBatch,
    LocationRecord,
    RejectedRow,
    UserRecord,
)

USERS, GRADE_LEVELS, CLASSES = "users", "grade levels", "classes"


class BatchBuilder:
    def __init__(self, settings: SyncSettings, base_dn: str):
        self.settings = settings
        self._base_rdns = len(split_dn(base_dn))
        self._type_by_group = [(normalize_dn(r.group), r.user_type) for r in settings.users.user_types if r.group]
        self._type_by_ou = [("," + normalize_dn(r.ou), r.user_type) for r in settings.users.user_types if r.ou]
        self._grade_by_member: dict[str, str] = {}
        self._user_by_dn: dict[str, UserRecord] = {}
        self._user_dn_by_id: dict[str, str] = {}
        self._class_ids: set[str] = set()
        self.locations: dict[str, LocationRecord] = {}
        self.grade_levels: list[GradeLevelRecord] = []
        self.users: list[UserRecord] = []
        self.classes: list[ClassRecord] = []
        self.rejected: list[RejectedRow] = []
        self._seen = {USERS: 0, GRADE_LEVELS: 0, CLASSES: 0}

    def user_attributes(self) -> list[str]:
        m = self.settings.users
        names = [m.user_id, m.email, m.display_name, m.first_name, m.last_name, m.member_of, m.grade_level,
                 self.settings.location_attribute]
        return _unique(names)

    def grade_level_attributes(self) -> list[str]:
        m = self.settings.grade_levels
        return _unique([m.name, m.members, self.settings.location_attribute])

    def class_attributes(self) -> list[str]:
        m = self.settings.classes
        return _unique([m.class_id, m.name, m.members, self.settings.location_attribute])

    def add_grade_level(self, entry: DirectoryEntry) -> GradeLevelRecord | None:
        self._seen[GRADE_LEVELS] += 1
        mapping = self.settings.grade_levels
        name = entry.first(mapping.name)
        if name is None:
            return self._reject(GRADE_LEVELS, entry, f"has no {mapping.name}, which names the grade level")
        location = self._location(entry)
        record = GradeLevelRecord(name=name, location_id=location[0] if location else None)
        for member in entry.values(mapping.members):
            self._grade_by_member[normalize_dn(member)] = name
        self.grade_levels.append(record)
        return record

    def add_user(self, entry: DirectoryEntry) -> UserRecord | None:
        self._seen[USERS] += 1
        m = self.settings.users
        user_id = entry.first(m.user_id)
        if user_id is None:
            return self._reject(USERS, entry, f"has no {m.user_id}, which is the user ID")
        if user_id in self._user_dn_by_id:
            return self._reject(USERS, entry, f"user ID '{user_id}' is also used by {self._user_dn_by_id[user_id]}")
        dn = normalize_dn(entry.dn)
        user_type = self._user_type(entry, dn)
        if user_type is None:
            return self._reject(USERS, entry, "matches no user type rule (by group or OU) and no default user "
                                              "type is set; add a rule to sync.users.user_types", user_id)
        first, last = entry.first(m.first_name), entry.first(m.last_name)
        name = entry.first(m.display_name) or " ".join(p for p in (first, last) if p) or None
        grade = entry.first(m.grade_level) if m.grade_level else self._grade_by_member.get(dn)
        record = UserRecord(
            user_id=user_id,
            user_type=user_type,
            first_name=first,
            last_name=last,
            name=name,
            email=entry.first(m.email),
            locations=self._location(entry),
            grade_level=grade,
            welcome_email=self.settings.welcome_email,
        )
        self._user_by_dn[dn] = record
        self._user_dn_by_id[user_id] = entry.dn
        self.users.append(record)
        return record

    def add_class(self, entry: DirectoryEntry) -> ClassRecord | None:
        self._seen[CLASSES] += 1
        m = self.settings.classes
        class_id = entry.first(m.class_id)
        if class_id is None:
            return self._reject(CLASSES, entry, f"has no {m.class_id}, which is the class ID")
        if class_id in self._class_ids:
            return self._reject(CLASSES, entry, f"class ID '{class_id}' appears more than once")
        location = self._location(entry)
        if not location:
            return self._reject(CLASSES, entry, "is not inside a school OU below the base DN (or has no "
                                                "location attribute), so its location is unknown", class_id)
        teachers, students = [], []
        for member in entry.values(m.members):
            user = self._user_by_dn.get(normalize_dn(member))
            if user is not None:  # members outside the user filter are not Orchard users
                (students if user.user_type == "student" else teachers).append(user.user_id)
        record = ClassRecord(class_id=class_id, name=entry.first(m.name) or class_id, location_id=location[0],
                             teacher_ids=teachers, student_ids=students)
        self._class_ids.add(class_id)
        self.classes.append(record)
        return record

    def entries_seen(self, what: str) -> int:
        return self._seen[what]

    def batch(self) -> ImportBatch:
        return ImportBatch(source="ldap", locations=list(self.locations.values()), grade_levels=self.grade_levels,
                           users=self.users, classes=self.classes, rejected=self.rejected)

    def _user_type(self, entry: DirectoryEntry, dn: str) -> str | None:
        if self._type_by_group:
            groups = {normalize_dn(g) for g in entry.values(self.settings.users.member_of)}
            for group, user_type in self._type_by_group:
                if group in groups:
                    return user_type
        for suffix, user_type in self._type_by_ou:
            if dn.endswith(suffix):
                return user_type
        return self.settings.users.default_user_type

    def _location(self, entry: DirectoryEntry) -> list[str]:
        """The entry's school: its location attribute, else the OU directly below the base DN."""
        if self.settings.location_attribute:
            names = [v.strip() for v in entry.values(self.settings.location_attribute) if v.strip()]
        else:
            rdns = split_dn(entry.dn)
            school = rdns[-self._base_rdns - 1] if len(rdns) > self._base_rdns + 1 else None
            names = [rdn_value(school)] if school and school[:3].casefold() == "ou=" else []
        for name in names:
            if name not in self.locations:
                self.locations[name] = LocationRecord(location_id=name, name=name)
        return names

    def _reject(self, what: str, entry: DirectoryEntry, reason: str, natural_id: str | None = None) -> None:
        """``natural_id``: the user or class ID the entry has, so the roster keeps that record rather than
        delete it as no longer in the directory."""
        self.rejected.append(RejectedRow(sheet=what, row=self._seen[what], reason=f"{entry.dn} {reason}",
                                         id=natural_id))
        return None


def _unique(names: Iterable[str | None]) -> list[str]:
    seen: dict[str, str] = {}
    for name in names:
        if name and name.lower() not in seen:
            seen[name.lower()] = name
    return list(seen.values())
