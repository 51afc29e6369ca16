"""Invites through the running vpp service: UserImported over RabbitMQ, e-mail through SMTP, Apple's notifications."""
import csv
import io

import httpx
import pytest
import sqlalchemy as sa
from amqp.exceptions import NotFound
from kombu import Connection, Queue
from nameko.standalone.events import event_dispatcher

from shared.contracts.roster import UserImported
from shared.errors import PermissionDenied, UpstreamError, ValidationError
from shared.storage import create_engine_for
from tests.conftest import replicas_on_postgresql
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def publish(config, *events):
    dispatch = event_dispatcher(config)
    for event in events:
        dispatch(UserImported.SOURCE, UserImported.TYPE, event.to_payload())


def user(user_id, locations=("north",), managed=True, email=None, **kw):
    return UserImported(user_id=user_id, user_type="student", name=user_id.title(), source="csv", locations=list(locations),
                        managed_apple_id=f"{user_id}@north.appleid.example" if managed else None, email=email, **kw)


def known_to_vpp(config, *events):
    """Publish the roster's imports and wait until vpp knows the users."""
    before = count_rows(config, "known_users")
    publish(config, *events)
    wait_for(lambda: count_rows(config, "known_users") == before + len(events), what="the users known to vpp")


def metric(config, line_start):
    text = httpx.get(f"http://127.0.0.1:{config['SERVICES']['vpp']['metrics_port']}/metrics").text
    return [line for line in text.splitlines() if line.startswith(line_start)]


def ready_messages(config, queue_name):
    with Connection(config["AMQP_URI"]) as connection:
        try:
            return Queue(queue_name)(connection.default_channel).queue_declare(passive=True).message_count
        except NotFound:  # a dead-letter queue is declared with its first message
            return 0


def count_rows(config, table):
    engine = create_engine_for(config["SERVICES"]["vpp"]["database_url"])
    try:
        with engine.connect() as connection:
            return connection.execute(sa.text(f"select count(*) from {table}")).scalar()
    finally:
        engine.dispose()


def test_imported_users_are_invited_exactly_once(vpp_sandbox, vpp_config, vpp_runner, rpc_as):
    stoken = vpp_sandbox.issue_token(locationName="North Campus")
    with rpc_as() as rpc:
        token_id = rpc.vpp.add_content_token(stoken, locations=["north"], auto_invite_method="managed_apple_id")["id"]

    ann = user("ann")
    publish(vpp_config, ann, ann, user("bob", locations=["south"]), user("cat", managed=False), user("ann"))
    wait_for(lambda: count_rows(vpp_config, "known_users") == 3, what="three users known")
    wait_for(lambda: metric(vpp_config, 'orchard_events_duplicate_total{handler="on_user_imported"'), what="the redelivery skipped")
    wait_for(lambda: count_rows(vpp_config, "inbox") == 4, what="four distinct events handled")

    with rpc_as() as rpc:
        # Apple cannot tell ann's invite code yet: the stored invite is listed all the same, saying why it has no link
        vpp_sandbox.fault("users", status=503, retryAfter=0, times=4)
        (waiting,) = wait_for(lambda: [i for i in rpc.vpp.list_invites(token_id) if i["registration"] == "registered"],
                              what="ann's invite registered")
        assert waiting["invite_url"] is None and "HTTP 503" in waiting["invite_url_error"]
        invites = wait_for(lambda: [i for i in rpc.vpp.list_invites(token_id) if i["invite_url"]], what="ann's invite")
    assert [i["user_id"] for i in invites] == ["ann"] and invites[0]["invite_url_error"] is None
    assert invites[0]["managed_apple_id"] == "ann@north.appleid.example" and invites[0]["status"] == "pending"
    assert "inviteCode=" in invites[0]["invite_url"] and "%25" not in invites[0]["invite_url"]
    state = vpp_sandbox.state(stoken)
    assert state["users"] == 1 and state["requests"]["users/create"] == 1  # registered once, never re-sent
    assert metric(vpp_config, "orchard_vpp_invites{") == [f'orchard_vpp_invites{{status="pending",token_id="{token_id}"}} 1.0']
    assert any('status="ok"' in line and line.endswith(" 1.0") for line in metric(vpp_config, "orchard_vpp_token_status{"))
    assert metric(vpp_config, 'orchard_vpp_apple_calls_total{endpoint="users/create",error="none"}')
    vpp_runner.stop()  # every delivery was acknowledged: none returns to the queue
    assert ready_messages(vpp_config, "evt-roster-UserImported--vpp.on_user_imported") == 0


