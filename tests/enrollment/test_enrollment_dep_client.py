"""The Device Assignment API client against the DEP sandbox, over real HTTP."""
import dataclasses
import email.utils
import json
from datetime import datetime, timedelta, timezone

import pytest

from services.enrollment.adapters.dep_client import DepClient, retry_after_seconds
from services.enrollment.domain.errors import (
    AccessDenied,
    CursorExhausted,
    CursorExpired,
    CursorRequired,
    DepError,
    TermsNotAccepted,
    Throttled,
    TokenExpired,
)
from shared.errors import ValidationError

DAY = 86400


def test_session_and_account(dep_client, dep_sandbox, mdm_server):
    account = dep_client.account()
    assert account["server_uuid"] == mdm_server["server_uuid"]
    assert account["org_name"] == "Springfield Schools"
    assert account["admin_id"] == "asm.admin@springfield.example"
    assert dep_client.page_limit("/server/devices") == 1000
    counts = dep_sandbox.counts()
    assert counts["GET /session 200"] == 1 and counts["GET /account 200"] == 1


def test_bad_signature_is_a_refused_token_without_retries(dep_sandbox, mdm_server):
    wrong = dataclasses.replace(mdm_server["credentials"], consumer_secret="CS_wrong")
    client = DepClient(wrong, base_url=dep_sandbox.url, sleep=lambda s: None)
    with pytest.raises(AccessDenied, match="UNAUTHORIZED"):
        client.account()
    assert dep_sandbox.counts() == {"GET /session": 1, "GET /session 401": 1}


def test_token_expired_at_apple(dep_client, dep_sandbox):
    dep_sandbox.post("clock", {"advance_seconds": 366 * DAY})
    with pytest.raises(AccessDenied):
        dep_client.account()


def test_token_expired_locally_is_not_sent(dep_sandbox, mdm_server):
    expired = dataclasses.replace(mdm_server["credentials"], access_token_expiry=datetime.now(timezone.utc) - timedelta(days=1))
    with pytest.raises(TokenExpired, match="Download a new token"):
        DepClient(expired, base_url=dep_sandbox.url).account()
    assert dep_sandbox.counts() == {}


def test_renewed_token_replaces_the_old_one(dep_sandbox, mdm_server, token_key, read_p7m):
    renewed = dep_sandbox.server(mdm_server["server_uuid"], "token", {"certificate_pem": token_key[1].decode()})
    new_credentials = read_p7m(renewed["p7m"])
    assert new_credentials.consumer_key == mdm_server["credentials"].consumer_key
    assert DepClient(new_credentials, base_url=dep_sandbox.url).account()
    with pytest.raises(AccessDenied):
        DepClient(mdm_server["credentials"], base_url=dep_sandbox.url).account()


def test_revoked_token_gives_access_denied_once(dep_client, dep_sandbox, mdm_server):
    dep_sandbox.server(mdm_server["server_uuid"], "settings", {"revoked": True})
    with pytest.raises(AccessDenied, match="revoked"):
        dep_client.account()
    with pytest.raises(AccessDenied):
        dep_client.account()
    assert dep_sandbox.counts()["GET /session 403"] == 2  # one attempt per call, no storm


def test_device_pages_keep_to_the_maximum_the_account_advertises(dep_client, dep_sandbox, mdm_server):
    dep_sandbox.server(mdm_server["server_uuid"], "settings", {"page_maximum": 200})
    dep_sandbox.server(mdm_server["server_uuid"], "devices/generate", {"count": 450})
    pages = list(dep_client.fetch_device_pages())  # a new client: it reads /account before its first page
    assert [len(page.items) for page in pages] == [200, 200, 50]
    assert list(dep_client.sync_device_pages(pages[-1].cursor))[0].items == []
    counts = dep_sandbox.counts()
    assert counts["GET /account 200"] == 1 and "limit above maximum" not in counts


def test_terms_not_signed_stops_without_reauthenticating(dep_client, dep_sandbox, mdm_server):
    dep_client.account()
    dep_sandbox.server(mdm_server["server_uuid"], "settings", {"terms_signed": False})
    with pytest.raises(TermsNotAccepted, match="accept them in Apple School Manager"):
        dep_client.fetch_device_pages().__next__()
    counts = dep_sandbox.counts()
    assert counts["GET /session"] == 1 and counts["POST /server/devices 403"] == 1
    with pytest.raises(TermsNotAccepted):
        DepClient(mdm_server["credentials"], base_url=dep_sandbox.url).account()  # also at /session


