"""The device a Setup Assistant request comes from (Apple's ``x-apple-aspen-deviceinfo`` plist)."""
from __future__ import annotations

from dataclasses import dataclass

from services.enrollment.domain.checkin import MalformedCheckin, safe_plist
from shared.errors import ValidationError


@dataclass(frozen=True)
class DeviceInfo:
    serial_number: str
    udid: str | None = None
    product: str | None = None
    os_version: str | None = None


def parse_device_info(plist: bytes) -> DeviceInfo:
    """The device's identity from the (already unwrapped) plist; ``ValidationError`` for anything else."""
    try:
        info = safe_plist(plist)  # the same guards as check-ins: XML only, Apple's DTD, no entities
    except MalformedCheckin as exc:
        raise ValidationError(f"The device information is not usable: {exc}") from None
    serial = info.get("SERIAL")
    if not isinstance(serial, str) or not 0 < len(serial.strip()) <= 64:
        raise ValidationError("The device information has no SERIAL; open this page from Setup Assistant.")
    return DeviceInfo(serial_number=serial.strip().upper(), udid=_text(info, "UDID"), product=_text(info, "PRODUCT"),
                      os_version=_text(info, "VERSION"))


def _text(info: dict, key: str) -> str | None:
    value = info.get(key)
    return value if isinstance(value, str) else None
