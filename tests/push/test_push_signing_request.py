"""The vendor-signed push certificate request, and the sandbox portal that answers it."""
from __future__ import annotations

import base64
import plistlib
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.x509.oid import NameOID

from apple_sandbox.push_portal import PortalError, SandboxAppleCA, sign_push_request
from services.push.domain.certificates import read_pem_certificate
from services.push.domain.signing_request import create_signing_request
from shared.errors import ValidationError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def vendor(apple_ca):
    return apple_ca.issue_vendor_certificate()


@pytest.fixture(scope="module")
def signing_request(vendor, apple_ca):
    return create_signing_request(vendor.certificate_pem, vendor.private_key_pem, vendor_chain_pem=apple_ca.certificate_pem)


def test_request_is_a_base64_plist_with_csr_chain_and_vendor_signature(signing_request, vendor, apple_ca):
    request = plistlib.loads(base64.b64decode(signing_request.request_b64, validate=True))
    assert set(request) == {"PushCertRequestCSR", "PushCertCertificateChain", "PushCertSignature"}
    csr_der = base64.b64decode(request["PushCertRequestCSR"])
    assert csr_der == signing_request.csr_der
    csr = x509.load_der_x509_csr(csr_der)
    assert csr.is_signature_valid
    assert csr.public_key().key_size == 2048
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "MDM Push"
    # the vendor signs the CSR DER itself, PKCS#1 v1.5 with SHA-256
    vendor_certificate = x509.load_pem_x509_certificate(vendor.certificate_pem.encode())
    vendor_certificate.public_key().verify(
        base64.b64decode(request["PushCertSignature"]), csr_der, padding.PKCS1v15(), hashes.SHA256()
    )
    chain = x509.load_pem_x509_certificates(request["PushCertCertificateChain"].encode())
    assert chain[0] == vendor_certificate and chain[1] == apple_ca.certificate


def test_returned_key_belongs_to_the_csr(signing_request):
    key = serialization.load_pem_private_key(signing_request.private_key_pem.encode(), password=None)
    csr = x509.load_der_x509_csr(signing_request.csr_der)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert key.public_key().public_bytes(*spki) == csr.public_key().public_bytes(*spki)
    assert "PRIVATE" not in repr(signing_request)


def test_portal_issues_a_certificate_that_pairs_with_the_kept_key(signing_request, apple_ca):
    certificate_pem = sign_push_request(apple_ca, signing_request.request_b64)
    pushed = read_pem_certificate(certificate_pem, signing_request.private_key_pem)
    assert pushed.topic.startswith("com.apple.mgmt.External.")
    assert pushed.public_key_sha256 == signing_request.public_key_sha256  # how the kept key is found again
    assert pushed.common_name == "APSP:" + pushed.topic.removeprefix("com.apple.mgmt.External.")
    subject = x509.load_pem_x509_certificate(certificate_pem.encode()).subject
    assert subject.get_attributes_for_oid(NameOID.COUNTRY_NAME)[0].value == "US"


def test_portal_renewal_keeps_the_topic(vendor, apple_ca, signing_request):
    first = read_pem_certificate(sign_push_request(apple_ca, signing_request.request_b64))
    renewal_request = create_signing_request(vendor.certificate_pem, vendor.private_key_pem)
    renewed = read_pem_certificate(
        sign_push_request(apple_ca, renewal_request.request_b64, renew_topic=first.topic),
        renewal_request.private_key_pem,
    )
    assert renewed.topic == first.topic and renewed.serial_number != first.serial_number


def test_portal_refuses_a_tampered_signature(signing_request, apple_ca):
    request = plistlib.loads(base64.b64decode(signing_request.request_b64))
    request["PushCertSignature"] = base64.b64encode(b"\0" * 256).decode()
    with pytest.raises(PortalError, match="signature does not match"):
        sign_push_request(apple_ca, base64.b64encode(plistlib.dumps(request)).decode())


def test_portal_refuses_a_vendor_apple_did_not_issue(apple_ca, tmp_path):
    stranger = SandboxAppleCA.load_or_create(tmp_path).issue_vendor_certificate()
    request = create_signing_request(stranger.certificate_pem, stranger.private_key_pem)
    with pytest.raises(PortalError, match="not issued by Apple"):
        sign_push_request(apple_ca, request.request_b64)


def test_vendor_key_that_does_not_match_the_vendor_certificate(vendor, apple_ca):
    other = apple_ca.issue_vendor_certificate("Other")
    with pytest.raises(ValidationError, match="does not belong to the vendor certificate"):
        create_signing_request(vendor.certificate_pem, other.private_key_pem)


def test_unreadable_vendor_configuration():
    with pytest.raises(ValidationError, match="cannot be read"):
        create_signing_request("not a certificate", "not a key")


def test_portal_command_line_issues_vendor_credentials_and_certificates(tmp_path, sandbox_dir):
    portal = [sys.executable, "-m", "apple_sandbox.push_portal", "--dir", str(sandbox_dir)]
    subprocess.run([*portal, "vendor", "--cert", str(tmp_path / "v.pem"), "--key", str(tmp_path / "v.key")],
                   check=True, capture_output=True, cwd=ROOT)
    request = create_signing_request((tmp_path / "v.pem").read_text(), (tmp_path / "v.key").read_text())
    (tmp_path / "push.req").write_text(request.request_b64)
    subprocess.run([*portal, "issue", "--request", str(tmp_path / "push.req"), "--out", str(tmp_path / "push.pem")],
                   check=True, capture_output=True, cwd=ROOT)
    assert read_pem_certificate((tmp_path / "push.pem").read_text(), request.private_key_pem).topic
    (tmp_path / "bad.req").write_text("garbage")
    refused = subprocess.run([*portal, "issue", "--request", str(tmp_path / "bad.req"), "--out", str(tmp_path / "x")],
                             capture_output=True, text=True, cwd=ROOT)
    assert refused.returncode != 0 and "refused: The request is not a base64-encoded plist" in refused.stderr
