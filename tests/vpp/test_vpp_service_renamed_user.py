"""A user the roster gives a new user ID (UserUpdated with previous_user_id over RabbitMQ) keeps their invite and
licences, and Apple keeps knowing them by the clientUserId it registered: no new invite, nothing asked of the person."""
from datetime import datetime, timedelta, timezone

import pytest
from nameko.standalone.events import event_dispatcher

from shared.contracts.roster import UserDeleted, UserUpdated
from shared.errors import ValidationError
from tests.vpp.test_vpp_service_invites import count_rows, known_to_vpp, metric, user
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def updated(user_id, previous_user_id, occurred_at):
    return UserUpdated(user_id=user_id, previous_user_id=previous_user_id, user_type="student", name="Ann",
                       source="asm", locations=["north"], managed_apple_id=f"{user_id}@new.appleid.example",
                       occurred_at=occurred_at.isoformat())


def test_a_user_given_a_new_id_keeps_invite_and_licences_at_apple(vpp_sandbox, vpp_config, vpp_runner, rpc_as):
    stoken = vpp_sandbox.issue_token(locationName="North Campus")
    vpp_sandbox.add_asset(stoken, "111", 5)
    vpp_sandbox.add_asset(stoken, "222", 5)
    known_to_vpp(vpp_config, user("old"))
    dispatch = event_dispatcher(vpp_config)
    renamed = updated("new", "old", datetime.now(timezone.utc))
    with rpc_as() as rpc:
        token_id = rpc.vpp.add_content_token(stoken, locations=["north"])["id"]
        rpc.vpp.sync_assets(token_id)
        assert rpc.vpp.invite_users(token_id, ["old"])["registered"] == 1
        assert rpc.vpp.assign_licenses(token_id, "111", user_ids=["old"])["assigned"]["user_ids"] == ["old"]

        dispatch(UserUpdated.SOURCE, UserUpdated.TYPE, renamed.to_payload())
        wait_for(lambda: [i["user_id"] for i in rpc.vpp.list_invites(token_id)] == ["new"], what="the invite under the new ID")
        assert rpc.vpp.get_asset(token_id, "111")["user_ids"] == ["new"]
        assert rpc.vpp.revoke_unknown(token_id)["count"] == 0  # Apple's "old" is the user now called "new"

        # another app for the new ID goes to Apple's user "old": no new invite
        assigned = rpc.vpp.assign_licenses(token_id, "222", user_ids=["new"])["assigned"]
        assert (assigned["user_ids"], assigned["failures"]) == (["new"], [])
        assert vpp_sandbox.user(stoken, "old")["userAssignments"] == ["111", "222"]
        assert vpp_sandbox.state(stoken)["users"] == 1 and vpp_sandbox.requests("users/create") == 1

        # what Apple tells about "old" (a sync, its acceptance notified) is about "new"
        rpc.vpp.sync_assets(token_id)
        assert rpc.vpp.get_asset(token_id, "222")["user_ids"] == ["new"]
        vpp_sandbox.post("users/accept", sToken=stoken, clientUserId="old")
        wait_for(lambda: [i["user_id"] for i in rpc.vpp.list_invites(token_id, status="accepted")] == ["new"],
                 what="the acceptance of Apple's user old")

        revoked = rpc.vpp.revoke_licenses(token_id, "111", user_ids=["new"])["revoked"]
        assert (revoked["user_ids"], revoked["failures"]) == (["new"], [])
        assert vpp_sandbox.user(stoken, "old")["userAssignments"] == ["222"]

        # the same event again, and an older rename the other way arriving late: nothing changes
        dispatch(UserUpdated.SOURCE, UserUpdated.TYPE, renamed.to_payload())
        dispatch(UserUpdated.SOURCE, UserUpdated.TYPE,
                 updated("old", "new", datetime.fromisoformat(renamed.occurred_at) - timedelta(minutes=5)).to_payload())
        wait_for(lambda: metric(vpp_config, 'orchard_events_duplicate_total{handler="on_user_updated"'),
                 what="the redelivery skipped")
        wait_for(lambda: count_rows(vpp_config, "inbox") == 3, what="the late, older rename handled")
        assert [i["user_id"] for i in rpc.vpp.list_invites(token_id)] == ["new"]
        assert rpc.vpp.get_asset(token_id, "222")["user_ids"] == ["new"]
        assert rpc.vpp.revoke_unknown(token_id)["count"] == 0
        with pytest.raises(ValidationError, match="not in the roster"):
            rpc.vpp.invite_users(token_id, ["old"])  # the old ID is gone

        # the roster deletes the user: Apple retires its user "old" and frees the app
        gone = UserDeleted(user_id="new", user_type="student", source="asm", locations=["north"])
        dispatch(UserDeleted.SOURCE, UserDeleted.TYPE, gone.to_payload())
        wait_for(lambda: vpp_sandbox.user(stoken, "old")["user"]["status"] == "Retired", what="Apple's user old retired")
        assert vpp_sandbox.user(stoken, "old")["userAssignments"] == []
        wait_for(lambda: rpc.vpp.list_invites(token_id)[0]["registration"] == "retired", what="the retirement recorded")


def test_renames_handled_out_of_order_leave_the_user_under_their_latest_id(vpp_sandbox, vpp_config, vpp_runner, rpc_as):
    """ann became bea, then cat; vpp hears of the second rename first."""
    stoken = vpp_sandbox.issue_token(locationName="North Campus")
    vpp_sandbox.add_asset(stoken, "111", 5)
    known_to_vpp(vpp_config, user("ann"))
    dispatch = event_dispatcher(vpp_config)
    with rpc_as() as rpc:
        token_id = rpc.vpp.add_content_token(stoken, locations=["north"])["id"]
        rpc.vpp.sync_assets(token_id)
        assert rpc.vpp.invite_users(token_id, ["ann"])["registered"] == 1

        to_bea = datetime.now(timezone.utc)
        dispatch(UserUpdated.SOURCE, UserUpdated.TYPE, updated("cat", "bea", to_bea + timedelta(minutes=1)).to_payload())
        wait_for(lambda: count_rows(vpp_config, "inbox") == 2, what="the rename to cat handled")  # ann's import, this
        dispatch(UserUpdated.SOURCE, UserUpdated.TYPE, updated("bea", "ann", to_bea).to_payload())
        wait_for(lambda: [i["user_id"] for i in rpc.vpp.list_invites(token_id)] == ["cat"], what="the invite under cat")
        assigned = rpc.vpp.assign_licenses(token_id, "111", user_ids=["cat"])["assigned"]
        assert (assigned["user_ids"], assigned["failures"]) == (["cat"], [])
        assert vpp_sandbox.user(stoken, "ann")["userAssignments"] == ["111"]
        assert rpc.vpp.revoke_unknown(token_id)["count"] == 0
        with pytest.raises(ValidationError, match="not in the roster"):
            rpc.vpp.invite_users(token_id, ["bea"])
