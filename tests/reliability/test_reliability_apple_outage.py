"""Fault 3: Apple fails (503 with Retry-After, 429, connection resets, an expired session mid-sync, a long
outage). Licence operations and device syncs back off, recover by themselves once Apple heals, never
storm it (request counts from the sandboxes are bounded), and their records say what happened."""
import time
from datetime import datetime, timedelta, timezone

import pytest

from services.vpp.service import VppService
from shared.errors import UpstreamError
from tests.reliability.conftest import connect_server_token, device_count, execute, metric_value, query, sync_runs
from tests.reliability.fault_proxy import FaultProxy
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def proxied_vpp(vpp_config, vpp_sandbox):
    port = int(vpp_sandbox.url.rsplit(":", 1)[1])
    proxy = FaultProxy(port)
    vpp_config["SERVICES"]["vpp"]["vpp_url"] = proxy.url_for(vpp_sandbox.api_url)
    yield proxy
    proxy.close()


def apple_calls(config, error: str) -> float:
    return metric_value(config, "vpp", f'orchard_vpp_apple_calls_total{{endpoint="assets/associate",error="{error}"}}')


def test_licence_operations_back_off_and_recover(runner_factory, vpp_config, vpp_sandbox, proxied_vpp, rpc_as):
    config = vpp_config
    runner_factory(config, VppService).start()
    stoken = vpp_sandbox.issue_token(locationName="North Campus")
    vpp_sandbox.add_asset(stoken, "111", 10)
    associate = lambda: vpp_sandbox.requests("assets/associate")  # noqa: E731
    before = {error: apple_calls(config, error) for error in ("503", "429", "0", "none")}  # one registry per process
    with rpc_as(timeout=60) as rpc:
        token_id = rpc.vpp.add_content_token(stoken)["id"]
        rpc.vpp.sync_assets(token_id)

        # a 503 asking for a second's pause, then a 429: waited out within the call, one request each
        vpp_sandbox.fault("assets/associate", status=503, retryAfter=1)
        vpp_sandbox.fault("assets/associate", status=429, retryAfter=1)
        started = time.monotonic()
        assert sorted(rpc.vpp.assign_licenses(token_id, "111", serial_numbers=["A", "B"])["assigned"]["serial_numbers"]) \
            == ["A", "B"]
        assert time.monotonic() - started >= 2  # Retry-After honoured
        assert associate() == 3

        # a longer outage: a bounded number of tries, then a clear error and nothing changed
        vpp_sandbox.fault("assets/associate", status=503, retryAfter=1, times=4)
        with pytest.raises(UpstreamError, match="failing"):
            rpc.vpp.assign_licenses(token_id, "111", serial_numbers=["C"])
        assert associate() == 3 + 4
        assert rpc.vpp.get_asset(token_id, "111")["serial_numbers"] == ["A", "B"]

        # Apple has healed: the same request now goes through, once
        assert rpc.vpp.assign_licenses(token_id, "111", serial_numbers=["C"])["assigned"]["serial_numbers"] == ["C"]
        assert associate() == 3 + 4 + 1

        # the network resets connections for a moment: the call retries after a pause and succeeds
        proxied_vpp.mode = "reset"
        pending = rpc.vpp.assign_licenses.call_async(token_id, "111", serial_numbers=["D"])
        time.sleep(1)
        proxied_vpp.mode = "pass"
        assert pending.result()["assigned"]["serial_numbers"] == ["D"]
        assert 1 <= proxied_vpp.resets <= 2 and associate() == 3 + 4 + 1 + 1
        assert rpc.vpp.get_asset(token_id, "111")["serial_numbers"] == ["A", "B", "C", "D"]
        audit = [e["action"] for e in rpc.vpp.audit_log(target=f"content_token:{token_id}")]
        assert audit.count("licences.assigned") == 3  # the failed call recorded nothing

    # the metrics say what happened: every failed answer by its status, every success
    counted = {error: apple_calls(config, error) - before[error] for error in before}
    assert counted == {"503": 5, "429": 1, "0": proxied_vpp.resets, "none": 3}


