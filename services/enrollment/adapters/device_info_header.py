"""Unwrapping Apple's ``x-apple-aspen-deviceinfo`` header: base64 of a CMS SignedData holding a plist.

Setup Assistant signs the plist with the device identity; the sandbox and tools may send
the plist unsigned. The signature is not what Orchard trusts (the user's credentials
are), so only the content is taken, parsed with the same guards as check-ins.
"""
from __future__ import annotations

import base64
import binascii

from asn1crypto import cms

from services.enrollment.domain.device_info import DeviceInfo, parse_device_info
from shared.errors import ValidationError

HEADER = "x-apple-aspen-deviceinfo"
MAX_HEADER_CHARS = 64 * 1024


def device_info_from_header(value: str | None) -> DeviceInfo:
    if not value:
        raise ValidationError("This page identifies the device from Setup Assistant; open it during enrollment.")
    if len(value) > MAX_HEADER_CHARS:
        raise ValidationError(f"The device information is larger than {MAX_HEADER_CHARS} characters.")
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValidationError("The device information is not base64.") from None
    return device_info_from_bytes(raw)


def device_info_from_bytes(raw: bytes) -> DeviceInfo:
    """The device in a (signed or plain) device information plist, as the header or an ADE profile request carries it."""
    return parse_device_info(_signed_content(raw) if raw[:1] == b"\x30" else raw)


def _signed_content(der: bytes) -> bytes:
    """The plist inside a CMS SignedData (a DER SEQUENCE starts with 0x30; a plist never does)."""
    try:
        info = cms.ContentInfo.load(der)
        if info["content_type"].native != "signed_data":
            raise ValueError("not SignedData")
        content = info["content"]["encap_content_info"]["content"].native
    except (ValueError, TypeError, KeyError):
        raise ValidationError("The device information is neither a signed (CMS) nor a plain property list.") from None
    if not isinstance(content, bytes):
        raise ValidationError("The signed device information carries no content.")
    return content
