import pytest

import csv
import io

from services.vpp.domain.invites import (
    AutoInvite, AutoInvitePolicy, InviteMethod, InviteStatus, can_resend, invite_email, invite_url, invites_csv,
    plan_auto_invites, transition,
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


def plan(managed="ann@school.appleid.com", invited=()):
    return plan_auto_invites(
        user_id="ann", user_locations=["north"], managed_apple_id=managed, policies=POLICIES,
        already_invited=lambda t, u: (t, u) in invited)


def test_auto_invite_goes_to_tokens_with_access_to_the_users_location():
    assert plan() == [AutoInvite("t-all", "ann", "ann@school.appleid.com"), AutoInvite("t-north", "ann", "ann@school.appleid.com")]


def test_auto_invite_skips_tokens_that_already_invited_the_user():
    assert [i.token_id for i in plan(invited={("t-all", "ann")})] == ["t-north"]


def test_no_managed_apple_id_means_no_auto_invite():
    assert plan(managed=None) == []


def test_invite_email_carries_the_link():
    mail = invite_email(to="ann@home.example", user_name="Ann", organisation="North School", url="https://x/?inviteCode=abc")
    assert mail.to == "ann@home.example" and "North School" in mail.subject
    assert "https://x/?inviteCode=abc" in mail.body and mail.body.startswith("Hello Ann,")


def test_invites_csv_has_a_header_and_one_row_per_invite():
    text = invites_csv([{"user_id": "ann", "status": "pending", "invite_url": "https://x/?a=1,2", "email": None}])
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows == [{"user_id": "ann", "name": "", "email": "", "managed_apple_id": "", "method": "",
                     "status": "pending", "invite_url": "https://x/?a=1,2", "invited_at": "", "accepted_at": ""}]
