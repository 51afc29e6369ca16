"""Devices Apple School Manager assigns to an MDM server, as the enrollment service keeps them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PROFILE_STATUSES = ("empty", "assigned", "pushed", "removed")
# what the admin sees at a glance: green and cyan go through Remote Management, yellow and grey will not
PROFILE_STATUS_COLOURS = {"empty": "yellow", "assigned": "green", "pushed": "cyan", "removed": "grey"}
ASSIGN_STATUSES = ("SUCCESS", "NOT_ACCESSIBLE", "FAILED", "THROTTLED")


@dataclass(slots=True)  # not frozen: a frozen init costs twice as much, and a full sync builds 100,000 of them
class DepDevice:
    """One device record from ``/server/devices`` or ``/devices/sync``."""

    serial_number: str
    model: str | None = None
    description: str | None = None
    color: str | None = None
    asset_tag: str | None = None
    os: str | None = None
    device_family: str | None = None
    profile_status: str = "empty"
    profile_uuid: str | None = None
    profile_assign_time: str | None = None
    profile_push_time: str | None = None
    device_assigned_date: str | None = None
    device_assigned_by: str | None = None
    op_type: str | None = None
    op_date: str | None = None

    @classmethod
    def from_apple(cls, record: dict[str, Any]) -> DepDevice:
        status = record.get("profile_status")
        return cls(
            serial_number=str(record["serial_number"]),
            model=record.get("model"),
            description=record.get("description"),
            color=record.get("color"),
            asset_tag=record.get("asset_tag"),
            os=record.get("os"),
            device_family=record.get("device_family"),
            profile_status=status if status in PROFILE_STATUSES else "empty",
            profile_uuid=record.get("profile_uuid") or None,
            profile_assign_time=record.get("profile_assign_time"),
            profile_push_time=record.get("profile_push_time"),
            device_assigned_date=record.get("device_assigned_date"),
            device_assigned_by=record.get("device_assigned_by"),
            op_type=record.get("op_type"),
            op_date=record.get("op_date"),
        )


def status_colour(profile_status: str) -> str:
    return PROFILE_STATUS_COLOURS.get(profile_status, "grey")