def test_email_invites_acceptance_and_revocation(vpp_sandbox, vpp_config, vpp_runner, rpc_as, smtp_sink):
    stoken = vpp_sandbox.issue_token(locationName="North Campus", orgName="North District")
    publish(vpp_config, user("dan", managed=False, email="dan@home.example"), user("eve", managed=False, email="eve@home.example"),
            user("fay", managed=False))
    wait_for(lambda: count_rows(vpp_config, "known_users") == 3, what="the roster's users")
    with rpc_as() as rpc:
        token_id = rpc.vpp.add_content_token(stoken)["id"]
        with pytest.raises(ValidationError, match="not in the roster"):
            rpc.vpp.invite_users(token_id, ["nobody"], "email")
        with pytest.raises(ValidationError, match="no email"):
            rpc.vpp.invite_users(token_id, ["fay"], "email")
        result = rpc.vpp.invite_users(token_id, ["dan", "eve"], "email")
        assert (result["invited"], result["registered"], result["failures"], result["mail_error"]) == (2, 2, [], None)
        assert rpc.vpp.invite_users(token_id, ["dan"], "email")["already_invited"] == ["dan"]

        mails = {m.recipients[0]: m.message for m in smtp_sink.messages}
        assert set(mails) == {"dan@home.example", "eve@home.example"}
        invites = {i["user_id"]: i for i in rpc.vpp.list_invites(token_id, status="pending")}
        assert invites["dan"]["invite_url"] in mails["dan@home.example"].get_content()
        assert "North District" in mails["dan@home.example"]["Subject"]

        # dan accepts with his Apple ID: Apple notifies us (bearer-checked) and the invite is accepted
        vpp_sandbox.post("users/accept", sToken=stoken, clientUserId="dan")
        wait_for(lambda: rpc.vpp.list_invites(token_id, status="accepted"), what="Apple's USER_ASSOCIATED notification")
        assert rpc.vpp.resend_invites(token_id)["resent"] == 1  # eve only: dan has accepted
        assert len(smtp_sink.messages) == 3

        exported = list(csv.DictReader(io.StringIO(rpc.vpp.export_invites(token_id))))
        assert {(r["user_id"], r["status"]) for r in exported} == {("dan", "accepted"), ("eve", "pending")}

        assert rpc.vpp.revoke_invites(token_id, ["eve"]) == {"revoked": 1, "failures": []}
        assert [i["user_id"] for i in rpc.vpp.list_invites(token_id, status="revoked")] == ["eve"]
    assert vpp_sandbox.state(stoken)["registered"] == 0  # dan associated, eve retired


