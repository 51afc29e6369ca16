"""On SQLite a process has one database connection: work waiting on Apple, another service or a mail relay
must not hold it, or every other request and the metrics page of that service wait as long."""
from __future__ import annotations

import time
from collections import Counter
from datetime import timedelta

import eventlet
import httpx
import pytest
from nameko.rpc import rpc as nameko_rpc

from apple_sandbox.vpp import VppSandbox
from services.roster.service import RosterService
from services.vpp import operations
from services.vpp.adapters import tables as vpp_tables
from services.vpp.service import VppService
from shared.contracts.roster import UserDeleted
from shared.errors import Conflict, UpstreamError
from shared.storage import create_engine_for, database_now
from tests.reliability.conftest import publish
from tests.vpp.conftest import served
from tests.vpp.test_vpp_service_invites import known_to_vpp, user
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

LEASES = vpp_tables.metadata.tables["leases"]
HOLD_SECONDS = 3  # the longest a held wait lasts: twice the 1.5 s a quick answer may take


class HeldAnswers:
    """Apple's stand-in, where chosen requests (``"POST users/create"``) wait until let go, as at a hanging Apple."""

    def __init__(self, app):
        self.app = app
        self.held: set[str] = set()
        self.waiting: Counter[str] = Counter()

    def __call__(self, environ, start_response):
        request = f"{environ['REQUEST_METHOD']} {environ['PATH_INFO'].split('/mdm/v2/', 1)[-1]}"
        if request in self.held:
            self.waiting[request] += 1
            while request in self.held:
                time.sleep(0.02)
        return self.app(environ, start_response)


@pytest.fixture
def held_answers():
    return HeldAnswers(VppSandbox(page_size=1000, event_polls=1))


@pytest.fixture
def vpp_sandbox(held_answers):
    """The vpp tests' Apple sandbox, behind ``held_answers``."""
    yield from served(held_answers)


