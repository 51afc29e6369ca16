"""Fault 2: a service process killed with SIGKILL in the middle of an ADE sync and of a roster apply.
After a restart the sync resumes from its stored cursor and the apply is complete or re-applies to the
same result; nothing is stored or announced twice."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

import eventlet
import httpx
import pytest
import yaml

from tests.conftest import TEST_SECRET_KEY
from tests.reliability.conftest import device_count, district, execute, query, sync_runs
from tests.reliability.fault_proxy import FaultProxy
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
NAMEKO = Path(sys.executable).with_name("nameko")
DEVICES = 4000
PAGE = 100


@contextmanager
def service_process(config: dict, tmp_path: Path, targets: list[str]) -> Iterator[subprocess.Popen]:
    """``nameko run`` of services in a process of their own, on the test's vhost and databases."""
    path = tmp_path / "orchard.yaml"
    path.write_text(yaml.safe_dump(config))
    log = open(tmp_path / "services.log", "a")
    process = subprocess.Popen([str(NAMEKO), "run", "--config", str(path), *targets], cwd=ROOT, stdout=log,
                               stderr=subprocess.STDOUT, env={**os.environ, "ORCHARD_SECRET_KEY": TEST_SECRET_KEY})
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()


def wait_until_serving(rpc_as, *services: str) -> None:
    def answers() -> bool:
        try:
            with rpc_as(timeout=2) as rpc:
                return all(getattr(rpc, service).health()["database"] == "ok" for service in services)
        except Exception:
            return False
    wait_for(answers, timeout=30, interval=0.2, what=f"{', '.join(services)} to answer")


def kill(process: subprocess.Popen) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)


USERS = 5000


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
    config["SERVICES"]["enrollment"]["dep_url"] = proxy.url_for(dep_sandbox.url)
    targets = ["services.enrollment.service:EnrollmentService", "services.roster.service:RosterService"]
    try:
        with service_process(config, tmp_path, targets) as first:
            wait_until_serving(rpc_as, "enrollment", "roster")
            with rpc_as(timeout=60) as rpc:
                created = rpc.enrollment.create_server_token("Springfield MDM")
                server = dep_sandbox.create_server(created["public_key_pem"].encode())
                token_id = rpc.enrollment.upload_server_token(created["id"], server["p7m"])["id"]
                plan_id = rpc.roster.preview_records(district(USERS))["plan_id"]
            wait_for(lambda: sync_runs(config) and sync_runs(config)[-1].finished_at, what="the first (empty) sync")
            dep_sandbox.server(server["server_uuid"], "settings", {"page_maximum": PAGE})
            dep_sandbox.server(server["server_uuid"], "devices/generate", {"count": DEVICES})
            dep_sandbox.http.delete("/_sandbox/requests")
            proxy.delay = 0.05
            with rpc_as(timeout=60) as rpc:
                rpc.enrollment.sync_devices.call_async(token_id)
                wait_for(lambda: sync_runs(config)[-1].pages >= 8, timeout=30, what="several pages stored")
                rpc.roster.apply_plan.call_async(plan_id)
                eventlet.sleep(0.3)  # the apply is writing users and their events
                kill(first)
        proxy.delay = 0
        stored = device_count(config)
        assert 8 * PAGE <= stored < DEVICES
        killed_run = sync_runs(config)[-1]
        assert killed_run.finished_at is None

        with service_process(config, tmp_path, targets):
            wait_until_serving(rpc_as, "enrollment", "roster")
            # the dead process's lease on the token runs out (10 minutes; here, at once)
            execute(config, "enrollment", "update server_tokens set sync_lease_until = null")
            with rpc_as(timeout=60) as rpc:
                resumed = rpc.enrollment.sync_devices(token_id)
                runs = rpc.enrollment.sync_runs(token_id)
                rpc.roster.apply_plan(plan_id)  # the operator applies again: same plan, same result
                assert rpc.roster.list_users()["total"] == USERS
            wait_for(lambda: query(config, "roster", "select count(*) from outbox")[0][0] == 0, timeout=30,
                     what="the roster's outbox drained after the restart")
    finally:
        proxy.close()

    # the sync went on from its stored cursor: only the missing devices, each page about once
    assert resumed["error"] is None and resumed["kind"] == "sync"
    assert resumed["added"] == DEVICES - stored
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
