"""Helpers for the fault scenarios: raw events on the real broker and a look into a service's database."""
from __future__ import annotations

from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from nameko.standalone.events import event_dispatcher

from shared.contracts.base import Event
from shared.storage import create_engine_for
from tests.vpp.conftest import vpp_config, vpp_sandbox  # noqa: F401  the vpp tests' sandbox fixtures


def publish(config: dict, *events: Event) -> None:
    """Publish events exactly as their service's relay does (same exchange, routing key and payload)."""
    dispatch = event_dispatcher(config)
    for event in events:
        dispatch(event.SOURCE, event.TYPE, event.to_payload())


def publish_payload(config: dict, source: str, event_type: str, payload: Any) -> None:
    event_dispatcher(config)(source, event_type, payload)


def district(users: int) -> dict:
    """An ImportBatch (as a dict) of one location and ``users`` students with Managed Apple IDs."""
    return {"source": "api", "locations": [{"location_id": "north", "name": "North"}], "users": [
        {"user_id": f"s{i:05d}", "user_type": "student", "first_name": "Sam", "last_name": f"S{i}",
         "email": f"s{i}@school.example", "managed_apple_id": f"s{i}@north.appleid.example", "locations": ["north"]}
        for i in range(users)]}


def query(config: dict, service: str, statement: str) -> list[sa.Row]:
    engine = create_engine_for(config["SERVICES"][service]["database_url"])
    try:
        with engine.connect() as connection:
            return list(connection.execute(sa.text(statement)))
    finally:
        engine.dispose()


def execute(config: dict, service: str, statement: str) -> None:
    engine = create_engine_for(config["SERVICES"][service]["database_url"])
    try:
        with engine.begin() as connection:
            connection.execute(sa.text(statement))
    finally:
        engine.dispose()


def connect_server_token(rpc: Any, dep_sandbox: Any) -> tuple[str, dict]:
    """A server token uploaded for a new MDM server in the DEP sandbox: (token id, the sandbox's server)."""
    created = rpc.enrollment.create_server_token("Springfield MDM")
    server = dep_sandbox.create_server(created["public_key_pem"].encode())
    return rpc.enrollment.upload_server_token(created["id"], server["p7m"])["id"], server


def sync_runs(config: dict) -> list[sa.Row]:
    return query(config, "enrollment", "select id, kind, pages, added, error, finished_at from sync_runs order by id")


def device_count(config: dict) -> int:
    """The ADE devices enrollment stored; fails the test if one is stored twice."""
    (total, distinct), = query(config, "enrollment", "select count(*), count(distinct serial_number) from dep_devices")
    assert total == distinct, "a device stored twice"
    return total


def metric_value(config: dict, service: str, sample: str) -> float:
    """One sample's value from the service's /metrics (0 if absent). The registry is per process, so tests
    compare values before and after."""
    text = httpx.get(f"http://127.0.0.1:{config['SERVICES'][service]['metrics_port']}/metrics", timeout=10).text
    return next((float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(sample + " ")), 0.0)


@pytest.fixture
def fast_retries(orchard_config: dict) -> dict:
    """Handler retries in tenths of a second instead of minutes."""
    orchard_config["EVENT_RETRY_DELAYS"] = [0.1, 0.2]
    return orchard_config


@pytest.fixture
def dep_sandbox():
    from apple_sandbox.dep import DepSandbox
    from apple_sandbox.server import serve_wsgi
    from tests.enrollment.conftest import SandboxAdmin

    running = serve_wsgi(DepSandbox())
    yield SandboxAdmin(running.url)
    running.stop()


@pytest.fixture
def broker_node(tmp_path):
    """A RabbitMQ node of this test's own (see broker_node.py), stopped afterwards."""
    from tests.reliability.broker_node import BrokerNode, server_script

    directory = tmp_path / "rabbitmq"
    directory.mkdir()
    node = BrokerNode(server_script(), directory)
    node.start()
    yield node
    node.stop()
