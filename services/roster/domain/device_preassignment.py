"""Devices pre-assigned in an import (spreadsheet column, ``assign_device`` in the API) go to enrollment.

The enrollment service owns device assignment; the roster hands it each serial number
that an applied plan newly lists for a user, and reports a refusal per user instead of
undoing the import.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from services.roster.domain.planning import ADD, UPDATE, Change
from shared.errors import OrchardError, UpstreamError


@dataclass(frozen=True)
class DeviceAssignmentFailure:
    user_id: str
    serial_number: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"user_id": self.user_id, "serial_number": self.serial_number, "reason": self.reason}


def new_device_assignments(changes: Iterable[Change]) -> list[tuple[str, str]]:
    """``(serial_number, user_id)`` for each serial a user gained in these changes."""
    pairs: list[tuple[str, str]] = []
    for change in changes:
        if change.entity != "user" or change.action not in (ADD, UPDATE) or not change.after:
            continue
        listed = change.after.get("serial_numbers") or []
        before = (change.before or {}).get("serial_numbers", listed) if change.action == UPDATE else []
        pairs.extend((serial, change.natural_id) for serial in listed if serial not in set(before or []))
    return pairs


def assign_devices(pairs: Iterable[tuple[str, str]],
                   assign: Callable[[str, str], object]) -> tuple[int, list[DeviceAssignmentFailure]]:
    """Call ``assign(serial, user_id)`` for each pair; (how many succeeded, the refusals)."""
    done, failures = 0, []
    unavailable: str | None = None  # once enrollment does not answer, don't wait a timeout per device
    for serial, user_id in pairs:
        if unavailable:
            failures.append(DeviceAssignmentFailure(user_id, serial, unavailable))
            continue
        try:
            assign(serial, user_id)
            done += 1
        except OrchardError as exc:
            failures.append(DeviceAssignmentFailure(user_id, serial, exc.message))
            if isinstance(exc, UpstreamError):
                unavailable = exc.message
    return done, failures
