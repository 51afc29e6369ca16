"""Invite e-mails through a real SMTP relay stand-in: a refused address, a relay that puts mail off or is down."""
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from nameko.testing.services import entrypoint_hook
from nameko.testing.utils import get_container

from apple_sandbox.smtp_sink import serve_smtp
from services.vpp.adapters.tables import invites
from services.vpp.service import VppService
from shared.contracts.roster import UserUpdated
from shared.storage import create_engine_for, utc_now
from tests.conftest import free_port
from tests.reliability.conftest import publish
from tests.vpp.test_vpp_service_invites import count_rows, known_to_vpp, metric, user
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def by_mail(user_id, address):
    return user(user_id, managed=False, email=address)


def run_mail_job(runner, times=3):
    """The job that registers invites and mails them (it also runs by itself every second)."""
    for _ in range(times):
        with entrypoint_hook(get_container(runner, VppService), "register_invites") as register_invites:
            register_invites()


def emails_counted(config, outcome):
    lines = metric(config, f'orchard_vpp_invite_emails_total{{outcome="{outcome}"}}')
    return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0


def retry_now(config, user_id):
    """The pause after a failed e-mail is over."""
    engine = create_engine_for(config["SERVICES"]["vpp"]["database_url"])
    with engine.begin() as connection:
        connection.execute(invites.update().where(invites.c.user_id == user_id)
                           .values(mail_retry_at=utc_now() - timedelta(seconds=1)))
    engine.dispose()


def test_a_refused_address_is_recorded_on_its_invite_and_the_others_are_mailed_once(vpp_sandbox, vpp_config, vpp_runner,
                                                                                    rpc_as, smtp_sink):
    smtp_sink.refused["zed@nowhere.example"] = "550 5.1.1 No such user here"
    stoken = vpp_sandbox.issue_token(locationName="North Campus")
    known_to_vpp(vpp_config, by_mail("amy", "amy@home.example"), by_mail("dan", "dan@home.example"),
                 by_mail("zed", "zed@nowhere.example"))
    refused_before = emails_counted(vpp_config, "refused")
    with rpc_as() as rpc:
        token_id = rpc.vpp.add_content_token(stoken)["id"]
        result = rpc.vpp.invite_users(token_id, ["amy", "dan", "zed"], "email")
        assert (result["invited"], result["registered"], result["mail_error"]) == (3, 3, None)
        (failure,) = result["mail_failures"]
        assert (failure["user_id"], failure["refused"]) == ("zed", True)
        assert "zed@nowhere.example" in failure["message"] and "No such user here" in failure["message"]
        assert "SMTP_HOST" not in failure["message"] and "SMTP_PORT" not in failure["message"]

        run_mail_job(vpp_runner)
        assert sorted(m.recipients[0] for m in smtp_sink.messages) == ["amy@home.example", "dan@home.example"]
        listed = {i["user_id"]: i for i in rpc.vpp.list_invites(token_id)}
        zed = listed["zed"]
        assert (zed["status"], zed["mail"], zed["emailed_at"]) == ("pending", "refused", None)
        assert "No such user here" in listed["zed"]["mail_error"]
        assert (listed["dan"]["mail"], listed["dan"]["mail_error"]) == ("sent", None) and listed["dan"]["emailed_at"]
        assert emails_counted(vpp_config, "refused") == refused_before + 1

        # resending tries the address again: the relay takes it now
        del smtp_sink.refused["zed@nowhere.example"]
        assert rpc.vpp.resend_invites(token_id, ["zed"]) == {"resent": 1, "failures": []}
        zed = rpc.vpp.list_invites(token_id)[-1]
        assert (zed["user_id"], zed["mail"], zed["mail_error"]) == ("zed", "sent", None)
    assert [m.recipients[0] for m in smtp_sink.messages].count("zed@nowhere.example") == 1


