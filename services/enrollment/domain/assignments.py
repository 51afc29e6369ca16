"""Who uses a device: one user, or one shared device group, never both.

Plain rules over a store port; the adapter keeps them in the enrollment database.
A device already in a shared group is refused when assigned to a user (and a device
assigned to a user is refused when added to a group): the admin removes it first,
so a device never silently leaves the people or the group that had it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol

from shared.errors import Conflict, NotFound, ValidationError

MAX_SERIAL_LENGTH = 64
MAX_SERIALS_PER_CALL = 10_000
MAX_ASSIGNMENTS_PER_CALL = 1_000
MAX_GROUP_NAME = 200
SOURCES = ("admin", "pairing", "roster")


@dataclass(frozen=True)
class Assignment:
    serial_number: str
    user_id: str | None = None
    group_id: str | None = None
    locations: tuple[str, ...] = ()  # the user's (at assignment) or the group's location
    source: str = "admin"

    def to_dict(self) -> dict[str, Any]:
        return {"serial_number": self.serial_number, "user_id": self.user_id, "group_id": self.group_id,
                "locations": list(self.locations), "source": self.source}


@dataclass(frozen=True)
class SharedGroup:
    id: str
    name: str
    location_id: str
    serial_numbers: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "location_id": self.location_id,
                "devices": len(self.serial_numbers), "serial_numbers": list(self.serial_numbers)}


class AssignmentStore(Protocol):
    def unknown_serials(self, serials: list[str]) -> list[str]: ...
    def assignments(self, serials: Iterable[str]) -> dict[str, Assignment]: ...


@dataclass(frozen=True)
class UserAssignmentChange:
    """What assigning a device to a user does: nothing, or replace ``previous`` (if any) with ``new``."""

    new: Assignment
    previous: Assignment | None
    unchanged: bool


def checked_serial(serial: Any) -> str:
    if not isinstance(serial, str) or not 0 < len(serial.strip()) <= MAX_SERIAL_LENGTH:
        raise ValidationError(f"a serial number must be a non-empty string of at most {MAX_SERIAL_LENGTH} characters")
    return serial.strip().upper()


def checked_serials(serials: Any) -> list[str]:
    if not isinstance(serials, list) or not serials or len(serials) > MAX_SERIALS_PER_CALL:
        raise ValidationError(f"serial_numbers must be a list of 1 to {MAX_SERIALS_PER_CALL} serial numbers")
    return list(dict.fromkeys(checked_serial(s) for s in serials))


def checked_user_id(user_id: Any) -> str:
    if not isinstance(user_id, str) or not 0 < len(user_id.strip()) <= 128:
        raise ValidationError("user_id must be the roster's user ID, a non-empty string of at most 128 characters")
    return user_id.strip()


def checked_user_devices(assignments: Any) -> list[tuple[Any, Any, str | None]]:
    """``[{serial_number, user_id}]`` as ``(serial, user_id, problem)``: a value that is not a serial number or
    a user ID is that pair's ``problem`` (the others can still be assigned); a call that is not such a list
    is refused whole."""
    if not isinstance(assignments, list) or not 0 < len(assignments) <= MAX_ASSIGNMENTS_PER_CALL:
        raise ValidationError(f"assignments must be a list of 1 to {MAX_ASSIGNMENTS_PER_CALL} "
                              "{serial_number, user_id} objects")
    checked = []
    for item in assignments:
        if not isinstance(item, dict) or set(item) != {"serial_number", "user_id"}:
            raise ValidationError("each assignment must be an object with exactly serial_number and user_id")
        try:
            checked.append((checked_serial(item["serial_number"]), checked_user_id(item["user_id"]), None))
        except ValidationError as invalid:  # echoed back as text, cut short: it may be anything
            checked.append((str(item["serial_number"])[:MAX_SERIAL_LENGTH], str(item["user_id"])[:128],
                            invalid.message))
    return checked


def listed_twice(pairs: list[tuple[Any, Any, str | None]]) -> dict[str, list[str]]:
    """The serials a call lists for more than one user, with those users: which one is meant is not known.
    Only pairs whose values are valid count (the others fail on their own)."""
    users: dict[str, list[str]] = {}
    for serial, user_id, problem in pairs:
        if problem is not None:
            continue
        users.setdefault(serial, [])
        if user_id not in users[serial]:
            users[serial].append(user_id)
    return {serial: ids for serial, ids in users.items() if len(ids) > 1}


def checked_group_name(name: Any) -> str:
    if not isinstance(name, str) or not 0 < len(name.strip()) <= MAX_GROUP_NAME:
        raise ValidationError(f"a shared device group needs a name of 1 to {MAX_GROUP_NAME} characters")
    return name.strip()


def require_known(store: AssignmentStore, serials: list[str]) -> None:
    unknown = store.unknown_serials(serials)
    if unknown:
        shown = ", ".join(unknown[:10]) + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
        raise NotFound(f"enrollment knows no device {shown}: sync the server token from Apple School Manager "
                       f"or enroll the device first")


def user_assignment(store: AssignmentStore, serial: str, user_id: str, user_locations: Iterable[str],
                    source: str) -> UserAssignmentChange:
    """Assigning ``serial`` to ``user_id``: a move from another user is allowed, from a group refused."""
    require_known(store, [serial])
    new = Assignment(serial, user_id=user_id, locations=tuple(sorted(user_locations)), source=source)
    previous = store.assignments([serial]).get(serial)
    if previous is not None and previous.group_id is not None:
        raise Conflict(f"device {serial} is in shared device group {previous.group_id}; a shared device has no "
                       f"user: remove it from the group first, then assign it")
    unchanged = previous is not None and previous.user_id == user_id
    return UserAssignmentChange(new=new, previous=previous, unchanged=unchanged)


def require_self_pairing_allowed(change: UserAssignmentChange, token_locations: list[str] | None) -> None:
    """A user pairing a device to themselves, with no administrator involved, takes only a device of their own
    locations that nobody else holds: the device information a pairing page receives is not verified as Apple's,
    so it could name any serial number."""
    previous = change.previous
    if previous is not None and previous.user_id is not None and previous.user_id != change.new.user_id:
        raise Conflict("it is assigned to someone else")
    if token_locations is not None and not set(token_locations) & set(change.new.locations):
        raise Conflict("it belongs to the devices of another location")


def devices_for_group(store: AssignmentStore, group: SharedGroup, serials: list[str]) -> list[str]:
    """The serials to add to ``group`` (those not already in it); refuses devices that belong elsewhere."""
    require_known(store, serials)
    current = store.assignments(serials)
    elsewhere = [f"{s} (user {a.user_id})" if a.user_id else f"{s} (group {a.group_id})"
                 for s, a in current.items() if a.group_id != group.id]
    if elsewhere:
        raise Conflict(f"these devices already belong to someone else: {', '.join(sorted(elsewhere)[:10])}; "
                       f"unassign them or remove them from their group first")
    return [s for s in serials if s not in current]
