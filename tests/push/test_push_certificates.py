"""Reading uploaded push certificates: what is extracted, and every refusal."""
from __future__ import annotations

import base64
import hashlib
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from services.push.domain.certificates import (
    MAX_UPLOAD_BYTES,
    certificate_status,
    check_renewal,
    days_left,
    private_key_id,
    read_pem_certificate,
    read_pkcs12,
)
from shared.errors import Conflict, ValidationError
from tests.push.unsupported_keys import (
    SECP112R1,
    SM2,
    ec_private_key_pem,
    pkcs12_b64_with_ec_key,
    unknown_algorithm_key_pem,
    with_ec_public_key,
)

NOW = datetime.now(timezone.utc)


def self_signed(key, subject_attributes, *, days: int = 365) -> str:
    name = x509.Name([x509.NameAttribute(oid, value) for oid, value in subject_attributes])
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def p12_b64(certificate_pem: str, key, password: bytes | None) -> str:
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    certificate = x509.load_pem_x509_certificate(certificate_pem.encode())
    return base64.b64encode(pkcs12.serialize_key_and_certificates(b"push", key, certificate, None, encryption)).decode()


def test_reads_topic_serial_expiry_issuer_and_common_name(issue_push):
    issued = issue_push()
    pushed = read_pem_certificate(issued.certificate_pem, issued.private_key_pem, now=NOW)
    certificate = x509.load_pem_x509_certificate(issued.certificate_pem.encode())
    assert pushed.topic.startswith("com.apple.mgmt.External.")
    # whole bytes in upper-case hex, as Apple shows it: 19 bytes give 38 digits, not 40
    assert pushed.serial_number == certificate.serial_number.to_bytes(20, "big").lstrip(b"\0").hex().upper()
    assert int(pushed.serial_number, 16) == certificate.serial_number
    assert pushed.not_after == certificate.not_valid_after_utc
    assert pushed.issuer == "C=US,O=Apple Sandbox,CN=Orchard Sandbox Apple Root CA"
    assert pushed.common_name == "APSP:" + pushed.topic.rsplit(".", 1)[1]
    assert pushed.private_key_pem.startswith("-----BEGIN PRIVATE KEY-----")
    assert certificate_status(pushed.not_after, NOW) == "ok"
    assert days_left(pushed.not_after, NOW) in (364, 365)


def test_key_never_appears_in_repr(issue_push):
    issued = issue_push()
    pushed = read_pem_certificate(issued.certificate_pem, issued.private_key_pem)
    assert "PRIVATE" not in repr(pushed)


def test_certificate_and_key_in_one_file(issue_push):
    issued = issue_push()
    pushed = read_pem_certificate(issued.certificate_pem + issued.private_key_pem)
    assert pushed.private_key_pem is not None


def test_a_bundle_with_the_chain_first_is_read_as_its_push_certificate(issue_push, apple_ca, push_keys):
    issued = issue_push()
    expected = read_pem_certificate(issued.certificate_pem).serial_number
    chain_first = apple_ca.certificate_pem + issued.certificate_pem
    assert read_pem_certificate(chain_first + issued.private_key_pem).serial_number == expected
    assert read_pem_certificate(chain_first, issued.private_key_pem).serial_number == expected
    # without a key, the certificate with a topic is the push certificate
    assert read_pem_certificate(chain_first).serial_number == expected
    # two certificates with topics: the key's is the one read
    other = issue_push(key_index=1)
    both = other.certificate_pem + issued.certificate_pem
    assert read_pem_certificate(both, issued.private_key_pem).serial_number == expected


def test_a_bundle_whose_certificates_all_belong_to_other_keys_is_refused(issue_push, apple_ca):
    issued = issue_push(key_index=0)
    with pytest.raises(ValidationError, match="None of the 2 certificates in the upload belongs to the private key"):
        read_pem_certificate(apple_ca.certificate_pem + issued.certificate_pem, issue_push(key_index=1).private_key_pem)


def test_certificate_without_key_is_read_without_one(issue_push):
    assert read_pem_certificate(issue_push().certificate_pem).private_key_pem is None


def test_apple_id_is_read_from_the_subject_email(push_keys):
    pem = self_signed(push_keys[0], [
        (NameOID.USER_ID, "com.apple.mgmt.External.1"), (NameOID.COMMON_NAME, "APSP:1"),
        (NameOID.EMAIL_ADDRESS, "it@school.example"),
    ])
    assert read_pem_certificate(pem).apple_id == "it@school.example"


def test_expiring_within_thirty_days(issue_push):
    pushed = read_pem_certificate(issue_push(not_after=NOW + timedelta(days=20, hours=1)).certificate_pem, now=NOW)
    assert certificate_status(pushed.not_after, NOW) == "expiring"
    assert days_left(pushed.not_after, NOW) == 20


