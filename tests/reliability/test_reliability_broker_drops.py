"""Fault 1: RabbitMQ force-closes every connection while the roster applies a 5,000-user plan and the vpp
service invites each imported user: every user exists once, every UserImported is handled once, every
invite exists once, here and at Apple. The vpp service runs on SQLite and on PostgreSQL, where concurrent
batches of redelivered events really do race for the same inbox rows."""
import time
from contextlib import nullcontext

import eventlet
import pytest

from services.roster.service import RosterService
from services.vpp.service import VppService
from shared.contracts.subscriptions import SUBSCRIPTIONS
from tests.conftest import postgres_database
from tests.reliability.conftest import district, query
from tests.shared.test_kernel_runtime import peek
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

USERS = 5000


def count(config, service: str, statement: str) -> int:
    return query(config, service, statement)[0][0]


@pytest.fixture(params=["sqlite", "postgresql"])
def vpp_storage(request, vpp_config):
    """The vpp service's database. Requested before ``runner_factory``, so it outlives the services."""
    with (postgres_database() if request.param == "postgresql" else nullcontext(None)) as url:
        if url:
            vpp_config["SERVICES"]["vpp"]["database_url"] = url
        yield vpp_config


def test_nothing_lost_or_doubled_when_the_broker_drops_every_connection(
        vpp_storage, runner_factory, vpp_sandbox, rpc_as, rabbit_manager):
    config = vpp_storage
    runner_factory(config, RosterService, VppService).start()
    vhost = config["AMQP_URI"].rsplit("/", 1)[1]
    stoken = vpp_sandbox.issue_token(locationName="North Campus")
    with rpc_as() as rpc:
        token_id = rpc.vpp.add_content_token(stoken, locations=["north"], auto_invite_method="managed_apple_id")["id"]
        plan_id = rpc.roster.preview_records(district(USERS))["plan_id"]
        pending_apply = rpc.roster.apply_plan.call_async(plan_id)

        rounds = 0
        deadline = time.monotonic() + 20
        while rounds < 4 and time.monotonic() < deadline:  # drop every connection, again and again, mid-flow
            eventlet.sleep(0.3 if rounds == 0 else 1.0)
            names = [c["name"] for c in rabbit_manager.get_connections() if c.get("vhost") == vhost]
            for name in names:
                rabbit_manager.delete_connection(name)
            rounds += bool(names)
        try:
            pending_apply.result()
        except Exception:
            pass  # the reply may be lost with the caller's connection; the outcome is checked below
    assert rounds == 4

    wait_for(lambda: count(config, "vpp", "select count(*) from inbox where handler = 'on_user_imported'") == USERS,
             timeout=90, interval=0.5, what="every UserImported handled")
    wait_for(lambda: vpp_sandbox.state(stoken)["users"] == USERS, timeout=30, interval=0.5,
             what="every invited user registered at Apple")
    assert count(config, "roster", "select count(*) from outbox") == 0
    with rpc_as() as rpc:  # applying again is safe: it was applied exactly once
        assert rpc.roster.apply_plan(plan_id)["already_applied"]
        assert rpc.roster.list_users()["total"] == USERS
    eventlet.sleep(1)  # a redelivery still on its way would show now

    assert count(config, "roster", "select count(*) from roster_users") == USERS
    assert count(config, "roster", "select count(distinct user_id) from roster_users") == USERS
    assert count(config, "vpp", "select count(*) from known_users") == USERS
    assert count(config, "vpp", "select count(*) from invites") == USERS
    assert count(config, "vpp", "select count(distinct user_id) from invites") == USERS
    assert count(config, "vpp", "select count(*) from invites where apple_state = 'registered'") == USERS
    assert vpp_sandbox.state(stoken)["users"] == USERS
    with rpc_as() as rpc:
        assert len(rpc.vpp.list_invites(token_id)) == USERS
    for subscription in SUBSCRIPTIONS:
        assert peek(config, subscription.queue_name + ".dead-letters") == [], subscription.queue_name
