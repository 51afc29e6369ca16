"""The enrollment service on the real broker, SQLite, the DEP sandbox and real HTTP check-ins."""
import json
import time
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

import httpx
import pytest
from cryptography.fernet import Fernet

from apple_sandbox.dep_tokens import issue_token_file
from services.enrollment.service import EnrollmentService
from shared.auth import Actor
from shared.errors import Conflict, NotFound, PermissionDenied, UpstreamError, ValidationError
from tests.conftest import replicas_on_postgresql, settle
from tests.enrollment.signing import assign_ade_devices, enrolled_identity, put_checkin
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

PROFILE = {"profile_name": "Springfield iPads", "url": "https://mdm.springfield.example/enroll", "is_supervised": True}
TOPIC = "com.apple.mgmt.External.18a16429-886b-41f1-9c30-2bd04ae4fc37"


@pytest.fixture
def service_config(orchard_config, dep_sandbox):
    orchard_config["SECRET_KEY"] = Fernet.generate_key().decode()
    orchard_config["SERVICES"]["enrollment"]["dep_url"] = dep_sandbox.url
    return orchard_config


@pytest.fixture
def enrollment(runner_factory, service_config):
    runner = runner_factory(service_config, EnrollmentService)
    runner.start()
    return service_config


def listen(config, event_type: str) -> str:
    """A queue of our own bound to the enrollment exchange, for events no service subscribes to yet."""
    vhost = quote(config["vhost"], safe="")
    queue = f"test-{event_type}"
    auth = ("guest", "guest")
    httpx.put(f"http://127.0.0.1:15672/api/exchanges/{vhost}/enrollment.events", auth=auth,
              json={"type": "topic", "durable": True}).raise_for_status()
    httpx.put(f"http://127.0.0.1:15672/api/queues/{vhost}/{queue}", auth=auth, json={"durable": False}).raise_for_status()
    httpx.post(f"http://127.0.0.1:15672/api/bindings/{vhost}/e/enrollment.events/q/{queue}", auth=auth,
               json={"routing_key": event_type}).raise_for_status()
    return queue


def queued(config, queue: str, count: int = 100_000) -> list[dict]:
    """Take up to ``count`` messages from a subscriber's durable queue via the management API."""
    url = f"http://127.0.0.1:15672/api/queues/{quote(config['vhost'], safe='')}/{quote(queue, safe='')}/get"
    response = httpx.post(url, auth=("guest", "guest"), json={"count": count, "ackmode": "ack_requeue_false",
                                                             "encoding": "auto", "truncate": 50000})
    assert response.status_code == 200, response.text
    return [json.loads(message["payload"]) for message in response.json()]


def collect(config, queue: str, expected: int) -> list[dict]:
    """Wait until ``expected`` messages arrived in ``queue`` (the relay publishes after the commit)."""
    messages: list[dict] = []
    wait_for(lambda: messages.extend(queued(config, queue)) or len(messages) >= expected,
             what=f"{expected} messages in {queue}")
    return messages


def connect(rpc, dep_sandbox, *, devices=0, name="Springfield MDM"):
    created = rpc.enrollment.create_server_token(name)
    server = dep_sandbox.create_server(created["public_key_pem"].encode())
    if devices:
        dep_sandbox.server(server["server_uuid"], "devices/generate", {"count": devices})
    token = rpc.enrollment.upload_server_token(created["id"], server["p7m"])
    wait_for(lambda: any(r["finished_at"] for r in rpc.enrollment.sync_runs(token["id"])), what="the first sync")
    return token, server


