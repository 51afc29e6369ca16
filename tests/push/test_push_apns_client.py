"""The APNs client against the HTTP/2 stand-in: the exact request Apple receives, and each reason's effect."""
from __future__ import annotations

import json
import secrets
import socket
import time
from contextlib import contextmanager
from typing import Iterator

import eventlet
import pytest

from apple_sandbox.push_portal import SandboxAppleCA
from services.push.adapters.apns_client import ApnsClient, ApnsClients, Push, RetryPolicy, client_tls_context
from services.push.adapters.http2 import ConnectionLost, Http2Connection
from services.push.domain.certificates import read_pem_certificate
from tests.waiting import wait_for

FAST_RETRY = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05)


@pytest.fixture(scope="module")
def push_certificate(issue_push):
    issued = issue_push()
    return read_pem_certificate(issued.certificate_pem, issued.private_key_pem)


@pytest.fixture
def client(push_certificate, apns_sandbox):
    client = ApnsClient(
        topic=push_certificate.topic, certificate_pem=push_certificate.certificate_pem,
        private_key_pem=push_certificate.private_key_pem, base_url=apns_sandbox.url,
        ca_file=apns_sandbox.ca_file, retry=FAST_RETRY,
    )
    yield client
    client.close()


def token() -> str:
    return secrets.token_hex(32)


def test_request_is_exactly_what_apple_expects(client, apns_sandbox, push_certificate):
    device = token()
    result = client.send_one(Push(device, "PUSH-MAGIC-1"))
    (received,) = apns_sandbox.requests()
    assert received["method"] == "POST"
    assert received["path"] == f"/3/device/{device}"
    headers = received["headers"]
    assert headers["apns-topic"] == push_certificate.topic
    assert headers["apns-push-type"] == "mdm"
    assert headers["apns-priority"] == "10"
    assert abs(int(headers["apns-expiration"]) - (time.time() + 86400)) < 60
    assert headers["content-type"] == "application/json"
    assert json.loads(received["body"]) == {"mdm": "PUSH-MAGIC-1"}
    assert received["client_topic"] == push_certificate.topic  # the push certificate was the TLS client certificate
    assert result.delivered and result.status == 200 and result.attempts == 1
    assert result.apns_id == received["apns_id"]


@pytest.mark.parametrize("status, reason", [(410, "Unregistered"), (400, "BadDeviceToken"), (400, "DeviceTokenNotForTopic")])
def test_permanent_reasons_are_reported_once_and_marked_permanent(client, apns_sandbox, status, reason):
    device = token()
    apns_sandbox.script(device, status=status, reason=reason)
    result = client.send_one(Push(device, "m"))
    assert (result.status, result.reason, result.attempts) == (status, reason, 1)
    assert result.permanent and not result.delivered
    assert len(apns_sandbox.requests()) == 1


def test_a_malformed_token_is_apples_bad_device_token(client, apns_sandbox):
    result = client.send_one(Push("not-hex", "m"))
    assert (result.status, result.reason, result.permanent) == (400, "BadDeviceToken", True)


@pytest.mark.parametrize("status, reason", [(429, "TooManyRequests"), (503, "ServiceUnavailable"), (500, "InternalServerError")])
def test_throttling_and_server_errors_are_retried_until_delivered(client, apns_sandbox, status, reason):
    device = token()
    apns_sandbox.script(device, status=status, reason=reason, times=2)
    result = client.send_one(Push(device, "m"))
    assert result.delivered and result.attempts == 3
    assert [r["status"] for r in apns_sandbox.requests()] == [status, status, 200]


def test_retries_are_bounded(client, apns_sandbox):
    device = token()
    apns_sandbox.script(device, status=503, reason="ServiceUnavailable", times=None)
    result = client.send_one(Push(device, "m"))
    assert (result.status, result.reason, result.attempts) == (503, "ServiceUnavailable", 3)
    assert not result.permanent
    assert len(apns_sandbox.requests()) == 3