def test_terms_error_as_json_body(dep_client, dep_sandbox):
    dep_sandbox.script("GET /account", {"status": 403, "body": '{"code":"T_C_NOT_SIGNED"}'})
    with pytest.raises(TermsNotAccepted):
        dep_client.account()


def test_expired_session_is_renewed_and_the_request_replayed(dep_client, dep_sandbox):
    dep_client.account()
    dep_sandbox.post("sessions/expire")
    assert dep_client.account()["server_name"]
    counts = dep_sandbox.counts()
    assert counts["GET /session 200"] == 2
    assert counts["GET /account 401"] == 1 and counts["GET /account 200"] == 2


def test_forbidden_session_is_renewed_once(dep_client, dep_sandbox):
    dep_client.account()
    dep_sandbox.script("GET /account", "forbidden")
    assert dep_client.account()
    assert dep_sandbox.counts()["GET /session 200"] == 2


def test_session_refused_twice_is_an_error_not_a_loop(dep_client, dep_sandbox):
    dep_sandbox.script("GET /account", "unauthorized", "unauthorized", "unauthorized")
    with pytest.raises(DepError, match="401"):
        dep_client.account()
    counts = dep_sandbox.counts()
    assert counts["GET /account"] == 2 and counts["GET /session"] == 2


def test_rotated_session_header_is_adopted(dep_client, dep_sandbox, mdm_server):
    dep_sandbox.server(mdm_server["server_uuid"], "settings", {"rotate_session_every": 2})
    for _ in range(6):
        dep_client.account()
    counts = dep_sandbox.counts()
    assert counts["GET /account 200"] == 6
    assert counts["GET /session"] == 1  # the sandbox drops a rotated-away session: no re-auth was needed


def test_429_waits_retry_after_seconds(dep_client, dep_sandbox, sleeps):
    dep_sandbox.script("GET /account", {"status": 429, "body": '"TOO_MANY_REQUESTS"', "headers": {"Retry-After": "3"}})
    assert dep_client.account()
    assert sleeps == [3.0]


def test_429_waits_retry_after_http_date(dep_client, dep_sandbox, sleeps):
    when = email.utils.format_datetime(datetime.now(timezone.utc) + timedelta(seconds=20), usegmt=True)
    dep_sandbox.script("POST /server/devices", {"status": 429, "body": "TOO_MANY_REQUESTS", "headers": {"Retry-After": when}})
    assert next(dep_client.fetch_device_pages()).more_to_follow is False
    assert len(sleeps) == 1 and 17 <= sleeps[0] <= 20


def test_429_on_session_is_waited_out(dep_client, dep_sandbox, sleeps):
    dep_sandbox.script("GET /session", {"status": 429, "body": "TOO_MANY_REQUESTS", "headers": {"Retry-After": "1"}})
    assert dep_client.account()
    assert sleeps == [1.0]


def test_429_has_bounded_attempts(dep_client, dep_sandbox, sleeps):
    dep_sandbox.script("GET /account", *["too_many_requests"] * 10)
    with pytest.raises(Throttled, match="after 5 attempts; try again in a few minutes") as error:
        dep_client.account()
    assert error.value.retry_after is None  # Apple named no time: the caller's own retry schedule applies
    assert dep_sandbox.counts()["GET /account 429"] == 5
    assert sleeps == [2.0, 4.0, 8.0, 16.0]  # no Retry-After: exponential


def test_a_retry_after_longer_than_a_request_waits_is_throttled_at_once(dep_client, dep_sandbox, sleeps):
    dep_sandbox.script("GET /account", *[{"status": 429, "body": "TOO_MANY_REQUESTS",
                                          "headers": {"Retry-After": "3600"}}] * 5)
    with pytest.raises(Throttled, match=r"asked Orchard to wait 3600 s; try again after \d{4}-\d\d-\d\d ") as error:
        dep_client.account()
    assert error.value.retry_after == 3600 and sleeps == []
    assert dep_sandbox.counts()["GET /account"] == 1


def test_the_waits_of_one_request_are_bounded_in_all(dep_client, dep_sandbox, sleeps):
    dep_sandbox.script("GET /account", *[{"status": 429, "body": "TOO_MANY_REQUESTS",
                                          "headers": {"Retry-After": "200"}}] * 5)
    with pytest.raises(Throttled, match="wait 200 s") as error:
        dep_client.account()  # a second wait of 200 s would take it past 300 s
    assert error.value.retry_after == 200 and sleeps == [200.0]
    assert dep_sandbox.counts()["GET /account"] == 2


