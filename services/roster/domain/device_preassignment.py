"""Devices pre-assigned in an import (spreadsheet column, ``assign_device`` in the API) go to enrollment.

The enrollment service owns device assignment; the roster hands it every serial number
listed for the users an applied plan names (added, updated or unchanged), not only new ones,
so a device enrollment refused earlier (not synced from Apple yet) is assigned by the next
import of the same rows, and enrollment keeps the devices the source lists. Enrollment takes
a repeated assignment as a no-op. A refusal is reported per user instead of undoing the import.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from services.roster.domain.planning import DEVICES, Change
from shared.errors import OrchardError, UpstreamError


@dataclass(frozen=True)
class DeviceAssignmentFailure:
    user_id: str
    serial_number: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"user_id": self.user_id, "serial_number": self.serial_number, "reason": self.reason}


def device_assignments(changes: Iterable[Change]) -> list[tuple[str, str]]:
    """``(serial_number, user_id)`` for each device a plan's users list."""
    return [(serial, change.natural_id) for change in changes if change.entity == DEVICES
            for serial in (change.after or {}).get("serial_numbers") or ()]


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