def test_token_lifecycle_with_bad_input_changing_nothing(enrollment, rpc_as, dep_sandbox, other_key):
    with rpc_as() as rpc:
        created = rpc.enrollment.create_server_token("North campus")
        assert created["public_key_pem"].startswith("-----BEGIN CERTIFICATE-----")
        server = dep_sandbox.create_server(created["public_key_pem"].encode(), server_name="Springfield ASM MDM")
        dep_sandbox.server(server["server_uuid"], "devices/generate", {"count": 25})

        with pytest.raises(ValidationError, match="not an MDM server token"):
            rpc.enrollment.upload_server_token(created["id"], "this is not a token")
        foreign = issue_token_file({"consumer_key": "CK_x"}, other_key[1]).decode()
        with pytest.raises(ValidationError, match="could not be decrypted"):
            rpc.enrollment.upload_server_token(created["id"], foreign)
        expired = dep_sandbox.server(server["server_uuid"], "token",
                                     {"certificate_pem": created["public_key_pem"], "expiry_days": -1})
        with pytest.raises(ValidationError, match="expired"):
            rpc.enrollment.upload_server_token(created["id"], expired["p7m"])
        assert rpc.enrollment.get_server_token(created["id"])["status"] == "awaiting_upload"

        fresh = dep_sandbox.server(server["server_uuid"], "token", {"certificate_pem": created["public_key_pem"], "encoding": "ber"})
        token = rpc.enrollment.upload_server_token(created["id"], fresh["p7m"])
        assert token["server_name"] == "Springfield ASM MDM" and token["org_name"] == "Springfield Schools"
        assert token["apple_admin_id"] == "asm.admin@springfield.example"
        assert token["integrated_by"] == "admin@school.example"
        assert token["status"] == "ok" and 364 <= token["days_left"] <= 365
        assert "sealed" not in str(token) and "AT_" not in str(token)

        run = wait_for(lambda: [r for r in rpc.enrollment.sync_runs(created["id"]) if r["finished_at"]], what="first sync")[0]
        assert (run["trigger"], run["kind"], run["added"], run["error"]) == ("upload", "fetch", 25, None)
        assigned = collect(enrollment, "evt-enrollment-DevicesAssigned--vpp.on_devices_assigned", 1)
        assert [len(event["devices"]) for event in assigned] == [25] and assigned[0]["token_id"] == created["id"]

        with pytest.raises(Conflict, match="already connected"):
            rpc.enrollment.upload_server_token(created["id"], fresh["p7m"])

        other = dep_sandbox.create_server(created["public_key_pem"].encode())
        with pytest.raises(Conflict, match="different MDM server"):
            rpc.enrollment.renew_server_token(created["id"], other["p7m"])
        renewal = dep_sandbox.server(server["server_uuid"], "token", {"certificate_pem": created["public_key_pem"],
                                                                       "encoding": "der", "expiry_days": 20})
        renewed = rpc.enrollment.renew_server_token(created["id"], renewal["p7m"])
        assert renewed["status"] == "expiring" and renewed["days_left"] in (19, 20)

        assert rpc.enrollment.update_server_token(created["id"], name="North")["name"] == "North"
        assert [t["name"] for t in rpc.enrollment.list_server_tokens()] == ["North"]
        rpc.enrollment.delete_server_token(created["id"])
        with pytest.raises(NotFound):
            rpc.enrollment.get_server_token(created["id"])


def test_location_restriction(enrollment, roster_locations, rpc_as):
    north_leader = Actor("leader@north", "location_leader", ("north",))
    south_leader = Actor("leader@south", "location_leader", ("south",))
    roster_locations("north", "south")
    with rpc_as() as rpc:
        token_id = rpc.enrollment.create_server_token("Shared")["id"]
        for too_many in ([f"l{n}" for n in range(1001)], ["x" * 129], []):
            with pytest.raises(ValidationError, match="a list of 1 to 1000 location ids"):
                rpc.enrollment.update_server_token(token_id, locations=too_many)
        rpc.enrollment.update_server_token(token_id, locations=["north"])
    with rpc_as(south_leader) as rpc:
        assert rpc.enrollment.list_server_tokens() == []
        with pytest.raises(NotFound):
            rpc.enrollment.get_server_token(token_id)
        with pytest.raises(NotFound):
            rpc.enrollment.update_server_token(token_id, name="Mine")
    with rpc_as(north_leader) as rpc:
        assert rpc.enrollment.update_server_token(token_id, name="North only")["name"] == "North only"
        with pytest.raises(PermissionDenied):
            rpc.enrollment.update_server_token(token_id, locations=None)
        own = rpc.enrollment.create_server_token("Leader's own")
        assert rpc.enrollment.get_server_token(own["id"])["locations"] == ["north"]
    with rpc_as(Actor("teacher@north", "teacher", ("north",))) as rpc:
        with pytest.raises(PermissionDenied):
            rpc.enrollment.list_server_tokens()


def test_a_duplicate_token_in_another_location_is_refused_without_naming_it(enrollment, roster_locations, rpc_as,
                                                                          dep_sandbox):
    roster_locations("north", "south")
    with rpc_as() as rpc:
        north, server = connect(rpc, dep_sandbox, name="North campus secret name")
        rpc.enrollment.update_server_token(north["id"], locations=["north"])
    with rpc_as(Actor("leader@south", "location_leader", ("south",))) as rpc:
        own = rpc.enrollment.create_server_token("South")
        same_server = dep_sandbox.server(server["server_uuid"], "token", {"certificate_pem": own["public_key_pem"]})
        with pytest.raises(Conflict, match="already connected to Orchard by another server token") as refused:
            rpc.enrollment.upload_server_token(own["id"], same_server["p7m"])
        assert "North campus" not in str(refused.value)
        assert rpc.enrollment.get_server_token(own["id"])["status"] == "awaiting_upload"


