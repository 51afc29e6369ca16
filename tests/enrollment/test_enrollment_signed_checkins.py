"""Device identities and signed check-ins: the profile's identity, Mdm-Signature checks, 401s and their metric."""
from __future__ import annotations

import base64
import plistlib
import re
from datetime import datetime, timedelta, timezone

import httpx
import pytest
import sqlalchemy as sa
from asn1crypto import cms
from sqlalchemy.orm import sessionmaker
from cryptography import x509
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7

from apple_sandbox.push_portal import SandboxAppleCA
from services.enrollment.adapters.checkin_signature import verify_checkin_signature
from services.enrollment.adapters.device_ca import (
    DeviceCaRepository,
    DeviceIdentityRepository,
    certificate_fingerprint,
    generate_device_ca,
    issue_device_identity,
    load_ca_certificate,
)
from services.enrollment.domain.checkin import Authenticate, CheckOut, TokenUpdate
from services.enrollment.domain.device_identity import (
    CheckinRejected,
    SignerIdentity,
    authorize_checkin,
    identity_terms,
)
from services.enrollment.domain.mdm_payload import current_push_topic
from services.enrollment.service import EnrollmentService
from services.push.service import PushService
from shared.migrations import upgrade
from shared.storage import create_engine_for
from tests.enrollment.signing import (
    DeviceIdentity,
    assign_ade_devices,
    device_info,
    enrolled_identity,
    enrollment_base,
    identity_from_profile,
    mdm_signature,
    put_checkin,
    request_profile,
)
from tests.enrollment.test_enrollment_service import queued
from tests.waiting import wait_for

NOW = datetime.now(timezone.utc)
UDID_A, UDID_B = "00008030-000A0A0A0A0A0A0A", "00008030-000B0B0B0B0B0B0B"
BODY = plistlib.dumps({"MessageType": "CheckOut", "UDID": UDID_A}, fmt=plistlib.FMT_XML)


# --- the signature alone, against a CA made here ---------------------------------------------------

@pytest.fixture(scope="module")
def device_ca() -> tuple[bytes, bytes]:
    return generate_device_ca(NOW)


def issued(ca: tuple[bytes, bytes], udid: str | None = UDID_A, **terms) -> DeviceIdentity:
    bundle = issue_device_identity(*ca, identity_terms("SER1", udid, terms.pop("now", NOW)))
    profile = plistlib.dumps({"PayloadContent": [
        {"PayloadType": "com.apple.security.pkcs12", "PayloadUUID": "I", "PayloadContent": bundle.pkcs12,
         "Password": bundle.password},
        {"PayloadType": "com.apple.mdm", "SignMessage": True, "IdentityCertificateUUID": "I"}]})
    return identity_from_profile(profile)


def verify(header: str | None, ca: tuple[bytes, bytes], body: bytes = BODY, now: datetime = NOW) -> SignerIdentity | None:
    return verify_checkin_signature(header, body, load_ca_certificate(ca[1]), now)


def rejection(header: str, ca: tuple[bytes, bytes], **kwargs) -> str:
    with pytest.raises(CheckinRejected) as refused:
        verify(header, ca, **kwargs)
    return refused.value.reason


def test_an_issued_identity_names_its_device_and_is_for_client_authentication(device_ca):
    identity = issued(device_ca)
    subject = identity.certificate.subject
    assert subject.get_attributes_for_oid(x509.NameOID.USER_ID)[0].value == UDID_A
    assert subject.get_attributes_for_oid(x509.NameOID.SERIAL_NUMBER)[0].value == "SER1"
    usage = identity.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
    assert identity.certificate.issuer == load_ca_certificate(device_ca[1]).subject
    assert identity.certificate.not_valid_after_utc > NOW + timedelta(days=365)


@pytest.mark.parametrize("digest", ["sha256", "sha1"])
def test_rsa_signatures_with_sha256_or_sha1_verify(device_ca, digest):
    identity = issued(device_ca)
    signer = verify(mdm_signature(BODY, identity, digest), device_ca)
    assert signer == SignerIdentity(certificate_fingerprint(identity.certificate), UDID_A, "SER1")