def test_invites_stay_within_the_tokens_locations_and_a_leader_lists_those_of_theirs(vpp_sandbox, vpp_config, vpp_runner,
                                                                                     rpc_as):
    from shared.auth import Actor

    north_only = vpp_sandbox.issue_token(locationName="North Campus")
    both = vpp_sandbox.issue_token(locationName="District Office")
    known_to_vpp(vpp_config, user("ann"), user("bob", locations=["south"]))
    with rpc_as() as rpc:
        north_id = rpc.vpp.add_content_token(north_only, locations=["north"])["id"]
        both_id = rpc.vpp.add_content_token(both, locations=["north", "south"])["id"]
        assert rpc.vpp.invite_users(both_id, ["ann", "bob"])["registered"] == 2
        vpp_sandbox.add_asset(both, "111", 3)
        rpc.vpp.sync_assets(both_id)
        rpc.vpp.assign_licenses(both_id, "111", user_ids=["ann", "bob"])
    with rpc_as(Actor("leader@school.example", "location_leader", ("north",))) as rpc:
        assert rpc.vpp.get_asset(both_id, "111")["user_ids"] == ["ann"]  # bob holds one too, at his location
        with pytest.raises(PermissionDenied, match="user bob is at location\\(s\\) south"):
            rpc.vpp.invite_users(north_id, ["ann", "bob"])
        assert rpc.vpp.list_invites(north_id) == [] and vpp_sandbox.state(north_only)["users"] == 0
        assert [i["user_id"] for i in rpc.vpp.list_invites(both_id)] == ["ann"]  # bob is not at their location
        assert [r["user_id"] for r in csv.DictReader(io.StringIO(rpc.vpp.export_invites(both_id)))] == ["ann"]
    with rpc_as() as rpc:
        assert [i["user_id"] for i in rpc.vpp.list_invites(both_id)] == ["ann", "bob"]


def test_an_invite_apple_fails_changes_nothing(vpp_sandbox, vpp_config, vpp_runner, rpc_as, capfd):
    from nameko.testing.services import entrypoint_hook
    from nameko.testing.utils import get_container

    from services.vpp.service import VppService

    stoken = vpp_sandbox.issue_token(locationName="North Campus")
    known_to_vpp(vpp_config, user("ann"))
    with rpc_as() as rpc:
        token_id = rpc.vpp.add_content_token(stoken)["id"]
        vpp_sandbox.fault("users/create", status=503, retryAfter=0, times=4)  # the first try and the client's 3 retries
        with pytest.raises(UpstreamError, match="HTTP 503"):
            rpc.vpp.invite_users(token_id, ["ann"])
        with entrypoint_hook(get_container(vpp_runner, VppService), "register_invites") as register_invites:
            register_invites()  # the job that registers queued invites finds none
        assert rpc.vpp.list_invites(token_id) == [] and count_rows(vpp_config, "invites") == 0
        assert vpp_sandbox.state(stoken)["users"] == 0
        assert not [e for e in rpc.vpp.audit_log(f"content_token:{token_id}") if e["action"] == "invites.sent"]

        assert rpc.vpp.invite_users(token_id, ["ann"])["registered"] == 1  # Apple answers again: the same call works
    assert vpp_sandbox.state(stoken)["users"] == 1
    assert "Traceback" not in capfd.readouterr().err  # the failure was the caller's to see, not printed by eventlet


def test_one_invite_asked_of_two_replicas_at_once_is_sent_and_counted_once(runner_factory, vpp_config, vpp_sandbox,
                                                                           rpc_as):
    from services.vpp.service import VppService

    with replicas_on_postgresql(runner_factory, vpp_config, VppService):
        stoken = vpp_sandbox.issue_token(locationName="North Campus")
        people = [user(f"u{n}") for n in range(5)]
        known_to_vpp(vpp_config, *people)
        with rpc_as() as rpc:
            token_id = rpc.vpp.add_content_token(stoken)["id"]
            replies = [rpc.vpp.invite_users.call_async(token_id, [p.user_id for p in people]) for _ in range(2)]
            outcomes = [reply.result() for reply in replies]
            assert sorted((o["invited"], len(o["already_invited"])) for o in outcomes) == [(0, 5), (5, 0)], outcomes
            sent = [e for e in rpc.vpp.audit_log(f"content_token:{token_id}") if e["action"] == "invites.sent"]
            assert [e["details"]["users"] for e in sent] == [5]
    assert vpp_sandbox.state(stoken)["users"] == 5


def notification_secret(sandbox, stoken):
    """The bearer token Orchard gave Apple for its notifications, as Apple's client/config shows it."""
    answer = httpx.get(f"{sandbox.api_url}client/config", headers={"Authorization": f"Bearer {stoken}"}).json()
    return answer["notificationAuthToken"]


