"""The vpp repository's bulk writes on SQLite and PostgreSQL (one statement per many rows on PostgreSQL)."""
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


def test_a_user_deleted_while_apple_registered_them_is_retired_again(database_url):
    """The retirement was asked for (and done) during the registration's Apple call: the registration that
    lands afterwards must not leave the user registered with nothing left to retire them."""
    engine = create_engine_for(database_url)
    t.metadata.create_all(engine)
    now = utc_now()
    with Session(engine) as session:
        add_token(session, now)
        repo = VppRepository(session)
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
    engine.dispose()
