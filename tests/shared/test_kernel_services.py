"""All five services start on the real broker, answer health, and meter it."""
import httpx
import pytest

from services.directory.service import DirectoryService
from services.enrollment.service import EnrollmentService
from services.push.service import PushService
from services.roster.service import RosterService
from services.vpp.service import VppService
from shared.errors import NotFound, PermissionDenied, ValidationError

pytestmark = pytest.mark.integration

ALL_SERVICES = (PushService, EnrollmentService, VppService, RosterService, DirectoryService)


def health_calls(text: str, service: str) -> float:
    line = f'orchard_entrypoint_calls_total{{entrypoint="health",kind="rpc",outcome="success",service="{service}"}} '
    return next((float(row[len(line):]) for row in text.splitlines() if row.startswith(line)), 0.0)


def test_every_service_is_healthy_and_counts_the_call(runner_factory, orchard_config, rpc_as):
    runner = runner_factory(orchard_config, *ALL_SERVICES)
    runner.start()
    ports = {s.name: orchard_config["SERVICES"][s.name]["metrics_port"] for s in ALL_SERVICES}
    # the registry is per process, and earlier tests may have called health already
    before = {name: health_calls(httpx.get(f"http://127.0.0.1:{port}/metrics").text, name) for name, port in ports.items()}

    with rpc_as() as rpc:
        for service in ALL_SERVICES:
            health = getattr(rpc, service.name).health()
            assert health["service"] == service.name
            assert health["database"] == "ok"
            assert health["version"]

    for name, port in ports.items():
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert health_calls(text, name) == before[name] + 1
        assert f'orchard_service_info{{service="{name}"' in text


def test_an_rpc_without_an_actor_is_refused_with_its_type(runner_factory, orchard_config, rpc_as):
    runner = runner_factory(orchard_config, PushService)
    runner.start()
    with rpc_as(actor=None) as rpc:
        with pytest.raises(PermissionDenied, match="no actor"):
            rpc.push.audit_log()


def test_text_no_store_can_hold_is_refused_before_any_service_code_runs(runner_factory, orchard_config, rpc_as):
    runner = runner_factory(orchard_config, VppService)
    runner.start()
    with rpc_as() as rpc:
        with pytest.raises(ValidationError, match="argument 1 is not valid Unicode text"):
            rpc.vpp.get_content_token("\ud800")
        with pytest.raises(ValidationError, match=r"name is not valid Unicode text"):
            rpc.vpp.add_content_token("AAAA", name="North \ud800")
        with pytest.raises(NotFound):  # an emoji travels as an escaped surrogate pair: valid text
            rpc.vpp.get_content_token("\U0001F34E")
        with pytest.raises(ValidationError, match="argument 1 holds a NUL character"):
            rpc.vpp.get_content_token("tok\x00")
        with pytest.raises(ValidationError, match=r"locations\[1\] holds a NUL character"):
            rpc.vpp.update_content_token("tok", locations=["north", "\x00"])


def test_missing_and_unknown_arguments_are_named(runner_factory, orchard_config, rpc_as):
    runner_factory(orchard_config, VppService).start()
    with rpc_as() as rpc:
        with pytest.raises(ValidationError, match="vpp.get_content_token: missing a required argument: 'token_id'"):
            rpc.vpp.get_content_token()
        with pytest.raises(ValidationError, match="vpp.get_content_token: got an unexpected keyword argument 'colour'"):
            rpc.vpp.get_content_token("tok", colour="red")
