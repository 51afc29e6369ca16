"""A user the roster deletes (UserDeleted over RabbitMQ) is retired at Apple and their licences freed, once."""
import pytest
from nameko.standalone.events import event_dispatcher
from nameko.testing.services import entrypoint_hook
from nameko.testing.utils import get_container

from services.vpp.service import VppService
from shared.contracts.roster import UserDeleted
from shared.errors import ValidationError
from tests.vpp.test_vpp_service_invites import count_rows, metric, publish, user
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def deleted(user_id, **kw):
    return UserDeleted(user_id=user_id, user_type="student", source="csv", locations=["north"], **kw)


def test_a_deleted_user_is_retired_and_their_licences_freed_once(vpp_sandbox, vpp_config, vpp_runner, rpc_as):
    stoken = vpp_sandbox.issue_token(locationName="North Campus")
    vpp_sandbox.add_asset(stoken, "111", 5)
    vpp_sandbox.add_asset(stoken, "900", 5, product_type="Book")
    with rpc_as() as rpc:
        token_id = rpc.vpp.add_content_token(stoken, locations=["north"], auto_invite_method="managed_apple_id")["id"]
        rpc.vpp.sync_assets(token_id)
        ann_imported = user("ann")
        publish(vpp_config, ann_imported, user("bob"))
        wait_for(lambda: vpp_sandbox.state(stoken)["users"] == 2, what="both users registered with Apple")
        wait_for(lambda: {i["registration"] for i in rpc.vpp.list_invites(token_id)} == {"registered"}, what="invites registered")
        rpc.vpp.assign_licenses(token_id, "111", user_ids=["ann", "bob"])
        rpc.vpp.assign_licenses(token_id, "900", user_ids=["ann"])

        gone = deleted("ann")
        dispatch = event_dispatcher(vpp_config)
        dispatch(UserDeleted.SOURCE, UserDeleted.TYPE, gone.to_payload())
        wait_for(lambda: (vpp_sandbox.user(stoken, "ann")["user"] or {}).get("status") == "Retired", what="ann retired")
        assert vpp_sandbox.user(stoken, "ann")["userAssignments"] == ["900"]  # the app is freed, the book stays
        wait_for(lambda: count_rows(vpp_config, "user_retirements") == 0, what="the retirement recorded")
        assert rpc.vpp.get_asset(token_id, "111")["user_ids"] == ["bob"]
        assert rpc.vpp.get_asset(token_id, "111")["available"] == 4
        assert rpc.vpp.get_asset(token_id, "900")["user_ids"] == ["ann"]
        invites = {i["user_id"]: i for i in rpc.vpp.list_invites(token_id)}
        assert (invites["ann"]["status"], invites["ann"]["registration"]) == ("revoked", "retired")
        assert invites["bob"]["status"] == "pending"
        assert rpc.vpp.revoke_unknown(token_id)["count"] == 0  # ann's book cannot be revoked; nothing else is hers
        with pytest.raises(ValidationError, match="not in the roster"):
            rpc.vpp.invite_users(token_id, ["ann"])

        # the same event again, and ann's older import arriving late: nothing changes
        calls = {path: vpp_sandbox.requests(path) for path in ("users/retire", "assets/revoke", "users/create")}
        dispatch(UserDeleted.SOURCE, UserDeleted.TYPE, gone.to_payload())
        publish(vpp_config, user("ann", occurred_at=ann_imported.occurred_at))
        wait_for(lambda: metric(vpp_config, 'orchard_events_duplicate_total{handler="on_user_deleted"'), what="the redelivery skipped")
        wait_for(lambda: count_rows(vpp_config, "inbox") == 4, what="the late import handled")
        container = get_container(vpp_runner, VppService)
        for job in ("register_invites", "retire_deleted_users"):
            with entrypoint_hook(container, job) as run:
                run()
        assert {path: vpp_sandbox.requests(path) for path in calls} == calls
        assert vpp_sandbox.user(stoken, "ann")["user"]["status"] == "Retired"
        assert {i["user_id"]: i["status"] for i in rpc.vpp.list_invites(token_id)} == {"ann": "revoked", "bob": "pending"}
        assert count_rows(vpp_config, "user_retirements") == 0


def test_a_user_imported_again_after_deletion_is_invited_again(vpp_sandbox, vpp_config, vpp_runner, rpc_as):
    stoken = vpp_sandbox.issue_token(locationName="North Campus")
    with rpc_as() as rpc:
        token_id = rpc.vpp.add_content_token(stoken, locations=["north"], auto_invite_method="managed_apple_id")["id"]
        publish(vpp_config, user("ann"))
        wait_for(lambda: (vpp_sandbox.user(stoken, "ann")["user"] or {}).get("status") == "Registered", what="ann registered")
        event_dispatcher(vpp_config)(UserDeleted.SOURCE, UserDeleted.TYPE, deleted("ann").to_payload())
        wait_for(lambda: (vpp_sandbox.user(stoken, "ann")["user"] or {}).get("status") == "Retired", what="ann retired")
        wait_for(lambda: rpc.vpp.list_invites(token_id)[0]["registration"] == "retired", what="the retirement recorded")
        publish(vpp_config, user("ann"))  # back in the roster: a newer import
        wait_for(lambda: (vpp_sandbox.user(stoken, "ann")["user"] or {}).get("status") == "Registered",
                 what="ann registered again")
        wait_for(lambda: [(i["status"], i["registration"]) for i in rpc.vpp.list_invites(token_id)] == [
            ("pending", "registered")], what="the invite pending again")

        # deleted again, and imported again before Apple let her retirement through: she is not retired
        vpp_sandbox.fault("users/retire", status=503, retryAfter=0, times=4)  # the first try and the client's 3 retries
        event_dispatcher(vpp_config)(UserDeleted.SOURCE, UserDeleted.TYPE, deleted("ann").to_payload())
        wait_for(lambda: count_rows(vpp_config, "user_retirements where attempts > 0"), what="the retirement put off")
        publish(vpp_config, user("ann"))
        wait_for(lambda: count_rows(vpp_config, "inbox") == 5, what="the newer import handled")
        assert count_rows(vpp_config, "user_retirements") == 0  # called off
        with entrypoint_hook(get_container(vpp_runner, VppService), "retire_deleted_users") as retire_deleted_users:
            retire_deleted_users()
        assert vpp_sandbox.user(stoken, "ann")["user"]["status"] == "Registered"
        assert [(i["status"], i["registration"]) for i in rpc.vpp.list_invites(token_id)] == [("pending", "registered")]


def test_a_late_import_of_a_user_who_moved_invites_nothing_where_they_were(vpp_sandbox, vpp_config, vpp_runner, rpc_as):
    from datetime import datetime, timedelta, timezone

    stoken = vpp_sandbox.issue_token(locationName="North Campus")
    with rpc_as() as rpc:
        rpc.vpp.add_content_token(stoken, locations=["north"], auto_invite_method="managed_apple_id")
    now = datetime.now(timezone.utc)
    publish(vpp_config, user("zed", locations=["south"], occurred_at=now.isoformat()))
    wait_for(lambda: count_rows(vpp_config, "inbox") == 1, what="the current import handled")
    publish(vpp_config, user("zed", locations=["north"], occurred_at=(now - timedelta(minutes=10)).isoformat()))
    wait_for(lambda: count_rows(vpp_config, "inbox") == 2, what="the late, older import handled")
    with entrypoint_hook(get_container(vpp_runner, VppService), "register_invites") as register_invites:
        register_invites()
    assert count_rows(vpp_config, "invites") == 0 and vpp_sandbox.state(stoken)["users"] == 0
