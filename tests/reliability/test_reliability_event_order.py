"""Fault 4: the same event twice, and events out of order (an update before its create): the end state is right."""
from datetime import datetime, timedelta, timezone

import pytest

from services.push.service import PushService
from shared.contracts.base import Event
from shared.contracts.enrollment import DeviceEnrolled, DeviceUnenrolled
from shared.contracts.roster import UserImported
from tests.reliability.conftest import publish, query
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

TOPIC = "com.apple.mgmt.External.order"
T0 = datetime(2026, 11, 26, 8, 0, tzinfo=timezone.utc)


def at(minutes: int) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat()


def enrolled(udid: str, minutes: int, token: str) -> DeviceEnrolled:
    return DeviceEnrolled(udid=udid, topic=TOPIC, push_token=token, push_magic=f"magic-{token}", occurred_at=at(minutes))


def unenrolled(udid: str, minutes: int) -> DeviceUnenrolled:
    return DeviceUnenrolled(udid=udid, topic=TOPIC, occurred_at=at(minutes))


def handled(config, service: str) -> int:
    return query(config, service, "select count(*) from inbox")[0][0]


def deliver_in_order(config, service: str, *events: Event) -> None:
    """Each event twice, one after the other has been handled, so the order of arrival is the one given."""
    for event in events:
        before = handled(config, service)
        publish(config, event, event)
        wait_for(lambda: handled(config, service) == before + 1, what=f"{event.TYPE} {event.event_id} handled")


def test_push_devices_end_right_whatever_the_order_of_enrollment_events(runner_factory, orchard_config):
    runner_factory(orchard_config, PushService).start()

    # a newer token, then the older check-in that was delayed: the newer token stays
    deliver_in_order(orchard_config, "push", enrolled("renewed", 5, "bb" * 32), enrolled("renewed", 1, "aa" * 32))
    # the check-out overtakes the check-in it follows: the device stays gone
    deliver_in_order(orchard_config, "push", unenrolled("left", 5), enrolled("left", 1, "cc" * 32))
    # an old check-out arrives after the device enrolled again: it stays enrolled
    deliver_in_order(orchard_config, "push", enrolled("back", 5, "dd" * 32), unenrolled("back", 1))
    # and in the natural order, with a redelivery of each
    deliver_in_order(orchard_config, "push", enrolled("plain", 1, "ee" * 32), unenrolled("plain", 2),
                     enrolled("plain", 3, "ff" * 32))

    devices = {row.udid: row.push_token for row in query(orchard_config, "push", "select udid, push_token from push_devices")}
    assert devices == {"renewed": "bb" * 32, "back": "dd" * 32, "plain": "ff" * 32}


def imported(user_id: str, minutes: int, managed_apple_id: str) -> UserImported:
    return UserImported(user_id=user_id, user_type="student", name=user_id.title(), source="csv", locations=["north"],
                        managed_apple_id=managed_apple_id, occurred_at=at(minutes))


def test_vpp_keeps_the_newest_roster_details_and_invites_once(runner_factory, vpp_config, vpp_sandbox, rpc_as):
    from services.vpp.service import VppService

    runner_factory(vpp_config, VppService).start()
    stoken = vpp_sandbox.issue_token(locationName="North Campus")
    with rpc_as() as rpc:
        token_id = rpc.vpp.add_content_token(stoken, locations=["north"], auto_invite_method="managed_apple_id")["id"]

    # the user was imported, removed and imported again with a new Apple ID; the older event arrives last
    deliver_in_order(vpp_config, "vpp", imported("gil", 5, "gil.new@north.appleid.example"),
                     imported("gil", 1, "gil.old@north.appleid.example"))
    known = query(vpp_config, "vpp", "select managed_apple_id from known_users where user_id = 'gil'")
    assert [row.managed_apple_id for row in known] == ["gil.new@north.appleid.example"]
    with rpc_as() as rpc:
        invites = wait_for(lambda: [i for i in rpc.vpp.list_invites(token_id) if i["invite_url"]], what="gil's invite")
    assert [(i["user_id"], i["managed_apple_id"]) for i in invites] == [("gil", "gil.new@north.appleid.example")]
    assert vpp_sandbox.state(stoken)["users"] == 1
