"""A token renewed while a sync or a call still runs on its old credentials: Apple refusing those old ones does not
mark the renewed token revoked (which would stop its scheduled syncs)."""
from datetime import datetime, timedelta, timezone

import pytest

from apple_sandbox.dep import DepSandbox
from apple_sandbox.server import serve_wsgi
from services.enrollment.service import EnrollmentService
from shared.errors import UpstreamError
from tests.enrollment.conftest import SandboxAdmin
from tests.enrollment.test_enrollment_service import service_config  # noqa: F401  the service pointed at the sandbox
from tests.reliability.test_reliability_sqlite_turns import HeldAnswers
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def held_answers():
    return HeldAnswers(DepSandbox())


@pytest.fixture
def dep_sandbox(held_answers):
    """The DEP stand-in, behind ``held_answers``."""
    running = serve_wsgi(held_answers)
    yield SandboxAdmin(running.url)
    running.stop()


def renewed_while_apple_holds(rpc, dep_sandbox, held_answers, token, request, call):
    """Start ``call`` (on the token's current credentials), whose ``request`` Apple holds; renew the token meanwhile,
    then let Apple refuse the old credentials. What ``call`` returned or raised."""
    held_answers.held.add(request)
    held_answers.waiting[request] = 0
    dep_sandbox.script(request, "forbidden_access_denied")
    reply = call()
    wait_for(lambda: held_answers.waiting[request], what=f"{request} waiting at Apple")
    renewal = dep_sandbox.server(token["server_uuid"], "token", {"certificate_pem": token["public_key_pem"]})
    rpc.enrollment.renew_server_token(token["id"], renewal["p7m"])
    held_answers.held.discard(request)
    return reply.result()


def test_apple_refusing_the_credentials_a_renewal_replaced_leaves_the_token_ok(runner_factory, service_config, rpc_as,
                                                                              dep_sandbox, held_answers):
    runner_factory(service_config, EnrollmentService).start()
    with rpc_as() as rpc:
        created = rpc.enrollment.create_server_token("Springfield MDM")
        server = dep_sandbox.create_server(created["public_key_pem"].encode())
        token_id = rpc.enrollment.upload_server_token(created["id"], server["p7m"])["id"]
        wait_for(lambda: any(r["finished_at"] for r in rpc.enrollment.sync_runs(token_id)), what="the first sync")
        token = {**created, "server_uuid": server["server_uuid"]}

        run = renewed_while_apple_holds(rpc, dep_sandbox, held_answers, token, "POST /devices/sync",
                                        lambda: rpc.enrollment.sync_devices.call_async(token_id))
        assert "renewed meanwhile" in run["error"]
        shown = rpc.enrollment.get_server_token(token_id)
        assert shown["status"] == "ok"
        assert datetime.fromisoformat(shown["next_sync_at"]) < datetime.now(timezone.utc) + timedelta(minutes=11)

        with pytest.raises(UpstreamError, match="ACCESS_DENIED"):
            renewed_while_apple_holds(rpc, dep_sandbox, held_answers, token, "POST /roster/class/person",
                                      lambda: rpc.enrollment.fetch_roster.call_async(token_id, "person"))
        assert rpc.enrollment.get_server_token(token_id)["status"] == "ok"
        assert rpc.enrollment.sync_devices(token_id)["error"] is None  # the new credentials work
