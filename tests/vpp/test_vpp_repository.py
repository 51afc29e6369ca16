"""The vpp repository on SQLite and PostgreSQL: bulk writes (one statement per many rows on PostgreSQL), events
applied in the order they happened, invites queued again."""
from contextlib import contextmanager
from datetime import timedelta

import eventlet
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from services.vpp.adapters import tables as t
from services.vpp.adapters.repository import VppRepository, asset_from_row
from shared.storage import create_engine_for, utc_now


def add_token(session: Session, now) -> None:
    session.execute(t.content_tokens.insert().values(
        id="tok", name="North", sealed_stoken="sealed", fingerprint="f", org_name="District", location_uid="1",
        location_name="North Campus", expires_at=now, locations=[], allow_teacher_study_apps=False, revoked=False,
        added_by="admin", added_at=now))


def test_bulk_invite_writes_and_apples_users_applied(database_url):
    engine = create_engine_for(database_url)
    t.metadata.create_all(engine)
    now = utc_now()
    per_row = []  # psycopg2's executemany: a statement, a round trip, per row
    engine.dialect.do_executemany = lambda cursor, statement, *args, **kw: per_row.append(statement) or type(
        engine.dialect).do_executemany(engine.dialect, cursor, statement, *args, **kw)
    try:
        with Session(engine) as session:
            add_token(session, now)
            repo = VppRepository(session)
            repo.remember_users([{"user_id": f"u{n}", "name": "N", "email": None, "managed_apple_id": f"u{n}@appleid.example",
                                  "locations": ["north"], "changed_at": now} for n in range(1200)])
            repo.queue_invites([{"token_id": "tok", "user_id": f"u{n}", "method": "managed_apple_id", "name": "N", "email": None,
                                 "managed_apple_id": f"u{n}@appleid.example", "status": "pending", "apple_state": "registered",
                                 "invited_at": now} for n in range(1200)])
            repo.queue_invites([{"token_id": "tok", "user_id": "u0", "method": "email", "name": "N", "email": None,
                                 "managed_apple_id": None, "status": "pending", "apple_state": "queued", "invited_at": now}])
            # Orchard's own since Apple's listing was read: retired (it lists her associated still), queued again
            # after an earlier registration was retired (it lists him retired still)
            repo.mark_invites("tok", ["u1098"], status="revoked", apple_state="retired")
            repo.mark_invites("tok", ["u1148"], apple_state="queued")
            apple = ([{"clientUserId": f"u{n}", "status": "Registered", "inviteCode": f"code-{n}"} for n in range(1000)]
                     + [{"clientUserId": f"u{n}", "status": "Associated"} for n in range(1000, 1100)]
                     + [{"clientUserId": f"u{n}", "status": "Retired"} for n in range(1100, 1150)])
            repo.apply_apple_users("tok", apple, now)
            session.commit()

            invites = {r.user_id: r for r in session.execute(sa.select(t.invites))}
            assert len(invites) == 1200 and invites["u0"].method == "managed_apple_id"  # the existing invite was kept
            assert (invites["u5"].status, invites["u5"].invite_code, invites["u5"].accepted_at) == ("pending", "code-5", None)
            assert (invites["u1050"].status, invites["u1050"].accepted_at) == ("accepted", now)
            assert invites["u1120"].status == "revoked"
            assert (invites["u1098"].status, invites["u1148"].status) == ("revoked", "pending")
            assert (invites["u1199"].status, invites["u1199"].invite_code) == ("pending", None)
            assert len(repo.known_users([f"u{n}" for n in range(1200)])) == 1200
        if engine.dialect.name == "postgresql":
            assert per_row == []
    finally:
        engine.dispose()


@contextmanager
def token_repository(database_url):
    """A repository on a new database holding the token ``tok``, with its session and the time it was added."""
    engine = create_engine_for(database_url)
    t.metadata.create_all(engine)
    now = utc_now()
    try:
        with Session(engine) as session:
            add_token(session, now)
            yield VppRepository(session), session, now
    finally:
        engine.dispose()


def test_a_user_deleted_while_apple_registered_them_is_retired_again(database_url):
    """The retirement was asked for (and done) during the registration's Apple call: the registration that
    lands afterwards must not leave the user registered with nothing left to retire them."""
    with token_repository(database_url) as (repo, session, now):
        repo.queue_invites([{"token_id": "tok", "user_id": user_id, "method": "managed_apple_id", "name": "N",
                             "email": None, "managed_apple_id": f"{user_id}@appleid.example", "status": "pending",
                             "apple_state": "queued", "invited_at": now} for user_id in ("ann", "bob")])
        repo.request_retirements("ann", now)  # the roster deleted ann while users/create was on its way
        repo.complete_retirements("tok", ["ann"])  # Apple answered "not found": retired as far as we know
        assert repo.mark_registered("tok", ["ann", "bob"]) == ["ann"]
        states = dict(session.execute(sa.select(t.invites.c.user_id, t.invites.c.apple_state)).all())
        assert states == {"ann": "retired", "bob": "registered"}
        repo.request_retirements("ann", now)
        assert repo.due_retirements(now, 10) == {"tok": ["ann"]}


