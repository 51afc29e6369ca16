"""Devices Apple School Manager assigns to an MDM server, as the enrollment service keeps them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PROFILE_STATUSES = ("empty", "assigned", "pushed", "removed")
# what the admin sees at a glance: green and cyan go through Remote Management, yellow and grey will not
PROFILE_STATUS_COLOURS = {"empty": "yellow", "assigned": "green", "pushed": "cyan", "removed": "grey"}


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
        # positional, in field order: a sync reads 100,000 of these, and keywords cost half again as much
        get = record.get
        status = get("profile_status")
        return cls(
            str(record["serial_number"]), get("model"), get("description"), get("color"), get("asset_tag"), get("os"),
            get("device_family"), status if status in PROFILE_STATUSES else "empty", get("profile_uuid") or None,
            get("profile_assign_time"), get("profile_push_time"), get("device_assigned_date"), get("device_assigned_by"),
            get("op_type"), get("op_date"),
        )


def status_colour(profile_status: str) -> str:
    return PROFILE_STATUS_COLOURS.get(profile_status, "grey")
