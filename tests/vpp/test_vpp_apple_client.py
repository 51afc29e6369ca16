"""The Apps and Books client against the sandbox over real HTTP, one test per behaviour."""
import json
import threading
import time

import pytest
from werkzeug.wrappers import Request, Response

from apple_sandbox.server import serve_wsgi
from services.vpp.adapters.apple_client import (
    AppleRequestError, AppsAndBooksClient, ContentTokenExpired, ContentTokenInvalid, ContentTokenRevoked,
    ManagedByAnotherMdm, MdmIdentity,
)
from services.vpp.domain.licences import LicenceBatch

US = MdmIdentity("orchard-test", "Orchard")


def client_for(sandbox, stoken, **kw) -> AppsAndBooksClient:
    options = dict(busy_backoff=0.01, max_retry_after=0.05, poll_interval=0.01, poll_timeout=5)
    return AppsAndBooksClient(stoken, US, base_url=sandbox.api_url, **{**options, **kw})


@pytest.fixture
def stoken(vpp_sandbox):
    return vpp_sandbox.issue_token(locationName="North Campus")


@pytest.fixture
def client(vpp_sandbox, stoken):
    c = client_for(vpp_sandbox, stoken)
    yield c
    c.close()


def test_service_config_gives_limits_and_invite_url_and_is_cached(vpp_sandbox, client):
    assert client.limits().max_users == 100
    assert "%25inviteCode%25" in client.invitation_url_template()
    client.limits()
    assert vpp_sandbox.requests("service/config") == 1


def test_client_config_with_bearer_token(client):
    config = client.client_config()
    assert config["locationName"] == "North Campus"
    assert client.location_uid == config["uId"] and client.token_expiration_date


def test_claiming_the_location_and_another_mdm_taking_it(vpp_sandbox, client, stoken):
    assert client.claim_location()["mdmInfo"]["id"] == US.id
    vpp_sandbox.post("mdm-info", sToken=stoken, mdmInfo={"id": "other-mdm", "name": "Other MDM"})
    with pytest.raises(ManagedByAnotherMdm) as caught:
        client.assets()
    assert "Other MDM" in str(caught.value) and caught.value.other_mdm["id"] == "other-mdm"
    assert client.client_config(check_mdm=False)["mdmInfo"]["id"] == "other-mdm"


def test_invalid_token_in_a_200_body_is_reread_and_retried_once(vpp_sandbox, stoken):
    reads = []
    def reload():
        reads.append(1)
        return stoken
    c = client_for(vpp_sandbox, "bm90IGEgdG9rZW4=", reload_stoken=reload)
    assert c.client_config()["locationName"] == "North Campus"
    assert reads == [1]
    with pytest.raises(ContentTokenInvalid) as caught:
        client_for(vpp_sandbox, "bm90IGEgdG9rZW4=").client_config()
    assert vpp_sandbox.requests("client/config") == 4  # 2 + 2: one retry each, no more
    assert caught.value.error_number == 9622 and stoken not in str(caught.value)


def test_expired_and_revoked_tokens(vpp_sandbox, stoken):
    expired = vpp_sandbox.issue_token(locationName="Old", expDate="2020-01-01T00:00:00+0000")
    with pytest.raises(ContentTokenExpired, match="expired"):
        client_for(vpp_sandbox, expired).assets()
    vpp_sandbox.post("tokens/revoke", sToken=stoken)
    with pytest.raises(ContentTokenRevoked, match="revoked"):
        client_for(vpp_sandbox, stoken).assets()


def test_too_many_requests_backs_off_then_gives_up(vpp_sandbox, client):
    vpp_sandbox.fault("assets", kind="error", errorNumber=9646, times=2)
    assert len(client.assets()) == 0
    assert vpp_sandbox.requests("assets") == 3
    vpp_sandbox.fault("assets", kind="error", errorNumber=9646, times=10)
    with pytest.raises(AppleRequestError, match="limiting") as caught:
        client.assets()
    assert caught.value.error_number == 9646
    assert vpp_sandbox.requests("assets") == 3 + 4  # first try + 3 backoffs


def test_server_errors_wait_for_retry_after(vpp_sandbox, stoken):
    vpp_sandbox.fault("client/config", kind="http", status=503, retryAfter=1)
    started = time.monotonic()
    assert client_for(vpp_sandbox, stoken, max_retry_after=5).client_config()["locationName"]
    assert time.monotonic() - started >= 1.0
    vpp_sandbox.fault("client/config", kind="http", status=500, retryAfter=0, times=5)
    with pytest.raises(AppleRequestError, match="HTTP 500"):
        client_for(vpp_sandbox, stoken).client_config()


