"""The kernel at work on the real broker and databases: transactions, outbox, inbox,
retries and dead letters, leases, typed errors over RPC and HTTP, metrics."""
import io
import json
import logging
import time
from datetime import timedelta

import eventlet
import httpx
import pytest
import sqlalchemy as sa
from kombu import Connection, Queue
from nameko.amqp.publish import Publisher
from nameko.events import get_event_exchange
from nameko.rpc import ReplyListener
from nameko.testing.utils import get_container
from prometheus_client import REGISTRY

from shared.dead_letters import list_dead_letters, replay_dead_letters
from shared.entrypoints import Periodic
from shared.errors import Conflict, InternalError, UpstreamError, ValidationError
from shared.logs import JsonFormatter
from shared.storage import Database, create_engine_for
from tests.conftest import ADMIN, postgres_database
from tests.shared.sample import services as sample_services
from tests.shared.sample.services import (BusyNotesService, CallerService, ListenerService, NoteTaken, NotesService,
                                          SlowTickerService, StepsService, TickerService, notes)
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def test_a_committed_change_is_published_and_handled_once(runner_factory, orchard_config, rpc_as):
    runner = runner_factory(orchard_config, NotesService, ListenerService)
    runner.start()
    with rpc_as() as rpc:
        rpc.notes.take_note("n1", "hello")
        assert wait_for(lambda: rpc.listener.seen(), what="the listener to see n1") == ["n1"]
        audit = rpc.notes.audit_log(target="note:n1")
        assert audit[0]["action"] == "note.taken" and audit[0]["actor_id"] == "admin@school.example"

        # a redelivery of the same event (same id) changes nothing
        duplicate = NoteTaken(note_id="n2", text="twice")
        publish_raw(orchard_config, "notes", "NoteTaken", duplicate.to_payload())
        publish_raw(orchard_config, "notes", "NoteTaken", duplicate.to_payload())
        wait_for(lambda: "n2" in rpc.listener.seen(), what="n2")
        eventlet.sleep(0.5)
        assert rpc.listener.seen() == ["n1", "n2"]


def test_a_rolled_back_change_publishes_nothing(runner_factory, orchard_config, rpc_as):
    runner = runner_factory(orchard_config, NotesService, ListenerService)
    runner.start()
    with rpc_as() as rpc:
        with pytest.raises(ValidationError, match="refused after it was written"):
            rpc.notes.take_note("gone", "never", then_fail=True)
        rpc.notes.take_note("kept", "after")
        wait_for(lambda: rpc.listener.seen() == ["kept"], what="only the committed note")
        assert rpc.notes.count() == 1


def test_failing_and_malformed_events_are_dead_lettered_and_the_rest_flows(runner_factory, orchard_config, rpc_as):
    orchard_config["EVENT_RETRY_DELAYS"] = [0.1, 0.2]
    runner = runner_factory(orchard_config, NotesService, ListenerService)
    runner.start()
    queue = "evt-notes-NoteTaken--listener.on_note_taken"
    with rpc_as() as rpc:
        rpc.notes.take_note("bad", "boom")
        publish_raw(orchard_config, "notes", "NoteTaken", {"text": "no id at all"})
        rpc.notes.take_note("good", "fine")
        wait_for(lambda: "good" in rpc.listener.seen(), what="the good note")
        parked = wait_for(lambda: (lambda m: m if len(m) == 2 else None)(peek(orchard_config, queue + ".dead-letters")),
                          what="two dead letters")
    by_error = {m["headers"]["x-orchard-error"].split(":")[0]: m for m in parked}
    assert by_error["RuntimeError"]["headers"]["x-orchard-attempts"] == 3  # first try + two retries
    assert by_error["RuntimeError"]["payload"]["note_id"] == "bad"
    assert by_error["ValidationError"]["headers"]["x-orchard-attempts"] == 1  # malformed: parked at once
    metrics = httpx.get(f"http://127.0.0.1:{orchard_config['SERVICES']['listener']['metrics_port']}/metrics").text
    assert 'orchard_dead_letters_total{handler="on_note_taken",service="listener"} 2.0' in metrics

    # the operator lists them, deploys a fix and replays: the event is handled, the malformed one parked again
    listed = list_dead_letters(orchard_config["AMQP_URI"], [queue])
    assert sorted(letter.attempts for letter in listed) == [1, 3]
    assert {letter.event_type for letter in listed} == {"NoteTaken"}
    with rpc_as() as rpc:
        rpc.listener.learn_to_cope()
        assert replay_dead_letters(orchard_config["AMQP_URI"], [queue]) == 2
        wait_for(lambda: "bad" in rpc.listener.seen(), what="the replayed event to be handled")
    wait_for(lambda: len(peek(orchard_config, queue + ".dead-letters")) == 1, what="the malformed event parked again")


