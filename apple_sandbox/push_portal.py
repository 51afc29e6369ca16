"""The sandbox Apple Push Certificates Portal and the certificate authority behind it.

``SandboxAppleCA`` plays Apple's roles: it issues MDM push certificates
(``UID=com.apple.mgmt.External.<uuid>, CN=APSP:<uuid>, C=US``), the vendor "MDM CSR"
certificates that vouch for customers' signing requests, and the TLS certificate of the
APNs stand-in. ``sign_push_request`` is the portal: it takes the base64 plist a customer
uploads, checks it the way Apple does (vendor certificate from Apple, vendor signature over
SHA-256 of the CSR DER, CSR self-signature) and returns the push certificate, keeping the
topic on renewal.

CLI::

    python -m apple_sandbox.push_portal vendor --dir var/apple_sandbox --cert vendor.pem --key vendor.key
    python -m apple_sandbox.push_portal issue --dir var/apple_sandbox --request push.req --out MDM_push.pem [--renew-topic TOPIC]
"""
from __future__ import annotations

import argparse
import base64
import binascii
import ipaddress
import os
import plistlib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT_FILE = "apple-ca.pem"
CA_KEY_FILE = "apple-ca-key.pem"
TOPIC_PREFIX = "com.apple.mgmt.External."


class PortalError(ValueError):
    """The portal refuses the uploaded request, for the reason given."""


@dataclass(frozen=True)
class IssuedPair:
    certificate_pem: str
    private_key_pem: str


class SandboxAppleCA:
    """A self-signed root standing in for Apple's CAs, kept in a directory so processes share it."""

    def __init__(self, certificate: x509.Certificate, key: rsa.RSAPrivateKey):
        self.certificate = certificate
        self._key = key

    @classmethod
    def load_or_create(cls, directory: str | os.PathLike) -> "SandboxAppleCA":
        directory = Path(directory)
        cert_path, key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
        if cert_path.exists() and key_path.exists():
            certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            return cls(certificate, key)
        directory.mkdir(parents=True, exist_ok=True)
        key = _new_key()
        name = x509.Name([
            x509.NameAttribute(NameOID.COMMON_NAME, "Orchard Sandbox Apple Root CA"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Apple Sandbox"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        ])
        now = datetime.now(timezone.utc)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        _write_private(key_path, _key_pem(key).encode())
        cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        return cls(certificate, key)

    @property
    def certificate_pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode()

    def issue_push_certificate(
        self,
        public_key,
        *,
        topic: str | None = None,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
    ) -> str:
        """An MDM push certificate for ``public_key``: a new topic, or ``topic`` on renewal."""
        push_id = str(uuid.uuid4())
        topic = topic or TOPIC_PREFIX + push_id
        subject = x509.Name([
            x509.NameAttribute(NameOID.USER_ID, topic),
            x509.NameAttribute(NameOID.COMMON_NAME, f"APSP:{topic.rsplit('.', 1)[-1]}"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        ])
        now = datetime.now(timezone.utc)
        not_before = not_before or now - timedelta(minutes=5)
        not_after = not_after or now + timedelta(days=365)
        return self._issue(subject, public_key, not_before, not_after, [ExtendedKeyUsageOID.CLIENT_AUTH])

    def issue_vendor_certificate(self, name: str = "Orchard Sandbox Vendor") -> IssuedPair:
        """A vendor's "MDM CSR" signing certificate and key, as Apple's developer program issues them."""
        key = _new_key()
        subject = x509.Name([
            x509.NameAttribute(NameOID.COMMON_NAME, f"MDM Vendor: {name}"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        ])
        now = datetime.now(timezone.utc)
        certificate_pem = self._issue(subject, key.public_key(), now - timedelta(minutes=5), now + timedelta(days=365), [])
        return IssuedPair(certificate_pem, _key_pem(key))

    def issue_server_certificate(self, hostnames: list[str]) -> IssuedPair:
        """The TLS server certificate of a sandbox host (the APNs stand-in)."""
        key = _new_key()
        names = [_general_name(host) for host in hostnames]
        now = datetime.now(timezone.utc)
        certificate = (
            self._builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])]), key.public_key(),
                          now - timedelta(minutes=5), now + timedelta(days=30), [ExtendedKeyUsageOID.SERVER_AUTH])
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        return IssuedPair(certificate.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(key))

    def _issue(self, subject, public_key, not_before, not_after, usages) -> str:
        certificate = self._builder(subject, public_key, not_before, not_after, usages).sign(self._key, hashes.SHA256())
        return certificate.public_bytes(serialization.Encoding.PEM).decode()

    def _builder(self, subject, public_key, not_before, not_after, usages) -> x509.CertificateBuilder:
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(self.certificate.subject).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
        )
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        return builder


