"""Fixtures for the vpp tests: an Apps and Books sandbox on a real socket."""
from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from apple_sandbox.server import serve_wsgi
from apple_sandbox.vpp import VppSandbox


class SandboxAdmin:
    """Drives the sandbox's ``/_sandbox/`` admin routes over HTTP."""

    def __init__(self, url: str):
        self.url = url
        self.api_url = url + "/mdm/v2/"
        self._http = httpx.Client(base_url=url + "/_sandbox/", timeout=10)

    def post(self, route: str, **body) -> dict:
        response = self._http.post(route, json=body)
        response.raise_for_status()
        return response.json()

    def issue_token(self, **body) -> str:
        return self.post("tokens", **body)["sToken"]

    def add_asset(self, stoken: str, adam_id: str, total: int, product_type: str = "App", **extra) -> dict:
        return self.post("assets", sToken=stoken, adamId=adam_id, totalCount=total, productType=product_type, **extra)

    def fault(self, path: str, **body) -> None:
        self.post("faults", path=path, **body)

    def state(self, stoken: str | None = None) -> dict:
        response = self._http.get("state", params={"sToken": stoken} if stoken else {})
        response.raise_for_status()
        return response.json()

    def user(self, stoken: str, client_user_id: str) -> dict:
        """The location's state with the user (``user``: Apple's user or None) and the adamIds they hold."""
        response = self._http.get("state", params={"sToken": stoken, "clientUserId": client_user_id})
        response.raise_for_status()
        return response.json()

    def requests(self, path: str) -> int:
        return self.state()["requests"].get(path, 0)

    def close(self) -> None:
        self._http.close()


def served(app) -> Iterator[SandboxAdmin]:
    """``app`` (a ``VppSandbox``, or something in front of one) on a real socket, until the generator ends."""
    running = serve_wsgi(app)
    admin = SandboxAdmin(running.url)
    yield admin
    admin.close()
    running.stop()


@pytest.fixture
def vpp_sandbox():
    yield from served(VppSandbox(page_size=1000, event_polls=1))


@pytest.fixture
def vpp_config(orchard_config, vpp_sandbox, smtp_sink):
    """The Orchard configuration with the vpp service pointed at the sandbox and the SMTP sink."""
    settings = orchard_config["SERVICES"]["vpp"]
    settings.update(
        vpp_url=vpp_sandbox.api_url, mdm_id="orchard-test", mdm_name="Orchard Test",
        public_url=f"http://{settings['http_address']}", apple_poll_interval=0.02, apple_busy_backoff=0.01,
        smtp_host=smtp_sink.host, smtp_port=smtp_sink.port, mail_from="apps@school.example",
    )
    return orchard_config


@pytest.fixture
def vpp_runner(runner_factory, vpp_config):
    from services.vpp.service import VppService

    runner = runner_factory(vpp_config, VppService)
    runner.start()
    return runner