def test_backoff_grows_with_jitter():
    policy = RetryPolicy(base_delay=0.2, max_delay=5.0)
    for attempt, step in [(1, 0.2), (2, 0.4), (3, 0.8), (10, 5.0)]:
        delays = {policy.delay(attempt) for _ in range(20)}
        assert all(step / 2 <= d <= step for d in delays) and len(delays) > 1


@pytest.mark.parametrize("action", ["goaway", "reset"])
def test_goaway_and_dropped_connections_are_retried_on_a_new_connection(client, apns_sandbox, action):
    client.send_one(Push(token(), "warm-up"))
    device = token()
    apns_sandbox.script(device, action=action, reason="Shutdown")
    result = client.send_one(Push(device, "m"))
    assert result.delivered and result.attempts == 2
    first_connection, failed, retried = [r["connection"] for r in apns_sandbox.requests()]
    assert failed == first_connection and retried != failed


def test_other_streams_survive_a_goaway_by_retrying(client, apns_sandbox):
    apns_sandbox.script("*", action="goaway", reason="Shutdown", times=1)
    results = client.send([Push(token(), "m") for _ in range(50)])
    assert all(r.delivered for r in results)


def test_a_topic_the_certificate_does_not_cover_is_reported_without_retry(push_certificate, apns_sandbox):
    client = ApnsClient(
        topic="com.apple.mgmt.External.someone-else", certificate_pem=push_certificate.certificate_pem,
        private_key_pem=push_certificate.private_key_pem, base_url=apns_sandbox.url, ca_file=apns_sandbox.ca_file,
    )
    try:
        result = client.send_one(Push(token(), "m"))
    finally:
        client.close()
    assert (result.status, result.reason, result.attempts, result.permanent) == (400, "TopicDisallowed", 1, False)


def test_a_certificate_apple_did_not_issue_is_refused_in_tls_and_not_retried(tmp_path, apns_sandbox, push_keys, push_certificate):
    stranger_ca = SandboxAppleCA.load_or_create(tmp_path)
    issued = read_pem_certificate(stranger_ca.issue_push_certificate(push_keys[0].public_key()))
    client = ApnsClient(
        topic=issued.topic, certificate_pem=issued.certificate_pem, private_key_pem=push_certificate.private_key_pem,
        base_url=apns_sandbox.url, ca_file=apns_sandbox.ca_file, retry=FAST_RETRY,
    )
    try:
        result = client.send_one(Push(token(), "m"))
        batch = client.send([Push(token(), "m") for _ in range(20)])
    finally:
        client.close()
    assert result.status is None and result.attempts == 1
    assert "refused" in result.reason
    assert all(r.status is None and r.attempts == 1 and r.reason == result.reason for r in batch)
    assert apns_sandbox.requests() == []


def test_fan_out_shares_one_connection_and_does_not_block_the_hub(client, apns_sandbox):
    ticks = []
    ticker = eventlet.spawn(lambda: [ticks.append(eventlet.sleep(0.001)) for _ in range(10_000)])
    pushes = [Push(token(), f"magic-{i}") for i in range(400)]
    results = client.send(pushes)
    ticker.kill()
    assert [r.device_token for r in results] == [p.device_token for p in pushes]
    assert all(r.delivered for r in results)
    received = apns_sandbox.requests()
    assert len(received) == 400 and len({r["connection"] for r in received}) == 1
    assert len(ticks) > 5, "the hub was blocked while pushing"


def test_stand_in_checks_the_push_type(push_certificate, apns_sandbox):
    context = client_tls_context(push_certificate.certificate_pem, push_certificate.private_key_pem, apns_sandbox.ca_file)
    host, port = apns_sandbox.url.removeprefix("https://").split(":")
    connection = Http2Connection(host, int(port), context)
    try:
        response = connection.request(
            f"/3/device/{token()}".encode(), [(b"apns-topic", push_certificate.topic.encode())], b'{"mdm":"m"}', 5
        )
    finally:
        connection.close()
    assert response.status == 400 and json.loads(response.body) == {"reason": "InvalidPushType"}