def sign_push_request(ca: SandboxAppleCA, request_b64: str, *, renew_topic: str | None = None) -> str:
    """Check an uploaded push certificate request and issue its certificate (PEM)."""
    try:
        request = plistlib.loads(base64.b64decode(request_b64.strip(), validate=True))
    except (binascii.Error, ValueError, plistlib.InvalidFileException):
        raise PortalError("The request is not a base64-encoded plist.") from None
    missing = {"PushCertRequestCSR", "PushCertCertificateChain", "PushCertSignature"} - set(request)
    if missing:
        raise PortalError(f"The request plist lacks {', '.join(sorted(missing))}.")
    try:
        csr_der = base64.b64decode(request["PushCertRequestCSR"], validate=True)
        signature = base64.b64decode(request["PushCertSignature"], validate=True)
        csr = x509.load_der_x509_csr(csr_der)
        chain = x509.load_pem_x509_certificates(request["PushCertCertificateChain"].encode())
    except (binascii.Error, ValueError):
        raise PortalError("The request's CSR, signature or certificate chain cannot be decoded.") from None
    vendor = chain[0]
    try:
        vendor.verify_directly_issued_by(ca.certificate)
    except (ValueError, TypeError, InvalidSignature):
        raise PortalError("The vendor certificate was not issued by Apple.") from None
    try:
        vendor.public_key().verify(signature, csr_der, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise PortalError("The vendor signature does not match the CSR.") from None
    if not csr.is_signature_valid:
        raise PortalError("The CSR's own signature is invalid.")
    if renew_topic is not None and not renew_topic.startswith(TOPIC_PREFIX):
        raise PortalError(f"'{renew_topic}' is not a push certificate topic that can be renewed.")
    return ca.issue_push_certificate(csr.public_key(), topic=renew_topic)


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _key_pem(key) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m apple_sandbox.push_portal", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default="var/apple_sandbox", help="where the sandbox CA lives")
    commands = parser.add_subparsers(dest="command", required=True)
    vendor = commands.add_parser("vendor", help="issue a test MDM vendor signing certificate and key")
    vendor.add_argument("--cert", required=True)
    vendor.add_argument("--key", required=True)
    issue = commands.add_parser("issue", help="turn an uploaded push certificate request into a certificate")
    issue.add_argument("--request", required=True, help="the base64 plist file")
    issue.add_argument("--out", required=True)
    issue.add_argument("--renew-topic", help="keep this topic (renewal)")
    args = parser.parse_args(argv)
    ca = SandboxAppleCA.load_or_create(args.dir)
    if args.command == "vendor":
        pair = ca.issue_vendor_certificate()
        Path(args.cert).write_text(pair.certificate_pem)
        _write_private(Path(args.key), pair.private_key_pem.encode())
        print(f"vendor certificate {args.cert}, key {args.key}")
    else:
        try:
            certificate_pem = sign_push_request(ca, Path(args.request).read_text(), renew_topic=args.renew_topic)
        except PortalError as exc:
            raise SystemExit(f"refused: {exc}")
        Path(args.out).write_text(certificate_pem)
        print(f"push certificate {args.out}")


if __name__ == "__main__":
    main()