def test_retry_after_parsing():
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert retry_after_seconds("120", default=1) == 120
    assert retry_after_seconds("Thu, 01 Jan 2026 00:00:30 GMT", default=1, now=now) == 30
    assert retry_after_seconds("Wed, 31 Dec 2025 23:00:00 GMT", default=1, now=now) == 0
    assert retry_after_seconds("soon", default=7) == 7
    assert retry_after_seconds(None, default=7) == 7


def test_fetch_pages_then_sync_and_cursor_errors(dep_client, dep_sandbox, mdm_server):
    server = mdm_server["server_uuid"]
    dep_sandbox.server(server, "settings", {"page_maximum": 2})
    dep_sandbox.server(server, "devices/generate", {"count": 5})
    dep_client.account()
    assert dep_client.page_limit("/server/devices") == 2
    pages = list(dep_client.fetch_device_pages())
    assert [len(p.items) for p in pages] == [2, 2, 1]
    assert [p.more_to_follow for p in pages] == [True, True, False]
    assert len({d["serial_number"] for p in pages for d in p.items}) == 5
    final = pages[-1].cursor

    with pytest.raises(CursorExhausted):
        next(dep_client.fetch_device_pages(final))
    assert [p.items for p in dep_client.sync_device_pages(final)] == [[]]

    dep_sandbox.server(server, "devices", {"devices": [{"serial_number": "NEW0000001", "model": "iPad Air"}]})
    dep_sandbox.server(server, "devices/delete", {"serial_numbers": [pages[0].items[0]["serial_number"]]})
    synced = [d for p in dep_client.sync_device_pages(final) for d in p.items]
    assert [(d["serial_number"], d["op_type"]) for d in synced] == [
        ("NEW0000001", "added"), (pages[0].items[0]["serial_number"], "deleted")]
    assert all(d["op_date"] for d in synced)

    with pytest.raises(CursorExpired):
        next(dep_client.sync_device_pages("bm90IGEgY3Vyc29y"))
    dep_sandbox.post("clock", {"advance_seconds": 8 * DAY})
    with pytest.raises(CursorExpired, match="EXPIRED_CURSOR"):
        next(dep_client.sync_device_pages(final))
    with pytest.raises(CursorRequired):
        dep_client.sync_device_pages("")
    dep_sandbox.script("POST /devices/sync", {"status": 400, "body": '"CURSOR_REQUIRED"'})
    with pytest.raises(CursorRequired):
        next(dep_client.sync_device_pages("x"))


def test_device_details(dep_client, dep_sandbox, mdm_server):
    first = dep_sandbox.server(mdm_server["server_uuid"], "devices/generate", {"count": 3})["first"]
    details = dep_client.device_details([first, "UNKNOWN00001"])
    assert details[first]["response_status"] == "SUCCESS" and details[first]["model"]
    assert details["UNKNOWN00001"]["response_status"] == "NOT_ACCESSIBLE"


def test_profiles_define_assign_remove(dep_client, dep_sandbox, mdm_server):
    server = mdm_server["server_uuid"]
    first = dep_sandbox.server(server, "devices/generate", {"count": 4})["first"]
    serials = [first[:-1] + str(i) for i in range(4)]
    with pytest.raises(ValidationError, match=r"\(CONFIG_URL_REQUIRED\): correct its url and define it again"):
        dep_client.define_profile({"profile_name": "School iPads"})
    defined = dep_client.define_profile({"profile_name": "School iPads", "url": "https://mdm.school.example/enroll"})
    profile_uuid = defined["profile_uuid"]
    assert dep_client.get_profile(profile_uuid)["profile_name"] == "School iPads"
    with pytest.raises(DepError, match="PROFILE_NOT_FOUND"):
        dep_client.get_profile("0" * 32)

    dep_sandbox.server(server, "assign_outcomes", {"statuses": {serials[1]: "THROTTLED", serials[2]: "FAILED"},
                                                   "retry_after_seconds": 30})
    result = dep_client.assign_profile(profile_uuid, serials + ["NOTOURS00001"])
    assert result.statuses == {serials[0]: "SUCCESS", serials[1]: "THROTTLED", serials[2]: "FAILED",
                               serials[3]: "SUCCESS", "NOTOURS00001": "NOT_ACCESSIBLE"}
    assert result.retry_after_seconds == 30
    assert dep_sandbox.device(server, serials[0])["profile_status"] == "assigned"
    assert dep_sandbox.device(server, serials[1])["profile_status"] == "empty"

    assert dep_client.remove_profile([serials[0], "NOTOURS00001"]) == {serials[0]: "SUCCESS", "NOTOURS00001": "NOT_ACCESSIBLE"}
    assert dep_sandbox.device(server, serials[0])["profile_status"] == "removed"