def test_a_token_is_restricted_only_to_locations_the_roster_knows(enrollment, roster_locations, rpc_as):
    """A misspelt location would hide the token from the leaders of the location meant."""
    roster_locations("north", "south")
    with rpc_as() as rpc:
        token_id = rpc.enrollment.create_server_token("Shared")["id"]
        with pytest.raises(NotFound, match="the roster has no locations 'nowhere', 'sout'; `orchard roster locations`"):
            rpc.enrollment.update_server_token(token_id, name="Renamed", locations=["north", "sout", "nowhere"])
        token = rpc.enrollment.get_server_token(token_id)
        assert (token["name"], token["locations"]) == ("Shared", None)
        assert [e["action"] for e in rpc.enrollment.audit_log(f"server_token:{token_id}")] == ["server_token.created"]

        restricted = rpc.enrollment.update_server_token(token_id, locations=["south", "north"])
        assert restricted["locations"] == ["north", "south"]
        assert rpc.enrollment.update_server_token(token_id, locations=None)["locations"] is None


def test_restricting_a_token_needs_the_roster_and_opening_it_does_not(enrollment, rpc_as):
    with rpc_as() as rpc:
        token_id = rpc.enrollment.create_server_token("Shared")["id"]
        with pytest.raises(UpstreamError, match="the roster service is not running"):
            rpc.enrollment.update_server_token(token_id, locations=["north"])
        assert rpc.enrollment.get_server_token(token_id)["locations"] is None
        assert rpc.enrollment.update_server_token(token_id, name="Every school", locations=None)["locations"] is None


def test_sync_profiles_and_device_list(enrollment, rpc_as, dep_sandbox):
    with rpc_as() as rpc:
        token, server = connect(rpc, dep_sandbox, devices=5)
        uuid_ = server["server_uuid"]
        with pytest.raises(ValidationError, match="needs a url"):
            rpc.enrollment.define_profile(token["id"], {"profile_name": "No URL"})
        profile_uuid = rpc.enrollment.define_profile(token["id"], PROFILE)["profile_uuid"]
        assert rpc.enrollment.get_server_token(token["id"])["default_profile_uuid"] == profile_uuid

        first = dep_sandbox.server(uuid_, "devices/generate", {"count": 3})["first"]
        moved = "MOVEDSERIAL1"
        dep_sandbox.server(uuid_, "devices", {"devices": [{"serial_number": moved, "model": "iPad Air"}], "op_type": "modified"})
        dep_sandbox.server(uuid_, "assign_outcomes", {"statuses": {first: "THROTTLED"}, "retry_after_seconds": 600})
        existing = rpc.enrollment.list_devices(token["id"], limit=1)
        dep_sandbox.server(uuid_, "devices/delete", {"serial_numbers": [existing["devices"][0]["serial_number"]]})

        removed_queue = listen(enrollment, "DevicesRemoved")
        run = rpc.enrollment.sync_devices(token["id"])
        assert (run["kind"], run["added"], run["deleted"], run["error"]) == ("sync", 4, 1, None)
        removed = wait_for(lambda: queued(enrollment, removed_queue), what="DevicesRemoved")
        assert [(e["token_id"], e["serial_numbers"]) for e in removed] == [(token["id"], [existing["devices"][0]["serial_number"]])]
        assert dep_sandbox.device(uuid_, moved)["profile_status"] == "assigned"  # moved in: gets the default profile

        listed = rpc.enrollment.list_devices(token["id"])
        by_serial = {d["serial_number"]: d for d in listed["devices"]}
        assert len(by_serial) == 8 and listed["counts"] == {"empty": 5, "assigned": 3}
        assert by_serial[first]["assign_result"] == "THROTTLED" and by_serial[first]["assign_retry_at"]
        assert by_serial[moved]["status_colour"] == "green" and by_serial[moved]["assigned_by"] == "system:enrollment"
        assert rpc.enrollment.list_devices(token["id"], profile_status="assigned")["counts"]["assigned"] == 3
        page = rpc.enrollment.list_devices(token["id"], limit=3)
        assert len(page["devices"]) == 3 and page["next_after"] == page["devices"][-1]["serial_number"]

        untouched = [s for s, d in by_serial.items() if d["profile_status"] == "empty"][:2]
        answer = rpc.enrollment.assign_profile(token["id"], untouched + ["NOTOURS00001"])
        assert answer["devices"] == {untouched[0]: "SUCCESS", untouched[1]: "SUCCESS", "NOTOURS00001": "NOT_ACCESSIBLE"}
        assigned = {d["serial_number"]: d for d in rpc.enrollment.list_devices(token["id"], profile_status="assigned")["devices"]}
        assert assigned[untouched[0]]["assigned_by"] == "admin@school.example"
        with pytest.raises(ValidationError):
            rpc.enrollment.assign_profile(token["id"], [])

        full = rpc.enrollment.sync_devices(token["id"], full=True)
        assert full["kind"] == "fetch" and full["error"] is None
        assert [r["trigger"] for r in rpc.enrollment.sync_runs(token["id"])] == ["manual", "manual", "upload"]
        assigned = collect(enrollment, "evt-enrollment-DevicesAssigned--vpp.on_devices_assigned", 2)
        assert sorted(len(event["devices"]) for event in assigned) == [4, 5]  # the first sync's page, then the sync's