def test_ecdsa_signatures_verify(device_ca):
    key = ec.generate_private_key(ec.SECP256R1())
    ca_certificate = load_ca_certificate(device_ca[1])
    certificate = (x509.CertificateBuilder().subject_name(x509.Name([]))
                   .issuer_name(ca_certificate.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(NOW - timedelta(minutes=1))
                   .not_valid_after(NOW + timedelta(days=1))
                   .sign(serialization.load_pem_private_key(device_ca[0], None), hashes.SHA256()))
    signer = verify(mdm_signature(BODY, DeviceIdentity(key, certificate)), device_ca)
    assert signer is not None and signer.udid is None


def test_bad_signatures_are_refused_with_their_reason(device_ca):
    identity = issued(device_ca)
    good = mdm_signature(BODY, identity)
    assert verify(None, device_ca) is None and verify("  ", device_ca) is None
    assert rejection(good, device_ca, body=BODY.replace(b"CheckOut", b"CheckIn!")) == "digest_mismatch"
    assert rejection(good, device_ca, now=NOW + timedelta(days=5 * 365)) == "expired_certificate"
    assert rejection(mdm_signature(BODY, issued(generate_device_ca(NOW))), device_ca) == "unknown_issuer"
    with pytest.raises(CheckinRejected, match="unknown_issuer"):  # no profile served yet: no CA to trust
        verify_checkin_signature(good, BODY, None, NOW)


def test_garbage_headers_are_malformed(device_ca):
    identity = issued(device_ca)
    attached = base64.b64encode(pkcs7.PKCS7SignatureBuilder().set_data(BODY)
                                .add_signer(identity.certificate, identity.key, hashes.SHA256())
                                .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])).decode()
    no_certificate = base64.b64encode(pkcs7.PKCS7SignatureBuilder().set_data(BODY)
                                      .add_signer(identity.certificate, identity.key, hashes.SHA256())
                                      .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.DetachedSignature,
                                                                        pkcs7.PKCS7Options.NoCerts,
                                                                        pkcs7.PKCS7Options.Binary])).decode()
    no_attributes = base64.b64encode(pkcs7.PKCS7SignatureBuilder().set_data(BODY)
                                     .add_signer(identity.certificate, identity.key, hashes.SHA256())
                                     .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.DetachedSignature,
                                                                       pkcs7.PKCS7Options.NoAttributes,
                                                                       pkcs7.PKCS7Options.Binary])).decode()
    good = base64.b64decode(mdm_signature(BODY, identity))
    flipped = bytearray(good)
    flipped[-10] ^= 0xFF  # inside the signature value
    for header in ("%%%", base64.b64encode(b"\x30\x03\x02\x01\x01").decode(), base64.b64encode(b"x" * 500).decode(),
                   "A" * 20_000, attached, no_certificate, no_attributes, base64.b64encode(good[:-40]).decode()):
        assert rejection(header, device_ca) == "malformed_signature", header[:40]
    assert rejection(base64.b64encode(bytes(flipped)).decode(), device_ca) == "bad_signature"
    # a stranger's identity is refused by its issuer before its own (perhaps slow to verify) key is used at all
    stranger = bytearray(base64.b64decode(mdm_signature(BODY, issued(generate_device_ca(NOW)))))
    stranger[-10] ^= 0xFF
    assert rejection(base64.b64encode(bytes(stranger)).decode(), device_ca) == "unknown_issuer"


