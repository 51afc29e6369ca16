"""Fault 5: a poison message and a failing handler in a real service are parked, metered and replayable,
and the consumer keeps handling what comes after them."""
import os

import pytest
import yaml
from click.testing import CliRunner

from orchard_cli.main import cli as orchard
from services.push.service import PushService
from shared.contracts.enrollment import DeviceEnrolled
from shared.contracts.subscriptions import SUBSCRIPTIONS
from tests.reliability.conftest import execute, metric_value, publish, publish_payload, query
from tests.shared.test_kernel_runtime import peek
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

DEAD_LETTERS = 'orchard_dead_letters_total{handler="on_device_enrolled",service="push"}'
QUEUE = next(s.queue_name for s in SUBSCRIPTIONS if s.service == "push" and s.handler == "on_device_enrolled")


def enrolled(udid: str) -> DeviceEnrolled:
    return DeviceEnrolled(udid=udid, serial_number=f"SER-{udid}", topic="com.apple.mgmt.External.poison",
                          push_token="ab" * 32, push_magic=f"magic-{udid}")


def push_udids(config) -> list[str]:
    return sorted(row.udid for row in query(config, "push", "select udid from push_devices"))


def orchard_cli(config, tmp_path, *args: str):
    path = tmp_path / "cli-config.yaml"
    path.write_text(yaml.safe_dump({"AMQP_URI": config["AMQP_URI"]}))
    result = CliRunner().invoke(orchard, list(args), env={**os.environ, "ORCHARD_CONFIG": str(path)})
    assert result.exit_code == 0, result.output
    return result.output


def test_poison_and_failing_events_are_parked_metered_and_replayed(runner_factory, fast_retries, tmp_path):
    config = fast_retries
    runner_factory(config, PushService).start()
    parked_before = metric_value(config, "push", DEAD_LETTERS)  # one registry per process

    # a malformed payload between two good events: parked at once, the next one still handled
    publish(config, enrolled("d1"))
    publish_payload(config, "enrollment", "DeviceEnrolled", {"udid": "d-bad", "topic": 42, "occurred_at": "yesterday"})
    publish(config, enrolled("d2"))
    wait_for(lambda: push_udids(config) == ["d1", "d2"], what="the good events around the poison handled")
    wait_for(lambda: len(peek(config, QUEUE + ".dead-letters")) == 1, what="the poison message parked")

    # the database breaks under the handler: retried twice, then parked, not dropped
    execute(config, "push", "alter table push_devices rename to push_devices_away")
    publish(config, enrolled("d3"))
    wait_for(lambda: len(peek(config, QUEUE + ".dead-letters")) == 2, what="the failing event parked after retries")
    execute(config, "push", "alter table push_devices_away rename to push_devices")  # the operator fixes the cause
    publish(config, enrolled("d4"))
    wait_for(lambda: push_udids(config) == ["d1", "d2", "d4"], what="the queue flowing after the failures")

    parked = {m["payload"].get("udid"): m["headers"] for m in peek(config, QUEUE + ".dead-letters")}
    assert parked["d-bad"]["x-orchard-attempts"] == 1 and parked["d-bad"]["x-orchard-error"].startswith("ValidationError")
    assert parked["d3"]["x-orchard-attempts"] == 3 and "push_devices" in parked["d3"]["x-orchard-error"]
    assert metric_value(config, "push", DEAD_LETTERS) - parked_before == 2

    listed = orchard_cli(config, tmp_path, "events", "dead-letters", "list", "--queue", QUEUE)
    assert "DeviceEnrolled" in listed and "ValidationError" in listed and "push_devices" in listed
    assert "replayed 2 event(s)" in orchard_cli(config, tmp_path, "events", "dead-letters", "replay", "--queue", QUEUE)
    wait_for(lambda: push_udids(config) == ["d1", "d2", "d3", "d4"], what="the replayed event handled")
    wait_for(lambda: [m["payload"].get("udid") for m in peek(config, QUEUE + ".dead-letters")] == ["d-bad"],
             what="the still-malformed payload parked again")
    assert query(config, "push", "select count(*) from inbox where handler = 'on_device_enrolled'")[0][0] == 4