def test_dead_letters_of_a_queue_that_is_gone_stay_parked(orchard_config):
    gone = "evt-notes-NoteTaken--retired.on_note_taken"  # its service was removed: nothing consumes or declares it
    with Connection(orchard_config["AMQP_URI"]) as connection:
        connection.Producer().publish({"note_id": "n"}, exchange="", routing_key=gone + ".dead-letters",
                                      declare=[Queue(gone + ".dead-letters", durable=True, auto_delete=False)])
    assert replay_dead_letters(orchard_config["AMQP_URI"], [gone]) == 0
    assert [m["payload"] for m in peek(orchard_config, gone + ".dead-letters")] == [{"note_id": "n"}]


def test_an_undecodable_event_message_is_parked_as_it_came(runner_factory, orchard_config, rpc_as):
    runner = runner_factory(orchard_config, NotesService, ListenerService)
    runner.start()
    queue = "evt-notes-NoteTaken--listener.on_note_taken"
    with Connection(orchard_config["AMQP_URI"]) as connection:
        connection.Producer().publish(b"{not json", exchange="", routing_key=queue, content_type="application/json",
                                      content_encoding="utf-8", delivery_mode=2)
    with rpc_as() as rpc:
        rpc.notes.take_note("after", "fine")
        wait_for(lambda: rpc.listener.seen() == ["after"], what="the next event to be handled")
    with Connection(orchard_config["AMQP_URI"]) as connection:
        parked = connection.channel().basic_get(queue + ".dead-letters", no_ack=True)
    assert parked.body in (b"{not json", "{not json") and parked.content_type == "application/json"
    assert parked.headers["x-orchard-error"].startswith("undecodable message (application/json)")


def test_a_handler_that_committed_part_of_its_work_is_retried_then_parked(runner_factory, orchard_config, rpc_as):
    orchard_config["EVENT_RETRY_DELAYS"] = "0.1,0.2"  # as the environment gives it
    runner = runner_factory(orchard_config, NotesService, StepsService)
    runner.start()
    queue = "evt-notes-NoteTaken--steps.on_note_taken"
    with rpc_as() as rpc:
        rpc.notes.take_note("split", "half")
        parked = wait_for(lambda: peek(orchard_config, queue + ".dead-letters"), what="the event to be parked")
        assert parked[0]["headers"]["x-orchard-attempts"] == 3
        assert rpc.steps.steps() == ["split"] * 3  # its first step ran on every attempt: none was taken for a duplicate


def test_event_retry_delays_that_cannot_be_read_stop_the_service_at_start(runner_factory, orchard_config):
    orchard_config["EVENT_RETRY_DELAYS"] = "soon"
    runner = runner_factory(orchard_config, StepsService)
    with pytest.raises(ValueError, match="EVENT_RETRY_DELAYS must be seconds"):
        runner.start()


def replies_awaited(runner) -> int:
    (container,) = runner.containers
    return sum(len(extension._reply_events) for extension in container.extensions
               if isinstance(extension, ReplyListener))


def test_a_call_whose_caller_gave_up_is_not_run_later(runner_factory, orchard_config, rpc_as):
    notes_replica = runner_factory(orchard_config, NotesService)
    notes_replica.start()
    notes_replica.stop()  # its queue stays; nobody consumes it
    caller = runner_factory(orchard_config, CallerService)
    caller.start()
    with rpc_as() as rpc:
        with pytest.raises(UpstreamError, match="did not answer take_many within 1 s"):
            rpc.caller.take_one("late")
        assert replies_awaited(caller) == 0  # the caller stopped waiting for the reply, and forgot it
        eventlet.sleep(1.5)
        runner_factory(orchard_config, NotesService).start()
        rpc.notes.take_note("marker", "now")  # handled after anything older still queued
        assert rpc.notes.count() == 1