@pytest.fixture
def notified_token(vpp_sandbox, vpp_config, vpp_runner, rpc_as):
    """A synced content token holding 3 licences of app 111: its sToken, id and the URL Apple notifies."""
    stoken = vpp_sandbox.issue_token(locationName="North Campus")
    vpp_sandbox.add_asset(stoken, "111", 3)
    with rpc_as() as rpc:
        token_id = rpc.vpp.add_content_token(stoken)["id"]
        rpc.vpp.sync_assets(token_id)
    return stoken, token_id, f"http://{vpp_config['SERVICES']['vpp']['http_address']}/vpp/notifications/{token_id}"


def test_notifications_are_bearer_checked_and_update_counts(notified_token, vpp_sandbox, rpc_as):
    stoken, token_id, url = notified_token
    with rpc_as() as rpc:
        refused = httpx.post(url, json={"notificationType": "TEST_NOTIFICATION"}, headers={"Authorization": "Bearer wrong"})
        assert refused.status_code == 403
        vpp_sandbox.add_asset(stoken, "111", 8)  # five more bought: Apple sends ASSET_COUNT
        wait_for(lambda: rpc.vpp.get_asset(token_id, "111")["total"] == 8, what="the ASSET_COUNT notification")
        assert rpc.vpp.get_asset(token_id, "111")["available"] == 8

        secret = notification_secret(vpp_sandbox, stoken)
        count = {"notificationType": "ASSET_COUNT", "notification": {"adamId": "111", "pricingParam": "STDQ", "countDelta": 1},
                 "notificationId": "0b6c7d3e-2f1a-4c5b-9e8d-7a6f5e4d3c2b"}
        assert httpx.post(url, json=count, headers={"Authorization": f"Digest {secret}"}).status_code == 403  # not Bearer
        for _ in range(2):  # Apple sends it again when our answer did not reach it: counted once
            assert httpx.post(url, json=count, headers={"Authorization": f"Bearer {secret}"}).status_code == 200
        assert rpc.vpp.get_asset(token_id, "111")["total"] == 9