def test_a_forced_renewal_to_another_mdm_server_defines_the_profile_there(enrollment, rpc_as, dep_sandbox):
    with rpc_as() as rpc:
        created = rpc.enrollment.create_server_token("North campus")
        first = dep_sandbox.create_server(created["public_key_pem"].encode())
        rpc.enrollment.upload_server_token(created["id"], first["p7m"])
        wait_for(lambda: any(r["finished_at"] for r in rpc.enrollment.sync_runs(created["id"])), what="the first sync")
        old_profile = rpc.enrollment.define_profile(created["id"], PROFILE)["profile_uuid"]

        second = dep_sandbox.create_server(created["public_key_pem"].encode(), server_name="South MDM")
        serial = dep_sandbox.server(second["server_uuid"], "devices/generate", {"count": 1})["first"]
        renewed = rpc.enrollment.renew_server_token(created["id"], second["p7m"], force=True)
        assert renewed["server_name"] == "South MDM"
        new_profile = renewed["default_profile_uuid"]
        assert new_profile and new_profile != old_profile

        def synced() -> bool:  # the renewal made the token due: a scheduled sync may be running already
            try:
                rpc.enrollment.sync_devices(created["id"])
            except Conflict:
                return False
            return True

        wait_for(synced, what="a sync of the new MDM server's devices")
        device = dep_sandbox.device(second["server_uuid"], serial)
        assert device["profile_status"] == "assigned" and device["profile_uuid"] == new_profile


def test_a_throttled_assignment_is_retried_with_its_own_profile_when_apple_said(enrollment, rpc_as, dep_sandbox):
    from services.enrollment.adapters.tables import dep_devices
    from shared.storage import create_engine_for

    with rpc_as() as rpc:
        token, server = connect(rpc, dep_sandbox, devices=1)
        serial = rpc.enrollment.list_devices(token["id"])["devices"][0]["serial_number"]
        chosen = rpc.enrollment.define_profile(token["id"], PROFILE)["profile_uuid"]
        rpc.enrollment.define_profile(token["id"], {**PROFILE, "profile_name": "Newer default"})
        dep_sandbox.server(server["server_uuid"], "assign_outcomes", {"statuses": {serial: "THROTTLED"}, "retry_after_seconds": 600})
        answer = rpc.enrollment.assign_profile(token["id"], [serial], profile_uuid=chosen)
        assert (answer["devices"], answer["retry_after_seconds"], answer["error"]) == ({serial: "THROTTLED"}, 600, None)
        # the scheduled sync, which retries it, now runs when Apple said, not hours later
        due_in = datetime.fromisoformat(rpc.enrollment.get_server_token(token["id"])["next_sync_at"]) - datetime.now(timezone.utc)
        assert timedelta(minutes=9) < due_in <= timedelta(minutes=10)

        for wrong in ("", "x" * 65, 7):
            with pytest.raises(ValidationError, match="profile_uuid must be"):
                rpc.enrollment.assign_profile(token["id"], [serial], profile_uuid=wrong)

        engine = create_engine_for(enrollment["SERVICES"]["enrollment"]["database_url"])
        with engine.begin() as connection:  # ten minutes pass
            connection.execute(dep_devices.update().values(assign_retry_at=datetime.now(timezone.utc)))
        engine.dispose()
        # a sync that fails (here on unsigned terms) is booked as a failed one, not for the retry already due
        dep_sandbox.server(server["server_uuid"], "settings", {"terms_signed": False})
        assert "accept" in rpc.enrollment.sync_devices(token["id"])["error"]
        due_in = datetime.fromisoformat(rpc.enrollment.get_server_token(token["id"])["next_sync_at"]) - datetime.now(timezone.utc)
        assert due_in > timedelta(hours=1)
        dep_sandbox.server(server["server_uuid"], "settings", {"terms_signed": True})

        run = rpc.enrollment.sync_devices(token["id"])
        assert run["error"] is None
        assert dep_sandbox.device(server["server_uuid"], serial)["profile_uuid"] == chosen  # not the newer default
        device = rpc.enrollment.list_devices(token["id"])["devices"][0]
        assert (device["assign_result"], device["assign_retry_at"]) == ("SUCCESS", None)

        # Apple refusing the token mid-assignment: the devices' results say so
        dep_sandbox.server(server["server_uuid"], "settings", {"terms_signed": False})
        with pytest.raises(UpstreamError, match="accept"):
            rpc.enrollment.assign_profile(token["id"], [serial])
        assert rpc.enrollment.list_devices(token["id"])["devices"][0]["assign_result"] == "FAILED"


