import pytest

from services.vpp.domain.invites import (
    AutoInvite, AutoInvitePolicy, InviteMethod, InviteStatus, can_resend, invite_url, plan_auto_invites, transition,
)
from shared.errors import Conflict, UpstreamError, ValidationError

TEMPLATE = "https://buy.itunes.apple.com/WebObjects/MZFinance.woa/wa/associateVPPUserWithITSAccount?inviteCode=%25inviteCode%25&mt=8"


def test_invite_url_replaces_the_encoded_placeholder():
    assert invite_url(TEMPLATE, "abc123").endswith("inviteCode=abc123&mt=8")
    with pytest.raises(UpstreamError):
        invite_url("https://example.com/no-placeholder", "abc")


def test_invite_states():
    assert transition(InviteStatus.PENDING, InviteStatus.ACCEPTED) is InviteStatus.ACCEPTED
    assert transition(InviteStatus.ACCEPTED, InviteStatus.REVOKED) is InviteStatus.REVOKED
    assert transition(InviteStatus.REVOKED, InviteStatus.PENDING) is InviteStatus.PENDING
    with pytest.raises(Conflict):
        transition(InviteStatus.ACCEPTED, InviteStatus.PENDING)
    assert can_resend(InviteStatus.PENDING) and not can_resend(InviteStatus.ACCEPTED)
    assert InviteStatus.from_apple_user_status("Registered") is InviteStatus.PENDING
    assert InviteStatus.from_apple_user_status("Associated") is InviteStatus.ACCEPTED
    assert InviteStatus.from_apple_user_status("Retired") is InviteStatus.REVOKED
    with pytest.raises(ValidationError):
        InviteMethod.parse("fax")
    with pytest.raises(ValidationError):
        InviteStatus.parse("maybe")


POLICIES = [
    AutoInvitePolicy("t-all", True, InviteMethod.MANAGED_APPLE_ID),
    AutoInvitePolicy("t-north", True, InviteMethod.MANAGED_APPLE_ID, ("north",)),
    AutoInvitePolicy("t-south", True, InviteMethod.MANAGED_APPLE_ID, ("south",)),
    AutoInvitePolicy("t-email", True, InviteMethod.EMAIL),
    AutoInvitePolicy("t-off", False, InviteMethod.MANAGED_APPLE_ID),
]


def plan(event_id="e1", managed="ann@school.appleid.com", handled=(), invited=()):
    return plan_auto_invites(
        event_id=event_id, user_id="ann", user_locations=["north"], managed_apple_id=managed, policies=POLICIES,
        event_handled=lambda e: e in handled, already_invited=lambda t, u: (t, u) in invited)


def test_auto_invite_goes_to_tokens_with_access_to_the_users_location():
    assert plan() == [AutoInvite("t-all", "ann", "ann@school.appleid.com"), AutoInvite("t-north", "ann", "ann@school.appleid.com")]


def test_auto_invite_is_idempotent_by_event_and_user():
    assert plan(handled={"e1"}) == []
    assert [i.token_id for i in plan(event_id="e2", invited={("t-all", "ann")})] == ["t-north"]


def test_no_managed_apple_id_means_no_auto_invite():
    assert plan(managed=None) == []
