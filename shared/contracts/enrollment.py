"""Events published by the enrollment service (exchange ``enrollment.events``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.contracts.base import Contract, Event

SOURCE = "enrollment"


@dataclass(frozen=True, kw_only=True)
class DeviceEnrolled(Event):
    """A device completed the MDM check-in (TokenUpdate): it can now be woken by push."""

    SOURCE = SOURCE
    udid: str
    serial_number: str | None = None
    topic: str
    push_token: str  # hex, as APNs expects it in the request path
    push_magic: str


@dataclass(frozen=True, kw_only=True)
class DeviceUnenrolled(Event):
    """A device checked out (or was removed); stop pushing to it."""

    SOURCE = SOURCE
    udid: str
    serial_number: str | None = None
    topic: str | None = None


@dataclass(frozen=True, kw_only=True)
class AssignedDevice(Contract):
    """A device as Apple School Manager describes it when it assigns it to us."""

    serial_number: str
    model: str | None = None
    device_family: str | None = None
    os: str | None = None

    def to_dict(self) -> dict[str, Any]:
        # every field is a plain string: a copy is enough, and an event carries a thousand of these
        return dict(self.__dict__)


# ADE sync events carry a page of devices each: a full sync of 100,000 devices is 100 messages,
# not 100,000 (one confirmed publish per device cost more than storing the devices)
MAX_DEVICES_PER_EVENT = 1000


@dataclass(frozen=True, kw_only=True)
class DevicesAssigned(Event):
    """Apple School Manager assigned these devices to one of our MDM servers (one ADE sync page, at most
    ``MAX_DEVICES_PER_EVENT``). A device can arrive again in a later event (a refetch): handlers must be idempotent."""

    SOURCE = SOURCE
    token_id: str
    devices: list[AssignedDevice]


@dataclass(frozen=True, kw_only=True)
class DevicesRemoved(Event):
    """Apple School Manager removed these devices from our MDM server (ADE sync ``deleted``, or gone from a full
    fetch), at most ``MAX_DEVICES_PER_EVENT`` per event."""

    SOURCE = SOURCE
    token_id: str
    serial_numbers: list[str]


@dataclass(frozen=True, kw_only=True)
class ServerTokenConnected(Event):
    """An MDM server token was uploaded and Apple accepted it: its devices can now be synced."""

    SOURCE = SOURCE
    token_id: str
    server_name: str | None = None
    org_name: str | None = None


@dataclass(frozen=True, kw_only=True)
class DeviceOwnershipChanged(Event):
    """Shared shape of the assignment events: the device, and its user or shared device group."""

    SOURCE = SOURCE
    serial_number: str
    user_id: str | None = None
    group_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class DeviceUserAssigned(DeviceOwnershipChanged):
    """A device now belongs to a user (or a shared device group, when ``group_id`` is set)."""


@dataclass(frozen=True, kw_only=True)
class DeviceUserUnassigned(DeviceOwnershipChanged):
    """A device no longer belongs to that user (or group)."""
