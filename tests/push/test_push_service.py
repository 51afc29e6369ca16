"""The push service over the real broker: certificates, devices from enrollment events, pushes, access."""
from __future__ import annotations

import base64
import csv
import io
import logging
import secrets
import sys
import time
from datetime import datetime, timedelta, timezone

import eventlet
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from nameko.standalone.events import event_dispatcher
from prometheus_client.parser import text_string_to_metric_families
from python_calamine import CalamineWorkbook

from apple_sandbox.push_portal import sign_push_request
from services.push.service import PushService
from shared.auth import Actor
from shared.contracts.enrollment import DeviceEnrolled, DeviceUnenrolled
from shared.errors import Conflict, NotFound, PermissionDenied, ValidationError
from tests.conftest import free_port, replicas_on_postgresql, settle
from tests.push.unsupported_keys import SECP112R1, with_ec_public_key
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

NOW = datetime.now(timezone.utc)


@pytest.fixture(scope="module")
def vendor_files(apple_ca, tmp_path_factory):
    directory = tmp_path_factory.mktemp("vendor")
    vendor = apple_ca.issue_vendor_certificate()
    (directory / "vendor.pem").write_text(vendor.certificate_pem)
    (directory / "vendor.key").write_text(vendor.private_key_pem)
    (directory / "chain.pem").write_text(apple_ca.certificate_pem)
    return directory


@pytest.fixture
def push_config(orchard_config, apns_sandbox, vendor_files):
    orchard_config["SERVICES"]["push"].update(
        apns_url=apns_sandbox.url, apns_ca_file=apns_sandbox.ca_file,
        vendor_certificate_file=str(vendor_files / "vendor.pem"),
        vendor_private_key_file=str(vendor_files / "vendor.key"),
        vendor_chain_file=str(vendor_files / "chain.pem"),
    )
    return orchard_config


@pytest.fixture
def push_service(runner_factory, push_config):
    runner = runner_factory(push_config, PushService)
    runner.start()
    return runner


def enroll(config, topic: str, udid: str | None = None, token: str | None = None) -> DeviceEnrolled:
    event = DeviceEnrolled(udid=udid or f"UDID-{secrets.token_hex(6)}", serial_number=f"SN{secrets.token_hex(4)}",
                           topic=topic, push_token=token or secrets.token_hex(32), push_magic=secrets.token_hex(8))
    event_dispatcher(config)(DeviceEnrolled.SOURCE, DeviceEnrolled.TYPE, event.to_payload())
    return event


def unenroll(config, udid: str, topic: str) -> None:
    event = DeviceUnenrolled(udid=udid, topic=topic)
    event_dispatcher(config)(DeviceUnenrolled.SOURCE, DeviceUnenrolled.TYPE, event.to_payload())


def device_count(rpc, certificate_id: int) -> int:
    return rpc.push.get_certificate(certificate_id)["devices_enrolled"]


