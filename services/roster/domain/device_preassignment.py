"""Devices pre-assigned in an import (spreadsheet column, ``assign_device`` in the API) go to enrollment.

The enrollment service owns device assignment; the roster hands it every serial number
listed for the users an applied plan names (added, updated or unchanged), not only new ones,
so a device enrollment refused earlier (not synced from Apple yet) is assigned by the next
import of the same rows, and enrollment keeps the devices the source lists. Enrollment takes
a repeated assignment as a no-op. A refusal is reported per user instead of undoing the import.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

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


ASSIGNMENTS_PER_CALL = 500  # pairs per enrollment call: the users of one call are looked up in one roster query


def assign_devices(pairs: Iterable[tuple[str, str]], assign: Callable[[list[dict[str, str]]], dict[str, Any]]
                   ) -> tuple[int, list[DeviceAssignmentFailure]]:
    """Hand the pairs to ``assign`` (enrollment's ``assign_devices``) in batches; (how many are assigned, the
    refusals). Once enrollment does not answer, the rest are reported with that, not waited for again."""
    pairs = list(pairs)
    done, failures = 0, []
    for start in range(0, len(pairs), ASSIGNMENTS_PER_CALL):
        batch = pairs[start:start + ASSIGNMENTS_PER_CALL]
        try:
            answer = assign([{"serial_number": serial, "user_id": user_id} for serial, user_id in batch])
        except UpstreamError as exc:
            failures.extend(DeviceAssignmentFailure(user_id, serial, exc.message) for serial, user_id in pairs[start:])
            break
        except OrchardError as exc:  # the batch itself was refused
            failures.extend(DeviceAssignmentFailure(user_id, serial, exc.message) for serial, user_id in batch)
            continue
        done += answer["assigned"]
        failures.extend(DeviceAssignmentFailure(f["user_id"], f["serial_number"], f["reason"])
                        for f in answer["failed"])
    return done, failures