def test_devices_follow_the_newest_event_about_them(database_url):
    """Arrivals and removals from two queues arrive in any order: the newest one about a device wins."""
    engine = create_engine_for(database_url)
    t.metadata.create_all(engine)
    start = utc_now()
    with Session(engine) as session:
        repo = VppRepository(session)
        repo.remember_devices(["GONE", "KEPT", "BACK"], start)
        repo.forget_devices(["GONE", "BACK"], start + timedelta(minutes=10))
        repo.remember_devices(["BACK"], start + timedelta(minutes=20))
        repo.remember_devices(["GONE", "NEW"], start + timedelta(minutes=5))  # older than GONE's removal
        repo.forget_devices(["BACK", "KEPT"], start + timedelta(minutes=15))  # older than BACK's return
        session.commit()
        assert repo.known_holders()[0] == {"BACK", "NEW"}
    engine.dispose()


def test_a_due_invite_is_taken_by_one_mail_round_until_that_round_ends(database_url):
    with token_repository(database_url) as (repo, session, now):
        repo.queue_invites([{"token_id": "tok", "user_id": u, "method": "email", "name": "N", "email": f"{u}@x.example",
                             "managed_apple_id": None, "status": "pending", "apple_state": "registered",
                             "invited_at": now} for u in ("ann", "bob")])
        repo.mark_invites("tok", ["ann", "bob"], invite_code="code")
        due = repo.invites_to_email(now)
        assert [r.user_id for r in repo.claim_mail_round(due, now, now + timedelta(minutes=5))] == ["ann", "bob"]
        assert repo.claim_mail_round(due, now, now + timedelta(minutes=5)) == []  # another round read them too
        repo.mail_sent("tok", "ann", now)
        later = now + timedelta(minutes=6)  # bob's round never said how it went (its process died)
        assert [r.user_id for r in repo.claim_mail_round(due, later, later + timedelta(minutes=5))] == ["bob"]


def test_invites_invited_again_start_afresh_with_the_details_given(database_url):
    engine = create_engine_for(database_url)
    t.metadata.create_all(engine)
    now = utc_now()

    def invite(user_id, email, **values):
        return {"token_id": "tok", "user_id": user_id, "method": "email", "name": "N", "email": email,
                "managed_apple_id": None, "status": "pending", "apple_state": "queued", "invited_at": now, **values}

    with Session(engine) as session:
        add_token(session, now)
        repo = VppRepository(session)
        repo.queue_invites([invite(u, f"{u}@old.example") for u in ("ann", "bob", "cat", "dan")])
        repo.mark_failed("tok", ["ann"], "Apple refused it (error 9602)")
        repo.mark_invites("tok", ["bob"], status="revoked", apple_state="registered", mail_error="refused",
                          mail_refused_at=now, mail_attempts=3)
        repo.mark_invites("tok", ["cat", "dan"], apple_state="registered", invite_code="code")
        repo.mail_refused("tok", "cat", "The mail relay refused the address", now)
        assert [r.user_id for r in repo.invites_to_email(now, "tok", ["cat", "dan"])] == ["dan"]
        repo.mail_failed(repo.invites_to_email(now), "the relay is down", now)
        assert repo.invites_to_email(now) == []  # dan waits for his pause
        assert [r.user_id for r in repo.invites_to_email(now + timedelta(seconds=31))] == ["dan"]

        fresh = [invite(u, f"{u}@new.example") for u in ("ann", "bob", "cat")]
        assert repo.queue_invites(fresh) == set()  # an import queues none of them again
        assert repo.queue_invites(fresh, invited_again=True) == {"ann", "bob"}  # cat's invite is still pending
        session.commit()
        rows = {r.user_id: r for r in repo.invites("tok")}
        assert {(r.user_id, r.status, r.apple_state, r.email, r.apple_error, r.mail_error, r.mail_refused_at,
                 r.mail_attempts) for r in (rows["ann"], rows["bob"])} == {
            ("ann", "pending", "queued", "ann@new.example", None, None, None, 0),
            ("bob", "pending", "queued", "bob@new.example", None, None, None, 0)}
        assert (rows["cat"].email, rows["cat"].mail_refused_at is not None) == ("cat@old.example", True)
        assert (rows["dan"].mail_attempts, rows["dan"].mail_error) == (1, "the relay is down")
    engine.dispose()


