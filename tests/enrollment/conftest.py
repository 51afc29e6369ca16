"""Fixtures for the enrollment tests: a DEP sandbox on a real socket, keys, tokens, clients."""
import logging
from datetime import datetime, timezone
from typing import Any

import httpx
import pytest

from apple_sandbox.dep import DepSandbox
from apple_sandbox.server import serve_wsgi
from services.enrollment.adapters.dep_client import DepClient
from services.enrollment.adapters.token_crypto import decrypt_enveloped_data, generate_key_and_certificate
from services.enrollment.domain.server_tokens import OAuthCredentials, cms_from_token_file, credentials_from_plaintext
from services.roster.service import RosterService


class SandboxAdmin:
    """Drives the DEP sandbox's ``/_sandbox`` routes over HTTP, as a test would drive Apple."""

    def __init__(self, url: str):
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=30)

    def post(self, path: str, body: dict | None = None) -> Any:
        response = self.http.post(f"/_sandbox/{path}", json=body or {})
        assert response.status_code in (200, 201), response.text
        return response.json()

    def create_server(self, certificate_pem: bytes, **options: Any) -> dict:
        return self.post("servers", {"certificate_pem": certificate_pem.decode(), **options})

    def server(self, server_uuid: str, path: str, body: dict | None = None) -> Any:
        return self.post(f"servers/{server_uuid}/{path}", body)

    def script(self, endpoint: str, *responses: Any) -> None:
        self.post("failures", {"endpoint": endpoint, "responses": list(responses)})

    def counts(self) -> dict[str, int]:
        return self.http.get("/_sandbox/requests").json()["counts"]

    def device(self, server_uuid: str, serial: str) -> dict | None:
        response = self.http.get(f"/_sandbox/servers/{server_uuid}/devices/{serial}")
        return response.json() if response.status_code == 200 else None


@pytest.fixture
def dep_sandbox():
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    running = serve_wsgi(DepSandbox())
    yield SandboxAdmin(running.url)
    running.stop()


@pytest.fixture(scope="session")
def token_key() -> tuple[bytes, bytes]:
    """(private key PEM, certificate PEM) as create_server_token makes them."""
    return generate_key_and_certificate("Orchard test MDM")


@pytest.fixture(scope="session")
def other_key() -> tuple[bytes, bytes]:
    return generate_key_and_certificate("Another MDM")


def decrypt_token(p7m: str | bytes, key_pem: bytes) -> OAuthCredentials:
    return credentials_from_plaintext(decrypt_enveloped_data(cms_from_token_file(p7m), key_pem), now=datetime.now(timezone.utc))


@pytest.fixture
def mdm_server(dep_sandbox: SandboxAdmin, token_key) -> dict:
    """A fresh MDM server in the sandbox, with its token decrypted by our own code."""
    created = dep_sandbox.create_server(token_key[1])
    return {**created, "credentials": decrypt_token(created["p7m"], token_key[0])}


@pytest.fixture
def roster_locations(runner_factory, orchard_config, rpc_as):
    """The roster service running; ``roster_locations("north", "south")`` gives it those locations."""
    runner_factory(orchard_config, RosterService).start()

    def add(*location_ids: str) -> None:
        batch = {"source": "api", "locations": [{"location_id": i, "name": i.title()} for i in location_ids]}
        with rpc_as() as rpc:
            rpc.roster.apply_plan(rpc.roster.preview_records(batch)["plan_id"])
    return add


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def dep_client(dep_sandbox: SandboxAdmin, mdm_server: dict, sleeps: list[float]):
    client = DepClient(mdm_server["credentials"], base_url=dep_sandbox.url, sleep=sleeps.append)
    yield client
    client.close()


@pytest.fixture
def read_p7m(token_key):
    """Decrypt a ``.p7m`` issued for ``token_key`` with our own code."""
    return lambda p7m: decrypt_token(p7m, token_key[0])