def test_a_message_the_relay_puts_off_is_tried_again_after_a_pause(vpp_sandbox, vpp_config, vpp_runner, rpc_as,
                                                                  smtp_sink):
    smtp_sink.refused["dan@home.example"] = "451 4.3.0 Mailbox busy, try again later"
    stoken = vpp_sandbox.issue_token(locationName="North Campus")
    known_to_vpp(vpp_config, by_mail("dan", "dan@home.example"), by_mail("eve", "eve@home.example"))
    with rpc_as() as rpc:
        token_id = rpc.vpp.add_content_token(stoken)["id"]
        result = rpc.vpp.invite_users(token_id, ["dan", "eve"], "email")
        assert [(f["user_id"], f["refused"]) for f in result["mail_failures"]] == [("dan", False)]
        assert [m.recipients[0] for m in smtp_sink.messages] == ["eve@home.example"]

        del smtp_sink.refused["dan@home.example"]
        run_mail_job(vpp_runner)  # not every second: dan waits for his pause
        assert [m.recipients[0] for m in smtp_sink.messages] == ["eve@home.example"]
        dan = rpc.vpp.list_invites(token_id)[0]
        assert (dan["mail"], dan["emailed_at"]) == ("retrying", None) and "Mailbox busy" in dan["mail_error"]
        assert dan["mail_retry_at"] > utc_now().isoformat()

        retry_now(vpp_config, "dan")
        run_mail_job(vpp_runner, times=1)
        assert sorted(m.recipients[0] for m in smtp_sink.messages) == ["dan@home.example", "eve@home.example"]
        assert rpc.vpp.list_invites(token_id)[0]["mail"] == "sent"


def test_invites_wait_for_a_relay_that_is_down_and_go_out_once_it_is_back(runner_factory, vpp_config, vpp_sandbox,
                                                                         rpc_as):
    port = free_port()  # nothing listens there yet
    vpp_config["SERVICES"]["vpp"]["smtp_port"] = port
    runner = runner_factory(vpp_config, VppService)
    runner.start()
    stoken = vpp_sandbox.issue_token(locationName="North Campus")
    known_to_vpp(vpp_config, by_mail("dan", "dan@home.example"))
    with rpc_as() as rpc:
        token_id = rpc.vpp.add_content_token(stoken)["id"]
        result = rpc.vpp.invite_users(token_id, ["dan"], "email")
        assert result["registered"] == 1 and "SMTP_HOST/SMTP_PORT" in result["mail_error"]
        first = rpc.vpp.list_invites(token_id)[0]
        assert first["mail"] == "retrying" and first["mail_retry_at"]

        relay = serve_smtp("127.0.0.1", port)
        try:
            run_mail_job(runner)
            assert relay.messages == []  # the pause is not over: not tried every second
            assert rpc.vpp.list_invites(token_id)[0]["mail_retry_at"] == first["mail_retry_at"]
            retry_now(vpp_config, "dan")
            wait_for(lambda: relay.messages, what="the invite mailed once the relay is back")
            run_mail_job(runner)
            assert [m.recipients for m in relay.messages] == [["dan@home.example"]]
            assert rpc.vpp.list_invites(token_id)[0]["mail"] == "sent"
        finally:
            relay.stop()



def test_an_address_changed_in_the_roster_is_the_one_an_invite_is_mailed_to(vpp_sandbox, vpp_config, vpp_runner,
                                                                            rpc_as, smtp_sink):
    stoken = vpp_sandbox.issue_token(locationName="North Campus")
    imported = by_mail("amy", "amy@old.example")
    known_to_vpp(vpp_config, imported)
    later = datetime.now(timezone.utc).isoformat()

    def updated(address, at):
        return UserUpdated(user_id="amy", user_type="student", name="Amy", source="csv", locations=["north"],
                           email=address, occurred_at=at)
    before = count_rows(vpp_config, "inbox")
    # the newer address arrives, then an update older than the import: the latter changes nothing
    publish(vpp_config, updated("amy@new.example", later), updated("amy@stale.example", "2000-01-01T00:00:00+00:00"))
    wait_for(lambda: count_rows(vpp_config, "inbox") >= before + 2, what="both updates handled")
    with rpc_as() as rpc:
        token_id = rpc.vpp.add_content_token(stoken)["id"]
        assert rpc.vpp.invite_users(token_id, ["amy"], "email")["invited"] == 1
    run_mail_job(vpp_runner)
    wait_for(lambda: smtp_sink.messages, what="the invite mailed")
    assert [m.recipients for m in smtp_sink.messages] == [["amy@new.example"]]


