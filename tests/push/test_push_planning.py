"""Which requested devices are pushed, and the labels push outcomes get."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from services.push.domain.pushes import MAX_DEVICES_PER_CALL, PushTarget, outcome, plan_pushes, requested_udids
from shared.errors import ValidationError

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)
GOOD, EXPIRED = "com.apple.mgmt.External.good", "com.apple.mgmt.External.expired"


def target(udid: str, topic: str = GOOD, disabled: str | None = None) -> PushTarget:
    return PushTarget(udid, topic, "ab" * 32, f"magic-{udid}", disabled)


def test_devices_are_grouped_by_topic_and_every_skip_is_explained():
    devices = {t.udid: t for t in [
        target("A"), target("B"), target("C", disabled="Unregistered"), target("D", topic=EXPIRED),
        target("E", topic="com.apple.mgmt.External.unknown"),
    ]}
    plan = plan_pushes(["A", "B", "C", "D", "E", "F"], devices,
                       {GOOD: NOW + timedelta(days=1), EXPIRED: NOW - timedelta(seconds=1)}, NOW)
    assert plan.by_topic == {GOOD: [devices["A"], devices["B"]]}
    assert plan.skipped == {"C": "push_disabled:Unregistered", "D": "certificate_expired",
                            "E": "no_certificate_for_topic", "F": "unknown_device"}


def test_requested_udids_are_distinct_and_trimmed():
    assert requested_udids(["A", " B ", "A"]) == ["A", "B"]


@pytest.mark.parametrize("value, message", [
    ([], "non-empty list"), ("A", "non-empty list"), (None, "non-empty list"),
    (["A", 3], "non-empty string"), (["A", " "], "non-empty string"),
    (["X"] * (MAX_DEVICES_PER_CALL + 1), "at most 10000"),
])
def test_requested_udids_refuse_bad_input(value, message):
    with pytest.raises(ValidationError, match=message):
        requested_udids(value)


@pytest.mark.parametrize("status, reason, label", [
    (200, None, "delivered"), (410, "Unregistered", "Unregistered"), (None, "connection lost", "connection_failed"),
    (502, None, "HTTP 502"),
])
def test_outcome_labels(status, reason, label):
    assert outcome(status, reason) == label
