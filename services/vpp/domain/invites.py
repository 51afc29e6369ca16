"""Invitations for user-based assignment: the invite URL, invite states and auto-invites."""
from __future__ import annotations

import enum
import csv
import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from shared.errors import Conflict, UpstreamError, ValidationError

INVITE_CODE_PLACEHOLDER = "%25inviteCode%25"


class InviteMethod(str, enum.Enum):
    EMAIL = "email"  # the link is mailed; the user accepts with a personal Apple ID
    MANAGED_APPLE_ID = "managed_apple_id"  # registered with the Managed Apple ID, nothing mailed

    @classmethod
    def parse(cls, value: str) -> "InviteMethod":
        try:
            return cls(value)
        except ValueError:
            raise ValidationError(f"Unknown invite method {value!r}; use 'email' or 'managed_apple_id'.") from None


class InviteStatus(str, enum.Enum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    REVOKED = "revoked"
    FAILED = "failed"  # Apple did not register the user; inviting again (or renewing the token) queues it again

    @classmethod
    def parse(cls, value: str) -> "InviteStatus":
        try:
            return cls(value)
        except ValueError:
            raise ValidationError(
                f"Unknown invite status {value!r}; use pending, accepted, revoked or failed.") from None

    @classmethod
    def from_apple_user_status(cls, status: str) -> "InviteStatus":
        """Apple's user status: Registered (invited), Associated (accepted), Retired/Deleted."""
        return {"Registered": cls.PENDING, "Associated": cls.ACCEPTED}.get(status, cls.REVOKED)


_ALLOWED = {
    InviteStatus.PENDING: {InviteStatus.PENDING, InviteStatus.ACCEPTED, InviteStatus.REVOKED, InviteStatus.FAILED},
    InviteStatus.ACCEPTED: {InviteStatus.ACCEPTED, InviteStatus.REVOKED},
    InviteStatus.REVOKED: {InviteStatus.REVOKED, InviteStatus.PENDING},  # invited again
    # queued again (invited again, or the token renewed), or withdrawn
    InviteStatus.FAILED: {InviteStatus.FAILED, InviteStatus.PENDING, InviteStatus.REVOKED},
}


def transition(current: InviteStatus, target: InviteStatus) -> InviteStatus:
    """Move an invite on; an accepted invite cannot become pending again, only revoked."""
    if target not in _ALLOWED[current]:
        raise Conflict(f"An invite that is {current.value} cannot become {target.value}; revoke it first and invite again.")
    return target


def can_resend(status: InviteStatus) -> bool:
    return status is InviteStatus.PENDING


def invite_url_template(template: str) -> str:
    """``service/config.urls.invitationEmail``, if invite links can be built from it."""
    if INVITE_CODE_PLACEHOLDER not in template:
        raise UpstreamError("Apple's service configuration has no usable invitation URL; try again later.")
    return template


def invite_url(template: str, invite_code: str) -> str:
    """Build the invite link from ``service/config.urls.invitationEmail``."""
    return invite_url_template(template).replace(INVITE_CODE_PLACEHOLDER, invite_code)


@dataclass(frozen=True)
class AutoInvitePolicy:
    """A token's auto-invite setting; empty ``locations`` means access to every location."""

    token_id: str
    auto_invite: bool
    method: InviteMethod
    locations: tuple[str, ...] = ()

    def covers(self, user_locations: Iterable[str]) -> bool:
        return not self.locations or bool(set(self.locations) & set(user_locations))


@dataclass(frozen=True)
class AutoInvite:
    token_id: str
    user_id: str
    managed_apple_id: str


def plan_auto_invites(
    *,
    user_id: str,
    user_locations: Iterable[str],
    managed_apple_id: str | None,
    policies: Iterable[AutoInvitePolicy],
    already_invited: Callable[[str, str], bool],
) -> list[AutoInvite]:
    """Which tokens register this imported user; a user a token already invited is not invited again.

    (A redelivered event never gets here: the event inbox skips event ids already handled.)
    """
    if not managed_apple_id:
        return []
    locations = tuple(user_locations)
    return [
        AutoInvite(p.token_id, user_id, managed_apple_id)
        for p in policies
        if p.auto_invite and p.method is InviteMethod.MANAGED_APPLE_ID and p.covers(locations)
        and not already_invited(p.token_id, user_id)
    ]


@dataclass(frozen=True)
class InviteEmail:
    to: str
    subject: str
    body: str


def invite_email(*, to: str, user_name: str | None, organisation: str, url: str) -> InviteEmail:
    """The message that carries an invite link to a user who accepts with a personal Apple ID."""
    greeting = f"Hello {user_name}," if user_name else "Hello,"
    body = (
        f"{greeting}\n\n{organisation} invites you to receive apps and books for school.\n"
        f"Open this link on your device and sign in with your Apple ID to accept:\n\n{url}\n\n"
        "Your Apple ID stays private: the school never sees it.\n"
    )
    return InviteEmail(to=to, subject=f"{organisation}: accept your invitation to apps and books", body=body)


INVITE_CSV_COLUMNS = ("user_id", "name", "email", "managed_apple_id", "method", "status", "invite_url", "invited_at", "accepted_at")


def invites_csv(invites: Iterable[dict[str, Any]]) -> str:
    """Invites as CSV with a header row, for spreadsheets and mail merges."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=INVITE_CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for invite in invites:
        writer.writerow({key: "" if invite.get(key) is None else invite.get(key) for key in INVITE_CSV_COLUMNS})
    return out.getvalue()