def test_client_per_topic_is_reused_and_replaced_on_renewal(push_certificate, apns_sandbox):
    clients = ApnsClients(base_url=apns_sandbox.url, ca_file=apns_sandbox.ca_file)
    credentials = dict(topic=push_certificate.topic, certificate_pem=push_certificate.certificate_pem,
                       private_key_pem=push_certificate.private_key_pem)
    try:
        first = clients.for_certificate(serial_number="01", **credentials)
        assert clients.for_certificate(serial_number="01", **credentials) is first
        renewed = clients.for_certificate(serial_number="02", **credentials)
        assert renewed is not first
        assert renewed.send_one(Push(token(), "m")).delivered
    finally:
        clients.close()


@contextmanager
def clients_for(push_certificate, apns_sandbox, **options) -> Iterator[tuple[ApnsClients, dict]]:
    """Clients for the stand-in, and the credentials ``for_certificate`` takes besides a serial number; closed after."""
    clients = ApnsClients(base_url=apns_sandbox.url, ca_file=apns_sandbox.ca_file, **options)
    credentials = dict(topic=push_certificate.topic, certificate_pem=push_certificate.certificate_pem,
                       private_key_pem=push_certificate.private_key_pem)
    try:
        yield clients, credentials
    finally:
        clients.close()


def test_pushes_in_flight_when_the_certificate_is_renewed_finish_on_the_replaced_client(push_certificate, apns_sandbox):
    with clients_for(push_certificate, apns_sandbox, retry=FAST_RETRY,
                     batch_seconds=2) as (clients, credentials):
        replaced = clients.for_certificate(serial_number="01", **credentials)
        replaced.send_one(Push(token(), "warm-up"))  # connected before the batch starts
        apns_sandbox.script("*", delay=0.5, times=None)  # answers slow enough that the renewal comes mid-batch
        devices = [token() for _ in range(50)]
        batch = eventlet.spawn(replaced.send, [Push(device, "m") for device in devices])
        eventlet.sleep(0.1)  # every push is on its stream
        renewed = clients.for_certificate(serial_number="02", **credentials)  # the next call after the renewal
        assert renewed is not replaced
        assert renewed.send_one(Push(token(), "m")).delivered
        results = batch.wait()
        assert all(r.delivered and r.attempts == 1 for r in results)
        warm_up, *received = apns_sandbox.requests()
        on_the_old_connection = [r["device_token"] for r in received if r["connection"] == warm_up["connection"]]
        assert sorted(on_the_old_connection) == sorted(devices)  # each sent once, there, under the old certificate
        # its batch over, and a batch's time since it was replaced, the replaced client keeps nothing open
        wait_for(lambda: replaced.closed, timeout=5, what="the replaced client closed")
        assert not renewed.closed
        assert replaced.send_one(Push(token(), "m")).reason.startswith("the client was closed")


def test_a_client_handed_out_just_before_it_was_replaced_still_sends(push_certificate, apns_sandbox):
    """One call gets the client, another renews the certificate before the first call's send has begun."""
    with clients_for(push_certificate, apns_sandbox, retry=FAST_RETRY, timeout=30,
                     batch_seconds=2) as (clients, credentials):
        handed_out = clients.for_certificate(serial_number="01", **credentials)
        assert clients.for_certificate(serial_number="02", **credentials) is not handed_out
        assert [r.delivered for r in handed_out.send([Push(token(), "m") for _ in range(3)])] == [True] * 3
        wait_for(lambda: handed_out.closed, timeout=5, what="the replaced client closed once a batch's time passed")


def test_a_client_replaced_twice_in_a_row_closes_within_two_batches_time(push_certificate, apns_sandbox):
    with clients_for(push_certificate, apns_sandbox, retry=FAST_RETRY, timeout=30,
                     batch_seconds=1) as (clients, credentials):
        first = clients.for_certificate(serial_number="01", **credentials)
        first.send_one(Push(token(), "warm-up"))
        apns_sandbox.script("*", delay=30, times=None)  # no answer within the batch
        batch = eventlet.spawn(first.send, [Push(token(), "m") for _ in range(10)])
        eventlet.sleep(0.1)
        second = clients.for_certificate(serial_number="02", **credentials)
        third = clients.for_certificate(serial_number="03", **credentials)
        assert not first.closed  # its batch still runs
        started = time.monotonic()
        results = batch.wait()
        assert time.monotonic() - started < 1.5
        # the pushes ran out of time waiting for APNs, not because their client was closed under them
        assert all(r.status is None and r.reason.startswith("no answer within") for r in results)
        wait_for(lambda: first.closed and second.closed, timeout=3, what="both replaced clients closed")
        assert clients.for_certificate(serial_number="03", **credentials) is third and not third.closed