def test_other_errors_in_200_bodies_are_raised_with_their_number(vpp_sandbox, client):
    with pytest.raises(AppleRequestError, match=r"error 9718") as caught:
        client.associate(LicenceBatch("404404", "STDQ", serial_numbers=("S1",)))
    assert caught.value.error_number == 9718


def test_paging_follows_next_page_index_and_restarts_when_the_version_changes(vpp_sandbox, client, stoken):
    vpp_sandbox.post("settings", pageSize=2)
    for n in range(5):
        vpp_sandbox.add_asset(stoken, f"10{n}", 5)
    listing = client.assets()
    assert [a["adamId"] for a in listing] == ["100", "101", "102", "103", "104"]
    assert vpp_sandbox.requests("assets") == 3
    vpp_sandbox.fault("assets", kind="version_change", skip=1)  # the data changes before page 1 is read
    restarted = client.assets()
    assert [a["adamId"] for a in restarted] == ["100", "101", "102", "103", "104"]
    assert restarted.version_id != listing.version_id
    assert vpp_sandbox.requests("assets") == 3 + 2 + 3


def test_writes_complete_asynchronously_with_per_item_failures(vpp_sandbox, client, stoken):
    vpp_sandbox.add_asset(stoken, "100", 2)
    event_id = client.associate(LicenceBatch("100", "STDQ", serial_numbers=("S1", "S2", "S3")))
    result = client.wait_for_event(event_id)
    assert vpp_sandbox.requests("status") == 2  # PENDING, then COMPLETE
    assert (result.status, result.event_type, result.num_completed, result.num_requested) == ("COMPLETE", "ASSOCIATE", 2, 3)
    assert result.failures[0]["errorNumber"] == 9709
    assert result.failures[0]["errorInfo"]["serialNumbers"] == ["S3"]
    assignments = client.assignments(adamId="100")
    assert sorted(a["serialNumber"] for a in assignments) == ["S1", "S2"]
    assert client.wait_for_event(client.disassociate(LicenceBatch("100", "STDQ", serial_numbers=("S1",)))).status == "COMPLETE"
    assert client.assets().items[0]["availableCount"] == 1


def test_users_are_registered_with_invite_codes(vpp_sandbox, client):
    users = [{"clientUserId": f"u{n}", "managedAppleId": f"u{n}@school.appleid.com"} for n in range(3)]
    assert client.wait_for_event(client.create_users(users)).status == "COMPLETE"
    again = client.wait_for_event(client.create_users(users[:1]))
    assert again.status == "FAILED" and again.failures[0]["errorNumber"] == 9716
    listed = client.users()
    assert [u["clientUserId"] for u in listed] == ["u0", "u1", "u2"]
    assert all(u["status"] == "Registered" and u["inviteCode"] for u in listed)
    since = client.users(since_version_id=listed.version_id)
    assert len(since) == 0
    with pytest.raises(AppleRequestError) as caught:
        client.create_users([{"clientUserId": f"x{n}"} for n in range(101)])
    assert caught.value.error_number == 9714


def test_wait_gives_up_after_its_timeout(vpp_sandbox, stoken):
    vpp_sandbox.post("settings", eventPolls=1000)
    c = client_for(vpp_sandbox, stoken, poll_timeout=0.1)
    with pytest.raises(AppleRequestError, match="not finished"):
        c.wait_for_event(c.create_users([{"clientUserId": "slow"}]))


def test_the_token_never_shows_in_reprs_or_errors(vpp_sandbox, stoken):
    c = client_for(vpp_sandbox, stoken)
    assert stoken not in repr(c)
    vpp_sandbox.fault("assets", kind="error", errorNumber=9603)
    with pytest.raises(AppleRequestError) as caught:
        c.assets()
    assert stoken not in str(caught.value) and stoken not in repr(caught.value)


def test_notifications_are_posted_with_the_bearer_token(vpp_sandbox, client, stoken):
    received, arrived = [], threading.Event()
    def receiver(environ, start_response):
        request = Request(environ)
        received.append((request.headers.get("Authorization"), json.loads(request.get_data())))
        arrived.set()
        return Response("", 200)(environ, start_response)
    sink = serve_wsgi(receiver)
    try:
        client.claim_location(notification_url=sink.url + "/notify", notification_auth_token="n-secret",
                              notification_types=["ASSET_MANAGEMENT"])
        vpp_sandbox.add_asset(stoken, "100", 1)
        client.wait_for_event(client.associate(LicenceBatch("100", "STDQ", serial_numbers=("S1",))))
        assert arrived.wait(5)
        auth, body = received[0]
        assert auth == "Bearer n-secret"
        assert body["notificationType"] == "ASSET_MANAGEMENT"
        assert body["notification"]["result"] == "SUCCESS" and body["uId"] == client.location_uid
    finally:
        sink.stop()
