"""The vpp repository on SQLite and PostgreSQL: bulk writes (one statement per many rows on PostgreSQL), events
applied in the order they happened, invites queued again."""
from contextlib import contextmanager
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from services.vpp.adapters import tables as t
from services.vpp.adapters.repository import VppRepository
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
