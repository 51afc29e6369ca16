"""The push tables on SQLite and PostgreSQL, migrated as the service migrates them."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy.orm import Session

from services.push.adapters.repository import PushRepository
from services.push.domain.certificates import read_pem_certificate
from shared.errors import NotFound
from shared.migrations import upgrade
from shared.storage import create_engine_for

pytestmark = pytest.mark.integration

NOW = datetime.now(timezone.utc).replace(microsecond=0)


@pytest.fixture
def repository(database_url):
    engine = create_engine_for(database_url)
    upgrade(engine, "services.push.migrations")
    with Session(engine) as session:
        yield PushRepository(session)
    engine.dispose()


def device(udid: str, topic: str, token: str = "ab" * 32) -> dict:
    return {"udid": udid, "topic": topic, "serial_number": f"SN-{udid}", "push_token": token,
            "push_magic": f"magic-{udid}", "enrolled_at": NOW}


def test_certificates_and_devices_round_trip(repository, issue_push):
    parsed = read_pem_certificate(issue_push().certificate_pem)
    certificate_id = repository.add_certificate(parsed, "sealed", NOW)
    row = repository.certificate(certificate_id)
    assert (row.topic, row.serial_number, row.not_after) == (parsed.topic, parsed.serial_number, parsed.not_after)
    assert repository.certificate_by_topic(parsed.topic).id == certificate_id
    with pytest.raises(NotFound, match="no push certificate 99"):
        repository.certificate(99)

    for number in range(1500):  # more than one batch
        repository.enroll_device(device(f"D{number:04d}", parsed.topic))
    repository.enroll_device(device("OTHER", "com.apple.mgmt.External.other"))
    assert repository.device_counts() == {parsed.topic: 1500, "com.apple.mgmt.External.other": 1}

    udids = [f"D{number:04d}" for number in range(1500)]
    targets = repository.push_targets(udids + ["MISSING"])
    assert len(targets) == 1500 and targets["D0001"].push_magic == "magic-D0001"

    results = [{"udid": udid, "push_token": "ab" * 32, "outcome": "delivered", "disable_reason": None}
               for udid in udids]
    results[7] = {"udid": "D0007", "push_token": "ab" * 32, "outcome": "Unregistered", "disable_reason": "Unregistered"}
    repository.record_push_results(results, NOW + timedelta(minutes=1))
    rows = {row.udid: row for row in repository.devices_of_topic(parsed.topic)}
    assert rows["D0007"].push_disabled_reason == "Unregistered" and rows["D0007"].last_push_result == "Unregistered"
    assert rows["D0008"].push_disabled_reason is None and rows["D0008"].last_push_at == NOW + timedelta(minutes=1)

    # a later delivered result keeps the device disabled; only a new enrollment enables it again
    repository.record_push_results(
        [{"udid": "D0007", "push_token": "ab" * 32, "outcome": "delivered", "disable_reason": None}], NOW)
    assert repository.push_targets(["D0007"])["D0007"].push_disabled_reason == "Unregistered"
    repository.enroll_device(device("D0007", parsed.topic, token="cd" * 32))
    assert repository.push_targets(["D0007"])["D0007"].push_disabled_reason is None

    assert repository.remove_device("D0000", NOW) and not repository.remove_device("D0000", NOW)
    assert repository.device_count(parsed.topic) == 1499


def test_a_late_unregistered_for_an_old_token_leaves_the_re_enrolled_device_alone(repository):
    """A device that enrolled again while its old token was pushed keeps its new token enabled."""
    topic = "com.apple.mgmt.External.school"
    repository.enroll_device(device("U1", topic, token="aa" * 32))
    pushed = repository.push_targets(["U1"])["U1"]
    repository.enroll_device({**device("U1", topic, token="bb" * 32), "enrolled_at": NOW + timedelta(seconds=5)})
    repository.record_push_results([{"udid": "U1", "push_token": pushed.push_token, "outcome": "Unregistered",
                                     "disable_reason": "Unregistered"}], NOW + timedelta(seconds=6))
    stored = repository.push_targets(["U1"])["U1"]
    assert (stored.push_token, stored.push_disabled_reason) == ("bb" * 32, None)
    (row,) = repository.devices_of_topic(topic)
    assert row.last_push_result is None  # the answer was about a token the device no longer has

    repository.record_push_results([{"udid": "U1", "push_token": "bb" * 32, "outcome": "Unregistered",
                                     "disable_reason": "Unregistered"}], NOW + timedelta(seconds=7))
    assert repository.push_targets(["U1"])["U1"].push_disabled_reason == "Unregistered"