def test_shutting_down_closes_a_replaced_client_still_sending(push_certificate, apns_sandbox):
    with clients_for(push_certificate, apns_sandbox, retry=FAST_RETRY, timeout=30,
                     batch_seconds=30) as (clients, credentials):
        replaced = clients.for_certificate(serial_number="01", **credentials)
        replaced.send_one(Push(token(), "warm-up"))
        apns_sandbox.script("*", delay=30, times=None)
        batch = eventlet.spawn(replaced.send, [Push(token(), "m") for _ in range(10)])
        eventlet.sleep(0.1)
        clients.for_certificate(serial_number="02", **credentials)
        clients.close()
        assert replaced.closed
        started = time.monotonic()
        assert all(r.status is None for r in batch.wait())
        assert time.monotonic() - started < 1  # its pushes end at once, not after the 30 s batch


def test_closed_connection_refuses_new_requests(push_certificate, apns_sandbox):
    context = client_tls_context(push_certificate.certificate_pem, push_certificate.private_key_pem, apns_sandbox.ca_file)
    host, port = apns_sandbox.url.removeprefix("https://").split(":")
    connection = Http2Connection(host, int(port), context)
    connection.close()
    with pytest.raises(ConnectionLost, match="closed"):
        connection.request(b"/3/device/00", [], b"{}", 5)


