"""A subscriber deployed after its publisher still gets what was published meanwhile: the publisher declares
the subscriber's queue before it publishes (shared/contracts/subscriptions.py)."""
import pytest

from services.roster.service import RosterService
from services.vpp.service import VppService
from tests.reliability.conftest import query
from tests.vpp.test_vpp_service_invites import count_rows
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def test_users_imported_before_vpp_first_starts_are_known_to_it(runner_factory, vpp_config, rpc_as):
    runner_factory(vpp_config, RosterService).start()  # vpp has never run on this broker
    users = [{"user_id": f"u{n}", "user_type": "student", "name": f"User {n}", "locations": ["north"]}
             for n in range(3)]
    with rpc_as() as rpc:
        batch = {"source": "api", "locations": [{"location_id": "north", "name": "North"}], "users": users}
        rpc.roster.apply_plan(rpc.roster.preview_records(batch)["plan_id"])
    wait_for(lambda: query(vpp_config, "roster", "select count(*) from outbox")[0][0] == 0,
             what="the roster's events published")

    runner_factory(vpp_config, VppService).start()
    wait_for(lambda: count_rows(vpp_config, "known_users") == 3, what="vpp to learn the users imported before it")