def metric_samples(config) -> dict[tuple[str, str | None], float]:
    """``{(sample name, its topic or reason label): value}`` from the service's /metrics."""
    text = httpx.get(f"http://127.0.0.1:{config['SERVICES']['push']['metrics_port']}/metrics").text
    return {(sample.name, sample.labels.get("topic") or sample.labels.get("reason")): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_upload_list_renew_and_history(push_service, rpc_as, issue_push):
    first = issue_push()
    with rpc_as() as rpc:
        stored = rpc.push.upload_certificate(first.certificate_pem, first.private_key_pem)
        certificate = x509.load_pem_x509_certificate(first.certificate_pem.encode())
        assert stored["topic"].startswith("com.apple.mgmt.External.")
        # whole bytes in upper-case hex, as Apple shows it: 19 bytes give 38 digits, not 40
        assert stored["serial_number"] == certificate.serial_number.to_bytes(20, "big").lstrip(b"\0").hex().upper()
        assert stored["not_after"] == certificate.not_valid_after_utc.isoformat()
        assert (stored["status"], stored["devices_enrolled"]) == ("ok", 0) and stored["days_left"] in (364, 365)
        assert "PRIVATE" not in str(rpc.push.get_certificate(stored["id"]))
        assert rpc.push.list_certificates() == [stored]
        details = rpc.push.get_certificate(stored["id"])
        assert details["issuer"].endswith("CN=Orchard Sandbox Apple Root CA")
        assert details["common_name"] == "APSP:" + stored["topic"].rsplit(".", 1)[1]

        with pytest.raises(Conflict, match="already stored"):
            rpc.push.upload_certificate(first.certificate_pem, first.private_key_pem)

        stranger = issue_push(key_index=1)
        with pytest.raises(Conflict, match="differs.*re-enroll"):
            rpc.push.renew_certificate(stored["id"], stranger.certificate_pem, stranger.private_key_pem)
        assert rpc.push.get_certificate(stored["id"]) == details  # the refused renewal changed nothing

        renewal = issue_push(topic=stored["topic"], not_after=NOW + timedelta(days=400), key_index=2)
        renewed = rpc.push.renew_certificate(stored["id"], renewal.certificate_pem, renewal.private_key_pem)
        assert (renewed["id"], renewed["topic"]) == (stored["id"], stored["topic"])
        assert renewed["serial_number"] != stored["serial_number"] and renewed["days_left"] in (399, 400)

        history = rpc.push.certificate_history(stored["id"])
        assert [entry["action"] for entry in history] == ["certificate.renewed", "certificate.uploaded"]
        assert history[0]["user"] == "admin@school.example"
        assert (history[0]["before_serial_number"], history[0]["after_serial_number"]) == (
            stored["serial_number"], renewed["serial_number"])
        assert history[0]["before_topic"] == history[0]["after_topic"] == stored["topic"]
        assert history[1]["before_topic"] is None and history[1]["after_not_after"] == stored["not_after"]

        with pytest.raises(NotFound):
            rpc.push.get_certificate(999)


def test_each_bad_upload_is_named_and_changes_nothing(push_service, rpc_as, issue_push):
    good = issue_push()
    expired = issue_push(not_before=NOW - timedelta(days=400), not_after=NOW - timedelta(days=1))
    other_key = issue_push(key_index=1).private_key_pem
    p12 = pkcs12.serialize_key_and_certificates(
        b"push", serialization.load_pem_private_key(good.private_key_pem.encode(), None),
        x509.load_pem_x509_certificate(good.certificate_pem.encode()), None,
        serialization.BestAvailableEncryption(b"right"))
    with rpc_as() as rpc:
        refusals = [
            (lambda: rpc.push.upload_certificate("just some text"), "not PEM text"),
            (lambda: rpc.push.upload_certificate(good.private_key_pem), "holds a private key"),
            (lambda: rpc.push.upload_certificate(expired.certificate_pem, expired.private_key_pem), "expired on"),
            (lambda: rpc.push.upload_certificate(good.certificate_pem, other_key), "does not belong"),
            (lambda: rpc.push.upload_certificate(good.certificate_pem[:300]), "truncated"),
            (lambda: rpc.push.upload_certificate(good.certificate_pem), "without its private key"),
            (lambda: rpc.push.upload_certificate(with_ec_public_key(good.certificate_pem, SECP112R1)),
             "public key is of a kind Orchard cannot read"),
            (lambda: rpc.push.upload_certificate("A" * 10_000_000), "10.0 MB"),
            (lambda: rpc.push.upload_certificate(42), "must be text"),
            (lambda: rpc.push.upload_certificate_pkcs12(base64.b64encode(p12).decode(), "wrong"), "password is wrong"),
            (lambda: rpc.push.renew_certificate("1", good.certificate_pem), "whole number from 1"),
            (lambda: rpc.push.get_certificate(10**30), "whole number from 1 to 9223372036854775807"),
            (lambda: rpc.push.upload_certificate_pkcs12(base64.b64encode(p12).decode(), "right\x00"), "NUL"),
        ]
        for attempt, message in refusals:
            with pytest.raises(ValidationError, match=message):
                attempt()
        assert rpc.push.list_certificates() == []
        assert rpc.push.audit_log() == []
        assert rpc.push.upload_certificate_pkcs12(base64.b64encode(p12).decode(), "right")["status"] == "ok"


def test_vendor_signed_request_pairs_with_the_certificate_apple_issues(push_service, rpc_as, apple_ca):
    with rpc_as() as rpc:
        request = rpc.push.create_signing_request()
        assert request["filename"] and "PRIVATE" not in str(request)
        issued = sign_push_request(apple_ca, request["signing_request_b64"])
        stored = rpc.push.upload_certificate(issued)  # no key: Orchard kept it when it made the request
        renewal_request = rpc.push.create_signing_request()
        renewed = rpc.push.renew_certificate(
            stored["id"], sign_push_request(apple_ca, renewal_request["signing_request_b64"], renew_topic=stored["topic"]))
        assert renewed["topic"] == stored["topic"] and renewed["serial_number"] != stored["serial_number"]
        entries = rpc.push.audit_log(f"push_certificate:{stored['id']}")
        assert [e["details"]["paired_with_signing_request"] for e in entries] == [True, True]


def test_private_keys_are_read_off_the_event_loop(push_service, rpc_as, apple_ca, issue_push, monkeypatch):
    """Loading an RSA key checks it, tens of milliseconds of CPU: on the hub, every other call would wait."""
    real_thread = eventlet.patcher.original("threading")
    hub_thread, loads, load = real_thread.get_ident(), [], serialization.load_pem_private_key

    def watched_load(*args, **kwargs):
        caller = sys._getframe(1)
        if caller.f_globals["__name__"].startswith("services.push."):
            loads.append((caller.f_code.co_name, "on the hub" if real_thread.get_ident() == hub_thread else "off"))
        return load(*args, **kwargs)

    monkeypatch.setattr(serialization, "load_pem_private_key", watched_load)
    with rpc_as() as rpc:
        request = rpc.push.create_signing_request()
        rpc.push.upload_certificate(sign_push_request(apple_ca, request["signing_request_b64"]))
        first = issue_push(key_index=1)
        stored = rpc.push.upload_certificate(first.certificate_pem, first.private_key_pem)
        # no key with the renewal: the stored one belongs to it
        renewal = issue_push(topic=stored["topic"], not_after=NOW + timedelta(days=400), key_index=1)
        assert rpc.push.renew_certificate(stored["id"], renewal.certificate_pem)["days_left"] >= 399
    assert loads and {where for _, where in loads} == {"off"}, loads


def test_enrollment_events_drive_the_device_count_and_the_export(push_service, push_config, rpc_as, issue_push):
    issued = issue_push()
    with rpc_as() as rpc:
        certificate = rpc.push.upload_certificate(issued.certificate_pem, issued.private_key_pem)
        topic = certificate["topic"]
        assert metric_samples(push_config)["orchard_push_devices", topic] == 0
        enrolled = [enroll(push_config, topic) for _ in range(3)]
        enroll(push_config, "com.apple.mgmt.External.another-school")
        wait_for(lambda: device_count(rpc, certificate["id"]) == 3, what="three enrolled devices")

        exported = rpc.push.export_devices(certificate["id"])
        rows = list(csv.DictReader(io.StringIO(base64.b64decode(exported["content_b64"]).decode())))
        assert exported["devices"] == 3 and exported["filename"].endswith(".csv")
        assert sorted(row["UDID"] for row in rows) == sorted(e.udid for e in enrolled)
        assert {row["Serial number"] for row in rows} == {e.serial_number for e in enrolled}
        assert all(row["Enrolled at"] for row in rows)

        workbook = rpc.push.export_devices(certificate["id"], "xlsx")
        sheet = CalamineWorkbook.from_filelike(io.BytesIO(base64.b64decode(workbook["content_b64"]))).get_sheet_by_index(0)
        table = sheet.to_python()
        assert table[0][0] == "UDID" and sorted(r[0] for r in table[1:]) == sorted(e.udid for e in enrolled)
        with pytest.raises(ValidationError, match="format must be one of csv, xlsx"):
            rpc.push.export_devices(certificate["id"], "pdf")

        unenroll(push_config, enrolled[0].udid, topic)
        wait_for(lambda: device_count(rpc, certificate["id"]) == 2, what="one device unenrolled")
    samples = metric_samples(push_config)
    assert samples["orchard_push_devices", topic] == 2
    expected_expiry = x509.load_pem_x509_certificate(issued.certificate_pem.encode()).not_valid_after_utc.timestamp()
    assert samples["orchard_push_certificate_expiry_timestamp_seconds", topic] == expected_expiry


def test_send_push_wakes_devices_and_stops_pushing_unregistered_ones(
        push_service, push_config, rpc_as, issue_push, apns_sandbox):
    issued = issue_push()
    with rpc_as() as rpc:
        certificate = rpc.push.upload_certificate(issued.certificate_pem, issued.private_key_pem)
        devices = [enroll(push_config, certificate["topic"]) for _ in range(3)]
        orphan = enroll(push_config, "com.apple.mgmt.External.no-certificate-here")
        wait_for(lambda: device_count(rpc, certificate["id"]) == 3, what="devices enrolled")
        apns_sandbox.script(devices[1].push_token, status=410, reason="Unregistered")
        apns_sandbox.script(devices[2].push_token, status=429, reason="TooManyRequests", times=1)

        answer = rpc.push.send_push([d.udid for d in devices] + [orphan.udid, "UNKNOWN"])
        results = {r["udid"]: r for r in answer["results"]}
        assert results[devices[0].udid] == {"udid": devices[0].udid, "result": "delivered", "status": 200, "sent": True,
                                            "detail": None}
        assert (results[devices[1].udid]["result"], results[devices[1].udid]["status"]) == ("Unregistered", 410)
        assert results[devices[2].udid]["result"] == "delivered"  # retried after the 429
        assert results[orphan.udid]["result"] == "no_certificate_for_topic"
        assert results["UNKNOWN"]["result"] == "unknown_device"
        assert {k: answer[k] for k in ("requested", "sent", "delivered", "failed", "skipped", "disabled")} == {
            "requested": 5, "sent": 3, "delivered": 2, "failed": 1, "skipped": 2, "disabled": 1}

        received = apns_sandbox.requests()
        first = next(r for r in received if r["device_token"] == devices[0].push_token)
        assert first["path"] == f"/3/device/{devices[0].push_token}"
        assert first["body"] == f'{{"mdm":"{devices[0].push_magic}"}}'
        assert first["headers"]["apns-topic"] == certificate["topic"] and first["headers"]["apns-push-type"] == "mdm"

        again = rpc.push.send_push([devices[1].udid])
        assert again["results"][0]["result"] == "push_disabled:Unregistered" and again["sent"] == 0
        exported = base64.b64decode(rpc.push.export_devices(certificate["id"])["content_b64"]).decode()
        assert f"{devices[1].udid}," in exported and ",Unregistered,Unregistered" in exported

        enroll(push_config, certificate["topic"], udid=devices[1].udid)  # a new check-in brings a fresh token
        wait_for(lambda: rpc.push.send_push([devices[1].udid])["delivered"] == 1, what="re-enrolled device pushed")
        with pytest.raises(ValidationError, match="non-empty list"):
            rpc.push.send_push([])
    samples = metric_samples(push_config)
    assert samples["orchard_push_results_total", "Unregistered"] >= 1
    assert samples["orchard_push_results_total", "delivered"] >= 3
    assert samples["orchard_push_latency_seconds_count", None] >= 4


def test_other_calls_and_the_metrics_are_answered_while_apns_is_slow(
        push_service, push_config, rpc_as, issue_push, apns_sandbox):
    """On SQLite a process has one database connection: a push must not keep it while APNs takes its time."""
    issued = issue_push()
    with rpc_as() as rpc:
        certificate = rpc.push.upload_certificate(issued.certificate_pem, issued.private_key_pem)
        device = enroll(push_config, certificate["topic"])
        wait_for(lambda: device_count(rpc, certificate["id"]) == 1, what="device enrolled")
        apns_sandbox.script(device.push_token, delay=5)
        started = time.monotonic()
        reply = rpc.push.send_push.call_async([device.udid])
        wait_for(apns_sandbox.requests, what="the push at APNs")
        assert rpc.push.list_certificates()[0]["devices_enrolled"] == 1
        assert metric_samples(push_config)["orchard_push_devices", certificate["topic"]] == 1
        answered_meanwhile = time.monotonic() - started
        answer = reply.result()
        assert answered_meanwhile < 3 <= time.monotonic() - started
        assert answer["delivered"] == 1
        exported = base64.b64decode(rpc.push.export_devices(certificate["id"])["content_b64"]).decode()
        assert ",delivered," in exported  # written after the fan-out, in a transaction of its own


def test_devices_of_several_certificates_are_pushed_at_once(push_service, push_config, rpc_as, issue_push,
                                                             apns_sandbox):
    """A call spanning topics takes as long as the slowest, not their sum: it stays within one batch's time."""
    with rpc_as() as rpc:
        devices = []
        for _ in range(2):
            issued = issue_push()
            certificate = rpc.push.upload_certificate(issued.certificate_pem, issued.private_key_pem)
            devices.append(enroll(push_config, certificate["topic"]))
            wait_for(lambda: device_count(rpc, certificate["id"]) == 1, what="device enrolled")
            apns_sandbox.script(devices[-1].push_token, delay=3)
        started = time.monotonic()
        answer = rpc.push.send_push([device.udid for device in devices])
        assert answer["delivered"] == 2 and 3 <= time.monotonic() - started < 5.5


def test_why_apns_was_not_reached_is_in_each_result_and_logged_once_per_topic(
        runner_factory, push_config, rpc_as, issue_push, caplog):
    unreachable = f"https://127.0.0.1:{free_port()}"  # nothing listens there
    push_config["SERVICES"]["push"]["apns_url"] = unreachable
    runner_factory(push_config, PushService).start()
    issued = issue_push()
    caplog.set_level(logging.INFO, logger="services.push")
    with rpc_as() as rpc:
        certificate = rpc.push.upload_certificate(issued.certificate_pem, issued.private_key_pem)
        devices = [enroll(push_config, certificate["topic"]) for _ in range(3)]
        wait_for(lambda: device_count(rpc, certificate["id"]) == 3, what="devices enrolled")
        answer = rpc.push.send_push([d.udid for d in devices])
    assert answer["failed"] == 3
    for result in answer["results"]:
        assert (result["result"], result["status"], result["sent"]) == ("connection_failed", None, True)
        assert result["detail"].startswith(f"cannot connect to 127.0.0.1:{unreachable.rsplit(':', 1)[1]}: ")
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and r.name.startswith("services.push")]
    assert len(warnings) == 1
    assert certificate["topic"] in warnings[0] and "3 device(s)" in warnings[0]
    assert answer["results"][0]["detail"] in warnings[0]
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert not any(d.push_token in logged or d.push_magic in logged for d in devices)


