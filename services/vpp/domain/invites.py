"""Invitations for user-based assignment: the invite URL, invite states and auto-invites."""
from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass

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

    @classmethod
    def parse(cls, value: str) -> "InviteStatus":
        try:
            return cls(value)
        except ValueError:
            raise ValidationError(f"Unknown invite status {value!r}; use pending, accepted or revoked.") from None

    @classmethod
    def from_apple_user_status(cls, status: str) -> "InviteStatus":
        """Apple's user status: Registered (invited), Associated (accepted), Retired/Deleted."""
        return {"Registered": cls.PENDING, "Associated": cls.ACCEPTED}.get(status, cls.REVOKED)


_ALLOWED = {
    InviteStatus.PENDING: {InviteStatus.PENDING, InviteStatus.ACCEPTED, InviteStatus.REVOKED},
    InviteStatus.ACCEPTED: {InviteStatus.ACCEPTED, InviteStatus.REVOKED},
    InviteStatus.REVOKED: {InviteStatus.REVOKED, InviteStatus.PENDING},  # invited again
}


def transition(current: InviteStatus, target: InviteStatus) -> InviteStatus:
    """Move an invite on; an accepted invite cannot become pending again, only revoked."""
    if target not in _ALLOWED[current]:
        raise Conflict(f"An invite that is {current.value} cannot become {target.value}; revoke it first and invite again.")
    return target


def can_resend(status: InviteStatus) -> bool:
    return status is InviteStatus.PENDING


def invite_url(template: str, invite_code: str) -> str:
    """Build the invite link from ``service/config.urls.invitationEmail``."""
    if INVITE_CODE_PLACEHOLDER not in template:
        raise UpstreamError("Apple's service configuration has no usable invitation URL; try again later.")
    return template.replace(INVITE_CODE_PLACEHOLDER, invite_code)


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
    event_id: str,
    user_id: str,
    user_locations: Iterable[str],
    managed_apple_id: str | None,
    policies: Iterable[AutoInvitePolicy],
    event_handled: Callable[[str], bool],
    already_invited: Callable[[str, str], bool],
) -> list[AutoInvite]:
    """Which tokens register this imported user; a redelivered event or a known user invites nobody."""
    if not managed_apple_id or event_handled(event_id):
        return []
    locations = tuple(user_locations)
    return [
        AutoInvite(p.token_id, user_id, managed_apple_id)
        for p in policies
        if p.auto_invite and p.method is InviteMethod.MANAGED_APPLE_ID and p.covers(locations)
        and not already_invited(p.token_id, user_id)
    ]
