"""Device assignments and shared groups in the database, on SQLite and PostgreSQL (with the migrations)."""
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

from services.enrollment.adapters import tables
from services.enrollment.adapters.assignments import AssignmentRepository
from services.enrollment.domain.assignments import Assignment
from shared.migrations import upgrade
from shared.storage import create_engine_for, utc_now


@pytest.mark.integration
def test_assignment_repository_round_trip(database_url):
    engine = create_engine_for(database_url)
    upgrade(engine, "services.enrollment.migrations")
    session = sessionmaker(engine)()
    session.execute(tables.server_tokens.insert().values(id="t1", name="T", certificate_pem="-", sealed_private_key="-",
                                                         created_at=utc_now(), created_by="test", locations=["A"]))
    session.execute(tables.dep_devices.insert(), [
        {"token_id": "t1", "serial_number": f"D{i:04d}", "profile_status": "empty", "updated_at": utc_now()}
        for i in range(1200)])
    session.execute(tables.checkins.insert().values(udid="U1", serial_number="ENROLLED1", enrolled=True,
                                                    last_message="TokenUpdate", updated_at=utc_now()))
    repository = AssignmentRepository(session)

    assert repository.unknown_serials(["D0000", "D1100", "ENROLLED1", "NOPE"]) == ["NOPE"]
    assert repository.device_token_locations(["D0001", "ENROLLED1"]) == {"D0001": ["A"]}

    repository.add_many([Assignment(f"D{i:04d}", user_id=f"u{i % 500}", locations=("A",)) for i in range(1000)], "me")
    repository.add_group("g1", "Cart", "A", "me")
    repository.add_many([Assignment("ENROLLED1", group_id="g1", locations=("A",))], "me")
    repository.put(Assignment("D0000", user_id="moved", locations=("B",), source="pairing"), "me")
    assert repository.assignments(["D0000"])["D0000"] == Assignment("D0000", user_id="moved", locations=("B",),
                                                                     source="pairing")
    assert len(repository.of_users([f"u{i}" for i in range(500)])) == 999
    assert repository.group("g1").serial_numbers == ("ENROLLED1",)
    assert repository.counts() == {"user": 1000, "shared": 1, "unassigned": 200}

    with pytest.raises(sa.exc.IntegrityError):  # one user or one group, never both
        session.execute(tables.device_assignments.insert().values(
            serial_number="D1100", user_id="u1", group_id="g1", locations=[], source="admin",
            assigned_at=utc_now(), assigned_by="me"))
    session.rollback()
    repository = AssignmentRepository(session)
    repository.add_group("g1", "Cart", "A", "me")
    repository.add_many([Assignment("D1100", group_id="g1")], "me")
    repository.delete_group("g1")
    assert repository.assignments(["D1100"]) == {} and repository.groups() == []
    session.close()
    engine.dispose()


@pytest.mark.integration
def test_assignments_follow_the_roster_and_a_late_older_event_loses(database_url):
    engine = create_engine_for(database_url)
    upgrade(engine, "services.enrollment.migrations")
    session = sessionmaker(engine)()
    repository = AssignmentRepository(session)
    before = utc_now()
    repository.add_many([Assignment("D1", user_id="u1", locations=("A",)),
                         Assignment("D2", user_id="u1", locations=("A",))], "me")
    repository.follow_user("u1", ["B"], before)  # an update older than the assignment's own read of the user
    assert {a.locations for a in repository.of_users(["u1"])} == {("A",)}
    moved_at = utc_now()
    repository.follow_user("u1", ["B"], moved_at)
    assert {a.locations for a in repository.of_users(["u1"])} == {("B",)}
    repository.follow_user("u1", ["C"], before)
    assert {a.locations for a in repository.of_users(["u1"])} == {("B",)}

    repository.add_many([Assignment("D3", user_id="old-id", locations=("A",))], "me")
    assert repository.follow_user("new-id", ["B"], utc_now(), previous_user_id="old-id") == ["D3"]  # a new ID
    assert [(a.serial_number, a.locations) for a in repository.of_users(["new-id", "old-id"])] == [("D3", ("B",))]
    assert repository.of_users(["new-id"])[0].user_id == "new-id"

    assert repository.release_user("u1", before) == []  # deleted before these devices were assigned to them
    assert repository.release_user("u1", utc_now()) == ["D1", "D2"]
    assert repository.of_users(["u1"]) == []
    session.close()
    engine.dispose()
