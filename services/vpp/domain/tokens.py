"""Content tokens (``.vpptoken`` files): decoding, validation and status.

A content token is the base64 of ``{"token", "expDate", "orgName"}``; the whole
base64 string (the *sToken*) is what Apple expects as the Bearer credential, so it
is a secret: it never appears in a repr, an error or a result.
"""
from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from shared.errors import ValidationError

EXPIRING_WITHIN = timedelta(days=30)
_WHERE_TO_GET_ONE = (
    "download a new content token in Apple School Manager or Apple Business Manager "
    "(Preferences > Payments and Billing > Content Tokens) and upload that file"
)


class TokenStatus(str, enum.Enum):
    OK = "ok"
    EXPIRING = "expiring"
    EXPIRED = "expired"
    REVOKED = "revoked"
    CONFLICT = "conflict"


@dataclass(frozen=True)
class ContentToken:
    """A decoded content token; ``stoken`` is the credential and is kept out of the repr."""

    stoken: str = field(repr=False)
    expires_at: datetime
    org_name: str

    @property
    def fingerprint(self) -> str:
        """A short, non-secret identifier for logs and audit entries."""
        return hashlib.sha256(self.stoken.encode()).hexdigest()[:12]


def decode_content_token(stoken: str | bytes, *, now: datetime) -> ContentToken:
    """Decode and validate a ``.vpptoken`` file's content; expired tokens are refused."""
    token = parse_content_token(stoken)
    if token.expires_at <= now:
        raise ValidationError(
            f"This content token for {token.org_name!r} expired on {token.expires_at:%Y-%m-%d}; {_WHERE_TO_GET_ONE}."
        )
    return token


def parse_content_token(stoken: str | bytes) -> ContentToken:
    """Decode a ``.vpptoken`` without judging its expiry (for tokens already stored)."""
    if isinstance(stoken, bytes):
        try:
            stoken = stoken.decode("ascii")
        except UnicodeDecodeError:
            raise ValidationError(f"This is not a content token file (it is not base64 text); {_WHERE_TO_GET_ONE}.") from None
    stoken = stoken.strip()
    if not stoken:
        raise ValidationError(f"The content token is empty; {_WHERE_TO_GET_ONE}.")
    try:
        payload = json.loads(base64.b64decode(stoken, validate=True))
    except (binascii.Error, ValueError):
        raise ValidationError(
            f"This is not a content token: a .vpptoken file holds base64-encoded JSON; {_WHERE_TO_GET_ONE}."
        ) from None
    if not isinstance(payload, dict):
        raise ValidationError(f"This content token does not hold a JSON object; {_WHERE_TO_GET_ONE}.")
    missing = [key for key in ("token", "expDate", "orgName") if not payload.get(key)]
    if missing or not all(isinstance(payload[key], str) for key in ("token", "expDate", "orgName")):
        what = ", ".join(missing) if missing else "token, expDate and orgName as text"
        raise ValidationError(f"This content token lacks {what}; {_WHERE_TO_GET_ONE}.")
    return ContentToken(stoken=stoken, expires_at=parse_apple_date(payload["expDate"]), org_name=payload["orgName"])


def parse_apple_date(value: str) -> datetime:
    """Apple writes ``2030-11-08T22:33:22+0000``; ISO forms with ``Z`` occur as well."""
    for fmt in ("%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S.%f%z"):
        try:
            written = datetime.strptime(value.replace("Z", "+0000"), fmt)
        except ValueError:
            continue
        try:
            return written.astimezone(timezone.utc)
        except OverflowError:  # 9999-12-31 west of UTC or 0001-01-01 east of it: the UTC time is past datetime's range
            raise ValidationError(f"The content token's expiry date {value!r} is out of range; {_WHERE_TO_GET_ONE}.") from None
    raise ValidationError(f"The content token's expiry date {value!r} is not a date; {_WHERE_TO_GET_ONE}.")


def days_left(expires_at: datetime, now: datetime) -> int:
    """Whole days until expiry, 0 once expired."""
    return max(0, (expires_at - now) // timedelta(days=1))


def token_status(expires_at: datetime, now: datetime, *, revoked: bool = False, conflict: bool = False) -> TokenStatus:
    """What an administrator must know first: revoked, expired, managed elsewhere, soon expiring."""
    if revoked:
        return TokenStatus.REVOKED
    if expires_at <= now:
        return TokenStatus.EXPIRED
    if conflict:
        return TokenStatus.CONFLICT
    if expires_at - now <= EXPIRING_WITHIN:
        return TokenStatus.EXPIRING
    return TokenStatus.OK


def check_renewal(current_uid: str, renewed_uid: str) -> None:
    """A renewed token must be for the same location: Apple's ``uId`` (a location renamed in Apple School Manager
    keeps it)."""
    if current_uid != renewed_uid:
        raise ValidationError(
            "The new content token belongs to a different location than the one it should renew; "
            "download the token of the same location, or add it as a new content token."
        )
