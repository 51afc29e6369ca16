"""Invites revoked before or after Apple registered them, and registrations Apple failed (the running service)."""
from datetime import timedelta

import pytest
import sqlalchemy as sa
from nameko.testing.services import entrypoint_hook
from nameko.testing.utils import get_container

from services.vpp.adapters.tables import content_tokens, user_retirements
from services.vpp.service import VppService
from shared.storage import create_engine_for, utc_now
from tests.vpp.test_vpp_service_invites import count_rows, known_to_vpp, metric, publish, user
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def register_queued(runner):
    with entrypoint_hook(get_container(runner, VppService), "register_invites") as register_invites:
        register_invites()


def test_an_invite_revoked_while_queued_is_never_registered(vpp_sandbox, vpp_config, vpp_runner, rpc_as):
    stoken = vpp_sandbox.issue_token(locationName="North Campus")
    with rpc_as() as rpc:
        token_id = rpc.vpp.add_content_token(stoken, auto_invite_method="managed_apple_id")["id"]
        vpp_sandbox.fault("users/create", status=503, retryAfter=0, times=10_000)  # Apple is down: ann stays queued
        publish(vpp_config, user("ann"))
        wait_for(lambda: count_rows(vpp_config, "invites") == 1, what="ann's invite queued")

        assert rpc.vpp.revoke_invites(token_id, ["ann"]) == {"revoked": 1, "failures": []}
        assert vpp_sandbox.requests("users/retire") == 0  # nothing to retire: Apple never registered her
        vpp_sandbox.post("faults/clear")
        register_queued(vpp_runner)
        rpc.vpp.sync_assets(token_id)
        (invite,) = rpc.vpp.list_invites(token_id)
        assert (invite["status"], invite["registration"]) == ("revoked", "withdrawn")
    assert vpp_sandbox.state(stoken)["users"] == 0


def test_only_users_apple_retired_have_their_invites_revoked(vpp_sandbox, vpp_config, vpp_runner, rpc_as):
    stoken = vpp_sandbox.issue_token(locationName="North Campus")
    known_to_vpp(vpp_config, user("ann"), user("bob"))
    with rpc_as() as rpc:
        token_id = rpc.vpp.add_content_token(stoken)["id"]
        assert rpc.vpp.invite_users(token_id, ["ann", "bob"])["registered"] == 2
        vpp_sandbox.fault("users/retire", kind="users", errorNumber=9603, clientUserIds=["bob"])
        result = rpc.vpp.revoke_invites(token_id, ["ann", "bob"])
        assert result["revoked"] == 1 and [f["user_id"] for f in result["failures"]] == ["bob"]
        assert "9603" in result["failures"][0]["message"]
        statuses = {i["user_id"]: i["status"] for i in rpc.vpp.list_invites(token_id)}
        assert statuses == {"ann": "revoked", "bob": "pending"}

        assert rpc.vpp.revoke_invites(token_id, ["bob"]) == {"revoked": 1, "failures": []}  # Apple works again
        assert {i["status"] for i in rpc.vpp.list_invites(token_id)} == {"revoked"}
    assert vpp_sandbox.state(stoken)["retired"] == 2


def test_a_registration_apple_refused_shows_as_failed_and_is_queued_again_when_invited_again(vpp_sandbox, vpp_config,
                                                                                           vpp_runner, rpc_as):
    stoken = vpp_sandbox.issue_token(locationName="North Campus")
    known_to_vpp(vpp_config, user("amy"), user("bob"))
    with rpc_as() as rpc:
        token_id = rpc.vpp.add_content_token(stoken)["id"]
        vpp_sandbox.fault("users/create", kind="users", errorNumber=9602, clientUserIds=["bob"])
        first = rpc.vpp.invite_users(token_id, ["amy", "bob"])
        assert (first["registered"], first["failed"], [f["user_id"] for f in first["failures"]]) == (1, 1, ["bob"])
        bob = rpc.vpp.list_invites(token_id, status="failed")
        assert [(i["user_id"], i["registration"]) for i in bob] == [("bob", "failed")] and "9602" in bob[0]["error"]
        assert [i["user_id"] for i in rpc.vpp.list_invites(token_id, status="pending")] == ["amy"]
        counted = {line.split("status=")[1].split(",")[0]: line.rsplit(" ", 1)[1]
                   for line in metric(vpp_config, "orchard_vpp_invites{")}
        assert counted == {'"failed"': "1.0", '"pending"': "1.0"}

        again = rpc.vpp.invite_users(token_id, ["amy", "bob"])
        assert (again["invited"], again["already_invited"], again["registered"]) == (1, ["amy"], 1)
        assert {i["user_id"]: (i["status"], i["error"]) for i in rpc.vpp.list_invites(token_id)} == {
            "amy": ("pending", None), "bob": ("pending", None)}
    assert vpp_sandbox.state(stoken)["users"] == 2


