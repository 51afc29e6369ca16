"""Welcome e-mails: a new user whose import asks for one gets it once, through the configured mail relay."""
from __future__ import annotations

import eventlet
import pytest

from services.roster.service import RosterService
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

LOCATIONS = [{"location_id": "north", "name": "North Campus"}]


def user(user_id: str, **fields) -> dict:
    return {"user_id": user_id, "user_type": "student", "name": f"Student {user_id}", "locations": ["north"],
            **fields}


def apply(rpc, users: list[dict]) -> None:
    batch = {"source": "api", "locations": LOCATIONS, "users": users}
    rpc.roster.apply_plan(rpc.roster.preview_records(batch)["plan_id"])


@pytest.fixture
def roster(runner_factory, orchard_config, smtp_sink):
    orchard_config["SERVICES"]["roster"].update(smtp_host=smtp_sink.host, smtp_port=smtp_sink.port,
                                                mail_from="it@school.example")
    runner_factory(orchard_config, RosterService).start()
    return smtp_sink


def test_a_new_user_asking_for_a_welcome_email_gets_one_once(roster, rpc_as):
    sink = roster
    sink.refused["typo@school.example"] = "550 5.1.1 No such user here"
    with rpc_as() as rpc:
        apply(rpc, [user("w1", email="w1@school.example", managed_apple_id="w1@appleid.school.example",
                         welcome_email=True),
                    user("w2", welcome_email=True),  # no address to write to
                    user("w3", email="w3@school.example"),  # not asked for
                    user("w4", email="typo@school.example", welcome_email=True)])
        wait_for(lambda: rpc.roster.get_user("w4")["welcome_mail"]["status"] == "refused",
                 what="the refused address recorded")
        wait_for(lambda: rpc.roster.get_user("w1")["welcome_mail"]["status"] == "sent", what="w1's welcome")
        (mail,) = sink.messages
        assert mail.recipients == ["w1@school.example"] and mail.sender == "it@school.example"
        body = mail.message.get_content()
        assert mail.message["Subject"] == "Your school account is ready"
        assert "Hello Student w1," in body and "user ID is w1 (North Campus)" in body
        assert "Managed Apple ID is w1@appleid.school.example" in body
        refused = rpc.roster.get_user("w4")["welcome_mail"]
        assert "No such user here" in refused["error"] and "correct the user's e-mail address" in refused["error"]
        assert rpc.roster.get_user("w2")["welcome_mail"] is None and rpc.roster.get_user("w3")["welcome_mail"] is None

        # an existing user asking again, or an unchanged import, sends nothing more; neither is w4 tried again
        apply(rpc, [user("w1", email="w1@school.example", managed_apple_id="w1@appleid.school.example",
                         welcome_email=True, name="Student W1"), user("w2", welcome_email=True),
                    user("w3", email="w3@school.example"), user("w4", email="typo@school.example")])
        eventlet.sleep(3)
        assert len(sink.messages) == 1 and rpc.roster.get_user("w4")["welcome_mail"]["status"] == "refused"


def test_a_relay_that_is_away_leaves_welcome_emails_for_later(runner_factory, orchard_config, rpc_as, smtp_sink):
    orchard_config["SERVICES"]["roster"].update(smtp_host=smtp_sink.host, smtp_port=smtp_sink.port)
    port = smtp_sink.port
    smtp_sink.stop()  # nothing answers there now
    runner_factory(orchard_config, RosterService).start()
    with rpc_as() as rpc:
        apply(rpc, [user("w1", email="w1@school.example", welcome_email=True)])
        waiting = wait_for(lambda: (rpc.roster.get_user("w1")["welcome_mail"] or {}).get("error"),
                           what="the failed attempt recorded")
        assert f":{port}" in waiting and "check SMTP_HOST/SMTP_PORT" in waiting
        assert rpc.roster.get_user("w1")["welcome_mail"]["status"] == "waiting"
