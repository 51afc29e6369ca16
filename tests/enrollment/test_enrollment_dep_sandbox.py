"""The DEP sandbox's Apple-side checks, exercised with raw HTTP (what our client never sends)."""
import httpx
import pytest

from services.enrollment.adapters.oauth1 import authorization_header

JSON = "application/json;charset=UTF8"


def session_request(url, credentials, *, nonce=None, content_type=JSON, user_agent="test", secret=None):
    header = authorization_header("GET", f"{url}/session", consumer_key=credentials.consumer_key,
                                  consumer_secret=secret or credentials.consumer_secret,
                                  token=credentials.access_token, token_secret=credentials.access_secret, nonce=nonce)
    headers = {"Authorization": header, "Content-Type": content_type, "User-Agent": user_agent}
    return httpx.get(f"{url}/session", headers=headers)


def test_valid_session_then_reused_nonce_is_unauthorized(dep_sandbox, mdm_server):
    first = session_request(dep_sandbox.url, mdm_server["credentials"], nonce="n-1")
    assert first.status_code == 200 and first.json()["auth_session_token"]
    assert first.headers["Content-Type"] == JSON
    again = session_request(dep_sandbox.url, mdm_server["credentials"], nonce="n-1")
    assert (again.status_code, again.text) == (401, '"UNAUTHORIZED"')


def test_bad_signature_is_unauthorized(dep_sandbox, mdm_server):
    response = session_request(dep_sandbox.url, mdm_server["credentials"], secret="CS_other")
    assert (response.status_code, response.text) == (401, '"UNAUTHORIZED"')


@pytest.mark.parametrize("headers,status,body", [
    ({"Authorization": "Basic abc", "Content-Type": JSON, "User-Agent": "t"}, 400, ""),
    ({"Authorization": 'OAuth realm="ADM", oauth_consumer_key="CK_1"', "Content-Type": JSON, "User-Agent": "t"}, 400, ""),
    ({"Content-Type": JSON, "User-Agent": ""}, 400, '"USER_AGENT_MISSING"'),
])
def test_malformed_session_requests(dep_sandbox, headers, status, body):
    response = httpx.get(f"{dep_sandbox.url}/session", headers=headers)
    assert (response.status_code, response.text) == (status, body)


def test_session_needs_depsims_exact_content_type(dep_sandbox, mdm_server):
    assert session_request(dep_sandbox.url, mdm_server["credentials"], content_type="application/json").status_code == 400


def test_unknown_session_is_forbidden_and_wrong_method_405(dep_sandbox, mdm_server):
    response = httpx.get(f"{dep_sandbox.url}/account", headers={"X-ADM-Auth-Session": "nope", "User-Agent": "t"})
    assert (response.status_code, response.text) == (403, '"FORBIDDEN"')
    token = session_request(dep_sandbox.url, mdm_server["credentials"]).json()["auth_session_token"]
    headers = {"X-ADM-Auth-Session": token, "User-Agent": "t", "Content-Type": JSON}
    assert httpx.get(f"{dep_sandbox.url}/server/devices", headers=headers).status_code == 405
    bad = httpx.post(f"{dep_sandbox.url}/server/devices", headers=headers, content=b"{not json")
    assert (bad.status_code, bad.text) == (400, '"MALFORMED_REQUEST_BODY"')


def test_assign_accepts_put_and_post_and_session_expiry_by_ttl(dep_sandbox, mdm_server):
    server = mdm_server["server_uuid"]
    first = dep_sandbox.server(server, "devices/generate", {"count": 1})["first"]
    token = session_request(dep_sandbox.url, mdm_server["credentials"]).json()["auth_session_token"]
    headers = {"X-ADM-Auth-Session": token, "User-Agent": "t", "Content-Type": JSON, "X-Server-Protocol-Version": "10"}
    profile = httpx.post(f"{dep_sandbox.url}/profile", headers=headers,
                         json={"profile_name": "P", "url": "https://mdm.example/enroll"}).json()["profile_uuid"]
    for method in ("PUT", "POST"):
        answer = httpx.request(method, f"{dep_sandbox.url}/profile/devices", headers=headers,
                               json={"profile_uuid": profile, "devices": [first]})
        assert answer.json()["devices"] == {first: "SUCCESS"}
    dep_sandbox.server(server, "settings", {"session_ttl": 60})
    dep_sandbox.post("clock", {"advance_seconds": 61})
    expired = httpx.get(f"{dep_sandbox.url}/account", headers=headers)
    assert (expired.status_code, expired.text) == (401, '"UNAUTHORIZED"')


def test_generating_many_devices_is_cheap(dep_sandbox, mdm_server):
    import time
    started = time.monotonic()
    dep_sandbox.server(mdm_server["server_uuid"], "devices/generate", {"count": 100_000})
    assert time.monotonic() - started < 0.5