def test_any_damage_to_a_signature_is_a_rejection_never_a_crash(device_ca):
    good = base64.b64decode(mdm_signature(BODY, issued(device_ca)))
    signed_data = cms.ContentInfo.load(good)["content"]
    signer = signed_data["signer_infos"][0]

    def span(value, trim: int = 0) -> set[int]:
        encoded = value.dump()
        start = good.index(encoded, 0 if value is signed_data["certificates"] else good.index(signer.dump()))
        return set(range(start, start + len(encoded) - trim))

    # everything the decision rests on; outside it are version numbers, the list of digests used and
    # the algorithms' empty parameters, which nothing relies on
    covered = (span(signed_data["certificates"]) | span(signer["sid"]) | span(signer["signed_attrs"])
               | span(signer["signature"]) | span(signer["digest_algorithm"], trim=2)
               | span(signer["signature_algorithm"], trim=2))
    accepted = []
    for position in range(len(good)):  # every byte changed in turn: each raises CheckinRejected or is accepted
        damaged = bytearray(good)
        damaged[position] ^= 0x41
        try:
            verify(base64.b64encode(bytes(damaged)).decode(), device_ca)
            accepted.append(position)
        except CheckinRejected:
            pass
    assert not covered & set(accepted), sorted(covered & set(accepted))
    assert len(accepted) < 30


def test_the_bound_identity_alone_may_update_or_check_out():
    mine, other = SignerIdentity("aa" * 32, UDID_A), SignerIdentity("bb" * 32, UDID_A)
    update = TokenUpdate(UDID_A, "topic", "00", "magic")
    # re-enrollment binds anew
    authorize_checkin(Authenticate(UDID_A, "topic"), other, "aa" * 32, require_signed=True, signer_retired=False)
    authorize_checkin(update, mine, "aa" * 32, require_signed=True, signer_retired=False)
    for message, signer, bound, reason in (
            (update, None, "aa" * 32, "unsigned"),
            (update, other, "aa" * 32, "not_bound_identity"),
            (CheckOut(UDID_A), mine, None, "not_bound_identity"),
            (Authenticate(UDID_B, "topic"), mine, None, "other_device")):
        with pytest.raises(CheckinRejected, match=reason):
            authorize_checkin(message, signer, bound, require_signed=True, signer_retired=False)
    # an identity names the serial number it was issued for: with it, it cannot bind another device
    named = SignerIdentity("cc" * 32, None, "SER1")
    authorize_checkin(Authenticate(UDID_B, "topic", serial_number="SER1"), named, "aa" * 32,
                      require_signed=True, signer_retired=False)
    for message in (Authenticate(UDID_B, "topic", serial_number="SER2"), Authenticate(UDID_B, "topic")):
        with pytest.raises(CheckinRejected, match="other_device"):
            authorize_checkin(message, named, "aa" * 32, require_signed=True, signer_retired=False)
    authorize_checkin(update, None, "aa" * 32, require_signed=False, signer_retired=False)  # a lab without signing
    for message in (update, Authenticate(UDID_A, "topic")):  # replaced or checked out: not even to enroll again
        with pytest.raises(CheckinRejected, match="retired_identity"):
            authorize_checkin(message, mine, "aa" * 32, require_signed=True, signer_retired=True)


def test_the_profile_topic_is_the_longest_lasting_unexpired_certificate():
    certificates = [{"topic": "old", "status": "expired", "not_after": "2030-01-01T00:00:00+00:00"},
                    {"topic": "a", "status": "ok", "not_after": "2027-05-01T00:00:00+00:00"},
                    {"topic": "b", "status": "expiring", "not_after": "2027-06-01T00:00:00+00:00"}]
    assert current_push_topic(certificates) == "b"
    assert current_push_topic(certificates[:1]) is None and current_push_topic([]) is None