def test_a_count_notification_makes_the_token_due_for_a_sync(notified_token, vpp_sandbox, vpp_runner):
    """A sync running when Apple notifies would write back the counts it read before: the next one re-reads them."""
    from nameko.testing.services import entrypoint_hook
    from nameko.testing.utils import get_container

    from services.vpp.service import VppService

    stoken, token_id, url = notified_token
    container = get_container(vpp_runner, VppService)
    with entrypoint_hook(container, "sync_due_tokens") as sync_due_tokens:
        sync_due_tokens()  # just synced by the fixture: not due
    reads = vpp_sandbox.requests("assets")
    count = {"notificationType": "ASSET_COUNT", "notification": {"adamId": "111", "pricingParam": "STDQ", "countDelta": 1}}
    secret = notification_secret(vpp_sandbox, stoken)
    assert httpx.post(url, json=count, headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    with entrypoint_hook(container, "sync_due_tokens") as sync_due_tokens:
        sync_due_tokens()
    assert vpp_sandbox.requests("assets") > reads


def test_revoking_a_registered_invite_frees_its_licences_and_apple_s_late_word_does_not_bring_it_back(
        notified_token, vpp_sandbox, vpp_config, rpc_as):
    stoken, token_id, url = notified_token
    known_to_vpp(vpp_config, user("ann"), user("bob"))
    with rpc_as() as rpc:
        rpc.vpp.invite_users(token_id, ["ann", "bob"])
        rpc.vpp.assign_licenses(token_id, "111", user_ids=["ann", "bob"])
        assert rpc.vpp.revoke_invites(token_id, ["ann"]) == {"revoked": 1, "failures": []}
        asset = rpc.vpp.get_asset(token_id, "111")  # Apple took back the licence of the user it retired
        assert (asset["assigned"], asset["available"], asset["user_ids"]) == (1, 2, ["bob"])
        # a notification from before, sent again (our answer did not reach Apple), says she accepted
        late = {"notificationType": "USER_ASSOCIATED", "notification": {"associatedUsers": [{"clientUserId": "ann"}]}}
        secret = notification_secret(vpp_sandbox, stoken)
        assert httpx.post(url, json=late, headers={"Authorization": f"Bearer {secret}"}).status_code == 200
        rpc.vpp.sync_assets(token_id)
        assert {i["user_id"]: i["status"] for i in rpc.vpp.list_invites(token_id)} == {"ann": "revoked", "bob": "pending"}


def test_malformed_notifications_are_refused_and_change_nothing(notified_token, vpp_sandbox, rpc_as):
    stoken, token_id, url = notified_token
    bearer = {"Authorization": f"Bearer {notification_secret(vpp_sandbox, stoken)}"}
    for malformed in ({"notificationType": "ASSET_COUNT", "notification": "111"},
                      {"notificationType": "USER_ASSOCIATED", "notification": ["dan"]},
                      {"notificationType": "USER_ASSOCIATED", "notification": {"associatedUsers": ["dan"]}},
                      *({"notificationType": "ASSET_COUNT", "notification": {"adamId": "111", "countDelta": delta}}
                        for delta in ("many", True, 2.5, 10 ** 30)),
                      {"notificationType": "ASSET_COUNT", "notification": {"adamId": "111", "pricingParam": ["STDQ"]}},
                      {"notificationType": "ASSET_MANAGEMENT", "notification": {"eventId": {"id": 1}}},
                      {"notificationType": "ASSET_MANAGEMENT", "notification": {"eventId": "e1", "type": "X" * 21}},
                      {"notificationType": "ASSET_MANAGEMENT", "notification": {"eventId": "e1", "result": "FAILURE",
                                                                                "error": "no licences left"}},
                      {"notificationType": "ASSET_COUNT", "notification": {"adamId": "111", "countDelta": 1},
                       "notificationId": ["n1"]},
                      {"notificationType": "USER_ASSOCIATED", "notification": {"associatedUsers": [{"clientUserId": [1]}]}}):
        answer = httpx.post(url, json=malformed, headers=bearer)
        assert answer.status_code == 400, (malformed, answer.text)
    with rpc_as() as rpc:
        assert rpc.vpp.get_asset(token_id, "111")["total"] == 3


def test_a_bad_event_in_a_batch_is_dead_lettered_and_the_others_are_handled(vpp_config, vpp_runner):
    good = [user(f"good{n}") for n in range(3)]
    bad = {**user("bad").to_payload(), "user_type": 7}  # not text: the contract refuses it
    dispatch = event_dispatcher(vpp_config)
    for payload in [good[0].to_payload(), bad, good[1].to_payload(), good[2].to_payload()]:
        dispatch(UserImported.SOURCE, UserImported.TYPE, payload)
    wait_for(lambda: count_rows(vpp_config, "known_users") == 3, what="the three good users")

    dead_letters = "evt-roster-UserImported--vpp.on_user_imported.dead-letters"
    assert wait_for(lambda: ready_messages(vpp_config, dead_letters), what="the bad event dead-lettered") == 1
    assert count_rows(vpp_config, "inbox") == 3


def test_a_token_revoked_while_inviting_is_marked_and_nothing_is_queued(vpp_sandbox, vpp_config, vpp_runner, rpc_as):
    stoken = vpp_sandbox.issue_token(locationName="North Campus")
    known_to_vpp(vpp_config, user("ann"))
    with rpc_as() as rpc:
        token_id = rpc.vpp.add_content_token(stoken)["id"]
        vpp_sandbox.fault("users/create", kind="error", errorNumber=9625)
        with pytest.raises(UpstreamError, match="revoked"):
            rpc.vpp.invite_users(token_id, ["ann"])
        assert rpc.vpp.get_content_token(token_id)["status"] == "revoked"
        assert count_rows(vpp_config, "invites") == 0  # the invites queued in the call went with it
        assert not [e for e in rpc.vpp.audit_log(f"content_token:{token_id}") if e["action"] == "invites.sent"]