RPC_CALLS = {
    "list_certificates": ((), "read"),
    "get_certificate": ((1,), "read"),
    "export_devices": ((1,), "read"),
    "certificate_history": ((1,), "read"),
    "upload_certificate": (("x",), "write"),
    "upload_certificate_pkcs12": (("x", "pw"), "write"),
    "renew_certificate": ((1, "x"), "write"),
    "renew_certificate_pkcs12": ((1, "x", "pw"), "write"),
    "create_signing_request": ((), "write"),
    "send_push": ((["UDID"],), "write"),
}
ROLES = {
    "administrator": Actor(id="admin@school.example", role="administrator"),
    "location_leader": Actor(id="lead@school.example", role="location_leader", locations=("north",)),
    "msp": Actor(id="ops@msp.example", role="msp"),
    "teacher": Actor(id="teacher@school.example", role="teacher", locations=("north",)),
}
ALLOWED = {"administrator": {"read", "write"}, "location_leader": {"read"}, "msp": set(), "teacher": set()}


def test_access_by_role_and_rpc(push_service, rpc_as):
    outcomes = {}
    for role, actor in ROLES.items():
        with rpc_as(actor) as rpc:
            for method, (args, kind) in RPC_CALLS.items():
                try:
                    getattr(rpc.push, method)(*args)
                    outcomes[role, method] = "allowed"
                except PermissionDenied:
                    outcomes[role, method] = "refused"
                except (ValidationError, NotFound, Conflict):  # got past the access check
                    outcomes[role, method] = "allowed"
    expected = {(role, method): "allowed" if kind in ALLOWED[role] else "refused"
                for role in ROLES for method, (_, kind) in RPC_CALLS.items()}
    assert outcomes == expected


def test_two_renewals_at_once_on_two_replicas_keep_the_newer_certificate(runner_factory, push_config, rpc_as, issue_push):
    """Each renewal is checked against what the other stored: an older certificate never replaces a newer one."""
    with replicas_on_postgresql(runner_factory, push_config, PushService):
        with rpc_as() as rpc:
            for round_number in range(3):
                first = issue_push(not_after=NOW + timedelta(days=100), key_index=0)
                stored = rpc.push.upload_certificate(first.certificate_pem, first.private_key_pem)
                topic = stored["topic"]
                newer = issue_push(topic=topic, not_after=NOW + timedelta(days=400), key_index=1)
                older = issue_push(topic=topic, not_after=NOW + timedelta(days=200), key_index=2)
                replies = [rpc.push.renew_certificate.call_async(stored["id"], issued.certificate_pem, issued.private_key_pem)
                           for issued in (newer, older)]
                # the older one is refused when it comes second
                assert all(isinstance(o, dict) or "older" in o for o in settle(replies, ValidationError))
                assert rpc.push.get_certificate(stored["id"])["days_left"] >= 399, f"round {round_number}"