@pytest.mark.integration
def test_one_ca_is_kept_and_a_udid_is_bound_to_its_latest_identity(database_url):
    engine = create_engine_for(database_url)
    upgrade(engine, "services.enrollment.migrations")
    first, second = sessionmaker(engine)(), sessionmaker(engine)()
    kept = DeviceCaRepository(first).add_unless_present("CA-1", "sealed-1", NOW)
    first.commit()
    assert DeviceCaRepository(second).add_unless_present("CA-2", "sealed-2", NOW).certificate_pem == "CA-1" == kept.certificate_pem
    identities = DeviceIdentityRepository(second)
    assert identities.fingerprint_of(UDID_A) is None
    identities.bind(UDID_A, "aa" * 32, NOW)
    identities.bind(UDID_A, "bb" * 32, NOW)  # enrolled again with a new profile
    identities.bind(UDID_A, "bb" * 32, NOW)  # and authenticated twice with it
    second.commit()
    assert DeviceIdentityRepository(first).fingerprint_of(UDID_A) == "bb" * 32
    first.rollback()  # SQLite: one connection for both sessions
    assert identities.is_retired("aa" * 32) and not identities.is_retired("bb" * 32)
    identities.unbind(UDID_A, NOW)  # checked out
    identities.unbind(UDID_B, NOW)  # never bound: nothing to retire
    second.commit()
    assert identities.fingerprint_of(UDID_A) is None and identities.is_retired("bb" * 32)
    assert [tuple(row) for row in second.execute(sa.text("SELECT udid, reason FROM retired_identities ORDER BY reason"))] \
        == [(UDID_A, "checked_out"), (UDID_A, "superseded")]
    first.close(), second.close()
    engine.dispose()


# --- over HTTP, with the service's own CA ----------------------------------------------------------

TOPIC = "com.apple.mgmt.External.5b2f6b7e-3c53-4f0e-9a0e-6f5d1e9f2a11"


@pytest.fixture
def devices(runner_factory, orchard_config, rpc_as, dep_sandbox, tmp_path):
    """Enrollment and push running, a push certificate uploaded, ADE devices SIGNA and SIGNB synced."""
    orchard_config["SERVICES"]["enrollment"]["dep_url"] = dep_sandbox.url
    runner = runner_factory(orchard_config, EnrollmentService, PushService)
    runner.start()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    push_certificate = SandboxAppleCA.load_or_create(tmp_path).issue_push_certificate(key.public_key(), topic=TOPIC)
    with rpc_as() as rpc:
        rpc.push.upload_certificate(push_certificate, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode())
        assign_ade_devices(rpc, dep_sandbox, ["SIGNA", "SIGNB"])
    return orchard_config


def counted(config: dict, counter: str = "checkins_rejected", label: str = "reason") -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{config['SERVICES']['enrollment']['metrics_port']}/metrics").text
    return {m[0]: float(m[1]) for m in
            re.findall(rf'^orchard_enrollment_{counter}_total\{{{label}="(\w+)"\}} (\S+)$', text, re.M)}


def authenticate(udid: str, serial: str) -> dict:
    return {"MessageType": "Authenticate", "UDID": udid, "Topic": TOPIC, "SerialNumber": serial}


def token_update(udid: str) -> dict:
    return {"MessageType": "TokenUpdate", "UDID": udid, "Topic": TOPIC, "Token": bytes(range(32)),
            "PushMagic": f"MAGIC-{udid}", "UnlockToken": b"\x00" * 64}


def query(config: dict, sql: str) -> list:
    engine = sa.create_engine(config["SERVICES"]["enrollment"]["database_url"])
    try:
        with engine.connect() as connection:
            return list(connection.execute(sa.text(sql)))
    finally:
        engine.dispose()


def expired_identity(config: dict, udid: str) -> DeviceIdentity:
    """An identity from the service's own CA (read from its database) that expired a year ago."""
    [row] = query(config, "SELECT certificate_pem, sealed_private_key FROM device_ca")
    ca_key = Fernet(config["SECRET_KEY"]).decrypt(row.sealed_private_key.encode())
    return issued((ca_key, row.certificate_pem.encode()), udid, now=NOW - timedelta(days=4 * 365))