def test_a_sync_keeps_the_licences_a_change_wrote_after_it_read_apple(database_url):
    """A sync reads Apple, then stores what it read: a licence change written in between (its asset stamped by the
    database's clock) is kept, and the assets no change touched take Apple's listing."""
    with token_repository(database_url) as (repo, session, now):
        listed = [{"adamId": "111", "totalCount": 5, "assignedCount": 0, "availableCount": 5, "deviceAssignable": True,
                   "revocable": True}, {"adamId": "222", "totalCount": 2, "assignedCount": 1, "availableCount": 1}]
        repo.replace_assets("tok", listed, now)
        repo.replace_assignments("tok", [{"adamId": "222", "serialNumber": "OLD"}])
        session.commit()

        read_from = repo.database_time()  # the sync begins reading Apple
        session.commit()
        repo.apply_licence_change("tok", asset_from_row(repo.asset("tok", "111")), ["S1"], [], added=True)
        session.commit()  # the change is done while the sync still waits for Apple

        changed = repo.licences_changed_since("tok", read_from)
        assert changed == {("111", "STDQ")}
        apple = [{**listed[0], "totalCount": 6, "availableCount": 6}, {**listed[1], "assignedCount": 0, "availableCount": 2},
                 {"adamId": "333", "totalCount": 1, "assignedCount": 0, "availableCount": 1}]
        repo.replace_assets("tok", apple, now, keep=changed)
        repo.replace_assignments("tok", [], keep=changed)  # read before S1 was assigned, after OLD was revoked
        session.commit()
        counts = {r.adam_id: (r.total_count, r.assigned_count, r.available_count) for r in repo.assets("tok")}
        assert counts == {"111": (5, 1, 4), "222": (2, 0, 2), "333": (1, 0, 1)}
        assert [(a.adam_id, a.serial_number) for a in repo.all_assignments("tok")] == [("111", "S1")]

        assert repo.licences_changed_since("tok", repo.database_time()) == set()  # the next sync takes Apple's


def test_an_import_newer_than_a_deletion_calls_off_the_users_retirement(database_url):
    """ann is deleted and imported again before her retirement ran: she stays registered, her queued invite waits for
    Apple again. A late, older import calls nothing off, and neither does one of a user whose retirement an invite's
    revocation asked for (the roster never deleted bob)."""
    with token_repository(database_url) as (repo, session, now):
        later, latest = now + timedelta(minutes=1), now + timedelta(minutes=2)

        def known(user_id, at):
            return {"user_id": user_id, "name": "N", "email": None, "managed_apple_id": f"{user_id}@appleid.example",
                    "locations": ["north"], "changed_at": at}

        repo.remember_users([known("ann", now), known("bob", now), known("cat", now)])
        for token_id, state in (("tok", "registered"), ("tok2", "queued")):
            if token_id == "tok2":
                session.execute(t.content_tokens.insert().values(
                    id="tok2", name="South", sealed_stoken="sealed", fingerprint="f", org_name="District",
                    location_uid="2", location_name="South Campus", expires_at=now, locations=[],
                    allow_teacher_study_apps=False, revoked=False, added_by="admin", added_at=now))
            repo.queue_invites([{"token_id": token_id, "user_id": u, "method": "managed_apple_id", "name": "N", "email": None,
                                 "managed_apple_id": f"{u}@appleid.example", "status": "pending", "apple_state": state,
                                 "invited_at": now} for u in ("ann", "bob", "cat")])
        for user_id in ("ann", "cat"):
            assert repo.forget_user(user_id, later)
            repo.request_retirements(user_id, later)
        repo.mark_invites("tok", ["bob"], status="revoked", apple_state="withdrawn")
        repo.request_retirements("bob", later, "tok")  # Apple registered bob as his invite was revoked
        session.commit()

        repo.remember_users([known("ann", now)])  # older than her deletion: changes nothing
        assert len(session.execute(sa.select(t.user_retirements)).all()) == 5
        repo.remember_users([known("ann", latest), known("bob", latest)])
        session.commit()
        retiring = session.execute(sa.select(t.user_retirements.c.token_id, t.user_retirements.c.user_id)).all()
        assert sorted(retiring) == [("tok", "bob"), ("tok", "cat"), ("tok2", "cat")]
        states = {(r.token_id, r.user_id): r.apple_state for r in session.execute(sa.select(t.invites))}
        assert (states[("tok", "ann")], states[("tok2", "ann")], states[("tok2", "cat")]) == ("registered", "queued", "retiring")

        # cat comes back while Apple retires her: Apple did, so her invites are registered again
        due = repo.due_retirements(latest, 10)
        repo.remember_users([known("cat", latest)])
        for token_id in ("tok", "tok2"):
            repo.complete_retirements(token_id, [u for u in due[token_id] if u == "cat"])
        session.commit()
        cat = {r.token_id: (r.status, r.apple_state) for r in repo.invites("tok") + repo.invites("tok2") if r.user_id == "cat"}
        assert cat == {"tok": ("pending", "queued"), "tok2": ("pending", "queued")}
        assert [r.user_id for r in session.execute(sa.select(t.user_retirements))] == ["bob"]


