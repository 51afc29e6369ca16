"""On SQLite a process has one database connection: work waiting on Apple, another service or a mail relay
must not hold it, or every other request and the metrics page of that service wait as long."""
from __future__ import annotations

import time

import eventlet
import httpx
import pytest

from services.roster.service import RosterService
from services.vpp.service import VppService
from tests.reliability.fault_proxy import FaultProxy
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def answers_quickly(call) -> float:
    started = time.monotonic()
    call()
    return time.monotonic() - started


def test_a_token_sync_waiting_on_apple_leaves_the_service_answering(runner_factory, vpp_config, vpp_sandbox, rpc_as):
    proxy = FaultProxy(int(vpp_sandbox.api_url.split(":")[2].split("/")[0]))
    vpp_config["SERVICES"]["vpp"]["vpp_url"] = proxy.url_for(vpp_sandbox.api_url)
    try:
        runner_factory(vpp_config, VppService).start()
        stoken = vpp_sandbox.issue_token(locationName="North Campus")
        vpp_sandbox.add_asset(stoken, "100", 5)
        metrics = f"http://127.0.0.1:{vpp_config['SERVICES']['vpp']['metrics_port']}/metrics"
        with rpc_as(timeout=60) as rpc:
            token_id = rpc.vpp.add_content_token(stoken)["id"]
            proxy.delay = 3  # Apple answers slowly
            syncing = rpc.vpp.sync_assets.call_async(token_id)
            eventlet.sleep(1)  # the sync is waiting for Apple
            assert answers_quickly(lambda: rpc.vpp.list_content_tokens()) < 1.5
            assert answers_quickly(lambda: httpx.get(metrics, timeout=10).raise_for_status()) < 1.5
            assert syncing.result()["assets"] == 1
    finally:
        proxy.close()


def test_welcome_mails_waiting_on_a_silent_relay_leave_the_roster_answering(runner_factory, orchard_config, rpc_as):
    silent = eventlet.listen(("127.0.0.1", 0))  # takes the connection and never greets
    accepted = []
    acceptor = eventlet.spawn(lambda: accepted.append(silent.accept()))
    orchard_config["SERVICES"]["roster"].update(smtp_host="127.0.0.1", smtp_port=silent.getsockname()[1])
    try:
        runner_factory(orchard_config, RosterService).start()
        with rpc_as() as rpc:
            batch = {"source": "api", "locations": [{"location_id": "north", "name": "North"}],
                     "users": [{"user_id": "w1", "user_type": "student", "name": "W One", "locations": ["north"],
                                "email": "w1@school.example", "welcome_email": True}]}
            rpc.roster.apply_plan(rpc.roster.preview_records(batch)["plan_id"])
            wait_for(lambda: accepted, what="the mail job at the relay")
            assert answers_quickly(lambda: rpc.roster.list_users()) < 1.5
            assert rpc.roster.get_user("w1")["welcome_mail"]["status"] == "waiting"
    finally:
        acceptor.kill()
        silent.close()
