"""Fault 2: a service process killed with SIGKILL in the middle of an ADE sync and of a roster apply.
After a restart the sync resumes from its stored cursor as soon as the dead run's short lease has run
out (a live run keeps renewing it), and the apply is complete or re-applies to the same result; nothing
is stored or announced twice."""
from __future__ import annotations

import json
import time
from datetime import datetime
from urllib.parse import quote

import eventlet
import httpx
import pytest
from sqlalchemy.orm import Session

from services.enrollment.adapters.token_repository import TokenRepository
import shared.entrypoints  # noqa: F401  registers Orchard's errors, so they reach this caller typed
from shared.errors import Conflict
from shared.storage import create_engine_for, utc_now
from tests.conftest import settle
from tests.reliability.conftest import connect_server_token, device_count, district, query, sync_runs
from tests.reliability.fault_proxy import FaultProxy
from tests.service_processes import kill, service_process, wait_until_serving
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

DEVICES = 4000
PAGE = 100
LEASE_SECONDS = 3  # deploy/config.yaml: 30
USERS = 5000


def sync_unless_running(rpc, token_id: str) -> dict | None:
    try:
        return rpc.enrollment.sync_devices(token_id)
    except Conflict:
        return None


def due_tokens(config: dict, at: datetime) -> list[str]:
    """The tokens the scheduled sync job would pick at ``at``."""
    engine = create_engine_for(config["SERVICES"]["enrollment"]["database_url"])
    try:
        with Session(engine) as session:
            return TokenRepository(session).due_for_sync(at)
    finally:
        engine.dispose()


def drain(config, queue: str) -> list[dict]:
    """Every message in a durable subscriber queue (nobody consumes it here), through the management API."""
    url = f"http://127.0.0.1:15672/api/queues/{quote(config['vhost'], safe='')}/{quote(queue, safe='')}/get"
    response = httpx.post(url, auth=("guest", "guest"), timeout=60, json={
        "count": 10 * USERS, "ackmode": "ack_requeue_false", "encoding": "auto", "truncate": 50000})
    response.raise_for_status()
    return [json.loads(message["payload"]) for message in response.json()]


def test_a_process_killed_mid_sync_and_mid_apply_resumes_and_reapplies(orchard_config, dep_sandbox, rpc_as, tmp_path):
    config = orchard_config
    proxy = FaultProxy(int(dep_sandbox.url.rsplit(":", 1)[1]))  # Apple answers slowly: the kill lands mid-sync
    config["SERVICES"]["enrollment"].update(dep_url=proxy.url_for(dep_sandbox.url), sync_lease_seconds=LEASE_SECONDS)
    targets = ["services.enrollment.service:EnrollmentService", "services.roster.service:RosterService"]
    try:
        with rpc_as(timeout=90) as caller:  # its calls outlive the process that took them
            with service_process(config, tmp_path, targets) as first:
                wait_until_serving(rpc_as, "enrollment", "roster")
                with rpc_as(timeout=60) as rpc:
                    token_id, server = connect_server_token(rpc, dep_sandbox)
                    plan_id = rpc.roster.preview_records(district(USERS))["plan_id"]
                wait_for(lambda: sync_runs(config) and sync_runs(config)[-1].finished_at, what="the first (empty) sync")
                dep_sandbox.server(server["server_uuid"], "settings", {"page_maximum": PAGE})
                dep_sandbox.server(server["server_uuid"], "devices/generate", {"count": DEVICES})
                dep_sandbox.http.delete("/_sandbox/requests")
                proxy.delay = 0.2  # a page every ~0.2 s: the sync outlives its first lease term and is killed midway
                sync_reply = caller.enrollment.sync_devices.call_async(token_id)
                started = time.monotonic()
                wait_for(lambda: sync_runs(config)[-1].pages >= 8, timeout=30, what="several pages stored")
                eventlet.sleep(max(0.0, started + LEASE_SECONDS + 1 - time.monotonic()))
                with rpc_as(timeout=60) as rpc, pytest.raises(Conflict):  # the live run renewed its lease
                    rpc.enrollment.sync_devices(token_id)
                apply_reply = caller.roster.apply_plan.call_async(plan_id)
                eventlet.sleep(0.3)  # the apply is writing users and their events
                kill(first)
                killed_at = time.monotonic()
            proxy.delay = 0
            stored = device_count(config)
            assert 8 * PAGE <= stored < DEVICES
            killed_run = sync_runs(config)[-1]
            assert killed_run.finished_at is None

            with service_process(config, tmp_path, targets):
                wait_until_serving(rpc_as, "enrollment", "roster")
                # the two calls the dead process had taken and not answered are delivered again and answered
                # now (a sync still held by the dead run's lease, or a plan being applied, is a Conflict)
                redelivered = settle([sync_reply, apply_reply], Conflict)
                # the scheduler counts the token due once the dead run's lease has run out
                wait_for(lambda: token_id in due_tokens(config, at=utc_now()), timeout=LEASE_SECONDS + 5,
                         what="the scheduler to count the token due")
                with rpc_as(timeout=60) as rpc:
                    # once the lease has run out, the redelivered call or this one resumes the sync; this call
                    # succeeds once no sync is running any more
                    wait_for(lambda: sync_unless_running(rpc, token_id), timeout=30, interval=0.5,
                             what="the dead run's lease to run out")
                    resumed_after = time.monotonic() - killed_at
                    runs = rpc.enrollment.sync_runs(token_id)
                    rpc.roster.apply_plan(plan_id)  # the operator applies again: same plan, same result
                    assert rpc.roster.list_users()["total"] == USERS
                wait_for(lambda: query(config, "roster", "select count(*) from outbox")[0][0] == 0, timeout=30,
                         what="the roster's outbox drained after the restart")
    finally:
        proxy.close()

    # answered by the new process (an unanswered call would have timed out in settle): a result or a Conflict
    assert all(isinstance(answer, (dict, str)) for answer in redelivered), redelivered
    # the sync went on from its stored cursor soon after the kill: only the missing devices, each page about once
    assert resumed_after < LEASE_SECONDS + 15, resumed_after
    later = [r for r in runs if r["id"] > killed_run.id]
    assert [(r["error"], r["kind"]) for r in later] == [(None, "sync")] * len(later)
    assert sum(r["added"] for r in later) == DEVICES - stored
    assert device_count(config) == DEVICES
    assert dep_sandbox.counts()["POST /devices/sync 200"] <= DEVICES // PAGE + 2, "more pages than one sync needs"
    assert [r for r in runs if r["finished_at"] is None] == [], "the killed run is still shown as running"
    killed = next(r for r in runs if r["id"] == killed_run.id)
    assert killed["error"].startswith("interrupted") and killed["pages"] >= 8

    # the apply happened once: every user once, announced by exactly one event (a redelivery keeps its id)
    (users, distinct), = query(config, "roster", "select count(*), count(distinct user_id) from roster_users")
    assert users == distinct == USERS
    event_of_user: dict[str, str] = {}
    for payload in drain(config, "evt-roster-UserImported--vpp.on_user_imported"):
        assert event_of_user.setdefault(payload["user_id"], payload["event_id"]) == payload["event_id"]
    assert len(event_of_user) == USERS