def test_a_sync_writing_its_listing_waits_for_a_licence_change_being_written(database_url):
    """On PostgreSQL a sync's write and a change committing at the same moment take turns on the asset's row, so
    the sync neither overwrites the change nor collides with its assignment rows."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has one writer at a time")
    with token_repository(database_url) as (repo, session, now):
        repo.replace_assets("tok", [{"adamId": "111", "totalCount": 5, "availableCount": 5}], now)
        session.commit()
        read_from = repo.database_time()
        session.commit()
        with Session(session.get_bind()) as changing:
            VppRepository(changing).apply_licence_change("tok", asset_from_row(repo.asset("tok", "111")), ["S1"], [],
                                                         added=True)
            session.commit()
            session.execute(sa.text("SET LOCAL lock_timeout = '200ms'"))
            with pytest.raises(sa.exc.OperationalError, match="lock timeout"):
                repo.licences_changed_since("tok", read_from)  # the change is still being written
            session.rollback()
            changing.commit()
        assert repo.licences_changed_since("tok", read_from) == {("111", "STDQ")}


def test_a_retirement_completing_while_an_import_brings_the_user_back_waits_and_queues_their_invite(database_url):
    """On PostgreSQL the retirement job takes the retirement rows it completes: an import calling dan's off at the
    same moment goes first, and the job then finds dan back, so his invite is registered again."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has one writer at a time")
    with token_repository(database_url) as (repo, session, now):
        dan = {"user_id": "dan", "name": "Dan", "email": None, "managed_apple_id": "dan@appleid.example",
               "locations": ["north"], "changed_at": now}
        repo.remember_users([dan])
        repo.queue_invites([{"token_id": "tok", "user_id": "dan", "method": "managed_apple_id", "name": "Dan",
                             "email": None, "managed_apple_id": "dan@appleid.example", "status": "pending",
                             "apple_state": "registered", "invited_at": now}])
        repo.forget_user("dan", now + timedelta(minutes=1))
        repo.request_retirements("dan", now + timedelta(minutes=1))
        session.commit()
        with Session(session.get_bind()) as importing:
            VppRepository(importing).remember_users([{**dan, "changed_at": now + timedelta(minutes=2)}])
            # Apple retired him; the job records it while the import is still being written
            job = eventlet.spawn(lambda: (repo.complete_retirements("tok", ["dan"]), session.commit()))
            eventlet.sleep(0.5)
            assert not job.dead  # it waits for the import
            importing.commit()
            job.wait()
        assert [(r.status, r.apple_state) for r in repo.invites("tok")] == [("pending", "queued")]


def test_invites_revoked_after_apple_registered_them_are_withdrawn_by_the_migration(tmp_path):
    """They were stored still registered, so a sync or a notification could bring them back."""
    from alembic import command

    from shared.migrations import alembic_config, upgrade

    engine = create_engine_for(f"sqlite:///{tmp_path}/vpp.db")
    try:
        with engine.begin() as connection:
            command.upgrade(alembic_config("services.vpp.migrations", connection), "e796576a8b4c")
            command.upgrade(alembic_config("services.vpp.migrations", connection), "kernel@head")
        now = utc_now()
        with Session(engine) as session:
            add_token(session, now)
            VppRepository(session).queue_invites([
                {"token_id": "tok", "user_id": user_id, "method": "managed_apple_id", "name": "N", "email": None,
                 "managed_apple_id": f"{user_id}@appleid.example", "status": status, "apple_state": "registered",
                 "invited_at": now} for user_id, status in (("ann", "revoked"), ("bob", "pending"), ("cat", "revoked"))])
            VppRepository(session).mark_invites("tok", ["cat"], apple_state="retiring")  # the roster had deleted her
            session.commit()
        upgrade(engine, "services.vpp.migrations")
        with Session(engine) as session:
            states = {r.user_id: r.apple_state for r in session.execute(sa.select(t.invites))}
        assert states == {"ann": "withdrawn", "bob": "registered", "cat": "withdrawn"}
    finally:
        engine.dispose()