def test_renewing_a_revoked_token_registers_the_invites_it_could_not(vpp_sandbox, vpp_config, vpp_runner, rpc_as):
    stoken = vpp_sandbox.issue_token(locationName="North Campus")
    with rpc_as() as rpc:
        token_id = rpc.vpp.add_content_token(stoken, auto_invite_method="managed_apple_id")["id"]
        vpp_sandbox.post("tokens/revoke", sToken=stoken)
        publish(vpp_config, user("ann"))  # Apple's answer to her registration marks the token revoked
        (failed,) = wait_for(lambda: rpc.vpp.list_invites(token_id, status="failed"), what="ann's invite failed")
        assert "renew" in failed["error"] and rpc.vpp.get_content_token(token_id)["status"] == "revoked"
        assert metric(vpp_config, "orchard_vpp_invites{") == [
            f'orchard_vpp_invites{{status="failed",token_id="{token_id}"}} 1.0']

        engine = create_engine_for(vpp_config["SERVICES"]["vpp"]["database_url"])
        with engine.begin() as connection:  # failures before had made its registrations wait an hour
            connection.execute(content_tokens.update().values(registration_attempts=7,
                                                              registration_retry_at=utc_now() + timedelta(hours=1)))
        engine.dispose()
        renewed = rpc.vpp.renew_content_token(token_id, vpp_sandbox.issue_token(locationName="North Campus"))
        assert renewed["status"] == "ok"
        wait_for(lambda: [(i["status"], i["registration"]) for i in rpc.vpp.list_invites(token_id)] == [
            ("pending", "registered")], what="ann registered with the renewed token")
    assert vpp_sandbox.state(stoken)["users"] == 1


def revoked_with_a_retirement_asked_for(vpp_sandbox, vpp_config, rpc_as) -> str:
    """Apple registered ann while her invite was being revoked, so her retirement was asked for; it waits, Apple
    having failed it once. The token's id."""
    stoken = vpp_sandbox.issue_token(locationName="North Campus")
    known_to_vpp(vpp_config, user("ann"))
    with rpc_as() as rpc:
        token_id = rpc.vpp.add_content_token(stoken)["id"]
        assert rpc.vpp.invite_users(token_id, ["ann"])["registered"] == 1
    engine = create_engine_for(vpp_config["SERVICES"]["vpp"]["database_url"])
    try:
        with engine.begin() as connection:
            connection.execute(sa.text("UPDATE invites SET status = 'revoked', apple_state = 'withdrawn'"))
            connection.execute(user_retirements.insert().values(
                token_id=token_id, user_id="ann", requested_at=utc_now(), attempts=1, roster_deleted=False,
                next_attempt_at=utc_now() + timedelta(seconds=30)))
    finally:
        engine.dispose()
    return token_id


def test_inviting_again_calls_off_the_retirement_a_revoked_invite_still_asked_for(vpp_sandbox, vpp_config, vpp_runner,
                                                                                 rpc_as):
    """Else the retirement would retire the new registration later."""
    token_id = revoked_with_a_retirement_asked_for(vpp_sandbox, vpp_config, rpc_as)
    with rpc_as() as rpc:
        assert rpc.vpp.invite_users(token_id, ["ann"])["registered"] == 1
        assert count_rows(vpp_config, "user_retirements") == 0  # nothing is left to retire her
        assert [(i["user_id"], i["status"]) for i in rpc.vpp.list_invites(token_id)] == [("ann", "pending")]


def test_an_invite_apple_did_not_register_leaves_that_retirement_asked_for(vpp_sandbox, vpp_config, vpp_runner, rpc_as):
    """The token refused: ann stays registered at Apple from before, and only the retirement would retire her."""
    token_id = revoked_with_a_retirement_asked_for(vpp_sandbox, vpp_config, rpc_as)
    engine = create_engine_for(vpp_config["SERVICES"]["vpp"]["database_url"])
    try:
        with engine.begin() as connection:
            connection.execute(content_tokens.update().values(revoked=True))
    finally:
        engine.dispose()
    with rpc_as() as rpc:
        assert rpc.vpp.invite_users(token_id, ["ann"])["registered"] == 0
    assert count_rows(vpp_config, "user_retirements") == 1