def test_an_assignment_apple_fails_waits_for_the_next_sync_and_the_caller_is_told(enrollment, rpc_as, dep_sandbox):
    from services.enrollment.adapters.tables import dep_devices
    from shared.storage import create_engine_for

    with rpc_as() as rpc:
        token, server = connect(rpc, dep_sandbox)
        rpc.enrollment.define_profile(token["id"], PROFILE)
        dep_sandbox.server(server["server_uuid"], "devices/generate", {"count": 3})
        dep_sandbox.script("PUT /profile/devices", "internal_server_error")
        before = datetime.now(timezone.utc)
        run = rpc.enrollment.sync_devices(token["id"])
        assert run["added"] == 3 and "500" in run["error"] and "asks Apple again" in run["error"]
        shown = rpc.enrollment.get_server_token(token["id"])
        assert (shown["status"], shown["last_sync_result"]) == ("ok", "error")
        assert timedelta(minutes=4) < datetime.fromisoformat(shown["next_sync_at"]) - before < timedelta(minutes=11)
        devices = rpc.enrollment.list_devices(token["id"])["devices"]
        assert [d["assign_result"] for d in devices] == ["QUEUED"] * 3  # waiting, not FAILED for good
        assert all(timedelta(minutes=4) < datetime.fromisoformat(d["assign_retry_at"]) - before < timedelta(minutes=6)
                   for d in devices)

        # asked for by hand: the caller is told, and the device waits all the same
        serial = devices[0]["serial_number"]
        dep_sandbox.script("PUT /profile/devices", "internal_server_error")
        with pytest.raises(UpstreamError, match="500.* 1 of the 1 device"):
            rpc.enrollment.assign_profile(token["id"], [serial])
        assert rpc.enrollment.list_devices(token["id"], limit=1)["devices"][0]["assign_result"] == "QUEUED"

        engine = create_engine_for(enrollment["SERVICES"]["enrollment"]["database_url"])
        with engine.begin() as connection:  # five minutes pass
            connection.execute(dep_devices.update().values(assign_retry_at=datetime.now(timezone.utc)))
        engine.dispose()
        assert rpc.enrollment.sync_devices(token["id"])["error"] is None
        devices = rpc.enrollment.list_devices(token["id"])["devices"]
        assert [(d["assign_result"], d["profile_status"]) for d in devices] == [("SUCCESS", "assigned")] * 3
        assert all(dep_sandbox.device(server["server_uuid"], d["serial_number"])["profile_status"] == "assigned"
                   for d in devices)


