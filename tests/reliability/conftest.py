"""Helpers for the fault scenarios: raw events on the real broker and a look into a service's database."""
from __future__ import annotations

from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from nameko.standalone.events import event_dispatcher

from shared.contracts.base import Event


def publish(config: dict, *events: Event) -> None:
    """Publish events exactly as their service's relay does (same exchange, routing key and payload)."""
    dispatch = event_dispatcher(config)
    for event in events:
        dispatch(event.SOURCE, event.TYPE, event.to_payload())


def publish_payload(config: dict, source: str, event_type: str, payload: Any) -> None:
    event_dispatcher(config)(source, event_type, payload)


def query(config: dict, service: str, statement: str) -> list[sa.Row]:
    engine = sa.create_engine(config["SERVICES"][service]["database_url"])
    try:
        with engine.connect() as connection:
            return list(connection.execute(sa.text(statement)))
    finally:
        engine.dispose()


def metric_lines(config: dict, service: str, prefix: str) -> list[str]:
    text = httpx.get(f"http://127.0.0.1:{config['SERVICES'][service]['metrics_port']}/metrics", timeout=10).text
    return [line for line in text.splitlines() if line.startswith(prefix)]


@pytest.fixture
def fast_retries(orchard_config: dict) -> dict:
    """Handler retries in tenths of a second instead of minutes."""
    orchard_config["EVENT_RETRY_DELAYS"] = [0.1, 0.2]
    return orchard_config


@pytest.fixture
def vpp_sandbox():
    from apple_sandbox.server import serve_wsgi
    from apple_sandbox.vpp import VppSandbox
    from tests.vpp.conftest import SandboxAdmin

    running = serve_wsgi(VppSandbox(page_size=1000, event_polls=1))
    admin = SandboxAdmin(running.url)
    yield admin
    admin.close()
    running.stop()


@pytest.fixture
def vpp_config(orchard_config: dict, vpp_sandbox) -> dict:
    """The configuration with the vpp service pointed at the Apps and Books sandbox."""
    settings = orchard_config["SERVICES"]["vpp"]
    settings.update(vpp_url=vpp_sandbox.api_url, mdm_id="orchard-test", mdm_name="Orchard Test",
                    public_url=f"http://{settings['http_address']}", apple_poll_interval=0.02,
                    apple_busy_backoff=0.01, smtp_host="127.0.0.1", smtp_port=1, mail_from="apps@school.example")
    return orchard_config