def calls_abandoned(method: str) -> tuple[float, float, float]:
    """Counted as abandoned, as entrypoint calls abandoned, and the method's observed durations."""
    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, {"service": "notes", **labels}) or 0
    entrypoint = {"entrypoint": method, "kind": "rpc"}
    return (sample("orchard_rpc_calls_abandoned_total", method=method),
            sample("orchard_entrypoint_calls_total", outcome="abandoned", **entrypoint),
            sample("orchard_entrypoint_duration_seconds_count", **entrypoint))


def test_a_call_taken_only_after_its_caller_gave_up_is_not_run(runner_factory, orchard_config, rpc_as):
    """The replica takes the request from its queue at once, but its only worker is busy with a scheduled job
    until after the caller's timeout: it does not run the call then."""
    before = calls_abandoned("take_many")
    runner_factory({**orchard_config, "max_workers": 1}, BusyNotesService).start()
    runner_factory(orchard_config, CallerService).start()
    with rpc_as() as rpc:
        with pytest.raises(UpstreamError, match="did not answer take_many within 1 s"):
            rpc.caller.take_one("late")
        assert rpc.notes.count() == 0  # answered after the late call had its worker
    abandoned, abandoned_calls, durations = calls_abandoned("take_many")
    assert (abandoned, abandoned_calls, durations) == (before[0] + 1, before[1] + 1, before[2])  # it never ran
    # every method's count is there from the start, so that Prometheus's increase() counts the first one
    assert REGISTRY.get_sample_value("orchard_rpc_calls_abandoned_total", {"service": "notes", "method": "explode"}) == 0


def test_unexpected_errors_reach_callers_as_internal_errors_without_details(runner_factory, orchard_config, rpc_as):
    runner = runner_factory(orchard_config, NotesService)
    runner.start()
    with rpc_as() as rpc:
        with pytest.raises(InternalError) as raised:
            rpc.notes.explode()
    assert "secret-looking" not in str(raised.value) and "reference" in str(raised.value)


def test_a_result_that_cannot_be_sent_reaches_callers_as_an_internal_error_without_it(
        runner_factory, orchard_config, rpc_as):
    runner_factory(orchard_config, NotesService).start()
    with rpc_as() as rpc:
        with pytest.raises(InternalError) as raised:
            rpc.notes.return_unsendable()
        assert rpc.notes.count() == 0  # the service goes on answering, and what the call wrote was rolled back
    assert "secret-looking" not in str(raised.value) and "reference" in str(raised.value)


def test_a_worker_logs_json_lines_naming_its_service_entrypoint_call_and_actor(runner_factory, orchard_config, rpc_as):
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("shared.entrypoints")  # where an unexpected error is logged, inside the worker
    logger.addHandler(handler)
    try:
        runner_factory(orchard_config, NotesService).start()
        with rpc_as() as rpc:
            with pytest.raises(InternalError) as raised:
                rpc.notes.explode()
    finally:
        logger.removeHandler(handler)
    (entry,) = [json.loads(line) for line in lines.getvalue().splitlines()]
    assert (entry["level"], entry["service"], entry["entrypoint"], entry["actor_id"]) == (
        "error", "notes", "explode", ADMIN.id)
    assert entry["call_id"] in str(raised.value)  # the reference the caller was given
    assert "KeyError" in entry["exception"] and entry["time"].endswith("+00:00")


def test_a_refined_error_reaches_callers_as_its_shared_type(runner_factory, orchard_config, rpc_as):
    runner_factory(orchard_config, NotesService).start()
    with rpc_as() as rpc:
        with pytest.raises(Conflict, match="another MDM manages this location") as raised:
            rpc.notes.refuse_as_another_mdm()
    assert type(raised.value) is Conflict


