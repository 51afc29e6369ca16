"""Scopes: "grade 7 students at Lincoln", a shared group, a few devices — resolved to devices today.

Users are chosen by the roster (an AND across locations, grade levels, classes and user
types; an OR within one), plus users named explicitly; each reaches the devices assigned
to them. Shared groups and devices named explicitly are added as they are.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from services.enrollment.domain.assignments import Assignment, SharedGroup, checked_serial
from shared.contracts.roster import USER_TYPES
from shared.errors import PermissionDenied, ValidationError

USER_DIMENSIONS = ("locations", "grade_levels", "classes", "user_types")
DIMENSIONS = (*USER_DIMENSIONS, "groups", "users", "devices")
MAX_VALUES = 10_000


@dataclass(frozen=True)
class Scope:
    locations: tuple[str, ...] | None = None
    grade_levels: tuple[str, ...] | None = None
    classes: tuple[str, ...] | None = None
    user_types: tuple[str, ...] | None = None
    groups: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()

    @property
    def selects_users(self) -> bool:
        return any(getattr(self, name) is not None for name in USER_DIMENSIONS)

    def roster_filter(self) -> dict[str, list[str] | None]:
        """The arguments of the roster's ``users_in_scope``."""
        return {name: list(values) if (values := getattr(self, name)) is not None else None
                for name in USER_DIMENSIONS}


def parse_scope(data: Any) -> Scope:
    if not isinstance(data, dict):
        raise ValidationError("a scope must be an object with any of: " + ", ".join(DIMENSIONS))
    unknown = sorted(set(data) - set(DIMENSIONS))
    if unknown:
        raise ValidationError(f"a scope has no {', '.join(unknown)}; use any of: {', '.join(DIMENSIONS)}")
    values = {name: _strings(data[name], name) for name in DIMENSIONS if data.get(name) is not None}
    if not any(values.values()):
        raise ValidationError("the scope is empty: name locations, grade levels, classes, user types, groups, "
                              "users or devices")
    bad_types = sorted(set(values.get("user_types", ())) - set(USER_TYPES))
    if bad_types:
        raise ValidationError(f"user type(s) {', '.join(bad_types)} unknown; use {', '.join(USER_TYPES)}")
    if "devices" in values:
        values["devices"] = tuple(dict.fromkeys(checked_serial(s) for s in values["devices"]))
    return Scope(**values)


def require_teachers_scope(scope: Scope, taught: set[str]) -> None:
    """A teacher's scope is classes they teach, their students or teachers among them: never their school."""
    wider = [name for name in ("locations", "grade_levels") if getattr(scope, name) is not None]
    wider += [name for name in ("groups", "users", "devices") if getattr(scope, name)]
    if wider or not scope.classes:
        raise PermissionDenied("a teacher's scope names classes they teach (and user types), "
                               f"not {', '.join(wider) or 'everyone'}")
    others = sorted(set(scope.classes) - taught)
    if others:
        raise PermissionDenied(f"you do not teach class(es) {', '.join(others[:10])}; a teacher's scope is "
                               "their own classes")


def _strings(value: Any, name: str) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_VALUES:
        raise ValidationError(f"scope {name} must be a list of at most {MAX_VALUES} values")
    if not all(isinstance(item, str) and item.strip() for item in value):
        raise ValidationError(f"every scope {name} value must be a non-empty string")
    return tuple(dict.fromkeys(item.strip() for item in value))


def resolved_devices(
    user_locations: Mapping[str, list[str]],
    devices_of_users: Iterable[Assignment],
    groups: Iterable[SharedGroup],
    explicit_devices: Mapping[str, Assignment | None],
) -> list[dict[str, Any]]:
    """One row per device reached, sorted by serial number.

    ``user_locations`` are the users reached, with their current roster locations;
    ``explicit_devices`` maps each device named in the scope to its assignment (or None).
    """
    reached: dict[str, dict[str, Any]] = {}
    for assignment in devices_of_users:
        locations = user_locations.get(assignment.user_id or "", list(assignment.locations))
        reached[assignment.serial_number] = _row(assignment.serial_number, assignment.user_id, None, locations)
    for group in groups:
        for serial in group.serial_numbers:
            reached[serial] = _row(serial, None, group.id, [group.location_id])
    for serial, assignment in explicit_devices.items():
        if serial in reached:
            continue
        if assignment is None:
            reached[serial] = _row(serial, None, None, [])
        else:
            locations = user_locations.get(assignment.user_id or "", list(assignment.locations))
            reached[serial] = _row(serial, assignment.user_id, assignment.group_id, locations)
    return [reached[serial] for serial in sorted(reached)]


def _row(serial: str, user_id: str | None, group_id: str | None, locations: Iterable[str]) -> dict[str, Any]:
    return {"serial_number": serial, "user_id": user_id, "group_id": group_id, "locations": sorted(set(locations))}
