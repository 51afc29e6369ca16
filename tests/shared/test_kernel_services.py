"""All five services start on the real broker, answer health, and meter it."""
import httpx
import pytest

from services.directory.service import DirectoryService
from services.enrollment.service import EnrollmentService
from services.push.service import PushService
from services.roster.service import RosterService
from services.vpp.service import VppService
from shared.errors import PermissionDenied

pytestmark = pytest.mark.integration

ALL_SERVICES = (PushService, EnrollmentService, VppService, RosterService, DirectoryService)


def test_every_service_is_healthy_and_counts_the_call(runner_factory, orchard_config, rpc_as):
    runner = runner_factory(orchard_config, *ALL_SERVICES)
    runner.start()

    with rpc_as() as rpc:
        for service in ALL_SERVICES:
            health = getattr(rpc, service.name).health()
            assert health["service"] == service.name
            assert health["database"] == "ok"
            assert health["version"]

    for service in ALL_SERVICES:
        port = orchard_config["SERVICES"][service.name]["metrics_port"]
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert (
            f'orchard_entrypoint_calls_total{{entrypoint="health",kind="rpc",outcome="success",service="{service.name}"}} 1.0'
            in text
        )
        assert f'orchard_service_info{{service="{service.name}"' in text


def test_an_rpc_without_an_actor_is_refused_with_its_type(runner_factory, orchard_config, rpc_as):
    runner = runner_factory(orchard_config, PushService)
    runner.start()
    with rpc_as(actor=None) as rpc:
        with pytest.raises(PermissionDenied, match="no actor"):
            rpc.push.audit_log()