DEVICES = 3000
PAGE = 100


@pytest.fixture
def proxied_dep(orchard_config, dep_sandbox):
    proxy = FaultProxy(int(dep_sandbox.url.rsplit(":", 1)[1]))
    orchard_config["SERVICES"]["enrollment"]["dep_url"] = proxy.url_for(dep_sandbox.url)
    yield proxy
    proxy.close()


def test_device_sync_resumes_from_its_cursor_after_apple_fails_mid_sync(
        runner_factory, orchard_config, dep_sandbox, proxied_dep, rpc_as):
    from nameko.testing.services import entrypoint_hook
    from nameko.testing.utils import get_container

    from services.enrollment.service import EnrollmentService

    config = orchard_config
    runner = runner_factory(config, EnrollmentService)
    runner.start()
    with rpc_as(timeout=60) as rpc:
        token_id, server = connect_server_token(rpc, dep_sandbox)
        wait_for(lambda: sync_runs(config) and sync_runs(config)[-1].finished_at, what="the first (empty) sync")

        # ASM assigns devices; Apple is slow, and its sessions last a second
        dep_sandbox.server(server["server_uuid"], "settings", {"page_maximum": PAGE, "session_ttl": 1})
        dep_sandbox.server(server["server_uuid"], "devices/generate", {"count": DEVICES})
        dep_sandbox.http.delete("/_sandbox/requests")
        proxied_dep.delay = 0.03
        pending = rpc.enrollment.sync_devices.call_async(token_id)
        wait_for(lambda: sync_runs(config)[-1].pages >= 5, what="a few pages stored")
        dep_sandbox.script("POST /devices/sync", {"status": 503, "body": "SERVICE_UNAVAILABLE",
                                                  "headers": {"Retry-After": "1"}})
        failed = pending.result()
        proxied_dep.delay = 0
    assert failed["error"] and ("503" in failed["error"] or "unavailable" in failed["error"].lower()), failed
    assert 5 <= failed["pages"] < DEVICES // PAGE  # the run record says how far it got and why it stopped
    stored_before = device_count(config)
    assert 5 * PAGE <= stored_before < DEVICES

    # the failure is retried soon, not hours later
    next_sync = query(config, "enrollment", f"select next_sync_at from server_tokens where id = '{token_id}'")[0][0]
    assert datetime.fromisoformat(str(next_sync)).replace(tzinfo=timezone.utc) < datetime.now(timezone.utc) + timedelta(minutes=15)

    # Apple has healed (but throttles once); the scheduled job resumes from the stored cursor
    dep_sandbox.script("POST /devices/sync", {"status": 429, "headers": {"Retry-After": "1"}})
    execute(config, "enrollment", f"update server_tokens set next_sync_at = null where id = '{token_id}'")  # minutes pass
    with entrypoint_hook(get_container(runner, EnrollmentService), "sync_due_tokens") as sync_due_tokens:
        sync_due_tokens()
    resumed = sync_runs(config)[-1]
    assert resumed.error is None and resumed.kind == "sync"
    assert resumed.added == DEVICES - stored_before  # only what the failed run had not stored
    assert device_count(config) == DEVICES
    counts = dep_sandbox.counts()
    assert counts["POST /devices/sync 200"] <= DEVICES // PAGE + 1  # each page once (plus a last, empty one)
    assert counts["POST /devices/sync 503"] == 1 and counts["POST /devices/sync 429"] == 1
    # each expired session cost one new session and one repeated page, nothing more (the resumed sync reuses
    # the failed one's client, whose session had expired meanwhile)
    assert counts["GET /session 200"] == counts["POST /devices/sync 401"] and counts["POST /devices/sync 401"] >= 1



