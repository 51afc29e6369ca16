"""Fault 1, the broker itself restarted: RabbitMQ stops and starts again while the roster applies a
5,000-user plan and the vpp service invites each imported user. Every service reconnects by itself;
every user exists once, every UserImported is handled once, every invite exists once, here and at Apple.

The services run on a RabbitMQ node of the test's own (tests/reliability/broker_node.py), so the restart
disturbs no other test using the shared broker."""
import time

import pytest
from nameko.rpc import rpc
from nameko.runners import run_services

from services.roster.service import RosterService
from services.vpp.service import VppService
from shared.contracts.subscriptions import SUBSCRIPTIONS
from shared.entrypoints import ServiceRpc
from tests.reliability.conftest import district, query
from tests.shared.test_kernel_runtime import peek
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

USERS = 5000


class RosterCaller:
    """Calls the roster the way one service calls another (ServiceRpc, its own reply queue)."""
    name = "roster_caller"
    roster = ServiceRpc("roster", timeout=10)

    @rpc
    def roster_health(self) -> dict:
        return self.roster.health()


def count(config, service: str, statement: str) -> int:
    return query(config, service, statement)[0][0]


def handled(config) -> int:
    return count(config, "vpp", "select count(*) from inbox where handler = 'on_user_imported'")


def test_nothing_lost_or_doubled_when_rabbitmq_restarts(broker_node, vpp_config, vpp_sandbox, rpc_as):
    config = vpp_config
    config.update(AMQP_URI=broker_node.amqp_uri, vhost="/")
    with run_services(config, RosterService, VppService, RosterCaller):  # stopped before the broker node is
        restart_mid_import_and_check(config, broker_node, vpp_sandbox, rpc_as)


def restart_mid_import_and_check(config, broker_node, vpp_sandbox, rpc_as) -> None:
    stoken = vpp_sandbox.issue_token(locationName="North Campus")
    with rpc_as() as rpc:
        assert rpc.roster_caller.roster_health()["database"] == "ok"
        token_id = rpc.vpp.add_content_token(stoken, locations=["north"], auto_invite_method="managed_apple_id")["id"]
        plan_id = rpc.roster.preview_records(district(USERS))["plan_id"]
    with rpc_as() as rpc:
        rpc.roster.apply_plan.call_async(plan_id)  # its reply may be lost with the broker: outcomes are checked
        wait_for(lambda: handled(config) >= 1, timeout=60, interval=0.02, what="invites under way")
        started = time.monotonic()
        broker_node.stop()
        at_stop = handled(config)
        broker_node.start()
        downtime = time.monotonic() - started
    # counted once the broker is gone: the work must have been cut in the middle for the test to prove anything
    assert at_stop < USERS, "everything was done before the broker stopped: the test proved nothing"
    print(f"broker down {downtime:.1f} s, {at_stop} of {USERS} users handled when it stopped")

    wait_for(lambda: handled(config) == USERS, timeout=90, interval=0.5, what="every UserImported handled")
    wait_for(lambda: vpp_sandbox.state(stoken)["users"] == USERS, timeout=30, interval=0.5,
             what="every invited user registered at Apple")
    wait_for(lambda: count(config, "roster", "select count(*) from outbox") == 0, timeout=30,
             what="the roster's outbox drained")
    with rpc_as() as rpc:  # RPC works again, and applying again is safe: it was applied exactly once
        assert rpc.roster_caller.roster_health()["database"] == "ok"
        assert rpc.roster.apply_plan(plan_id)["already_applied"]
        assert rpc.roster.list_users()["total"] == USERS
        assert len(rpc.vpp.list_invites(token_id)) == USERS

    # every user once; every user known to vpp once, invited once and registered at Apple
    assert tuple(query(config, "roster", "select count(*), count(distinct user_id) from roster_users")[0]) \
        == (USERS, USERS)
    assert tuple(query(config, "vpp", "select (select count(*) from known_users), count(*), count(distinct user_id),"
                                      " sum(case when apple_state = 'registered' then 1 else 0 end) from invites")[0]) \
        == (USERS, USERS, USERS, USERS)
    assert vpp_sandbox.state(stoken)["users"] == USERS
    for subscription in SUBSCRIPTIONS:
        assert peek(config, subscription.queue_name + ".dead-letters") == [], subscription.queue_name
