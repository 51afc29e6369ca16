"""A service stopping while events gather into a batch: none is lost, none is dead-lettered for the stop."""
import pytest
from nameko.standalone.events import event_dispatcher

from services.vpp.adapters.batched_events import BatchedEventHandler
from services.vpp.service import VppService
from shared.contracts.roster import UserImported
from tests.vpp.test_vpp_service_invites import count_rows, ready_messages, user
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

QUEUE = "evt-roster-UserImported--vpp.on_user_imported"


def gathering(runner):
    """The import handler, made to wait long for a batch to fill: the stop comes while events are gathered."""
    [container] = runner.containers
    [handler] = [e for e in container.entrypoints
                 if isinstance(e, BatchedEventHandler) and e.method_name == "on_user_imported"]
    handler.max_wait = 30
    return handler


def publish_while_gathering(config, handler, payloads):
    dispatch = event_dispatcher(config)
    for payload in payloads:
        dispatch(UserImported.SOURCE, UserImported.TYPE, payload)
    wait_for(lambda: len(handler._pending) == len(payloads), what="the events gathered, not yet handled")


def test_events_gathered_when_the_service_stops_are_handled_before_it_stops(vpp_config, vpp_runner):
    handler = gathering(vpp_runner)
    publish_while_gathering(vpp_config, handler, [user(f"u{n}").to_payload() for n in range(3)])

    vpp_runner.stop()
    assert count_rows(vpp_config, "known_users") == 3
    assert ready_messages(vpp_config, QUEUE) == 0  # acknowledged


def test_a_batch_failing_as_the_service_stops_goes_back_to_the_queue(vpp_config, vpp_runner, runner_factory):
    """Its events are not retried one by one during the stop: all go back, and after the restart the good ones are
    handled and only the bad one is dead-lettered."""
    handler = gathering(vpp_runner)
    bad = {**user("bad").to_payload(), "user_type": 7}  # not text: the contract refuses it
    publish_while_gathering(vpp_config, handler, [user("good0").to_payload(), bad, user("good1").to_payload()])

    vpp_runner.stop()
    assert count_rows(vpp_config, "known_users") == 0
    assert wait_for(lambda: ready_messages(vpp_config, QUEUE) == 3, what="the three events back in the queue")
    assert ready_messages(vpp_config, f"{QUEUE}.dead-letters") == 0

    runner_factory(vpp_config, VppService).start()
    wait_for(lambda: count_rows(vpp_config, "known_users") == 2, what="the good users handled after the restart")
    assert wait_for(lambda: ready_messages(vpp_config, f"{QUEUE}.dead-letters"), what="the bad event dead-lettered") == 1
    assert count_rows(vpp_config, "known_users") == 2
