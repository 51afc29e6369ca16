"""MDM check-in messages (``PUT`` with an XML property list) a device sends while enrolling,
and its polls of the server URL (the same URL in Orchard's profile) after a push wake-up.

Plists come from the network, so they are parsed defensively: bounded size, XML
only, and no DTD beyond Apple's standard plist declaration (no internal subset,
no entities, hence no entity expansion) before plistlib sees a byte.
"""
from __future__ import annotations

import plistlib
import re
from dataclasses import dataclass

from shared.errors import ValidationError

MAX_CHECKIN_BYTES = 64 * 1024
# what the check-in and push tables hold: a UDID is 25 or 36 characters, an APNs token 32 bytes
MAX_UDID_LENGTH, MAX_SERIAL_LENGTH, MAX_TEXT_LENGTH, MAX_PUSH_TOKEN_BYTES = 100, 64, 200, 100

_APPLE_DOCTYPE = re.compile(
    rb'<!DOCTYPE\s+plist\s+PUBLIC\s+"-//Apple//DTD PLIST 1\.0//EN"\s+'
    rb'"http://www\.apple\.com/DTDs/PropertyList-1\.0\.dtd"\s*>'
)
_XML_START = re.compile(rb"^(\xef\xbb\xbf)?\s*<(\?xml|!DOCTYPE|plist)")
# a device's UDID is hex with dashes and its serial number letters and digits; anything else (a control character, a
# spreadsheet formula) would reach logs, exports and certificates' subjects
_IDENTIFIER = re.compile(r"[A-Za-z0-9._-]+")


class MalformedCheckin(ValidationError):
    """The body is not a check-in message Orchard accepts; answered with HTTP 400."""


@dataclass(frozen=True)
class Authenticate:
    udid: str
    topic: str
    serial_number: str | None = None
    model: str | None = None
    model_name: str | None = None
    product_name: str | None = None
    os_version: str | None = None
    build_version: str | None = None
    device_name: str | None = None


@dataclass(frozen=True)
class TokenUpdate:
    udid: str
    topic: str
    push_token: str  # hex
    push_magic: str
    awaiting_configuration: bool = False
    user_channel: bool = False  # a user-channel update (UserID set): the device channel already enrolled


@dataclass(frozen=True)
class CheckOut:
    udid: str
    topic: str | None = None


# what a device reports to the server URL: Idle asks for the next command, the others answer the last one
COMMAND_STATUSES = ("Idle", "Acknowledged", "Error", "CommandFormatError", "NotNow")


@dataclass(frozen=True)
class CommandPoll:
    """The device at the server URL, woken by a push: it asks for a command (or reports one's result)."""

    udid: str
    status: str
    command_uuid: str | None = None


CheckinMessage = Authenticate | TokenUpdate | CheckOut | CommandPoll


def parse_checkin(body: bytes) -> CheckinMessage:
    """The check-in message in ``body``; ``MalformedCheckin`` for anything else."""
    message = safe_plist(body)
    kind = message.get("MessageType")
    udid = _identifier(message, "UDID", MAX_UDID_LENGTH, _required_str)
    if kind == "Authenticate":
        return Authenticate(
            udid=udid,
            topic=_required_str(message, "Topic"),
            serial_number=_identifier(message, "SerialNumber", MAX_SERIAL_LENGTH, _optional_str),
            model=_optional_str(message, "Model"),
            model_name=_optional_str(message, "ModelName"),
            product_name=_optional_str(message, "ProductName"),
            os_version=_optional_str(message, "OSVersion"),
            build_version=_optional_str(message, "BuildVersion"),
            device_name=_optional_str(message, "DeviceName"),
        )
    if kind == "TokenUpdate":
        token = message.get("Token")
        if not isinstance(token, bytes) or not token or len(token) > MAX_PUSH_TOKEN_BYTES:
            raise MalformedCheckin(f"The TokenUpdate has no push Token (data of at most {MAX_PUSH_TOKEN_BYTES} bytes).")
        # UnlockToken is deliberately not kept: Orchard never clears passcodes
        return TokenUpdate(
            udid=udid,
            topic=_required_str(message, "Topic"),
            push_token=token.hex(),
            push_magic=_required_str(message, "PushMagic"),
            awaiting_configuration=message.get("AwaitingConfiguration") is True,
            user_channel="UserID" in message,
        )
    if kind == "CheckOut":
        return CheckOut(udid=udid, topic=_optional_str(message, "Topic"))
    if kind is None and "Status" in message:
        status = message["Status"]
        if status not in COMMAND_STATUSES:
            raise MalformedCheckin(f"Command status {repr(status)[:40]} is not one of {', '.join(COMMAND_STATUSES)}.")
        return CommandPoll(udid=udid, status=status, command_uuid=_optional_str(message, "CommandUUID"))
    raise MalformedCheckin(f"Check-in message type {kind!r} is not supported.")


def safe_plist(body: bytes) -> dict:
    if not isinstance(body, (bytes, bytearray)) or not body:
        raise MalformedCheckin("The check-in body is empty; send an XML property list.")
    if len(body) > MAX_CHECKIN_BYTES:
        raise MalformedCheckin(f"The check-in body is larger than {MAX_CHECKIN_BYTES} bytes.")
    body = bytes(body)
    if not _XML_START.match(body):
        raise MalformedCheckin("The check-in body is not an XML property list.")
    if b"<!ENTITY" in body.upper():
        raise MalformedCheckin("The check-in plist declares entities, which are not allowed.")
    without_doctype = _APPLE_DOCTYPE.sub(b"", body, count=1)
    if b"<!DOCTYPE" in without_doctype.upper():
        raise MalformedCheckin("The check-in plist has a document type other than Apple's plist DTD.")
    try:
        message = plistlib.loads(without_doctype, fmt=plistlib.FMT_XML)
    except Exception as exc:  # plistlib fails on bad values in many ways (a bad <date> is an AttributeError)
        raise MalformedCheckin(f"The check-in plist cannot be read ({type(exc).__name__}).") from None
    if not isinstance(message, dict):
        raise MalformedCheckin("The check-in plist must be a dictionary.")
    return message


def _required_str(message: dict, key: str, limit: int = MAX_TEXT_LENGTH) -> str:
    value = message.get(key)
    if not isinstance(value, str) or not value.strip():
        raise MalformedCheckin(f"The check-in has no {key}.")
    return _within(value, key, limit)


def _optional_str(message: dict, key: str, limit: int = MAX_TEXT_LENGTH) -> str | None:
    value = message.get(key)
    return _within(value, key, limit) if isinstance(value, str) else None


def _identifier(message: dict, key: str, limit: int, read) -> str | None:
    value = read(message, key, limit)
    if value is not None and not _IDENTIFIER.fullmatch(value):
        raise MalformedCheckin(f"The check-in's {key} holds characters a device's {key} never does.")
    return value


def _within(value: str, key: str, limit: int) -> str:
    if len(value) > limit:  # what the check-in and push tables hold; a device's values are far shorter
        raise MalformedCheckin(f"The check-in's {key} is longer than {limit} characters.")
    return value
