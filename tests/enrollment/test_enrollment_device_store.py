"""The sync's database ports on SQLite and PostgreSQL, and reading pages ahead."""
from datetime import timedelta

import eventlet
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

from services.enrollment.adapters import tables
from services.enrollment.adapters.dep_ports import read_ahead
from services.enrollment.adapters.device_store import DeviceEventOutbox, DeviceRepository, TokenCursorStore
from services.enrollment.adapters.token_repository import TokenRepository
from services.enrollment.domain.device_sync import CursorState
from services.enrollment.domain.devices import DepDevice
from shared.contracts.enrollment import DevicesAssigned
from shared.errors import NotFound
from shared.storage import create_engine_for, utc_now


@pytest.mark.integration
def test_device_repository_round_trip(database_url):
    engine = create_engine_for(database_url)
    tables.metadata.create_all(engine)
    session = sessionmaker(engine)()
    session.execute(tables.server_tokens.insert().values(id="t1", name="T", certificate_pem="-", sealed_private_key="-",
                                                         created_at=utc_now(), created_by="test"))
    store = DeviceRepository(session, "t1", assigned_by="system:enrollment")
    first = store.put_many([DepDevice(f"S{i:04d}", model='iPad "Air"', description=None) for i in range(1000)], "gen1")
    assert first == {f"S{i:04d}" for i in range(1000)}
    # ten serials again in the same fetch: on PostgreSQL the empty token's plain insert fails and the page is
    # upserted, and the first page (not committed yet) survives that
    assert store.put_many([DepDevice(f"S{i:04d}") for i in range(990, 1500)], "gen1") == {f"S{i:04d}" for i in range(1000, 1500)}
    assert store.put_many([DepDevice("S2000")], "gen1") == {"S2000"}
    assert store.put_many([DepDevice("S0001", model="iPad Pro", op_date="2026-02-01T00:00:00Z")], None) == set()
    known = store.get_many(["S0001", "S0002", "NOPE"])
    assert set(known) == {"S0001", "S0002"} and known["S0001"].op_date == "2026-02-01T00:00:00Z"
    row = session.execute(tables.dep_devices.select().where(tables.dep_devices.c.serial_number == "S0001")).one()
    assert (row.model, row.seen_generation) == ("iPad Pro", "gen1")  # no generation given: the fetch's mark stays

    store.put_many([DepDevice(f"S{i:04d}") for i in range(10)], "gen2")
    assert sorted(store.remove_unseen("gen2")) == [f"S{i:04d}" for i in range(10, 1500)] + ["S2000"]

    retry_at = utc_now() + timedelta(minutes=1)
    store.record_assign_results("P1", {"S0000": "SUCCESS", "S0001": "THROTTLED", "S0002": "NOT_ACCESSIBLE"}, retry_at)
    assert store.due_profile_retries(utc_now(), 10) == []
    assert store.due_profile_retries(retry_at + timedelta(seconds=1), 10) == [("S0001", "P1")]
    assert store.next_profile_retry() == retry_at
    row = session.execute(tables.dep_devices.select().where(tables.dep_devices.c.serial_number == "S0000")).one()
    assert (row.profile_status, row.profile_uuid, row.assigned_by) == ("assigned", "P1", "system:enrollment")
    store.delete_many(["S0000"])
    assert "S0000" not in store.get_many(["S0000"])

    commits = []
    cursors = TokenCursorStore(session, "t1", lambda: commits.append(session.commit()))
    assert cursors.load() is None
    cursors.save(CursorState("c1", "fetch", "gen3"))
    assert cursors.load() == CursorState("c1", "fetch", "gen3") and len(commits) == 1

    TokenRepository(session).delete("t1")  # devices have no foreign key: the token's delete removes them
    assert session.execute(sa.select(sa.func.count()).select_from(tables.dep_devices)).scalar_one() == 0
    with pytest.raises(NotFound, match="deleted meanwhile"):  # a sync still running stops at its next write
        store.put_many([DepDevice("LATE1")], "gen3")
    with pytest.raises(NotFound, match="deleted during its device sync"):  # or at its next cursor
        cursors.save(CursorState("c2", "fetch", "gen3"))
    assert len(commits) == 1
    session.close()
    engine.dispose()


def test_read_ahead_downloads_the_next_page_while_the_current_one_is_used():
    started = []

    def pages():
        for number in range(3):
            started.append(number)
            yield number

    seen = []
    for page in read_ahead(pages()):
        eventlet.sleep(0)  # let the read-ahead run
        seen.append((page, list(started)))
    assert seen == [(0, [0, 1]), (1, [0, 1, 2]), (2, [0, 1, 2])]


def test_read_ahead_raises_the_download_error_to_the_consumer_and_nowhere_else(capfd):
    def failing():
        yield 1
        raise RuntimeError("EXPIRED_CURSOR")

    reader = read_ahead(failing())
    assert next(reader) == 1
    with pytest.raises(RuntimeError, match="EXPIRED_CURSOR"):
        next(reader)
    assert "Traceback" not in capfd.readouterr().err  # eventlet's hub prints what ends a plain green thread


@pytest.mark.integration
def test_tokens_due_for_the_scheduled_sync(database_url):
    engine = create_engine_for(database_url)
    tables.metadata.create_all(engine)
    session = sessionmaker(engine)()
    now = utc_now()
    base = dict(certificate_pem="-", sealed_private_key="-", created_at=now, created_by="test",
                sealed_credentials="sealed", access_token_expiry=now + timedelta(days=100))
    tokens = {
        "never-synced": {},
        "due": {"next_sync_at": now - timedelta(minutes=1)},
        "not-yet": {"next_sync_at": now + timedelta(hours=2)},
        "terms": {"next_sync_at": now - timedelta(minutes=1), "apple_refusal": "terms_not_accepted"},
        "revoked": {"next_sync_at": now - timedelta(minutes=1), "apple_refusal": "revoked_or_invalid"},
        "expired": {"access_token_expiry": now - timedelta(days=1)},
        "not-uploaded": {"sealed_credentials": None},
    }
    for token_id, values in tokens.items():
        session.execute(tables.server_tokens.insert().values(id=token_id, name=token_id, **{**base, **values}))
    assert sorted(TokenRepository(session).due_for_sync(now)) == ["due", "never-synced", "terms"]
    session.close()
    engine.dispose()


def test_device_events_carry_a_page_of_devices_each():
    published = []
    events = DeviceEventOutbox(lambda *batch: published.extend(batch), "t1")
    events.assigned([DepDevice(f"S{i:04d}", model="iPad", device_family="iPad", os="iOS") for i in range(2500)])
    events.removed([f"R{i:04d}" for i in range(1001)])
    assert [type(e).__name__ for e in published] == ["DevicesAssigned"] * 3 + ["DevicesRemoved"] * 2
    assert [len(e.devices) for e in published[:3]] == [1000, 1000, 500]
    assert [len(e.serial_numbers) for e in published[3:]] == [1000, 1]
    payload = published[2].to_payload()
    assert payload["devices"][-1] == {"serial_number": "S2499", "model": "iPad", "device_family": "iPad", "os": "iOS"}
    assert DevicesAssigned.from_payload(payload) == published[2] and payload["v"] == DevicesAssigned.VERSION