def test_a_token_apple_keeps_refusing_waits_and_the_other_tokens_invites_are_registered_and_mailed(
        vpp_sandbox, vpp_config, vpp_runner, rpc_as, smtp_sink):
    """Apple refuses one token, the first of the round, whatever it is asked (9622): its invite waits, saying why, and
    is not asked for again at once; the other token's is registered and mailed. A token Apple says expired, or whose
    stored date has passed, fails its invites (renewing it queues them again)."""
    from services.vpp.adapters.tables import content_tokens
    from shared.secrets import SecretBox

    with rpc_as() as rpc:
        failing_id, other_id = (rpc.vpp.add_content_token(vpp_sandbox.issue_token(locationName=name))["id"]
                                for name in ("North Campus", "South Campus"))
    first = "00000000-0000-4000-8000-000000000000"  # a round takes the tokens in the order of their ids
    engine = create_engine_for(vpp_config["SERVICES"]["vpp"]["database_url"])
    tokens = content_tokens.c
    with engine.begin() as connection:
        sealed = connection.execute(sa.select(tokens.sealed_stoken).where(tokens.id == failing_id)).scalar_one()
        unknown = SecretBox(vpp_config["SECRET_KEY"]).seal("a content token Apple does not know")
        connection.execute(content_tokens.update().where(tokens.id == failing_id).values(id=first, sealed_stoken=unknown))
        connection.execute(invites.insert(), [
            {"token_id": token_id, "user_id": user_id, "method": method, "name": user_id.title(), "email": email,
             "managed_apple_id": None, "status": "pending", "apple_state": "queued", "invited_at": utc_now()}
            for token_id, user_id, method, email in ((first, "ann", "managed_apple_id", None),
                                                     (other_id, "dan", "email", "dan@home.example"))])

    def queue_ann_again(**token) -> None:
        with engine.begin() as connection:
            connection.execute(invites.update().where(invites.c.user_id == "ann")
                               .values(status="pending", apple_state="queued", apple_error=None))
            connection.execute(content_tokens.update().where(tokens.id == first).values(**token))

    def ann() -> tuple[str, str, str]:
        (invite,) = rpc.vpp.list_invites(first)
        return invite["status"], invite["registration"], invite["error"] or ""

    wait_for(lambda: smtp_sink.messages, timeout=10, what="dan's invite registered and mailed")
    with rpc_as() as rpc:
        status, registration, error = ann()
        assert (status, registration) == ("pending", "queued") and "does not accept" in error and "Tried again at" in error
        asked = vpp_sandbox.requests("users/create")
        run_mail_job(vpp_runner, times=1)
        assert vpp_sandbox.requests("users/create") == asked  # the token waits before it is tried again

        vpp_sandbox.fault("users/create", kind="error", errorNumber=9621)  # Apple says the token expired
        queue_ann_again(sealed_stoken=sealed, registration_retry_at=None)
        status, registration, error = wait_for(lambda: ann()[1] != "queued" and ann(), what="ann's invite failed")
        assert (status, registration) == ("failed", "failed") and "expired" in error and "renew" in error

        queue_ann_again(expires_at=utc_now())  # the date stored with the token has passed: Apple is not asked
        asked = vpp_sandbox.requests("users/create")
        status, registration, error = wait_for(lambda: ann()[1] != "queued" and ann(), what="ann's invite failed")
        assert (status, registration) == ("failed", "failed") and "expired on" in error
        assert vpp_sandbox.requests("users/create") == asked
    engine.dispose()
    assert [m.recipients for m in smtp_sink.messages] == [["dan@home.example"]]
