"""The roster's records and events.

Records are what every import source produces (Apple School Manager, spreadsheets,
the HTTP API, the directory service) before the roster previews and applies them;
events are what the roster publishes once a plan is applied (exchange ``roster.events``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from shared.contracts.base import Contract, Event

SOURCE = "roster"

USER_TYPES = ("student", "teacher", "staff")
IMPORT_SOURCES = ("asm", "csv", "xlsx", "api", "ldap")


@dataclass(frozen=True, kw_only=True)
class LocationRecord(Contract):
    location_id: str
    name: str


@dataclass(frozen=True, kw_only=True)
class GradeLevelRecord(Contract):
    name: str
    location_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class UserRecord(Contract):
    user_id: str
    user_type: str  # one of USER_TYPES
    first_name: str | None = None
    last_name: str | None = None
    name: str | None = None
    email: str | None = None
    managed_apple_id: str | None = None
    locations: list[str] = field(default_factory=list)
    grade_level: str | None = None
    serial_numbers: list[str] = field(default_factory=list)  # devices to pre-assign
    welcome_email: bool = False


@dataclass(frozen=True, kw_only=True)
class ClassRecord(Contract):
    class_id: str
    name: str
    location_id: str
    course_name: str | None = None
    room: str | None = None
    teacher_ids: list[str] = field(default_factory=list)
    student_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class RejectedRow(Contract):
    """A row a source could not turn into a record, and why, for the preview."""

    sheet: str
    row: int
    reason: str
    # the row's user ID, class ID or grade level ("location ID/name") when it could be read:
    # what a rejected row names is kept, never deleted as missing from the source
    id: str | None = None


@dataclass(frozen=True, kw_only=True)
class ImportBatch(Contract):
    """Everything one source read, ready for the roster to preview."""

    source: str  # one of IMPORT_SOURCES
    locations: list[LocationRecord] = field(default_factory=list)
    grade_levels: list[GradeLevelRecord] = field(default_factory=list)
    users: list[UserRecord] = field(default_factory=list)
    classes: list[ClassRecord] = field(default_factory=list)
    rejected: list[RejectedRow] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class UserChanged(Event):
    """Shared shape of the user events: who the user is after the change."""

    SOURCE = SOURCE
    user_id: str
    user_type: str
    name: str | None = None
    email: str | None = None
    managed_apple_id: str | None = None
    locations: list[str] = field(default_factory=list)
    grade_level: str | None = None
    source: str
    welcome_email: bool = False


@dataclass(frozen=True, kw_only=True)
class UserImported(UserChanged):
    """A user was added to the roster by an import (the vpp service invites them)."""


@dataclass(frozen=True, kw_only=True)
class UserUpdated(UserChanged):
    """A user's details changed in an import."""

    previous_user_id: str | None = None  # set when the import gave the user a new user ID


@dataclass(frozen=True, kw_only=True)
class UserDeleted(UserChanged):
    """A user was removed from the roster by an import."""


@dataclass(frozen=True, kw_only=True)
class ClassChanged(Event):
    SOURCE = SOURCE
    class_id: str
    name: str
    location_id: str
    course_name: str | None = None
    teacher_ids: list[str] = field(default_factory=list)
    student_ids: list[str] = field(default_factory=list)
    source: str


@dataclass(frozen=True, kw_only=True)
class ClassImported(ClassChanged):
    """A class was added to the roster by an import."""


@dataclass(frozen=True, kw_only=True)
class ClassUpdated(ClassChanged):
    """A class's details or membership changed in an import."""


@dataclass(frozen=True, kw_only=True)
class ClassDeleted(ClassChanged):
    """A class was removed from the roster by an import."""

