"""Which devices are Orchard's, as the enrollment service's events say over RabbitMQ, for revoke_unknown."""
from datetime import datetime, timedelta, timezone

import pytest
from nameko.standalone.events import event_dispatcher

from shared.contracts.enrollment import AssignedDevice, DevicesAssigned, DevicesRemoved
from tests.vpp.test_vpp_service_invites import count_rows, metric
from tests.waiting import wait_for

pytestmark = pytest.mark.integration
T0 = datetime.now(timezone.utc)


def at(minutes: int) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat()


def assigned(*serials: str, minutes: int) -> DevicesAssigned:
    return DevicesAssigned(token_id="dep-1", devices=[AssignedDevice(serial_number=s) for s in serials],
                           occurred_at=at(minutes))


def removed(*serials: str, minutes: int) -> DevicesRemoved:
    return DevicesRemoved(token_id="dep-1", serial_numbers=list(serials), occurred_at=at(minutes))


def test_devices_removed_from_our_mdm_servers_are_strangers_to_revoke_unknown(vpp_sandbox, vpp_config, vpp_runner,
                                                                              rpc_as):
    stoken = vpp_sandbox.issue_token(locationName="North Campus")
    vpp_sandbox.add_asset(stoken, "111", 5)
    vpp_sandbox.post("assignments", sToken=stoken, adamId="111", serialNumbers=["GONE", "KEPT", "BACK"])
    dispatch = event_dispatcher(vpp_config)
    gone = removed("GONE", "BACK", minutes=10)
    # one at a time: events of the two queues may arrive in any order, and each step's outcome is checked
    for handled, event in enumerate([
            assigned("GONE", "KEPT", "BACK", minutes=0),
            gone,
            assigned("BACK", minutes=20),  # given back to our MDM server later: ours again
            assigned("GONE", minutes=0),  # a late refetch from before the removal: still gone
            removed("BACK", minutes=15)], 1):  # a late removal from before BACK came back: still ours
        dispatch(event.SOURCE, event.TYPE, event.to_payload())
        wait_for(lambda: count_rows(vpp_config, "inbox") == handled, what=f"event {handled} handled")
    dispatch(gone.SOURCE, gone.TYPE, gone.to_payload())  # delivered again: changes nothing
    wait_for(lambda: metric(vpp_config, 'orchard_events_duplicate_total{handler="on_devices_removed"'),
             what="the redelivery skipped")

    with rpc_as() as rpc:
        token_id = rpc.vpp.add_content_token(stoken)["id"]
        rpc.vpp.sync_assets(token_id)
        unknown = rpc.vpp.revoke_unknown(token_id)
    assert [a["serial_number"] for a in unknown["assignments"]] == ["GONE"]
    assert count_rows(vpp_config, "known_devices") == 3  # a removed device's row stays: a late event cannot revive it
