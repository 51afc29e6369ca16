"""Fault 3: Apple fails (503 with Retry-After, 429, connection resets, an expired session mid-sync, a long
outage). Licence operations and device syncs back off, recover by themselves once Apple heals, never
storm it (request counts from the sandboxes are bounded), and their records say what happened."""
import time

import pytest

from services.vpp.service import VppService
from shared.errors import UpstreamError
from tests.reliability.conftest import metric_lines
from tests.reliability.fault_proxy import FaultProxy

pytestmark = pytest.mark.integration


@pytest.fixture
def proxied_vpp(vpp_config, vpp_sandbox):
    port = int(vpp_sandbox.url.rsplit(":", 1)[1])
    proxy = FaultProxy(port)
    vpp_config["SERVICES"]["vpp"]["vpp_url"] = proxy.url_for(vpp_sandbox.api_url)
    yield proxy
    proxy.close()


def apple_calls(config, error: str) -> float:
    lines = metric_lines(config, "vpp", f'orchard_vpp_apple_calls_total{{endpoint="assets/associate",error="{error}"}}')
    return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0


def test_licence_operations_back_off_and_recover(runner_factory, vpp_config, vpp_sandbox, proxied_vpp, rpc_as):
    config = vpp_config
    runner_factory(config, VppService).start()
    stoken = vpp_sandbox.issue_token(locationName="North Campus")
    vpp_sandbox.add_asset(stoken, "111", 10)
    associate = lambda: vpp_sandbox.requests("assets/associate")  # noqa: E731
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
    assert apple_calls(config, "503") == 5 and apple_calls(config, "429") == 1
    assert apple_calls(config, "0") == proxied_vpp.resets and apple_calls(config, "none") == 3