def test_a_sync_books_its_next_run_by_its_outcome_and_by_the_wait_apple_asks_for(enrollment, rpc_as, dep_sandbox):
    with rpc_as() as rpc:
        token, server = connect(rpc, dep_sandbox, devices=2)
        serial = rpc.enrollment.list_devices(token["id"])["devices"][0]["serial_number"]
        rpc.enrollment.define_profile(token["id"], PROFILE)
        before = datetime.now(timezone.utc)
        assert rpc.enrollment.sync_devices(token["id"])["error"] is None
        after = datetime.now(timezone.utc)
        next_sync = datetime.fromisoformat(rpc.enrollment.get_server_token(token["id"])["next_sync_at"])
        assert before + timedelta(hours=2) <= next_sync <= after + timedelta(hours=3)

        # Apple asks for an hour: one request, no worker asleep, the next sync in an hour and the run says so
        an_hour = {"status": 429, "body": "TOO_MANY_REQUESTS", "headers": {"Retry-After": "3600"}}
        dep_sandbox.script("POST /devices/sync", an_hour)
        run = rpc.enrollment.sync_devices(token["id"])
        next_sync = datetime.fromisoformat(rpc.enrollment.get_server_token(token["id"])["next_sync_at"])
        assert timedelta(minutes=59) < next_sync - datetime.now(timezone.utc) <= timedelta(hours=1)
        assert "asked Orchard to wait 3600 s" in run["error"]
        assert f"The next scheduled sync runs at {next_sync:%Y-%m-%d %H:%M:%S} UTC." in run["error"]
        assert dep_sandbox.counts()["POST /devices/sync 429"] == 1

        dep_sandbox.script("PUT /profile/devices", an_hour)
        answer = rpc.enrollment.assign_profile(token["id"], [serial])
        assert (answer["devices"], answer["retry_after_seconds"]) == ({serial: "THROTTLED"}, 3600)
        retry_at = datetime.fromisoformat(rpc.enrollment.list_devices(token["id"])["devices"][0]["assign_retry_at"])
        assert timedelta(minutes=59) < retry_at - datetime.now(timezone.utc) <= timedelta(hours=1)

        dep_sandbox.script("POST /roster/class/person", an_hour)
        with pytest.raises(UpstreamError, match=r"wait 3600 s; try again after \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC"):
            rpc.enrollment.fetch_roster(token["id"], "person")
        counts = dep_sandbox.counts()
        assert counts["PUT /profile/devices 429"] == counts["POST /roster/class/person"] == 1


def test_an_odd_answer_from_apple_is_an_upstream_error_and_a_refused_profile_field_the_callers(enrollment, rpc_as,
                                                                                             dep_sandbox):
    with rpc_as() as rpc:
        created = rpc.enrollment.create_server_token("Springfield MDM")
        server = dep_sandbox.create_server(created["public_key_pem"].encode())
        dep_sandbox.script("GET /account", {"status": 200, "body": "<html>Sign in to the proxy</html>",
                                            "content_type": "text/html"})
        with pytest.raises(UpstreamError, match="Apple's answer on /account was not a JSON object; try again later"):
            rpc.enrollment.upload_server_token(created["id"], server["p7m"])
        shown = rpc.enrollment.get_server_token(created["id"])
        assert (shown["status"], shown["server_name"]) == ("awaiting_upload", None)
        audit = rpc.enrollment.audit_log(f"server_token:{created['id']}")
        assert [e["action"] for e in audit] == ["server_token.created"]
        assert rpc.enrollment.upload_server_token(created["id"], server["p7m"])["status"] == "ok"  # once Apple answers

        dep_sandbox.script("POST /profile", {"status": 400, "body": "SUPPORT_EMAIL_INVALID"})
        with pytest.raises(ValidationError, match=r"\(SUPPORT_EMAIL_INVALID\): correct its support_email_address"):
            rpc.enrollment.define_profile(created["id"], {**PROFILE, "support_email_address": "it at the school"})
        assert rpc.enrollment.get_server_token(created["id"])["default_profile_uuid"] is None


def test_apple_refusals_set_the_status_without_a_retry_storm(enrollment, rpc_as, dep_sandbox):
    with rpc_as() as rpc:
        token, server = connect(rpc, dep_sandbox)
        dep_sandbox.server(server["server_uuid"], "settings", {"terms_signed": False})
        run = rpc.enrollment.sync_devices(token["id"])
        assert "accept" in run["error"]
        assert rpc.enrollment.get_server_token(token["id"])["status"] == "terms_not_accepted"
        # Apple failing for a moment says nothing of the terms: the status stays until a sync goes through
        dep_sandbox.script("POST /devices/sync", "internal_server_error")
        assert "500" in rpc.enrollment.sync_devices(token["id"])["error"]
        assert rpc.enrollment.get_server_token(token["id"])["status"] == "terms_not_accepted"
        dep_sandbox.server(server["server_uuid"], "settings", {"terms_signed": True})
        assert rpc.enrollment.sync_devices(token["id"])["error"] is None
        assert rpc.enrollment.get_server_token(token["id"])["status"] == "ok"

        dep_sandbox.server(server["server_uuid"], "settings", {"terms_signed": True, "revoked": True})
        before = dep_sandbox.counts().get("GET /session", 0)
        run = rpc.enrollment.sync_devices(token["id"])
        assert "revoked" in run["error"]
        shown = rpc.enrollment.get_server_token(token["id"])
        assert shown["status"] == "revoked_or_invalid" and shown["last_sync_result"] == "error"
        assert dep_sandbox.counts().get("GET /session", 0) - before <= 1
        with pytest.raises(UpstreamError, match="ACCESS_DENIED"):
            rpc.enrollment.fetch_roster(token["id"], "class")

        # a refusal met outside a sync shows on the token at once too
        fresh, other = connect(rpc, dep_sandbox, name="Roster only")
        dep_sandbox.server(other["server_uuid"], "settings", {"terms_signed": False})
        with pytest.raises(UpstreamError, match="accept"):
            rpc.enrollment.fetch_roster(fresh["id"], "person")
        assert rpc.enrollment.get_server_token(fresh["id"])["status"] == "terms_not_accepted"