def test_assign_is_one_request_of_at_most_a_thousand(dep_client, dep_sandbox, mdm_server):
    first = dep_sandbox.server(mdm_server["server_uuid"], "devices/generate", {"count": 1001})["first"]
    profile_uuid = dep_client.define_profile({"profile_name": "P", "url": "https://mdm.school.example/enroll"})["profile_uuid"]
    serials = [f"{first[:5]}{i:07d}" for i in range(1001)]
    result = dep_client.assign_profile(profile_uuid, serials[:1000])
    assert set(result.statuses.values()) == {"SUCCESS"} and len(result.statuses) == 1000
    with pytest.raises(ValueError, match="at most 1000"):
        dep_client.assign_profile(profile_uuid, serials)  # the domain batches, keeping each batch's results
    assert dep_sandbox.counts()["PUT /profile/devices 200"] == 1


ROSTER = {
    "locations": [{"unique_identifier": "L1", "name": "North Campus", "source_system_identifier": "loc-1", "source": "SFTP"}],
    "persons": [{"unique_identifier": f"P{i}", "name": f"Person {i}", "source_system_identifier": f"s{i}",
                 "managed_apple_id": f"p{i}@school.example"} for i in range(5)],
    "classes": [{"unique_identifier": "C1", "name": "Maths 7", "source_system_identifier": "c-1",
                 "instructor_unique_identifiers": ["P0"], "student_unique_identifiers": ["P1", "P2"]}],
    "courses": [{"unique_identifier": "K1", "name": "Maths", "course_number": "MA7"}],
}


@pytest.mark.parametrize("legacy_course_path", [False, True])
def test_roster_fetch_and_sync(dep_client, dep_sandbox, mdm_server, legacy_course_path):
    server = mdm_server["server_uuid"]
    dep_sandbox.server(server, "settings", {"legacy_course_path": legacy_course_path})
    dep_sandbox.server(server, "roster", ROSTER)
    persons = [p for page in dep_client.roster_pages("person") for p in page.items]
    assert [p["unique_identifier"] for p in persons] == [f"P{i}" for i in range(5)]
    assert [c["name"] for p in dep_client.roster_pages("course") for c in p.items] == ["Maths"]
    location_page = dep_client.roster_page("location")
    assert location_page.items[0]["name"] == "North Campus" and not location_page.more_to_follow
    class_page = dep_client.roster_page("class")
    dep_sandbox.server(server, "roster", {"classes": [{**ROSTER["classes"][0], "name": "Maths 7B"}]})
    changed = dep_client.roster_page("class", class_page.cursor, sync=True)
    assert [c["name"] for c in changed.items] == ["Maths 7B"]
    course_path = "/roster/course" if legacy_course_path else "/roster/class/course"
    assert dep_sandbox.counts()[f"POST {course_path} 200"] == 1
    with pytest.raises(CursorRequired):
        dep_client.roster_page("class", None, sync=True)


@pytest.mark.parametrize("endpoint,response,status", [
    ("GET /session", "bad_request", 400),
    ("GET /account", "method_not_allowed", 405),
    ("GET /account", "internal_server_error", 500),
    ("GET /account", {"status": 400, "body": '"MALFORMED_REQUEST_BODY"'}, 400),
])
def test_other_refusals_are_upstream_errors_with_the_status(dep_client, dep_sandbox, endpoint, response, status):
    dep_sandbox.script(endpoint, response)
    with pytest.raises(DepError) as error:
        dep_client.account()
    assert error.value.status_code == status and type(error.value) is DepError
    assert dep_sandbox.counts()[f"{endpoint} {status}"] == 1


def test_unreachable_apple_is_an_upstream_error(mdm_server):
    client = DepClient(mdm_server["credentials"], base_url="http://127.0.0.1:9", sleep=lambda s: None)
    with pytest.raises(DepError, match="Could not reach"):
        client.account()