def test_signed_checkins_enroll_and_everything_else_gets_401(devices, rpc_as):
    profile = plistlib.loads(request_profile(devices, "SIGNA", UDID_A))
    mdm = next(p for p in profile["PayloadContent"] if p["PayloadType"] == "com.apple.mdm")
    assert mdm["Topic"] == TOPIC and mdm["CheckInURL"].endswith("/mdm/checkin")
    device_a = identity_from_profile(plistlib.dumps(profile))
    device_b = enrolled_identity(devices, "SIGNB", UDID_B)
    before, polls_before = counted(devices), counted(devices, "command_polls", "status")

    assert put_checkin(devices, authenticate(UDID_A, "SIGNA"), None).status_code == 401  # unsigned
    assert put_checkin(devices, authenticate(UDID_A, "SIGNA"), device_a).status_code == 200
    assert put_checkin(devices, authenticate(UDID_B, "SIGNB"), device_b).status_code == 200
    update = plistlib.dumps(token_update(UDID_A), fmt=plistlib.FMT_XML)
    tampered = httpx.put(f"{enrollment_base(devices)}/mdm/checkin", content=update.replace(b"MAGIC-", b"EVIL--"),
                         headers={"Mdm-Signature": mdm_signature(update, device_a)})
    assert tampered.status_code == 401
    assert put_checkin(devices, token_update(UDID_A), device_b).status_code == 401  # another device's identity
    again = enrolled_identity(devices, "SIGNA", UDID_A)  # a second profile for A: not the identity A authenticated with
    assert put_checkin(devices, token_update(UDID_A), again).status_code == 401
    assert put_checkin(devices, token_update(UDID_A), expired_identity(devices, UDID_A)).status_code == 401
    stranger_ca = issued(generate_device_ca(NOW), UDID_A)
    assert put_checkin(devices, token_update(UDID_A), stranger_ca).status_code == 401
    garbage = httpx.put(f"{enrollment_base(devices)}/mdm/checkin", content=update,
                        headers={"Mdm-Signature": "not a signature"})
    assert garbage.status_code == 401
    with rpc_as() as rpc:  # none of that reached push
        assert rpc.push.list_certificates()[0]["devices_enrolled"] == 0

    assert put_checkin(devices, token_update(UDID_A), device_a, digest="sha1").status_code == 200
    with rpc_as() as rpc:
        wait_for(lambda: rpc.push.list_certificates()[0]["devices_enrolled"] == 1, what="push counting device A")
    # woken by a push, A polls the server URL (the same URL): no command is waiting, and only A's identity may ask
    idle = {"Status": "Idle", "UDID": UDID_A}
    assert put_checkin(devices, idle, device_b).status_code == 401
    polled = put_checkin(devices, idle, device_a)
    assert (polled.status_code, polled.content) == (200, b"")
    assert query(devices, f"SELECT last_message FROM checkins WHERE udid = '{UDID_A}'")[0][0] == "Status Idle"
    assert counted(devices, "command_polls", "status")["Idle"] == polls_before["Idle"] + 1
    assert put_checkin(devices, {"MessageType": "CheckOut", "UDID": UDID_B, "Topic": TOPIC}, device_a).status_code == 401
    assert put_checkin(devices, {"MessageType": "CheckOut", "UDID": UDID_A, "Topic": TOPIC}, device_a).status_code == 200
    with rpc_as() as rpc:
        wait_for(lambda: rpc.push.list_certificates()[0]["devices_enrolled"] == 0, what="push forgetting device A")
    # checked out: A's identity is retired; enrolling again takes a new profile, whose identity binds
    assert put_checkin(devices, authenticate(UDID_A, "SIGNA"), device_a).status_code == 401
    assert put_checkin(devices, authenticate(UDID_A, "SIGNA"), again).status_code == 200
    assert put_checkin(devices, token_update(UDID_A), again).status_code == 200

    # a profile asked for without a UDID: its identity names device A's serial number alone, and cannot bind B
    unnamed = enrolled_identity(devices, "SIGNA", None)
    assert put_checkin(devices, authenticate(UDID_B, "SIGNB"), unnamed).status_code == 401
    assert query(devices, f"SELECT certificate_sha256 FROM device_identities WHERE udid = '{UDID_B}'")[0][0] == \
        certificate_fingerprint(device_b.certificate)

    after = counted(devices)
    expected = {"unsigned": 1, "digest_mismatch": 1, "other_device": 4, "not_bound_identity": 1, "retired_identity": 1,
                "expired_certificate": 1, "unknown_issuer": 1, "malformed_signature": 1}
    assert {reason: after.get(reason, 0) - before.get(reason, 0) for reason in expected} == expected


