"""Two replicas of a service on one broker: work is shared, nothing is done twice."""
import collections

import pytest
import sqlalchemy as sa

from shared.storage import create_engine_for
from tests.conftest import postgres_database
from tests.shared.sample.services import ListenerService, NotesService, notes
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def shared_databases(orchard_config):
    """Replicas share their service's PostgreSQL database, as replicas must (SQLite serves one process); listed
    before ``runner_factory``, the databases outlive the replicas."""
    with postgres_database() as notes_url, postgres_database() as listener_url:
        orchard_config["SERVICES"]["notes"]["database_url"] = notes_url
        orchard_config["SERVICES"]["listener"]["database_url"] = listener_url
        yield


def test_replicas_share_rpc_calls_and_handle_each_event_once(shared_databases, runner_factory, orchard_config,
                                                             rpc_as):
    for _ in range(2):
        runner_factory(orchard_config, NotesService, ListenerService).start()

    with rpc_as() as rpc:
        replies = [rpc.notes.which_replica.call_async() for _ in range(40)]
        served_by = collections.Counter(reply.result() for reply in replies)
        assert len(served_by) == 2, f"one replica served everything: {served_by}"

        for number in range(30):
            rpc.notes.take_note(f"n{number:02d}", "spread")

    engine = create_engine_for(orchard_config["SERVICES"]["listener"]["database_url"])

    def handled():
        with engine.connect() as connection:
            return [row.holder for row in connection.execute(sa.select(notes.c.holder))]

    wait_for(lambda: len(handled()) >= 30, timeout=60, what="30 events handled")
    holders = handled()
    assert len(holders) == 30  # once per service, not once per replica
    assert len(set(holders)) == 2, "both listener replicas took events"
    engine.dispose()