NOT_AN_OBJECT = [
    {"status": 200, "body": "<html>Service Unavailable</html>", "content_type": "text/html"},  # a proxy's page
    {"status": 200, "body": "<html>Service Unavailable</html>"},  # a JSON string
    {"status": 200, "body": "[]", "content_type": "application/json"},
    {"status": 200, "body": ""},
]
CALLS = [
    ("GET /account", lambda client: client.account()),
    ("POST /server/devices", lambda client: list(client.fetch_device_pages())),
    ("POST /devices", lambda client: client.device_details(["C0000001"])),
    ("POST /profile", lambda client: client.define_profile({"profile_name": "P", "url": "https://mdm.example/e"})),
    ("GET /profile", lambda client: client.get_profile("P")),
    ("PUT /profile/devices", lambda client: client.assign_profile("P", ["C0000001"])),
    ("DELETE /profile/devices", lambda client: client.remove_profile(["C0000001"])),
    ("POST /roster/class/person", lambda client: client.roster_page("person")),
]


@pytest.mark.parametrize("answer", NOT_AN_OBJECT)
@pytest.mark.parametrize("endpoint,call", CALLS, ids=[endpoint for endpoint, _ in CALLS])
def test_an_answer_that_is_not_a_json_object_is_an_upstream_error_naming_the_endpoint(
        dep_client, dep_sandbox, endpoint, call, answer):
    dep_client.account()
    dep_sandbox.script(endpoint, answer)
    path = endpoint.split()[1]
    with pytest.raises(DepError, match=f"Apple's answer on {path} was not a JSON object; try again later"):
        call(dep_client)


@pytest.mark.parametrize("endpoint,call,body,complaint", [
    ("POST /devices", CALLS[2][1], {"devices": ["C0000001"]}, "did not give its devices by serial number"),
    ("PUT /profile/devices", CALLS[5][1], {"devices": "SUCCESS"}, "did not give its devices by serial number"),
    ("POST /server/devices", CALLS[1][1], {"devices": {"C0000001": {}}}, "did not list its devices with a cursor"),
    ("POST /roster/class/person", CALLS[7][1], {"persons": [], "cursor": 7}, "did not list its persons with a cursor"),
])
def test_an_object_of_the_wrong_shape_is_an_upstream_error(dep_client, dep_sandbox, endpoint, call, body, complaint):
    dep_client.account()
    dep_sandbox.script(endpoint, {"status": 200, "body": json.dumps(body), "content_type": "application/json"})
    with pytest.raises(DepError, match=complaint):
        call(dep_client)


@pytest.mark.parametrize("code,field", [
    ("DEPARTMENT_INVALID", "department"), ("SUPPORT_EMAIL_INVALID", "support_email_address"),
    ("SUPPORT_PHONE_INVALID", "support_phone_number"), ("LOCALE_INVALID", "language and region"),
    ("MAGIC_INVALID", "org_magic"), ("CONFIG_NAME_INVALID", "profile_name"),
    ("FLAGS_INVALID", "is_mdm_removable and is_supervised"),
])
def test_apple_refusing_a_field_of_the_profile_is_the_callers_to_fix(dep_client, dep_sandbox, code, field):
    dep_sandbox.script("POST /profile", {"status": 400, "body": code})
    with pytest.raises(ValidationError, match=f"refused the enrollment profile \\({code}\\): correct its {field} "):
        dep_client.define_profile({"profile_name": "P", "url": "https://mdm.example/enroll"})


def test_a_profile_refusal_apple_names_no_field_for_still_asks_to_correct_the_profile(dep_client, dep_sandbox):
    dep_sandbox.script("POST /profile", {"status": 400, "body": "CONFIG_ANCHOR_CERTS_INVALID"})
    with pytest.raises(ValidationError, match=r"\(CONFIG_ANCHOR_CERTS_INVALID\): correct it and define it again"):
        dep_client.define_profile({"profile_name": "P", "url": "https://mdm.example/enroll"})
    dep_sandbox.script("POST /profile", {"status": 400, "body": "MALFORMED_REQUEST_BODY"})
    with pytest.raises(DepError, match="400 MALFORMED_REQUEST_BODY on /profile"):  # Orchard's request, not the profile
        dep_client.define_profile({"profile_name": "P", "url": "https://mdm.example/enroll"})