def test_a_token_that_cannot_sync_does_not_hold_up_the_others(runner_factory, service_config, rpc_as, dep_sandbox):
    from nameko.testing.services import entrypoint_hook
    from nameko.testing.utils import get_container

    from services.enrollment.adapters.tables import server_tokens
    from shared.storage import create_engine_for

    runner = runner_factory(service_config, EnrollmentService)
    runner.start()
    with rpc_as() as rpc:
        broken, _ = connect(rpc, dep_sandbox, name="Sealed with a retired key")
        healthy, server = connect(rpc, dep_sandbox, name="Healthy")
        dep_sandbox.server(server["server_uuid"], "devices/generate", {"count": 3})
        # both are due, the broken one first; its credentials were sealed with a key this deployment lacks
        engine = create_engine_for(service_config["SERVICES"]["enrollment"]["database_url"])
        with engine.begin() as connection:
            for token, due in ((broken, "2026-01-01T00:00:00+00:00"), (healthy, "2026-01-02T00:00:00+00:00")):
                values = {"next_sync_at": datetime.fromisoformat(due)}
                if token is broken:
                    values["sealed_credentials"] = Fernet(Fernet.generate_key()).encrypt(b"{}").decode()
                connection.execute(server_tokens.update().where(server_tokens.c.id == token["id"]).values(**values))
        engine.dispose()
        with entrypoint_hook(get_container(runner, EnrollmentService), "sync_due_tokens") as sync_due_tokens:
            sync_due_tokens()

        assert sum(run["added"] for run in rpc.enrollment.sync_runs(healthy["id"])) == 3  # (or the timer's own tick)
        failed = rpc.enrollment.get_server_token(broken["id"])
        assert failed["last_sync_result"] == "error" and "internal error" in failed["last_sync_error"]
        retry_in = datetime.fromisoformat(failed["next_sync_at"]) - datetime.now(timezone.utc)
        assert timedelta(minutes=4) < retry_in < timedelta(minutes=11)  # soon, but not at every tick


def test_fetch_roster_for_the_roster_service(enrollment, rpc_as, dep_sandbox):
    with rpc_as() as rpc:
        created = rpc.enrollment.create_server_token("Springfield MDM")
        server = dep_sandbox.create_server(created["public_key_pem"].encode())
        dep_sandbox.server(server["server_uuid"], "settings", {"legacy_course_path": True})  # an older account
        token = rpc.enrollment.upload_server_token(created["id"], server["p7m"])
        dep_sandbox.server(server["server_uuid"], "roster", {
            "persons": [{"unique_identifier": f"P{i}", "name": f"Student {i}"} for i in range(3)],
            "courses": [{"unique_identifier": "K1", "name": "Maths"}],
        })
        opened = {call: dep_sandbox.counts().get(call, 0) for call in ("GET /session", "GET /account")}
        page = rpc.enrollment.fetch_roster(token["id"], "person")
        assert [p["unique_identifier"] for p in page["items"]] == ["P0", "P1", "P2"] and page["more_to_follow"] is False
        assert rpc.enrollment.fetch_roster(token["id"], "course")["items"][0]["name"] == "Maths"
        changes = rpc.enrollment.fetch_roster(token["id"], "person", page["cursor"], sync=True)
        assert changes["items"] == []
        # the pages reuse the session and the account's limits the upload read: one Apple call a page
        assert {call: dep_sandbox.counts().get(call, 0) for call in opened} == opened
        with pytest.raises(ValidationError):
            rpc.enrollment.fetch_roster(token["id"], "teachers")
        with pytest.raises(Conflict, match="INVALID_CURSOR"):
            rpc.enrollment.fetch_roster(token["id"], "person", "garbage", sync=True)
    for actor in (Actor("leader@north", "location_leader", ("north",)), Actor("msp@partner", "msp")):
        with rpc_as(actor) as rpc, pytest.raises(PermissionDenied):
            rpc.enrollment.fetch_roster(token["id"], "person")


