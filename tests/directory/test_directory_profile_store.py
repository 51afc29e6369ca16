"""Stored LDAP profiles, migrated as the service migrates them: ids never handed out twice, changes one at a time."""
import eventlet
import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.orm import Session

from services.directory.adapters.profiles import ProfileRepository
from services.directory.adapters.tables import metadata
from services.directory.domain.profile import apply_changes, parse_profile
from shared.migrations import alembic_config, upgrade
from shared.secrets import SecretBox
from shared.storage import create_engine_for, utc_now
from tests.conftest import TEST_SECRET_KEY, postgres_database
from tests.directory.test_directory_profile import request
from tests.waiting import wait_for

pytestmark = pytest.mark.integration
MIGRATIONS = "services.directory.migrations"


def profiles(session: Session) -> ProfileRepository:
    return ProfileRepository(session, SecretBox(TEST_SECRET_KEY))


def test_a_deleted_profile_s_id_is_never_given_to_a_new_one(database_url):
    """Its id names its users' source in the roster (``ldap:<id>``): a new profile taking it over would delete
    them as missing from its directory."""
    engine = create_engine_for(database_url)
    try:
        upgrade(engine, MIGRATIONS)
        with Session(engine) as session:
            repo = profiles(session)
            first, second = (repo.add(parse_profile(request(name=name)), "admin").id for name in ("North", "South"))
            repo.delete(second)
            session.commit()
            assert repo.add(parse_profile(request(name="East")), "admin").id == second + 1
    finally:
        engine.dispose()


def test_a_database_from_before_keeps_the_ids_its_audit_log_names_out_of_use(tmp_path):
    """On SQLite the ids of profiles deleted before the change are read from the audit log."""
    engine = create_engine_for(f"sqlite:///{tmp_path}/directory.db")
    try:
        with engine.begin() as connection:
            command.upgrade(alembic_config(MIGRATIONS, connection), "3e14a30f7c35")  # before ids were kept
            command.upgrade(alembic_config(MIGRATIONS, connection), "kernel@head")
        with Session(engine) as session:
            repo = profiles(session)
            kept = repo.add(parse_profile(request(name="North")), "admin").id
            session.execute(metadata.tables["audit_log"].insert().values(
                at=utc_now(), actor_id="admin", actor_role="administrator", action="ldap_profile.deleted",
                target="ldap_profile:7", details={}))
            session.commit()
        upgrade(engine, MIGRATIONS)
        with Session(engine) as session:
            repo = profiles(session)
            assert repo.get(kept).profile.name == "North"  # the table rebuilt with its rows
            assert repo.add(parse_profile(request(name="South")), "admin").id == 8
    finally:
        engine.dispose()


def test_two_changes_to_one_profile_at_once_both_stay():
    """Each change writes back the whole profile: the second waits for the first, then changes what it wrote."""
    with postgres_database() as url:
        engine = create_engine_for(url)
        try:
            upgrade(engine, MIGRATIONS)
            with Session(engine) as session:
                profile_id = profiles(session).add(parse_profile(request()), "admin").id
                session.commit()
            with (Session(engine) as first, Session(engine) as second,
                  engine.connect().execution_options(isolation_level="AUTOCOMMIT") as watch):
                profiles(first).update(profile_id, lambda p: apply_changes(p, {"sync": {"daily_sync_time": "05:30"}}))
                holder = first.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
                later = eventlet.spawn(lambda: (profiles(second).update(
                    profile_id, lambda p: apply_changes(p, {"port": 3269})), second.commit()))
                try:
                    wait_for(lambda: watch.execute(sa.text(
                        "SELECT count(*) FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid))"),
                        {"pid": holder}).scalar_one(), timeout=5, what="the second change to wait for the first")
                finally:
                    first.commit()
                    later.wait()
            with Session(engine) as session:
                stored = profiles(session).get(profile_id).profile
                assert (stored.sync.daily_sync_time, stored.connection.port) == ("05:30", 3269)
        finally:
            engine.dispose()
