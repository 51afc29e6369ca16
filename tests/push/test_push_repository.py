"""The push tables on SQLite and PostgreSQL, migrated as the service migrates them."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from services.push.adapters.repository import PushRepository
from services.push.domain.certificates import read_pem_certificate
from shared.errors import NotFound
from shared.green import spawn
from shared.migrations import upgrade
from shared.storage import create_engine_for
from tests.conftest import postgres_database
from tests.waiting import wait_for

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


def enroll_at(seconds: int, token: str):
    return lambda repository: repository.enroll_device(
        {**device("RACE", "com.apple.mgmt.External.school", token=token), "enrolled_at": NOW + timedelta(seconds=seconds)})


def remove_at(seconds: int):
    return lambda repository: repository.remove_device("RACE", NOW + timedelta(seconds=seconds))


@pytest.mark.parametrize("before, first, second, expected_token", [
    # a check-out handled while the device's first enrollment is uncommitted still removes it
    ([], enroll_at(1, "aa" * 32), remove_at(2), None),
    # of two enrollments at once, the newer token stays, whichever commits first
    ([enroll_at(0, "00" * 32)], enroll_at(2, "bb" * 32), enroll_at(1, "aa" * 32), "bb" * 32),
    ([], enroll_at(2, "bb" * 32), enroll_at(1, "aa" * 32), "bb" * 32),
    # two check-outs at once both record theirs (no duplicate removal row)
    ([enroll_at(0, "00" * 32)], remove_at(1), remove_at(2), None),
], ids=["check-out during the first enrollment", "older token second", "older first enrollment second",
        "two check-outs"])
def test_changes_to_one_device_at_once_on_postgresql_apply_as_if_one_after_the_other(
        before, first, second, expected_token):
    """Two handlers (two queues, or two replicas) writing one device: the second waits for the first's commit."""
    with postgres_database() as url:
        engine = create_engine_for(url)
        upgrade(engine, "services.push.migrations")
        try:
            with Session(engine) as setup:
                for change in before:
                    change(PushRepository(setup))
                setup.commit()
            with Session(engine) as one, Session(engine) as other:
                first(PushRepository(one))  # not committed yet
                racing = spawn(lambda: (second(PushRepository(other)), other.commit()))
                wait_for(lambda: racing.dead or _waiting_for_a_lock(engine), what="the second change to run or wait")
                one.commit()
                racing.wait()
            with Session(engine) as check:
                stored = PushRepository(check).push_targets(["RACE"]).get("RACE")
                assert (stored.push_token if stored else None) == expected_token
        finally:
            engine.dispose()


def _waiting_for_a_lock(engine) -> bool:
    with engine.connect() as connection:
        return bool(connection.execute(sa.text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )).scalar_one())
