"""The kernel under faults: the broker drops every connection or refuses events, a process dies after committing."""
from urllib.parse import quote

import eventlet
import httpx
import pytest
import sqlalchemy as sa
from kombu import Connection, Queue
from nameko.events import get_event_exchange

from shared.storage import create_engine_for
from tests.reliability.fault_proxy import FaultProxy
from tests.shared.sample.services import CallerService, ListenerService, NoteTaken, NotesService, notes
from tests.service_processes import kill, service_process, wait_until_serving
from tests.shared.test_kernel_runtime import peek, replies_awaited
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def listener_notes(config) -> list[str]:
    engine = create_engine_for(config["SERVICES"]["listener"]["database_url"])
    with engine.connect() as connection:
        return [row.note_id for row in connection.execute(sa.select(notes.c.note_id))]


def test_events_survive_the_broker_dropping_every_connection(
        runner_factory, orchard_config, rpc_as, rabbit_manager):
    runner_factory(orchard_config, NotesService, ListenerService).start()
    vhost = orchard_config["AMQP_URI"].rsplit("/", 1)[1]

    def connections():
        return [c["name"] for c in rabbit_manager.get_connections() if c.get("vhost") == vhost]

    closed = 0
    for batch in range(3):  # a batch of events, then every connection of this vhost force-closed mid-flow
        with rpc_as() as rpc:
            rpc.notes.take_many(f"b{batch}-", 500)
        for name in wait_for(connections, timeout=20, what="the broker to list the connections"):
            rabbit_manager.delete_connection(name)
            closed += 1
    assert closed >= 3

    wait_for(lambda: len(listener_notes(orchard_config)) >= 1500, timeout=60, what="all 1500 events handled")
    eventlet.sleep(1)
    seen = listener_notes(orchard_config)
    assert len(seen) == len(set(seen)) == 1500
    assert peek(orchard_config, "evt-notes-NoteTaken--listener.on_note_taken.dead-letters") == []


def test_events_committed_before_a_crash_are_published_on_restart(runner_factory, orchard_config, rpc_as, tmp_path):
    """The process commits a note and its event, cannot publish the event (the broker refuses it) and is killed
    with SIGKILL: the event waits in the outbox, and the next replica publishes it."""
    runner_factory(orchard_config, ListenerService).start()  # the subscriber's queue exists
    vhost = orchard_config["AMQP_URI"].rsplit("/", 1)[1]
    policy = f"http://127.0.0.1:15672/api/policies/{quote(vhost, safe='')}/refuse-every-event"
    httpx.put(policy, auth=("guest", "guest"), json={
        "pattern": "^evt-notes-NoteTaken--listener\\.on_note_taken$", "apply-to": "queues",
        "definition": {"max-length": 0, "overflow": "reject-publish"}}).raise_for_status()
    log = tmp_path / "services.log"
    with service_process(orchard_config, tmp_path, ["tests.shared.sample.services:NotesService"]) as notes_process:
        wait_until_serving(rpc_as, "notes")
        with rpc_as() as rpc:
            rpc.notes.take_note("crash", "committed just before the crash")
        wait_for(lambda: "outbox relay for notes could not publish" in log.read_text(), timeout=20,
                 what="the relay's publish refused")
        kill(notes_process)
    engine = create_engine_for(orchard_config["SERVICES"]["notes"]["database_url"])
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM outbox")).scalar_one() == 1
    engine.dispose()
    assert listener_notes(orchard_config) == []

    httpx.delete(policy, auth=("guest", "guest")).raise_for_status()
    runner_factory(orchard_config, NotesService).start()  # a replica starts again
    wait_for(lambda: listener_notes(orchard_config) == ["crash"], what="the orphaned event delivered")


def test_a_call_to_another_service_without_the_broker_is_an_upstream_error(runner_factory, orchard_config):
    """RabbitMQ refuses new connections (the caller's consumers were connected before): the caller's
    HTTP client gets 502 saying so, not an internal error."""
    proxy = FaultProxy(5672)
    try:
        caller_config = {**orchard_config, "AMQP_URI": proxy.url_for(orchard_config["AMQP_URI"])}
        runner_factory(orchard_config, NotesService).start()
        caller = runner_factory(caller_config, CallerService)
        caller.start()
        proxy.mode = "reset"
        answer = httpx.post(f"http://{orchard_config['SERVICES']['caller']['http_address']}/take/x", timeout=60)
        assert answer.status_code == 502, answer.text
        assert "RabbitMQ is out of reach" in answer.json()["message"]
        assert replies_awaited(caller) == 0  # the call was never published: no reply is awaited
    finally:
        proxy.close()


def test_events_the_broker_refuses_stay_in_the_outbox_until_it_takes_them(runner_factory, orchard_config, rpc_as):
    """A full queue that rejects publishes makes RabbitMQ nack them: the batch is not counted as published."""
    vhost = orchard_config["AMQP_URI"].rsplit("/", 1)[1]
    queue = "notes-taken-with-room-for-two"
    policy = f"http://127.0.0.1:15672/api/policies/{quote(vhost, safe='')}/room-for-two"
    httpx.put(policy, auth=("guest", "guest"), json={
        "pattern": f"^{queue}$", "apply-to": "queues",
        "definition": {"max-length": 2, "overflow": "reject-publish"}}).raise_for_status()
    with Connection(orchard_config["AMQP_URI"]) as connection:
        exchange = get_event_exchange("notes", orchard_config)
        Queue(queue, exchange=exchange, routing_key=NoteTaken.TYPE, durable=True)(connection.default_channel).declare()
    runner_factory(orchard_config, NotesService).start()
    engine = create_engine_for(orchard_config["SERVICES"]["notes"]["database_url"])

    def pending() -> int:
        with engine.connect() as connection:
            return connection.execute(sa.text("SELECT count(*) FROM outbox")).scalar_one()

    with rpc_as() as rpc:
        rpc.notes.take_many("n", 5)
    wait_for(lambda: len(peek(orchard_config, queue)) == 2, what="the queue to take what it has room for")
    eventlet.sleep(1)
    assert pending() == 5  # three were nacked, so the whole batch stays to be sent again

    httpx.delete(policy, auth=("guest", "guest")).raise_for_status()
    wait_for(lambda: pending() == 0, timeout=20, what="the relay to publish the batch again")
    published = [m["payload"]["note_id"] for m in peek(orchard_config, queue)]
    assert sorted(set(published)) == [f"n{n:05d}" for n in range(5)]  # at least once; subscribers drop repeats
    engine.dispose()
