"""MDM server token files: Apple's S/MIME/CMS layers, key handling, validation, status, renewal."""
import base64
import json
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from apple_sandbox.dep_tokens import envelope, issue_token_file, smime, token_plaintext
from services.enrollment.adapters.token_crypto import decrypt_enveloped_data, generate_key_and_certificate
from services.enrollment.domain import server_tokens
from services.enrollment.domain.server_tokens import (
    check_same_mdm_server,
    cms_from_token_file,
    credentials_from_plaintext,
    days_left,
    token_status,
)
from shared.errors import Conflict, ValidationError

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
CREDENTIALS = {
    "consumer_key": "CK_3a7b0d1e", "consumer_secret": "CS_9f8e7d6c", "access_token": "AT_O1234567",
    "access_secret": "AS_c31afd7a", "access_token_expiry": "2027-05-31T12:00:00Z",
}


def read_token(p7m, key_pem, now=NOW):
    return credentials_from_plaintext(decrypt_enveloped_data(cms_from_token_file(p7m), key_pem), now=now)


def test_created_certificate_carries_the_public_half_of_the_kept_key(token_key):
    key_pem, cert_pem = token_key
    certificate = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(key_pem, None)
    assert certificate.public_key().public_numbers() == key.public_key().public_numbers()
    assert b"PRIVATE KEY" not in cert_pem


@pytest.mark.parametrize("ber", [True, False], ids=["indefinite-ber", "der"])
@pytest.mark.parametrize("cipher", ["aes128_cbc", "tripledes_3key"])
@pytest.mark.parametrize("message_lines", [True, False], ids=["message-lines", "bare-json"])
def test_token_files_in_both_encodings_decrypt(token_key, ber, cipher, message_lines):
    p7m = issue_token_file(CREDENTIALS, token_key[1], ber=ber, cipher=cipher, message_lines=message_lines)
    credentials = read_token(p7m, token_key[0])
    assert credentials.to_dict() == CREDENTIALS


def test_ber_token_starts_like_apples_and_defeats_the_der_only_parser(token_key):
    p7m = issue_token_file(CREDENTIALS, token_key[1], ber=True)
    body = p7m.split(b"\r\n\r\n", 1)[1]
    assert body.startswith(b"MIAGCSqGSIb3DQEHA6CAMIACAQAxgg")  # 30 80 ... as in Apple's sample
    key = serialization.load_pem_private_key(token_key[0], None)
    certificate = x509.load_pem_x509_certificate(token_key[1])
    with pytest.raises(ValueError):
        pkcs7.pkcs7_decrypt_der(cms_from_token_file(p7m), certificate, key, [])
    assert read_token(p7m, token_key[0]).consumer_key == "CK_3a7b0d1e"


def test_bare_base64_and_binary_envelopes_are_accepted(token_key):
    cms = envelope(token_plaintext(CREDENTIALS), token_key[1])
    assert read_token(base64.b64encode(cms).decode(), token_key[0]).access_token == "AT_O1234567"
    assert read_token(cms, token_key[0]).access_token == "AT_O1234567"


def test_large_payload_spans_several_ber_chunks(token_key):
    big = {**CREDENTIALS, "consumer_secret": "CS_" + "x" * 5000}
    assert read_token(issue_token_file(big, token_key[1]), token_key[0]).consumer_secret == big["consumer_secret"]


@pytest.mark.parametrize("garbage", [b"", b"hello world", b"Content-Type: text/plain\r\n\r\nnot base64 !!", b"\x30\x03\x02\x01\x00",
                                     base64.b64encode(b"\x30\x80garbage")])
def test_garbage_is_refused_with_a_clear_message(token_key, garbage):
    with pytest.raises(ValidationError) as error:
        read_token(garbage, token_key[0])
    assert "token" in str(error.value)


def test_token_for_another_key_is_refused(token_key, other_key):
    # PKCS#1 v1.5 may "succeed" with a wrong key; many tries make sure each outcome is refused
    for _ in range(25):
        p7m = issue_token_file(CREDENTIALS, other_key[1])
        with pytest.raises(ValidationError, match="could not be decrypted with this server token's key"):
            read_token(p7m, token_key[0])


