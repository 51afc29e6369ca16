"""A token's sync and a user's retirement lock the same rows on PostgreSQL, and in the same order: the token's assets,
then its invites. A sync that meets a retirement holding the assets waits there, before it has read or locked any
invite, so the retirement goes on to the invites and commits, and the sync then finishes; neither is aborted as a
deadlock."""
import eventlet
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from services.vpp.adapters import tables as t
from services.vpp.adapters.apple_client import Listing
from services.vpp.adapters.repository import VppRepository
from services.vpp.operations import VppOperations
from shared.secrets import SecretBox
from shared.storage import KernelTables, UnitOfWork
from tests.conftest import TEST_SECRET_KEY, postgres_database
from tests.vpp.test_vpp_repository import token_repository
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


class AppleAfterRetiringAnn:
    """Apps and Books as the sync reads it once ann is retired there: her licence of 111 revoked, and bob registered
    with an invite code. Its own connector: ``client`` hands itself out for any sToken."""

    def client(self, stoken, reload_stoken=None):
        return self

    def assets(self):
        return Listing([{"adamId": "111", "totalCount": 5, "assignedCount": 0, "availableCount": 5,
                         "deviceAssignable": True, "revocable": True}], "v2")

    def assignments(self):
        return Listing([], "v2")

    def users(self, include_retired=False):
        return Listing([{"clientUserId": "ann", "status": "Retired"},
                        {"clientUserId": "bob", "status": "Registered", "inviteCode": "code-bob"}], "v2")

    def content_metadata(self, adam_ids, *, platform, country):
        return {}


def waiting_for(watch, pid):
    """(pid, statement) of each backend waiting for a lock that backend ``pid`` holds."""
    return watch.execute(sa.text("SELECT pid, query FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid))"),
                         {"pid": pid}).all()


def locks_on(watch, pid, table):
    """The locks backend ``pid`` holds (or waits for) on ``table`` itself: even reading it takes one."""
    return watch.execute(sa.text("SELECT mode FROM pg_locks WHERE pid = :pid AND relation = CAST(:table AS regclass) "
                                 "ORDER BY mode"), {"pid": pid, "table": table}).scalars().all()


def unlocked_invites(watch):
    """The token's invites no transaction holds locked (each taken and let go at once: ``watch`` autocommits)."""
    c = t.invites.c
    return list(watch.execute(sa.select(c.user_id).where(c.token_id == "tok").order_by(c.user_id)
                              .with_for_update(skip_locked=True)).scalars())


def test_a_sync_waits_for_a_retirements_assets_before_it_touches_any_invite():
    """The retirement is the repository's ``complete_retirements``; the sync is ``VppOperations.sync``, all of it
    apart from Apple's answers. A transaction holding ann's retirement row keeps the retirement between its asset
    locks and the invites (it takes that row in between) while the sync starts."""
    secrets = SecretBox(TEST_SECRET_KEY)
    with postgres_database() as url, token_repository(url) as (repo, session, now):
        repo.update_token("tok", sealed_stoken=secrets.seal("north-stoken"))
        repo.replace_assets("tok", [{"adamId": "111", "totalCount": 5, "assignedCount": 1, "availableCount": 4,
                                     "deviceAssignable": True, "revocable": True}], now)
        repo.replace_assignments("tok", [{"adamId": "111", "clientUserId": "ann"}])
        repo.queue_invites([{"token_id": "tok", "user_id": user_id, "method": "managed_apple_id", "name": "N",
                             "email": None, "managed_apple_id": f"{user_id}@appleid.example", "status": "pending",
                             "apple_state": "registered", "invited_at": now} for user_id in ("ann", "bob")])
        repo.request_retirements("ann", now)  # the roster deleted ann
        token = repo.token("tok")
        session.commit()
        engine = session.get_bind()
        work = UnitOfWork(sessionmaker(engine, expire_on_commit=False), KernelTables(t.metadata), lambda: None)

        def sync_tok():
            counts = VppOperations(work, AppleAfterRetiringAnn(), secrets, mailer=None).sync(token)
            work.commit()  # as the worker does when the call returns
            return counts

        with (engine.connect().execution_options(isolation_level="AUTOCOMMIT") as watch, Session(engine) as holding,
              Session(engine) as retiring):
            r = t.user_retirements.c
            holding.execute(sa.select(r.user_id).where(r.token_id == "tok", r.user_id == "ann").with_for_update())
            holder = holding.execute(sa.select(sa.func.pg_backend_pid())).scalar_one()
            # Apple retired ann: her licence of 111 is taken back here (the asset locked), then her invite revoked
            retirement = eventlet.spawn(lambda: (VppRepository(retiring).complete_retirements("tok", ["ann"]),
                                                 retiring.commit()))
            try:
                [(retirer, _)] = wait_for(lambda: waiting_for(watch, holder), timeout=5,
                                          what="the retirement to reach ann's retirement row, its asset locked")
                sync = eventlet.spawn(sync_tok)
                [(syncer, statement)] = wait_for(lambda: waiting_for(watch, retirer), timeout=5,
                                                 what="the sync to wait for a lock the retirement holds")
                assert "FROM assets" in statement and "FOR UPDATE" in statement  # the sync waits for the assets,
                assert locks_on(watch, syncer, "invites") == []  # not having read or written an invite yet,
                assert unlocked_invites(watch) == ["ann", "bob"]  # so none is locked when the retirement goes on
            finally:
                holding.rollback()  # the retirement goes on to ann's invite
                retirement.wait()
            assert sync.wait() == {"assets": 1, "assignments": 0, "users": 2}
        work.close()

        assert [(i.user_id, i.status, i.apple_state, i.invite_code) for i in repo.invites("tok")] == [
            ("ann", "revoked", "retired", None), ("bob", "pending", "registered", "code-bob")]
        assert repo.all_assignments("tok") == [] and session.execute(sa.select(t.user_retirements)).all() == []
        synced = repo.token("tok")
        assert synced.last_sync_error is None and synced.last_sync_at is not None