@pytest.mark.parametrize("delta, status, days", [
    (timedelta(days=31), "ok", 31), (timedelta(days=30), "expiring", 30), (timedelta(seconds=1), "expiring", 0),
    (timedelta(0), "expired", 0), (timedelta(days=-2), "expired", -2),
])
def test_status_boundaries(delta, status, days):
    assert certificate_status(NOW + delta, NOW) == status
    assert days_left(NOW + delta, NOW) == days


def test_expired_certificate_is_refused_with_renewal_advice(issue_push):
    issued = issue_push(not_before=NOW - timedelta(days=400), not_after=NOW - timedelta(days=1))
    with pytest.raises(ValidationError, match="expired on .*Renew it in Apple Push Certificates Portal"):
        read_pem_certificate(issued.certificate_pem, issued.private_key_pem)


@pytest.mark.parametrize("text", ["hello", "", "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"])
def test_not_a_certificate(text):
    with pytest.raises(ValidationError, match="not PEM text"):
        read_pem_certificate(text)


def test_private_key_in_the_certificate_field(issue_push):
    with pytest.raises(ValidationError, match="holds a private key, not a certificate"):
        read_pem_certificate(issue_push().private_key_pem)


def test_certificate_without_uid(push_keys):
    pem = self_signed(push_keys[0], [(NameOID.COMMON_NAME, "APSP:1"), (NameOID.COUNTRY_NAME, "US")])
    with pytest.raises(ValidationError, match="no UID"):
        read_pem_certificate(pem)


def test_wrong_uid_prefix(push_keys):
    pem = self_signed(push_keys[0], [(NameOID.USER_ID, "com.example.app"), (NameOID.COMMON_NAME, "Apple Push")])
    with pytest.raises(ValidationError, match="does not start with 'com.apple.mgmt.'"):
        read_pem_certificate(pem)


def test_key_not_matching(issue_push):
    issued = issue_push(key_index=0)
    other_key = issue_push(key_index=1).private_key_pem
    with pytest.raises(ValidationError, match="does not belong to this certificate"):
        read_pem_certificate(issued.certificate_pem, other_key)


def test_truncated_pem(issue_push):
    pem = issue_push().certificate_pem
    with pytest.raises(ValidationError, match="truncated"):
        read_pem_certificate(pem[: len(pem) // 2])


def test_damaged_pem(issue_push):
    pem = issue_push().certificate_pem
    lines = pem.splitlines()
    lines[3] = lines[3][:10] + "!!!!" + lines[3][14:]
    with pytest.raises(ValidationError, match="damaged"):
        read_pem_certificate("\n".join(lines))


def test_truncated_key(issue_push):
    issued = issue_push()
    with pytest.raises(ValidationError, match="private key is truncated"):
        read_pem_certificate(issued.certificate_pem, issued.private_key_pem[:200])


def test_password_protected_key(issue_push, push_keys):
    encrypted = push_keys[0].private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")
    ).decode()
    with pytest.raises(ValidationError, match="protected by a password"):
        read_pem_certificate(issue_push().certificate_pem, encrypted)


def test_ten_megabyte_blob_is_refused_by_size_before_parsing(issue_push):
    # a real certificate padded to 10 MB: only the size check can refuse it
    blob = issue_push().certificate_pem + "A" * 10_000_000
    with pytest.raises(ValidationError, match=r"10\.0 MB.*limit 256 KB"):
        read_pem_certificate(blob)
    with pytest.raises(ValidationError, match="MB"):
        read_pkcs12("A" * (MAX_UPLOAD_BYTES + 1), "pw")


def test_pkcs12_with_password(issue_push, push_keys):
    issued = issue_push()
    pushed = read_pkcs12(p12_b64(issued.certificate_pem, push_keys[0], b"s3cret"), "s3cret")
    assert pushed.topic.startswith("com.apple.mgmt.External.")
    assert pushed.private_key_pem is not None


def test_pkcs12_without_password(issue_push, push_keys):
    issued = issue_push()
    assert read_pkcs12(p12_b64(issued.certificate_pem, push_keys[0], None), None).private_key_pem


def test_pkcs12_wrong_password(issue_push, push_keys):
    encoded = p12_b64(issue_push().certificate_pem, push_keys[0], b"s3cret")
    with pytest.raises(ValidationError, match="password is wrong"):
        read_pkcs12(encoded, "guess")


def test_pkcs12_not_base64():
    with pytest.raises(ValidationError, match="not valid base64"):
        read_pkcs12("not base64 at all!", "pw")


def test_pkcs12_that_is_something_else(issue_push):
    der = x509.load_pem_x509_certificate(issue_push().certificate_pem.encode()).public_bytes(serialization.Encoding.DER)
    with pytest.raises(ValidationError, match="not a PKCS#12"):
        read_pkcs12(base64.b64encode(der).decode(), "pw")


def test_pkcs12_without_key(issue_push):
    certificate = x509.load_pem_x509_certificate(issue_push().certificate_pem.encode())
    data = pkcs12.serialize_key_and_certificates(
        b"push", None, certificate, None, serialization.BestAvailableEncryption(b"pw")
    )
    with pytest.raises(ValidationError, match="no private key|no certificate"):
        read_pkcs12(base64.b64encode(data).decode(), "pw")


def test_renewal_with_the_same_topic_is_accepted(issue_push):
    first = read_pem_certificate(issue_push().certificate_pem)
    renewed = read_pem_certificate(issue_push(topic=first.topic, not_after=NOW + timedelta(days=400)).certificate_pem)
    check_renewal(first.topic, first.not_after, renewed)


def test_renewal_with_another_topic_is_a_conflict_explaining_re_enrollment(issue_push):
    first = read_pem_certificate(issue_push().certificate_pem)
    other = read_pem_certificate(issue_push().certificate_pem)
    with pytest.raises(Conflict) as refused:
        check_renewal(first.topic, first.not_after, other)
    assert first.topic in refused.value.message and other.topic in refused.value.message
    assert "differs" in refused.value.message and "re-enroll" in refused.value.message


def test_renewal_with_an_older_certificate_is_refused(issue_push):
    first = read_pem_certificate(issue_push().certificate_pem)
    older = read_pem_certificate(issue_push(topic=first.topic, not_after=NOW + timedelta(days=100)).certificate_pem)
    with pytest.raises(ValidationError, match="older certificate, not a renewal"):
        check_renewal(first.topic, first.not_after, older)


def test_damage_inside_the_subject_is_a_damaged_certificate(push_keys):
    pem = self_signed(push_keys[0], [(NameOID.USER_ID, "com.apple.mgmt.External.0123"), (NameOID.COMMON_NAME, "APSP:1")])
    der = x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)
    at = der.index(b"External.0123")
    damaged = der[:at] + b"\xff" + der[at + 1:]  # no longer UTF-8: found only when the subject is read
    body = base64.encodebytes(damaged).decode()
    with pytest.raises(ValidationError, match="damaged"):
        read_pem_certificate(f"-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n")