@pytest.fixture
def black_hole():
    """An address that accepts TCP connections and then says nothing, as a black-holing firewall does:
    ``(url, accepted)``, where ``accepted`` lists the connections it took."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1000)
    accepted = []
    acceptor = eventlet.spawn(lambda: [accepted.append(listener.accept()[0]) for _ in iter(int, 1)])
    yield f"https://127.0.0.1:{listener.getsockname()[1]}", accepted
    acceptor.kill()
    for connection in accepted:
        connection.close()
    listener.close()


def timed_batch(push_certificate, url: str, ca_file: str, pushes: int, *, warm_up: bool = False,
                before=lambda: None, **options) -> tuple[list, float]:
    """Send ``pushes`` pushes in one batch with a new client; the results and the seconds the batch took."""
    client = ApnsClient(topic=push_certificate.topic, certificate_pem=push_certificate.certificate_pem,
                        private_key_pem=push_certificate.private_key_pem, base_url=url, ca_file=ca_file, **options)
    try:
        if warm_up:
            client.send_one(Push(token(), "warm-up"))  # connected before the clock starts
        before()
        started = time.monotonic()
        results = client.send([Push(token(), "m") for _ in range(pushes)])
        return results, time.monotonic() - started
    finally:
        client.close()


def test_a_batch_shares_each_connection_attempt_to_an_unresponsive_apns(push_certificate, apns_sandbox, black_hole):
    url, accepted = black_hole
    results, seconds = timed_batch(push_certificate, url, apns_sandbox.ca_file, 40, timeout=0.5,
                                   retry=RetryPolicy(max_attempts=2, base_delay=0.1, max_delay=0.1))
    # one handshake per attempt for the whole batch, each waiting out the 0.5 s timeout: not one per device
    assert seconds < 3
    assert len(accepted) == 2
    assert all(r.status is None and r.attempts == 2 and "timed out" in r.reason for r in results)


def test_a_batch_ends_by_its_deadline_however_long_the_connect_timeout(push_certificate, apns_sandbox, black_hole):
    url, _ = black_hole
    results, seconds = timed_batch(push_certificate, url, apns_sandbox.ca_file, 40,
                                   timeout=30, batch_seconds=1, retry=FAST_RETRY)
    assert seconds < 2.5
    assert all(r.status is None and "still connecting" in r.reason and "1 s were over" in r.reason for r in results)


def unanswered_batch(push_certificate, apns_sandbox, pushes: int, **options) -> tuple[list, float]:
    """A timed batch to a stand-in that holds every answer for 30 s, from a client connected before it starts."""
    return timed_batch(push_certificate, apns_sandbox.url, apns_sandbox.ca_file, pushes, warm_up=True,
                       before=lambda: apns_sandbox.script("*", delay=30, times=None),
                       timeout=30, retry=FAST_RETRY, **options)


def test_a_batch_ends_by_its_deadline_when_apns_is_slow_to_answer(push_certificate, apns_sandbox):
    results, seconds = unanswered_batch(push_certificate, apns_sandbox, 20, batch_seconds=1.5, concurrency=5)
    assert seconds < 3
    assert all(r.status is None for r in results)
    assert [r.reason for r in results[:5]] == ["no answer within 1.5 s"] * 5
    assert {r.reason for r in results[5:]} == {"not sent: the batch's 1.5 s were over"}
    assert {r.attempts for r in results[5:]} == {0}


def test_pushes_waiting_for_a_free_stream_end_by_the_deadline_too(push_certificate, apns_sandbox):
    # more pushes in flight than the 1,000 streams APNs allows on a connection, none of them answered
    results, seconds = unanswered_batch(push_certificate, apns_sandbox, 1100, batch_seconds=2, concurrency=1100)
    assert seconds < 3.2
    reasons = [r.reason.rsplit(" within ", 1)[0] for r in results]
    assert (reasons.count("no answer"), reasons.count("no stream free")) == (1000, 100)


def test_streams_apns_still_processes_after_a_goaway_are_answered_once(client, apns_sandbox):
    client.send_one(Push(token(), "warm-up"))
    device = token()
    # APNs shuts the connection down, naming this push as the last stream it processes, and answers it later
    apns_sandbox.script(device, action="goaway", graceful=True, delay=0.3, reason="Shutdown")
    result = client.send_one(Push(device, "m"))
    assert result.delivered and result.attempts == 1 and result.seconds < 2
    assert [r["device_token"] for r in apns_sandbox.requests()].count(device) == 1
    after = client.send_one(Push(token(), "m"))
    assert after.delivered
    first, answered, reconnected = [r["connection"] for r in apns_sandbox.requests()]
    assert first == answered != reconnected


def test_a_graceful_goaway_in_a_busy_connection_fails_only_the_streams_after_it(client, apns_sandbox):
    client.send_one(Push(token(), "warm-up"))
    apns_sandbox.script("*", delay=0.5, times=None)  # answers slow enough that streams pile up behind the GOAWAY
    devices = [token() for _ in range(30)]
    apns_sandbox.script(devices[10], action="goaway", graceful=True, delay=0.5, reason="Shutdown")
    results = client.send([Push(device, "m") for device in devices])
    assert all(r.delivered for r in results)
    received = apns_sandbox.requests()[1:]
    first_connection = received[0]["connection"]
    answered_there = {r["device_token"] for r in received if r["connection"] == first_connection}
    # the streams up to the GOAWAY's were answered there, once; the ones after it, never processed, were sent again
    assert devices[10] in answered_there and len(answered_there) < 30
    assert sorted(r["device_token"] for r in received) == sorted(devices)
    assert [r.attempts for r, device in zip(results, devices)] == [1 if d in answered_there else 2 for d in devices]


def test_a_client_closed_while_it_connects_keeps_no_connection_open(client, apns_sandbox):
    """A client closed (retired, or at shutdown) while it connects closes the connection it gets afterwards."""
    pushing = eventlet.spawn(client.send_one, Push(token(), "m"))
    eventlet.sleep(0)  # the push starts connecting
    client.close()
    result = pushing.wait()
    assert (result.status, result.attempts) == (None, 1) and "the client was closed" in result.reason
    assert client.send_one(Push(token(), "m")).reason.startswith("the client was closed")