def test_a_rejected_authenticate_stores_and_publishes_nothing(devices):
    identity = enrolled_identity(devices, "SIGNA", UDID_A)
    assert put_checkin(devices, authenticate(UDID_A, "SIGNA"), None).status_code == 401
    assert put_checkin(devices, token_update(UDID_A), identity).status_code == 401  # never authenticated: not bound
    assert query(devices, "SELECT udid FROM checkins") == query(devices, "SELECT udid FROM device_identities") == []
    assert queued(devices, "evt-enrollment-DeviceEnrolled--push.on_device_enrolled") == []


def test_only_ade_devices_get_a_profile_and_labs_may_switch_signing_off(runner_factory, orchard_config, dep_sandbox):
    orchard_config["SERVICES"]["enrollment"]["dep_url"] = dep_sandbox.url
    orchard_config["SERVICES"]["enrollment"]["require_signed_checkins"] = False
    runner_factory(orchard_config, EnrollmentService).start()
    base = enrollment_base(orchard_config)
    stranger = httpx.post(f"{base}/mdm/enroll", content=plistlib.dumps({"SERIAL": "NOTOURS", "UDID": "U"}))
    assert stranger.status_code == 403 and "NOTOURS" in stranger.text
    assert httpx.post(f"{base}/mdm/enroll", content=b"garbage").status_code == 400
    assert put_checkin(orchard_config, authenticate(UDID_A, "LAB1"), None).status_code == 200
    assert put_checkin(orchard_config, token_update(UDID_A), None).status_code == 200
    assert put_checkin(orchard_config, token_update(UDID_A), issued(generate_device_ca(NOW))).status_code == 401


def test_the_profile_points_devices_at_the_configured_public_address(runner_factory, orchard_config, rpc_as,
                                                                     dep_sandbox):
    orchard_config["SERVICES"]["enrollment"].update(dep_url=dep_sandbox.url, public_url="https://mdm.school.example/")
    runner_factory(orchard_config, EnrollmentService).start()
    with rpc_as() as rpc:
        assign_ade_devices(rpc, dep_sandbox, ["PUBLIC1"])
    profile = httpx.post(f"{enrollment_base(orchard_config)}/mdm/enroll", content=device_info("PUBLIC1", UDID_A),
                         headers={"Host": "attacker.example"})  # behind a proxy, or forged: not where devices go
    assert profile.status_code == 200, profile.text
    mdm = next(p for p in plistlib.loads(profile.content)["PayloadContent"] if p["PayloadType"] == "com.apple.mdm")
    assert (mdm["CheckInURL"], mdm["ServerURL"]) == ("https://mdm.school.example/mdm/checkin",) * 2


def test_a_device_gets_a_handful_of_profiles_an_hour_not_one_per_request(runner_factory, orchard_config, rpc_as,
                                                                         dep_sandbox):
    orchard_config["SERVICES"]["enrollment"]["dep_url"] = dep_sandbox.url
    runner_factory(orchard_config, EnrollmentService).start()
    with rpc_as() as rpc:
        assign_ade_devices(rpc, dep_sandbox, ["MANY1", "OTHER1"])
    for _ in range(10):
        request_profile(orchard_config, "MANY1", UDID_A)
    refused = httpx.post(f"{enrollment_base(orchard_config)}/mdm/enroll", content=device_info("MANY1", UDID_A))
    assert refused.status_code == 429 and "10 enrollment profiles in the last hour" in refused.text
    request_profile(orchard_config, "OTHER1", UDID_B)  # another device is not held up