def test_thousands_of_pem_headers_are_refused_at_once():
    started = datetime.now(timezone.utc)
    with pytest.raises(ValidationError, match="PEM blocks"):
        read_pem_certificate("-----BEGIN A-----" * 15_000)  # 255 KB, under the size limit
    assert datetime.now(timezone.utc) - started < timedelta(seconds=1)  # the block search took 20 s on this


@pytest.mark.parametrize("topic", ["com.apple.mgmt." + "x" * 300, "com.apple.mgmt.External.\x00hidden"])
def test_a_topic_the_store_cannot_hold_is_refused(push_keys, topic):
    pem = self_signed(push_keys[0], [(NameOID.USER_ID, topic), (NameOID.COMMON_NAME, "APSP:1")])
    with pytest.raises(ValidationError, match="topic is longer than 200 characters or holds control characters"):
        read_pem_certificate(pem)


@pytest.mark.parametrize("key_pem, named", [
    (ec_private_key_pem(SECP112R1), "Curve 1.3.132.0.6 is not supported"),
    (ec_private_key_pem(SM2), "Curve 1.2.156.10197.1.301 is not supported"),
    (unknown_algorithm_key_pem(), "Unknown key type: 1.3.6.1.4.1.99999.1"),
])
def test_a_key_of_a_kind_cryptography_cannot_read_is_refused(issue_push, key_pem, named):
    with pytest.raises(ValidationError, match=rf"private key is of a kind Orchard cannot read \({named}\).*RSA"):
        read_pem_certificate(issue_push().certificate_pem, key_pem)
    with pytest.raises(ValidationError, match="cannot read"):
        read_pem_certificate(issue_push().certificate_pem + key_pem)


def test_a_pkcs12_holding_a_key_of_a_kind_cryptography_cannot_read_is_refused(issue_push):
    with pytest.raises(ValidationError, match=r"private key is of a kind Orchard cannot read \(Curve 1.3.132.0.6"):
        read_pkcs12(pkcs12_b64_with_ec_key(SECP112R1, issue_push().certificate_pem), None)


def test_a_certificate_whose_public_key_cryptography_cannot_read_is_refused(issue_push):
    issued = issue_push()
    unreadable = with_ec_public_key(issued.certificate_pem, SECP112R1)
    for upload in ((unreadable,), (unreadable, issued.private_key_pem)):
        with pytest.raises(ValidationError, match=r"certificate's public key is of a kind Orchard cannot read \(Curve"):
            read_pem_certificate(*upload)
    # in a bundle with the push certificate, it is just not the key's certificate
    bundle = unreadable.replace("com.apple.mgmt", "com.example") + issued.certificate_pem
    assert read_pem_certificate(bundle, issued.private_key_pem).topic == read_pem_certificate(issued.certificate_pem).topic


def test_the_public_key_hash_pairs_a_certificate_with_its_key(issue_push):
    issued = issue_push()
    public_der = serialization.load_pem_private_key(issued.private_key_pem.encode(), None).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert read_pem_certificate(issued.certificate_pem).public_key_sha256 == hashlib.sha256(public_der).hexdigest()
    assert private_key_id(issued.private_key_pem) == hashlib.sha256(public_der).hexdigest()
