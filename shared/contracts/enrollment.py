"""Events published by the enrollment service (exchange ``enrollment.events``)."""
from __future__ import annotations

from dataclasses import dataclass

from shared.contracts.base import Event

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
class DeviceAssigned(Event):
    """Apple School Manager assigned a device to one of our MDM servers (ADE sync)."""

    SOURCE = SOURCE
    token_id: str
    serial_number: str
    model: str | None = None
    device_family: str | None = None
    os: str | None = None


@dataclass(frozen=True, kw_only=True)
class DeviceRemoved(Event):
    """Apple School Manager removed a device from our MDM server (ADE sync ``deleted``)."""

    SOURCE = SOURCE
    token_id: str
    serial_number: str


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