def test_device_sync_against_a_hanging_apple_times_out_without_a_storm_and_recovers(
        runner_factory, orchard_config, dep_sandbox, proxied_dep, rpc_as):
    from nameko.testing.services import entrypoint_hook
    from nameko.testing.utils import get_container

    from services.enrollment.service import EnrollmentService

    config = orchard_config
    config["SERVICES"]["enrollment"]["dep_timeout_seconds"] = 1
    runner = runner_factory(config, EnrollmentService)
    runner.start()
    with rpc_as(timeout=60) as rpc:
        token_id, server = connect_server_token(rpc, dep_sandbox)
        wait_for(lambda: sync_runs(config) and sync_runs(config)[-1].finished_at, what="the first (empty) sync")
        dep_sandbox.server(server["server_uuid"], "settings", {"page_maximum": PAGE})
        dep_sandbox.server(server["server_uuid"], "devices/generate", {"count": 500})
        dep_sandbox.http.delete("/_sandbox/requests")

        # Apple accepts the connection and never answers
        proxied_dep.mode = "stall"
        started = time.monotonic()
        hung = rpc.enrollment.sync_devices(token_id)
        waited = time.monotonic() - started
    assert hung["error"] and "Timeout" in hung["error"], hung  # the run record says it timed out
    assert hung["finished_at"] and hung["pages"] == 0
    assert waited < 10, "the sync waited far longer than its configured timeout"
    requests = {key: n for key, n in dep_sandbox.counts().items() if key.count(" ") == 1}  # "METHOD /path"
    assert sum(requests.values()) == 1, f"a hanging Apple was asked more than once: {requests}"
    next_sync = query(config, "enrollment", f"select next_sync_at from server_tokens where id = '{token_id}'")[0][0]
    retry_in = datetime.fromisoformat(str(next_sync)).replace(tzinfo=timezone.utc) - datetime.now(timezone.utc)
    assert timedelta(minutes=4) < retry_in < timedelta(minutes=11)  # backs off minutes, not hours

    # Apple answers again; the next scheduled attempt fetches everything, once
    proxied_dep.mode = "pass"
    execute(config, "enrollment", f"update server_tokens set next_sync_at = null where id = '{token_id}'")  # minutes pass
    with entrypoint_hook(get_container(runner, EnrollmentService), "sync_due_tokens") as sync_due_tokens:
        sync_due_tokens()
    recovered = sync_runs(config)[-1]
    assert recovered.error is None and recovered.added == 500
    assert device_count(config) == 500
    assert dep_sandbox.counts()["POST /devices/sync 200"] <= 500 // PAGE + 1


def test_licence_operation_against_a_hanging_apple_retries_after_a_pause(
        runner_factory, vpp_config, vpp_sandbox, proxied_vpp, rpc_as):
    config = vpp_config
    config["SERVICES"]["vpp"]["apple_timeout_seconds"] = 1
    runner_factory(config, VppService).start()
    stoken = vpp_sandbox.issue_token(locationName="North Campus")
    vpp_sandbox.add_asset(stoken, "111", 10)
    with rpc_as(timeout=60) as rpc:
        token_id = rpc.vpp.add_content_token(stoken)["id"]
        rpc.vpp.sync_assets(token_id)

        proxied_vpp.mode = "stall"  # Apple takes the request and hangs
        started = time.monotonic()
        pending = rpc.vpp.assign_licenses.call_async(token_id, "111", serial_numbers=["A"])
        wait_for(lambda: vpp_sandbox.requests("assets/associate") == 1, what="the request to reach Apple")
        time.sleep(2)  # past the 1 s timeout, before the retry 2 s later: the client has given up and waits
        proxied_vpp.mode = "pass"
        assert pending.result()["assigned"]["serial_numbers"] == ["A"]
        # one timed-out request, one retry after a pause, and the licence recorded once
        assert vpp_sandbox.requests("assets/associate") == 2 and time.monotonic() - started >= 3
        assert rpc.vpp.get_asset(token_id, "111")["serial_numbers"] == ["A"]
        audit = [e["action"] for e in rpc.vpp.audit_log(target=f"content_token:{token_id}")]
        assert audit.count("licences.assigned") == 1
