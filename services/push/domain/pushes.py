"""Which requested devices can be pushed, and how each push ended, in words people read."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from shared.errors import ValidationError

MAX_DEVICES_PER_CALL = 10_000
DELIVERED = "delivered"
CONNECTION_FAILED = "connection_failed"


@dataclass(frozen=True)
class PushTarget:
    udid: str
    topic: str
    push_token: str
    push_magic: str
    push_disabled_reason: str | None = None


@dataclass(frozen=True)
class PushPlan:
    by_topic: dict[str, list[PushTarget]]  # topic -> devices to push with that topic's certificate
    skipped: dict[str, str]  # udid -> why it is not pushed


def requested_udids(device_udids: object) -> list[str]:
    """The distinct UDIDs asked for, in order; refuses anything but a non-empty list of strings."""
    if not isinstance(device_udids, (list, tuple)) or not device_udids:
        raise ValidationError("device_udids must be a non-empty list of device UDIDs")
    if len(device_udids) > MAX_DEVICES_PER_CALL:
        raise ValidationError(
            f"{len(device_udids)} devices in one call; send at most {MAX_DEVICES_PER_CALL} per call"
        )
    if not all(isinstance(udid, str) and udid.strip() for udid in device_udids):
        raise ValidationError("every device UDID must be a non-empty string")
    return list(dict.fromkeys(udid.strip() for udid in device_udids))


def plan_pushes(
    udids: Iterable[str],
    devices: Mapping[str, PushTarget],
    certificate_expiry: Mapping[str, datetime],
    now: datetime,
) -> PushPlan:
    """Group the pushable devices by topic; say for every other one why it is skipped."""
    by_topic: dict[str, list[PushTarget]] = {}
    skipped: dict[str, str] = {}
    for udid in udids:
        device = devices.get(udid)
        if device is None:
            skipped[udid] = "unknown_device"
        elif device.push_disabled_reason:
            skipped[udid] = f"push_disabled:{device.push_disabled_reason}"
        elif device.topic not in certificate_expiry:
            skipped[udid] = "no_certificate_for_topic"
        elif certificate_expiry[device.topic] <= now:
            skipped[udid] = "certificate_expired"
        else:
            by_topic.setdefault(device.topic, []).append(device)
    return PushPlan(by_topic, skipped)


def outcome(status: int | None, reason: str | None) -> str:
    """One label per push result, used in results, the device's last result and metrics."""
    if status == 200:
        return DELIVERED
    if status is None:
        return CONNECTION_FAILED
    return reason or f"HTTP {status}"


def connection_failure(status: int | None, reason: str | None) -> str | None:
    """Why APNs gave no answer (the label alone, ``connection_failed``, cannot say); None when it answered."""
    if status is not None:
        return None
    return reason or "no answer from APNs"
