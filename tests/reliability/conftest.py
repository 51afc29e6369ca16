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
