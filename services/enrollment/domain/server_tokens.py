"""MDM server tokens: the ``.p7m`` file from Apple School Manager and what it says.

The crypto (key pair, CMS decryption) lives in an adapter; this module knows the
file's layers around it and the rules about the credentials inside.
"""
from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone

from shared.errors import Conflict, ValidationError

EXPIRING_WITHIN_DAYS = 30
MAX_TOKEN_FILE_BYTES = 256 * 1024

STATUS_OK = "ok"
STATUS_EXPIRING = "expiring"
STATUS_EXPIRED = "expired"
STATUS_TERMS_NOT_ACCEPTED = "terms_not_accepted"
STATUS_REVOKED_OR_INVALID = "revoked_or_invalid"
STATUSES = (STATUS_OK, STATUS_EXPIRING, STATUS_EXPIRED, STATUS_TERMS_NOT_ACCEPTED, STATUS_REVOKED_OR_INVALID)

_NOT_A_TOKEN = (
    "This file is not an MDM server token: expected the .p7m downloaded from Apple School Manager "
    "(Preferences > MDM Server Assignment > Download Token)."
)
_WRONG_KEY = (
    "The token could not be decrypted with this server token's key. Download the token again from "
    "the MDM server in Apple School Manager whose public key came from this server token."
)


@dataclass(frozen=True)
class OAuthCredentials:
    """The four OAuth 1.0a values Apple issues for one MDM server; secrets never print."""

    consumer_key: str
    consumer_secret: str = field(repr=False)
    access_token: str = field(repr=False)
    access_secret: str = field(repr=False)
    access_token_expiry: datetime

    def to_dict(self) -> dict[str, str]:
        return {
            "consumer_key": self.consumer_key,
            "consumer_secret": self.consumer_secret,
            "access_token": self.access_token,
            "access_secret": self.access_secret,
            "access_token_expiry": _rfc3339(self.access_token_expiry),
        }

    @classmethod
    def from_dict(cls, data: dict[str, str]) -> OAuthCredentials:
        return cls(
            consumer_key=data["consumer_key"],
            consumer_secret=data["consumer_secret"],
            access_token=data["access_token"],
            access_secret=data["access_secret"],
            access_token_expiry=_parse_rfc3339(data["access_token_expiry"]),
        )


def cms_from_token_file(p7m: bytes | str) -> bytes:
    """The CMS EnvelopedData inside an uploaded token: S/MIME, bare base64 or binary."""
    raw = p7m.encode("ascii", "replace") if isinstance(p7m, str) else bytes(p7m)
    if not raw.strip() or len(raw) > MAX_TOKEN_FILE_BYTES:
        raise ValidationError(_NOT_A_TOKEN)
    if raw[:1] == b"\x30":  # already binary DER/BER
        return raw
    text = raw.replace(b"\r\n", b"\n")
    head, sep, body = text.partition(b"\n\n")
    if sep and re.match(rb"^[A-Za-z-]+:", head.lstrip()):
        headers = _header_block(head)
        encoding = headers.get("content-transfer-encoding", "base64").lower()
        if encoding != "base64" or "pkcs7-mime" not in headers.get("content-type", "application/pkcs7-mime"):
            raise ValidationError(_NOT_A_TOKEN)
    else:
        body = text
    try:
        cms = base64.b64decode(b"".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValidationError(_NOT_A_TOKEN) from None
    if cms[:1] != b"\x30":
        raise ValidationError(_NOT_A_TOKEN)
    return cms


def credentials_from_plaintext(plaintext: bytes, *, now: datetime) -> OAuthCredentials:
    """Validate the decrypted token (inner MIME part) and refuse one that has expired."""
    try:
        text = plaintext.decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationError(_WRONG_KEY) from None
    text = text.replace("\r\n", "\n")
    if re.match(r"^[A-Za-z-]+:", text):  # the inner part's own Content-Type header block
        _, _, text = text.partition("\n\n")
    lines = [line for line in text.strip().split("\n") if line.strip() not in ("-----BEGIN MESSAGE-----", "-----END MESSAGE-----")]
    try:
        data = json.loads("\n".join(lines))
    except ValueError:
        raise ValidationError(_WRONG_KEY) from None
    if not isinstance(data, dict):
        raise ValidationError(_WRONG_KEY)
    expected = {"consumer_key": "CK_", "consumer_secret": "", "access_token": "AT_", "access_secret": "", "access_token_expiry": ""}
    for name, prefix in expected.items():
        value = data.get(name)
        if not isinstance(value, str) or not value.strip() or not value.startswith(prefix):
            raise ValidationError(
                f"The decrypted token has no valid '{name}'. Download a fresh token from Apple School Manager."
            )
    try:
        expiry = _parse_rfc3339(data["access_token_expiry"])
    except ValueError:
        raise ValidationError(
            f"The token's expiry '{data['access_token_expiry']}' is not an RFC 3339 date. "
            "Download a fresh token from Apple School Manager."
        ) from None
    if expiry <= now:
        raise ValidationError(
            f"This token expired on {expiry:%Y-%m-%d}. Download a new token for the MDM server in Apple School Manager."
        )
    return OAuthCredentials(
        consumer_key=data["consumer_key"],
        consumer_secret=data["consumer_secret"],
        access_token=data["access_token"],
        access_secret=data["access_secret"],
        access_token_expiry=expiry,
    )


def days_left(expiry: datetime, now: datetime) -> int:
    """Whole days until expiry (negative once expired)."""
    return (expiry - now).days


def token_status(expiry: datetime | None, now: datetime, *, apple_refusal: str | None = None) -> str:
    """The status an admin sees; ``apple_refusal`` is the last refusal recorded from Apple, if any."""
    if apple_refusal in (STATUS_TERMS_NOT_ACCEPTED, STATUS_REVOKED_OR_INVALID):
        return apple_refusal
    if expiry is None:
        return STATUS_REVOKED_OR_INVALID
    if expiry <= now:
        return STATUS_EXPIRED
    if days_left(expiry, now) <= EXPIRING_WITHIN_DAYS:
        return STATUS_EXPIRING
    return STATUS_OK


def check_same_mdm_server(
    *,
    current_consumer_key: str | None,
    new_consumer_key: str,
    current_server_uuid: str | None = None,
    new_server_uuid: str | None = None,
    force: bool = False,
) -> None:
    """A renewal must come from the same MDM server in Apple School Manager, unless forced."""
    if force:
        return
    if current_consumer_key and current_consumer_key != new_consumer_key:
        raise Conflict(
            "This token belongs to a different MDM server than the one being renewed. Download the token of "
            "the same MDM server, or renew with force to switch this server token to the other MDM server."
        )
    if current_server_uuid and new_server_uuid and current_server_uuid != new_server_uuid:
        raise Conflict(
            "Apple reports a different MDM server for this token. Download the token of the same MDM server, "
            "or renew with force to switch."
        )


def _header_block(head: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in head.decode("ascii", "replace").split("\n"):
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers


def _parse_rfc3339(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError("no time zone")
    return parsed.astimezone(timezone.utc)


def _rfc3339(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
