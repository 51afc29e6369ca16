"""A server token deleted while a sync writes a page, or an assignment records its results, on PostgreSQL.

The delete takes the token's row, then its sync runs and devices. Every writer of those takes the token's row first
too, so a delete that meets a writer waits for it at that one row, before it holds anything the writer needs: the
writer finishes (saving its cursor on the token row), then the delete removes everything, including what that writer
just stored; neither is aborted as a deadlock. A writer coming after the delete stops and stores nothing.
"""
import eventlet
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from services.enrollment.adapters import tables
from services.enrollment.adapters.device_store import DeviceRepository, TokenCursorStore
from services.enrollment.adapters.token_repository import SyncRunRepository, TokenRepository
from services.enrollment.domain.device_sync import CursorState, SyncCounts
from services.enrollment.domain.devices import DepDevice
from shared.errors import NotFound
from shared.storage import create_engine_for, utc_now
from tests.conftest import postgres_database
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def page_of_devices(session: Session, run_id: int) -> None:
    """A sync's page up to its cursor: stored devices changed, new ones added, the run's progress shown."""
    devices = DeviceRepository(session, "t1", assigned_by="system:enrollment")
    devices.put_many([DepDevice(f"S{i:02d}", model="iPad Pro") for i in range(5, 15)], None)
    SyncRunRepository(session).progress(run_id, SyncCounts(added=5, modified=5, pages=1))


def page_of_repeats(session: Session, run_id: int) -> None:
    """A sync's page with nothing new: only the run's progress before the cursor."""
    SyncRunRepository(session).progress(run_id, SyncCounts(pages=1))


def assignment_results(session: Session, run_id: int) -> None:
    """``assign_profile``: the devices' results, before the token's next sync is brought forward to the retry."""
    devices = DeviceRepository(session, "t1", assigned_by="admin@school.example")
    devices.record_assign_results("P1", {"S01": "SUCCESS", "S02": "THROTTLED"}, utc_now())


def save_cursor(session: Session) -> None:
    TokenCursorStore(session, "t1", session.commit).save(CursorState("c2", "sync"))


def bring_next_sync_forward(session: Session) -> None:
    TokenRepository(session).update("t1", next_sync_at=utc_now())
    session.commit()


def waiting_for(watch: sa.Connection, pid: int) -> list[tuple[int, str]]:
    """(pid, statement) of each backend waiting for a lock that backend ``pid`` holds."""
    return watch.execute(sa.text("SELECT pid, query FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid))"),
                         {"pid": pid}).all()


def locks_on(watch: sa.Connection, pid: int, table: str) -> list[str]:
    """The locks backend ``pid`` holds (or waits for) on ``table`` itself: even reading it takes one."""
    return watch.execute(sa.text("SELECT mode FROM pg_locks WHERE pid = :pid AND relation = CAST(:table AS regclass) "
                                 "ORDER BY mode"), {"pid": pid, "table": table}).scalars().all()


def rows_of(session: Session, table: sa.Table) -> int:
    return session.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


@pytest.mark.parametrize(("writes", "then"), [
    (page_of_devices, save_cursor),
    (page_of_repeats, save_cursor),
    (assignment_results, bring_next_sync_forward),
], ids=["sync page", "sync page of repeats", "profile assignment"])
def test_a_token_deleted_beside_a_writer_waits_for_it_at_the_token_row_and_leaves_nothing(writes, then):
    with postgres_database() as url:
        engine = create_engine_for(url)
        tables.metadata.create_all(engine)
        with Session(engine) as setup:
            TokenRepository(setup).add(id="t1", name="North", locations=None, certificate_pem="-",
                                       sealed_private_key="-", created_at=utc_now(), created_by="test")
            stored = [DepDevice(f"S{i:02d}") for i in range(10)]
            DeviceRepository(setup, "t1", assigned_by="test").put_many(stored, None)
            run_id = SyncRunRepository(setup).start("t1", "manual", "sync")
            setup.commit()

        with (engine.connect().execution_options(isolation_level="AUTOCOMMIT") as watch, Session(engine) as writer,
              Session(engine) as deleter):
            writes(writer, run_id)
            writer_pid = writer.execute(sa.select(sa.func.pg_backend_pid())).scalar_one()
            deletion = eventlet.spawn(lambda: (TokenRepository(deleter).delete("t1"), deleter.commit()))
            try:
                [(deleter_pid, statement)] = wait_for(lambda: waiting_for(watch, writer_pid), timeout=5,
                                                      what="the delete to wait for the writer")
                taken_by_delete = [lock for table in ("sync_runs", "dep_devices")
                                   for lock in locks_on(watch, deleter_pid, table)]
                then(writer)  # the writer's last step, on the token row, goes through
            finally:
                writer.rollback()  # whatever happened, the delete is not left waiting
                deletion.wait()  # and it was not aborted as a deadlock either
            assert statement.startswith("DELETE FROM server_tokens")  # the delete waited at the token's row,
            assert taken_by_delete == []  # holding none of the runs or devices the writer had written, nor waiting

            left = [rows_of(deleter, table) for table in (tables.server_tokens, tables.sync_runs, tables.dep_devices)]
            assert left == [0, 0, 0]  # the devices the writer added just before are gone too
            with pytest.raises(NotFound, match="deleted meanwhile"):  # a writer after the delete stores nothing
                writes(writer, run_id)
            writer.rollback()
        engine.dispose()