def test_http_entrypoints_map_typed_errors_to_json(runner_factory, orchard_config, rpc_as):
    runner = runner_factory(orchard_config, NotesService)
    runner.start()
    with rpc_as() as rpc:
        rpc.notes.take_note("h1", "over http")
    base = f"http://{orchard_config['SERVICES']['notes']['http_address']}"
    assert httpx.get(f"{base}/notes/h1").text == "over http"
    missing = httpx.get(f"{base}/notes/nope")
    assert missing.status_code == 404 and missing.json() == {"error": "NotFound", "message": "no note nope"}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_storage_commits_on_sqlite_and_postgresql(backend, runner_factory, orchard_config, rpc_as, tmp_path):
    with (postgres_database() if backend == "postgresql" else _sqlite(tmp_path)) as url:
        orchard_config["SERVICES"]["notes"]["database_url"] = url
        runner = runner_factory(orchard_config, NotesService)
        runner.start()
        with rpc_as() as rpc:
            rpc.notes.take_note("p1", "persisted")
            with pytest.raises(ValidationError):
                rpc.notes.take_note("p2", "rolled back", then_fail=True)
            # the insert a concurrent replica loses on a unique key: a Conflict, over RPC and HTTP
            with pytest.raises(Conflict, match="another request changed the same record at the same moment"):
                rpc.notes.take_note("p1", "again")
        answer = httpx.put(f"http://{orchard_config['SERVICES']['notes']['http_address']}/notes/p1", content="again")
        assert answer.status_code == 409 and answer.json()["error"] == "Conflict"
        runner.stop()
        engine = create_engine_for(url)
        with engine.connect() as connection:
            assert [r.note_id for r in connection.execute(sa.select(notes))] == ["p1"]
        engine.dispose()


def test_postgresql_queries_do_not_block_other_workers(runner_factory, orchard_config, rpc_as):
    with postgres_database() as url:
        orchard_config["SERVICES"]["notes"]["database_url"] = url
        runner = runner_factory(orchard_config, NotesService)
        runner.start()
        with rpc_as() as rpc:
            started = time.monotonic()
            replies = [rpc.notes.sleep_in_database.call_async(1.0) for _ in range(2)]
            for reply in replies:
                reply.result()
            elapsed = time.monotonic() - started
        runner.stop()
    assert elapsed < 1.8, f"two concurrent 1 s queries took {elapsed:.2f} s: the driver blocks the event loop"


@pytest.fixture
def replicas_database(orchard_config):
    """Replicas of the sample periodic services share one PostgreSQL database, as replicas must (SQLite serves one
    process); listed before ``runner_factory``, it outlives the replicas."""
    with postgres_database() as url:
        for name in ("ticker", "slowticker"):
            orchard_config["SERVICES"][name]["database_url"] = url
        yield url


def test_a_periodic_job_runs_on_one_replica_at_a_time(replicas_database, runner_factory, orchard_config):
    runner = runner_factory(orchard_config, TickerService)
    runner.start()
    other = runner_factory(orchard_config, TickerService)  # a second replica on the same database
    other.start()
    eventlet.sleep(1.5)
    other.stop()
    runner.stop()  # last: a replica that stops gives its lease up
    holders = job_runs(replicas_database)
    assert len(holders) >= 5 and len(set(holders)) == 1


def test_a_periodic_job_longer_than_its_lease_term_keeps_it(replicas_database, runner_factory, orchard_config,
                                                            monkeypatch):
    """The lease's term is two intervals and the slack (2.2 s here); the job takes 3 s."""
    monkeypatch.setattr(Periodic, "LEASE_SLACK", timedelta(seconds=2))
    monkeypatch.setattr(sample_services, "SLOW_TICK_SECONDS", 3)
    first = runner_factory(orchard_config, SlowTickerService)
    first.start()
    eventlet.sleep(0.5)
    second = runner_factory(orchard_config, SlowTickerService)  # a second replica on the same database
    second.start()
    eventlet.sleep(3.5)
    first.kill()
    second.kill()
    holders = job_runs(replicas_database)
    assert len(holders) >= 1 and len(set(holders)) == 1


def test_a_replica_that_stops_gives_its_lease_up(replicas_database, runner_factory, orchard_config):
    runner = runner_factory(orchard_config, TickerService)
    runner.start()
    eventlet.sleep(0.5)
    runner.stop()
    stopped = time.monotonic()
    before = set(job_runs(replicas_database))
    runner_factory(orchard_config, TickerService).start()
    wait_for(lambda: set(job_runs(replicas_database)) - before, what="the next replica to run the job", timeout=5)
    assert time.monotonic() - stopped < 5  # not the lease's whole term (10.2 s)


