"""A user the roster gives a new user ID keeps their invites, licences and Apple's clientUserId (SQLite and
PostgreSQL)."""
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from services.vpp.adapters import tables as t
from services.vpp.adapters.repository import FollowedUserId, VppRepository
from shared.storage import create_engine_for, utc_now
from tests.vpp.test_vpp_repository import add_token


def known(user_id, changed_at):
    return {"user_id": user_id, "name": user_id.title(), "email": None, "managed_apple_id": None, "locations": ["north"],
            "changed_at": changed_at}


def invite(user_id, now):
    return {"token_id": "tok", "user_id": user_id, "method": "managed_apple_id", "name": "N", "email": None,
            "managed_apple_id": f"{user_id}@appleid.example", "status": "pending", "apple_state": "registered",
            "invited_at": now}


def rows_of(session, table, column):
    return sorted(session.execute(sa.select(column).select_from(table)).scalars())


@pytest.fixture
def session(database_url):
    """A session on a fresh database with the content token "tok"."""
    engine = create_engine_for(database_url)
    t.metadata.create_all(engine)
    with Session(engine) as session:
        add_token(session, utc_now())
        yield session
    engine.dispose()


def test_a_new_user_id_takes_the_users_rows_and_keeps_apples_id(session):
    start = utc_now()
    renamed_at = start + timedelta(minutes=10)
    repo = VppRepository(session)
    repo.remember_users([known("old", start), known("bob", start)])
    repo.queue_invites([invite("old", start), invite("bob", start)])
    repo.replace_assignments("tok", [{"adamId": "111", "clientUserId": "old"}, {"adamId": "111", "serialNumber": "S1"}])
    session.execute(t.user_retirements.insert().values(token_id="tok", user_id="old", requested_at=start, attempts=0,
                                                       next_attempt_at=start))

    assert repo.follow_new_user_id("old", "new", renamed_at, renamed_at) == FollowedUserId("new", [])
    assert repo.follow_new_user_id("old", "new", renamed_at, renamed_at).kept == []  # again: nothing left to move
    session.commit()
    assert rows_of(session, t.invites, t.invites.c.user_id) == ["bob", "new"]
    assert rows_of(session, t.assignments, t.assignments.c.holder) == ["S1", "new"]
    assert rows_of(session, t.user_retirements, t.user_retirements.c.user_id) == ["new"]
    assert repo.apple_user_ids("tok").client_user_id("new") == "old"
    assert repo.known_holders()[1] == {"bob"}  # the old ID is gone; the handler remembers the new one's details

    # what Apple says about its user "old" is about "new"
    repo.replace_assignments("tok", [{"adamId": "111", "clientUserId": "old"}, {"adamId": "222", "clientUserId": "bob"}])
    repo.apply_apple_users("tok", [{"clientUserId": "old", "status": "Associated"}], renamed_at)
    assert [(h.adam_id, h.client_user_id) for h in repo.all_assignments("tok")] == [("111", "new"), ("222", "bob")]
    assert {r.user_id: r.status for r in repo.invites("tok")} == {"bob": "pending", "new": "accepted"}

    # a late, older rename the other way changes nothing
    assert repo.follow_new_user_id("new", "old", start + timedelta(minutes=5), renamed_at) is None
    assert rows_of(session, t.invites, t.invites.c.user_id) == ["bob", "new"]

    # renamed back later: Apple's ID is the user ID again
    repo.remember_users([known("new", renamed_at)])
    assert repo.follow_new_user_id("new", "old", start + timedelta(minutes=20), renamed_at).kept == []
    assert rows_of(session, t.invites, t.invites.c.user_id) == ["bob", "old"]
    assert rows_of(session, t.renamed_users, t.renamed_users.c.user_id) == []


def test_a_new_user_id_that_has_an_apple_user_of_its_own_takes_nothing(session):
    """Moving ann's rows to bob's ID would give bob two Apple users: ann's stay, and ann stays one of ours."""
    now = utc_now()
    repo = VppRepository(session)
    repo.remember_users([known("ann", now), known("bob", now)])
    repo.queue_invites([invite("ann", now), invite("bob", now)])
    assert repo.follow_new_user_id("ann", "bob", now + timedelta(minutes=1), now).kept == ["tok"]
    session.commit()
    assert rows_of(session, t.invites, t.invites.c.user_id) == ["ann", "bob"]
    assert rows_of(session, t.renamed_users, t.renamed_users.c.user_id) == []
    assert repo.known_holders()[1] == {"ann", "bob"}


def invited_user(session, user_id, now):
    repo = VppRepository(session)
    repo.remember_users([known(user_id, now)])
    repo.queue_invites([invite(user_id, now)])
    return repo


def test_a_late_rename_follows_the_user_to_the_id_the_roster_gave_them_since(session):
    """ann became bea, then bea became cat; the second rename is handled first (a retry, another replica)."""
    start = utc_now()
    to_bea, to_cat = start + timedelta(minutes=1), start + timedelta(minutes=2)
    repo = invited_user(session, "ann", start)
    repo.replace_assignments("tok", [{"adamId": "111", "clientUserId": "ann"}])

    assert repo.follow_new_user_id("bea", "cat", to_cat, to_cat) == FollowedUserId("cat", [])
    repo.remember_users([known("cat", to_cat)])
    assert repo.follow_new_user_id("ann", "bea", to_bea, to_cat) == FollowedUserId("cat", [])
    repo.remember_users([known("bea", to_bea)])  # as the handler does: older than bea's rename, it changes nothing
    session.commit()

    assert rows_of(session, t.invites, t.invites.c.user_id) == ["cat"]
    assert rows_of(session, t.assignments, t.assignments.c.holder) == ["cat"]
    assert repo.apple_user_ids("tok").client_user_id("cat") == "ann"
    assert repo.known_holders()[1] == {"cat"}
    assert repo.current_user_id("ann", start) == "cat"


def test_a_late_rename_to_an_id_deleted_since_retires_the_user(session):
    start = utc_now()
    to_bea, deleted = start + timedelta(minutes=1), start + timedelta(minutes=2)
    repo = invited_user(session, "ann", start)

    assert repo.forget_user("bea", deleted)
    assert repo.follow_new_user_id("ann", "bea", to_bea, deleted) == FollowedUserId(None, [])
    session.commit()
    assert rows_of(session, t.user_retirements, t.user_retirements.c.user_id) == ["ann"]
    assert repo.known_holders()[1] == set()


def test_a_renamed_users_apple_id_is_free_again_once_apple_retired_them(session):
    start = utc_now()
    repo = invited_user(session, "old", start)
    repo.follow_new_user_id("old", "new", start + timedelta(minutes=1), start)
    repo.request_retirements("new", start + timedelta(minutes=2))
    assert repo.apple_user_ids("tok").client_user_id("old") is None  # Apple's "old" is still the user called "new"

    repo.complete_retirements("tok", ["new"])
    session.commit()
    assert rows_of(session, t.renamed_users, t.renamed_users.c.user_id) == []
    assert repo.apple_user_ids("tok").client_user_id("old") == "old"  # a later user "old" can be registered