def test_wrong_key_garbage_plaintext_is_refused():
    for plaintext in (b"\xff\xfe\x00garbage", b"Content-Type: text/plain\r\n\r\nnot json", b"[1, 2]"):
        with pytest.raises(ValidationError, match="could not be decrypted"):
            credentials_from_plaintext(plaintext, now=NOW)


def test_expired_token_is_refused(token_key):
    expired = {**CREDENTIALS, "access_token_expiry": "2026-05-01T00:00:00Z"}
    with pytest.raises(ValidationError, match="expired on 2026-05-01"):
        read_token(issue_token_file(expired, token_key[1]), token_key[0])


@pytest.mark.parametrize("field,value", [("consumer_key", "XX_1"), ("access_token", ""), ("access_secret", None),
                                          ("access_token_expiry", "next year")])
def test_invalid_fields_are_named(field, value):
    plaintext = json.dumps({**CREDENTIALS, field: value}).encode()
    with pytest.raises(ValidationError, match=field if field != "access_token_expiry" else "RFC 3339"):
        credentials_from_plaintext(plaintext, now=NOW)


def test_secrets_never_appear_in_the_repr(token_key):
    credentials = read_token(issue_token_file(CREDENTIALS, token_key[1]), token_key[0])
    text = repr(credentials)
    assert "CK_3a7b0d1e" in text
    for secret in ("CS_9f8e7d6c", "AT_O1234567", "AS_c31afd7a"):
        assert secret not in text


def test_status_and_days_left():
    assert token_status(NOW + timedelta(days=200), NOW) == "ok"
    assert token_status(NOW + timedelta(days=30), NOW) == "expiring"
    assert token_status(NOW + timedelta(days=31), NOW) == "ok"
    assert token_status(NOW - timedelta(seconds=1), NOW) == "expired"
    assert token_status(NOW + timedelta(days=200), NOW, apple_refusal="terms_not_accepted") == "terms_not_accepted"
    assert token_status(NOW + timedelta(days=200), NOW, apple_refusal="revoked_or_invalid") == "revoked_or_invalid"
    assert days_left(NOW + timedelta(days=7, hours=3), NOW) == 7
    assert days_left(NOW - timedelta(days=2), NOW) == -2
    assert set(server_tokens.STATUSES) == {"ok", "expiring", "expired", "terms_not_accepted", "revoked_or_invalid"}


def test_renewal_must_come_from_the_same_mdm_server():
    check_same_mdm_server(current_consumer_key="CK_a", new_consumer_key="CK_a")
    with pytest.raises(Conflict, match="different MDM server"):
        check_same_mdm_server(current_consumer_key="CK_a", new_consumer_key="CK_b")
    with pytest.raises(Conflict, match="different MDM server"):
        check_same_mdm_server(current_consumer_key="CK_a", new_consumer_key="CK_a",
                              current_server_uuid="U1", new_server_uuid="U2")
    check_same_mdm_server(current_consumer_key="CK_a", new_consumer_key="CK_b", force=True)


def test_new_keys_are_unique():
    first, second = generate_key_and_certificate("a"), generate_key_and_certificate("b")
    assert first[0] != second[0] and first[1] != second[1]


def test_a_long_accented_name_is_cut_to_what_a_certificate_holds():
    name = "Collège Saint-Étienne – Site de la Cathédrale Nord-Est (2026)"  # 61 characters, 66 bytes
    _, certificate_pem = generate_key_and_certificate(name)
    common_name = x509.load_pem_x509_certificate(certificate_pem).subject.get_attributes_for_oid(
        x509.NameOID.COMMON_NAME)[0].value
    assert name.startswith(common_name) and len(common_name.encode()) <= 64
    assert len(name[:len(common_name) + 1].encode()) > 64  # the longest prefix that fits


def test_smime_wrapper_has_apples_headers(token_key):
    text = smime(envelope(b"x", token_key[1])).decode()
    assert text.startswith('Content-Type: application/pkcs7-mime; name="smime.p7m"; smime-type=enveloped-data')
    assert "Content-Transfer-Encoding: base64" in text