def test_checkin_publishes_enrolment_events(enrollment, rpc_as, dep_sandbox):
    udid = "00008030-001A2D3E1E38802E"
    with rpc_as() as rpc:
        assign_ade_devices(rpc, dep_sandbox, ["DMPXK1234567"])
    device = enrolled_identity(enrollment, "DMPXK1234567", udid)
    authenticate = {"MessageType": "Authenticate", "UDID": udid, "Topic": TOPIC, "SerialNumber": "DMPXK1234567",
                    "OSVersion": "17.5", "BuildVersion": "21F79", "ProductName": "iPad13,18"}
    assert put_checkin(enrollment, authenticate, device).status_code == 200
    token = bytes(range(32))
    update = {"MessageType": "TokenUpdate", "UDID": udid, "Topic": TOPIC, "Token": token, "PushMagic": "MAGIC-1",
              "UnlockToken": b"\x00" * 64}
    assert put_checkin(enrollment, update, device).status_code == 200
    assert put_checkin(enrollment, {"MessageType": "CheckOut", "UDID": udid, "Topic": TOPIC}, device).status_code == 200

    bad = put_checkin(enrollment, b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'b'>]><plist/>", device)
    assert bad.status_code == 400 and bad.json()["error"] == "MalformedCheckin"
    assert put_checkin(enrollment, b"x" * 70_000, device).status_code == 400

    enrolled = wait_for(lambda: queued(enrollment, "evt-enrollment-DeviceEnrolled--push.on_device_enrolled"), what="DeviceEnrolled")
    assert len(enrolled) == 1
    assert (enrolled[0]["udid"], enrolled[0]["serial_number"], enrolled[0]["push_token"], enrolled[0]["push_magic"]) == (
        udid, "DMPXK1234567", token.hex(), "MAGIC-1")
    unenrolled = wait_for(lambda: queued(enrollment, "evt-enrollment-DeviceUnenrolled--push.on_device_unenrolled"),
                          what="DeviceUnenrolled")
    assert unenrolled[0]["serial_number"] == "DMPXK1234567"


def test_metrics_show_tokens_devices_and_apple_calls(enrollment, rpc_as, dep_sandbox):
    with rpc_as() as rpc:
        token, _ = connect(rpc, dep_sandbox, devices=4)
        dep_sandbox.script("POST /server/devices", {"status": 503, "body": "SERVICE_UNAVAILABLE"})
        never, _ = connect(rpc, dep_sandbox, name="Never synced")
        assert rpc.enrollment.get_server_token(never["id"])["last_successful_sync_at"] is None
    text = httpx.get(f"http://127.0.0.1:{enrollment['SERVICES']['enrollment']['metrics_port']}/metrics").text
    assert f'orchard_enrollment_token_expiry_timestamp_seconds{{name="Springfield MDM",token_id="{token["id"]}"}}' in text
    assert f'orchard_enrollment_token_status{{name="Springfield MDM",status="ok",token_id="{token["id"]}"}} 1.0' in text
    assert f'orchard_enrollment_devices{{profile_status="empty",token_id="{token["id"]}"}} 4.0' in text
    assert f'orchard_enrollment_last_successful_sync_timestamp_seconds{{name="Springfield MDM",token_id="{token["id"]}"}}' in text
    # a token that never synced counts from its connection, so the 6-hour alert covers it too
    since = next(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(
        f'orchard_enrollment_last_successful_sync_timestamp_seconds{{name="Never synced",token_id="{never["id"]}"}}'))
    assert 0 <= time.time() - since < 60
    assert 'orchard_enrollment_apple_calls_total{endpoint="/server/devices",status="200"}' in text
    assert 'orchard_enrollment_sync_duration_seconds_count{kind="fetch",outcome="ok"}' in text


def test_the_same_token_uploaded_twice_at_once_on_two_replicas_connects_once(runner_factory, service_config, rpc_as,
                                                                            dep_sandbox):
    with replicas_on_postgresql(runner_factory, service_config, EnrollmentService):
        with rpc_as() as rpc:
            for number in range(3):
                created = rpc.enrollment.create_server_token(f"Uploaded twice {number}")
                server = dep_sandbox.create_server(created["public_key_pem"].encode())
                replies = [rpc.enrollment.upload_server_token.call_async(created["id"], server["p7m"]) for _ in range(2)]
                outcomes = settle(replies, Conflict)
                connected = [o for o in outcomes if isinstance(o, dict) and o["id"] == created["id"]]
                assert len(connected) == 1 and any("already connected" in str(o) for o in outcomes), outcomes
                audit = [e["action"] for e in rpc.enrollment.audit_log(f"server_token:{created['id']}")]
                assert audit.count("server_token.uploaded") == 1