class SilentRelay:
    """A mail relay that takes connections (``accepted`` in all) and says nothing until it hangs up (``hang_up``)."""

    def __init__(self):
        self.server = eventlet.listen(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.connections: list = []
        self.accepted = 0
        self.acceptor = eventlet.spawn(self._accept)

    def _accept(self):
        while True:
            self.connections.append(self.server.accept()[0])
            self.accepted += 1

    def hang_up(self):
        while self.connections:
            self.connections.pop().close()

    def close(self):
        self.acceptor.kill()
        self.server.close()


class EnrollmentStandIn:
    """Enrollment's scope lookup, answering once ``holding`` is cleared."""

    name = "enrollment"
    holding = True
    asked = 0

    @nameko_rpc
    def resolve_scope(self, scope):
        EnrollmentStandIn.asked += 1
        while EnrollmentStandIn.holding:
            eventlet.sleep(0.02)
        return [{"serial_number": "S9", "locations": []}]


def answers_quickly(call) -> float:
    started = time.monotonic()
    call()
    return time.monotonic() - started


def keeps_answering(config, rpc, waiting, let_go, *, hold_at_least: float = 0) -> None:
    """Once work waits (``waiting()``), the service answers another request and its metrics at once. Then the wait
    ends (``let_go``), after ``hold_at_least`` seconds; at the latest ``HOLD_SECONDS`` after it began, so that a
    service that does not answer meanwhile fails the check rather than hangs."""
    wait_for(waiting, what="the work waiting")
    began = time.monotonic()
    later = eventlet.spawn_after(HOLD_SECONDS, let_go)
    metrics = f"http://127.0.0.1:{config['SERVICES']['vpp']['metrics_port']}/metrics"
    try:
        assert answers_quickly(lambda: rpc.vpp.list_content_tokens()) < 1.5
        assert answers_quickly(lambda: httpx.get(metrics, timeout=10).raise_for_status()) < 1.5
        eventlet.sleep(max(0.0, hold_at_least - (time.monotonic() - began)))
    finally:
        later.cancel()
        let_go()


def while_apple_holds(held_answers, request, config, rpc, start):
    """Start work (``start()``) that asks Apple ``request``; the service keeps answering while it waits. What
    ``start`` returned."""
    held_answers.held.add(request)
    held_answers.waiting[request] = 0
    work = start()
    keeps_answering(config, rpc, lambda: held_answers.waiting[request], lambda: held_answers.held.discard(request))
    return work


def synced_token(vpp_sandbox, rpc_as, **options) -> str:
    """A token added and synced (so no scheduled sync asks Apple meanwhile), holding app 111 (10 licences, on
    devices A and B): its id."""
    stoken = vpp_sandbox.issue_token(locationName="North Campus")
    vpp_sandbox.add_asset(stoken, "111", 10)
    vpp_sandbox.post("assignments", sToken=stoken, adamId="111", serialNumbers=["A", "B"])
    with rpc_as() as rpc:
        token_id = rpc.vpp.add_content_token(stoken, **options)["id"]
        rpc.vpp.sync_assets(token_id)
    return token_id


@pytest.fixture
def token_id(runner_factory, vpp_config, vpp_sandbox, rpc_as):
    """The running vpp service and a ``synced_token`` that lets teachers choose study apps."""
    runner_factory(vpp_config, VppService).start()
    return synced_token(vpp_sandbox, rpc_as, allow_teacher_study_apps=True)


@pytest.fixture
def invited(token_id, vpp_config, rpc_as):
    """``token_id`` with ann invited and registered with Apple."""
    known_to_vpp(vpp_config, user("ann"))
    with rpc_as() as rpc:
        assert rpc.vpp.invite_users(token_id, ["ann"])["registered"] == 1
    return token_id


def test_a_token_sync_waiting_on_apple_leaves_the_service_answering(runner_factory, vpp_config, vpp_sandbox,
                                                                     held_answers, rpc_as):
    runner_factory(vpp_config, VppService).start()
    stoken = vpp_sandbox.issue_token(locationName="North Campus")
    vpp_sandbox.add_asset(stoken, "100", 5)
    with rpc_as(timeout=60) as rpc:
        token_id = rpc.vpp.add_content_token(stoken)["id"]
        syncing = while_apple_holds(held_answers, "GET assets", vpp_config, rpc,
                                    lambda: rpc.vpp.sync_assets.call_async(token_id))
        assert syncing.result()["assets"] == 1


def test_welcome_mails_waiting_on_a_silent_relay_leave_the_roster_answering(runner_factory, orchard_config, rpc_as):
    silent = eventlet.listen(("127.0.0.1", 0))  # takes the connection and never greets
    accepted = []
    acceptor = eventlet.spawn(lambda: accepted.append(silent.accept()))
    orchard_config["SERVICES"]["roster"].update(smtp_host="127.0.0.1", smtp_port=silent.getsockname()[1])
    try:
        runner_factory(orchard_config, RosterService).start()
        with rpc_as() as rpc:
            batch = {"source": "api", "locations": [{"location_id": "north", "name": "North"}],
                     "users": [{"user_id": "w1", "user_type": "student", "name": "W One", "locations": ["north"],
                                "email": "w1@school.example", "welcome_email": True}]}
            rpc.roster.apply_plan(rpc.roster.preview_records(batch)["plan_id"])
            wait_for(lambda: accepted, what="the mail job at the relay")
            assert answers_quickly(lambda: rpc.roster.list_users()) < 1.5
            assert rpc.roster.get_user("w1")["welcome_mail"]["status"] == "waiting"
    finally:
        acceptor.kill()
        silent.close()


def test_licence_assignments_waiting_on_apple_leave_the_service_answering(token_id, vpp_config, held_answers, rpc_as):
    with rpc_as(timeout=60) as rpc:
        assigning = while_apple_holds(held_answers, "POST assets/associate", vpp_config, rpc, lambda: (
            rpc.vpp.assign_licenses.call_async(token_id, "111", serial_numbers=["C"])))
        assert assigning.result()["assigned"]["serial_numbers"] == ["C"]
        assert rpc.vpp.get_asset(token_id, "111")["assigned"] == 3


def test_study_app_installs_waiting_on_apple_leave_the_service_answering(token_id, vpp_config, held_answers, rpc_as):
    with rpc_as(timeout=60) as rpc:
        installing = while_apple_holds(held_answers, "POST assets/associate", vpp_config, rpc, lambda: (
            rpc.vpp.install_study_apps.call_async(token_id, ["111"], ["S1", "S2"])))
        assert [app["assigned"]["serial_numbers"] for app in installing.result()] == [["S1", "S2"]]
        assert rpc.vpp.get_asset(token_id, "111")["assigned"] == 4


def test_licence_revocations_waiting_on_apple_leave_the_service_answering(token_id, vpp_config, held_answers, rpc_as):
    with rpc_as(timeout=60) as rpc:
        revoking = while_apple_holds(held_answers, "POST assets/disassociate", vpp_config, rpc, lambda: (
            rpc.vpp.revoke_licenses.call_async(token_id, "111", serial_numbers=["A"])))
        assert revoking.result()["revoked"]["serial_numbers"] == ["A"]
        assert rpc.vpp.get_asset(token_id, "111")["serial_numbers"] == ["B"]


def test_revoking_every_licence_waiting_on_apple_leaves_the_service_answering(token_id, vpp_config, held_answers,
                                                                              rpc_as):
    with rpc_as(timeout=60) as rpc:
        revoking = while_apple_holds(held_answers, "POST assets/disassociate", vpp_config, rpc, lambda: (
            rpc.vpp.revoke_all.call_async(token_id, dry_run=False)))
        assert (revoking.result()["count"], revoking.result()["failures"]) == (2, [])
        assert rpc.vpp.get_asset(token_id, "111")["assigned"] == 0


def test_a_licence_scope_waiting_on_enrollment_leaves_the_service_answering(runner_factory, vpp_config, vpp_sandbox,
                                                                            rpc_as):
    EnrollmentStandIn.holding, EnrollmentStandIn.asked = True, 0
    runner_factory(vpp_config, VppService, EnrollmentStandIn).start()
    token_id = synced_token(vpp_sandbox, rpc_as)
    with rpc_as(timeout=60) as rpc:
        assigning = rpc.vpp.assign_licenses.call_async(token_id, "111", scope={"classes": ["7A"]})
        keeps_answering(vpp_config, rpc, lambda: EnrollmentStandIn.asked,
                        lambda: setattr(EnrollmentStandIn, "holding", False))
        assert assigning.result()["assigned"]["serial_numbers"] == ["S9"]


def test_adding_a_token_waiting_on_apple_leaves_the_service_answering(runner_factory, vpp_config, vpp_sandbox,
                                                                      held_answers, rpc_as):
    runner_factory(vpp_config, VppService).start()
    stoken = vpp_sandbox.issue_token(locationName="North Campus")
    with rpc_as(timeout=60) as rpc:
        adding = while_apple_holds(held_answers, "POST client/config", vpp_config, rpc, lambda: (
            rpc.vpp.add_content_token.call_async(stoken)))  # claiming the location
        assert adding.result()["location_name"] == "North Campus"


def test_renewing_a_token_waiting_on_apple_leaves_the_service_answering(token_id, vpp_config, vpp_sandbox,
                                                                        held_answers, rpc_as):
    renewal = vpp_sandbox.issue_token(locationName="North Campus")
    with rpc_as(timeout=60) as rpc:
        renewing = while_apple_holds(held_answers, "GET client/config", vpp_config, rpc, lambda: (
            rpc.vpp.renew_content_token.call_async(token_id, renewal)))
        assert renewing.result()["status"] == "ok"


def test_an_invite_waiting_on_apple_leaves_the_service_answering(token_id, vpp_config, held_answers, rpc_as):
    known_to_vpp(vpp_config, user("ann"))
    with rpc_as(timeout=60) as rpc:
        inviting = while_apple_holds(held_answers, "POST users/create", vpp_config, rpc, lambda: (
            rpc.vpp.invite_users.call_async(token_id, ["ann"])))
        assert (inviting.result()["invited"], inviting.result()["registered"]) == (1, 1)


def test_the_registration_job_waiting_on_apple_leaves_the_service_answering(runner_factory, vpp_config, vpp_sandbox,
                                                                            held_answers, rpc_as):
    runner_factory(vpp_config, VppService).start()
    token_id = synced_token(vpp_sandbox, rpc_as, auto_invite_method="managed_apple_id")
    with rpc_as(timeout=60) as rpc:
        while_apple_holds(held_answers, "POST users/create", vpp_config, rpc, lambda: publish(vpp_config, user("ann")))
        wait_for(lambda: [i["registration"] for i in rpc.vpp.list_invites(token_id)] == ["registered"],
                 what="ann registered")


def test_invites_read_from_apple_when_listed_leave_the_service_answering(invited, vpp_config, held_answers, rpc_as):
    with rpc_as(timeout=60) as rpc:  # ann's invite code is read when her invite is first listed
        listing = while_apple_holds(held_answers, "GET users", vpp_config, rpc, lambda: (
            rpc.vpp.list_invites.call_async(invited)))
        assert [i["user_id"] for i in listing.result()] == ["ann"]


def test_revoking_an_invite_waiting_on_apple_leaves_the_service_answering(invited, vpp_config, held_answers, rpc_as):
    with rpc_as(timeout=60) as rpc:
        revoking = while_apple_holds(held_answers, "POST users/retire", vpp_config, rpc, lambda: (
            rpc.vpp.revoke_invites.call_async(invited, ["ann"])))
        assert revoking.result() == {"revoked": 1, "failures": []}


def test_retiring_a_deleted_user_waiting_on_apple_leaves_the_service_answering(invited, vpp_config, held_answers,
                                                                                rpc_as):
    gone = UserDeleted(user_id="ann", user_type="student", source="csv", locations=["north"])
    with rpc_as(timeout=60) as rpc:
        while_apple_holds(held_answers, "POST users/retire", vpp_config, rpc, lambda: publish(vpp_config, gone))
        wait_for(lambda: [(i["status"], i["registration"]) for i in rpc.vpp.list_invites(invited)] == [
            ("revoked", "retired")], what="ann retired")


@pytest.fixture
def silent_relay(runner_factory, vpp_config, vpp_sandbox, rpc_as):
    """The running vpp service mailing through a ``SilentRelay``, and a ``synced_token`` (its id); dan is known to
    vpp, with an e-mail address."""
    relay = SilentRelay()
    vpp_config["SERVICES"]["vpp"].update(smtp_host="127.0.0.1", smtp_port=relay.port)
    runner_factory(vpp_config, VppService).start()
    known_to_vpp(vpp_config, user("dan", managed=False, email="dan@home.example"))
    yield relay, synced_token(vpp_sandbox, rpc_as)
    relay.close()


def test_invite_mails_waiting_on_a_silent_relay_leave_the_service_answering(silent_relay, vpp_config, rpc_as):
    relay, token_id = silent_relay
    with rpc_as(timeout=60) as rpc:
        inviting = rpc.vpp.invite_users.call_async(token_id, ["dan"], "email")
        # held long enough for the mail job, running every second, to have come by twice
        keeps_answering(vpp_config, rpc, lambda: relay.connections, relay.hang_up, hold_at_least=HOLD_SECONDS)
        invited = inviting.result()
        assert invited["registered"] == 1 and "SMTP_HOST/SMTP_PORT" in invited["mail_error"]
        assert rpc.vpp.list_invites(token_id)[0]["mail"] == "retrying"
    assert relay.accepted == 1  # the mail job, running every second, left dan's mail to the call mailing it


def test_invite_mails_resent_waiting_on_a_silent_relay_leave_the_service_answering(silent_relay, vpp_config, rpc_as):
    relay, token_id = silent_relay
    with rpc_as(timeout=60) as rpc:
        inviting = rpc.vpp.invite_users.call_async(token_id, ["dan"], "email")
        wait_for(lambda: relay.connections, what="the invite mail at the relay")
        relay.hang_up()
        assert inviting.result()["mail_error"]

        resending = rpc.vpp.resend_invites.call_async(token_id, ["dan"])
        keeps_answering(vpp_config, rpc, lambda: relay.connections, relay.hang_up)
        with pytest.raises(UpstreamError, match="Resend them once the relay works again"):
            resending.result()


@pytest.fixture
def one_serial_a_request(held_answers):
    """Apple takes one serial number a request (asked before the token is added, which reads the limits)."""
    held_answers.app.limits["maxSerialNumbers"] = 1


def take_turn(config, token_id: str, adam_id: str) -> None:
    """Another change takes the asset's licence turn, as if the holder had not renewed it in time."""
    engine = create_engine_for(config["SERVICES"]["vpp"]["database_url"])
    with engine.begin() as connection:
        connection.execute(LEASES.update().where(LEASES.c.name == f"vpp.licences:{token_id}:{adam_id}").values(
            holder="another change", expires_at=database_now(engine.dialect.name, timedelta(minutes=1))))
    engine.dispose()


def test_a_licence_change_whose_turn_was_taken_asks_apple_for_nothing_more(
        one_serial_a_request, token_id, vpp_config, held_answers, rpc_as, monkeypatch):
    monkeypatch.setattr(operations, "LICENCE_TURN", timedelta(seconds=0.6))  # renewed every 0.2 s
    with rpc_as(timeout=60) as rpc:
        held_answers.held.add("POST assets/associate")
        assigning = rpc.vpp.assign_licenses.call_async(token_id, "111", serial_numbers=["C", "D"])
        wait_for(lambda: held_answers.waiting["POST assets/associate"], what="the first request at Apple")
        take_turn(vpp_config, token_id, "111")
        eventlet.sleep(0.5)  # a renewal finds the turn taken
        held_answers.held.discard("POST assets/associate")
        with pytest.raises(UpstreamError, match=r"Another licence change to app 111 took its turn .* Before that, "
                                                r"1 device and 0 user licence\(s\) were assigned \(1 of 2 requests\)"):
            assigning.result()
        assert held_answers.waiting["POST assets/associate"] == 1  # D was never asked for
        assert rpc.vpp.get_asset(token_id, "111")["assigned"] == 3  # A, B and C


def test_a_licence_change_kept_waiting_for_its_turn_is_refused_in_time_and_changes_nothing(
        token_id, vpp_config, held_answers, rpc_as, monkeypatch):
    monkeypatch.setattr(operations, "TURN_WAIT_LIMIT", timedelta(seconds=1))
    with rpc_as(timeout=60) as rpc:
        held_answers.held.add("POST assets/associate")
        first = rpc.vpp.assign_licenses.call_async(token_id, "111", serial_numbers=["C"])
        wait_for(lambda: held_answers.waiting["POST assets/associate"], what="the first change at Apple")
        with pytest.raises(Conflict, match="Another licence change to app 111 is still running; nothing was changed"):
            rpc.vpp.assign_licenses(token_id, "111", serial_numbers=["D"])
        held_answers.held.discard("POST assets/associate")
        assert first.result()["assigned"]["serial_numbers"] == ["C"]
        assert held_answers.waiting["POST assets/associate"] == 1
        assert rpc.vpp.get_asset(token_id, "111")["assigned"] == 3