def test_a_replica_that_dies_has_its_periodic_job_taken_over_once_its_lease_runs_out(
        replicas_database, runner_factory, orchard_config, monkeypatch):
    """The lease's term is two intervals and the slack (2.2 s here); a killed replica never gives it up."""
    monkeypatch.setattr(Periodic, "LEASE_SLACK", timedelta(seconds=2))
    first = runner_factory(orchard_config, TickerService)
    first.start()
    eventlet.sleep(0.5)
    runner_factory(orchard_config, TickerService).start()  # a second replica, waiting
    eventlet.sleep(0.5)
    killed = time.monotonic()  # before the kill, which may take a while: the lease was renewed at a tick before it
    first.kill()  # no clean stop: the lease stays with the dead replica until its term ends
    (holder,) = set(job_runs(replicas_database))
    wait_for(lambda: set(job_runs(replicas_database)) - {holder}, what="the second replica to run the job",
             timeout=15)
    assert 1.2 < time.monotonic() - killed < 4.5


def test_a_periodic_job_survives_its_database_going_away(orchard_config, runner_factory):
    """PostgreSQL refuses connections for a while (a restart, a failover): ticks are skipped, not fatal,
    the job resumes when the database is back, and the service still stops promptly."""
    with postgres_database() as url:  # entered before the runner, so the database outlives the service
        orchard_config["SERVICES"]["ticker"]["database_url"] = url
        name = url.rsplit("/", 1)[1]
        admin = sa.create_engine("postgresql+psycopg2://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT")
        engine = create_engine_for(url)

        def ticks() -> int:
            with engine.connect() as connection:
                return connection.execute(sa.select(sa.func.count()).select_from(notes)).scalar_one()

        runner = runner_factory(orchard_config, TickerService)
        runner.start()
        wait_for(lambda: ticks() >= 2, what="the job to run")
        engine.dispose()
        with admin.connect() as connection:
            connection.execute(sa.text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false'))
            connection.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"),
                               {"name": name})
        eventlet.sleep(1.0)  # about ten ticks find the database away
        with admin.connect() as connection:
            connection.execute(sa.text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true'))
        before = ticks()
        wait_for(lambda: ticks() >= before + 2, what="the job to run again")

        started = time.monotonic()
        with eventlet.Timeout(15):
            runner.stop()
        assert time.monotonic() - started < 15
        engine.dispose()
        admin.dispose()


def _sqlite(tmp_path):
    from contextlib import nullcontext
    return nullcontext(f"sqlite:///{tmp_path}/storage.db")


def job_runs(url: str) -> list[str]:
    """The replica that ran each recorded run of a sample periodic job, oldest first."""
    engine = create_engine_for(url)
    try:
        with engine.connect() as connection:
            return [row.holder for row in connection.execute(sa.select(notes.c.holder).order_by(notes.c.note_id))]
    finally:
        engine.dispose()


def publish_raw(config, source, event_type, payload):
    Publisher(config["AMQP_URI"], use_confirms=True).publish(
        payload, exchange=get_event_exchange(source, config), routing_key=event_type)


def peek(config, queue_name):
    """Read a queue's messages and put them back."""
    messages = []
    with Connection(config["AMQP_URI"]) as connection:
        channel = connection.channel()
        try:
            channel.queue_declare(queue_name, passive=True)
        except Exception:
            return []
        held = []
        while (message := channel.basic_get(queue_name, no_ack=False)) is not None:
            held.append(message)
            messages.append({"headers": message.headers, "payload": json.loads(message.body)})
        for message in held:
            channel.basic_reject(message.delivery_tag, requeue=True)
    return messages


def test_a_service_whose_database_is_gone_stops_at_once(orchard_config, runner_factory):
    """The outbox relay pausing after a failed pass (the database dropped) ends its pause when the service stops."""
    with postgres_database() as url:
        orchard_config["SERVICES"]["notes"]["database_url"] = url
        runner = runner_factory(orchard_config, NotesService)
        runner.start()
        (database,) = [extension for extension in get_container(runner, NotesService).extensions
                       if isinstance(extension, Database)]
        admin = sa.create_engine("postgresql+psycopg2://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
        admin.dispose()
        database.relay.wake()
        eventlet.sleep(0.3)  # that pass fails, and the relay pauses (2 s) before the next
        started = time.monotonic()
        database.stop()
        assert time.monotonic() - started < 0.5
