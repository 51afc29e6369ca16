"""Orchard's device CA: made once per installation, it issues the identity every enrollment profile carries.

Key generation is CPU-bound: the service runs ``generate_device_ca`` and
``issue_device_identity`` through ``eventlet.tpool``.
"""
from __future__ import annotations

import hashlib
import secrets
from datetime import datetime
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from services.enrollment.adapters.tables import device_ca, device_identities, retired_identities
from services.enrollment.adapters.x509_text import fitted
from services.enrollment.domain.device_identity import CA_COMMON_NAME, CA_VALIDITY, CLOCK_SKEW, IdentityTerms
from services.enrollment.domain.mdm_payload import DeviceIdentityBundle

KEY_BITS = 2048
_CA_ROW = "device-ca"


def generate_device_ca(now: datetime) -> tuple[bytes, bytes]:
    """A new CA key (PKCS#8 PEM) and its self-signed certificate (PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_COMMON_NAME),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Orchard")])
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, certificate.public_bytes(serialization.Encoding.PEM)


def issue_device_identity(ca_key_pem: bytes, ca_certificate_pem: bytes, terms: IdentityTerms) -> DeviceIdentityBundle:
    """A new key and a client-authentication certificate for one device, as PKCS#12 with a random password."""
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    ca_certificate = load_ca_certificate(ca_certificate_pem)
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    subject = [x509.NameAttribute(NameOID.COMMON_NAME, fitted(terms.common_name)),
               x509.NameAttribute(NameOID.SERIAL_NUMBER, fitted(terms.serial_number))]
    if terms.udid:
        subject.append(x509.NameAttribute(NameOID.USER_ID, terms.udid[:100]))
    certificate = (
        x509.CertificateBuilder().subject_name(x509.Name(subject)).issuer_name(ca_certificate.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(terms.not_before).not_valid_after(terms.not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_certificate.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    password = secrets.token_urlsafe(24)
    # SHA-1/3DES: the PKCS#12 protection every iOS and macOS release imports (AES needs recent ones)
    protection = (serialization.PrivateFormat.PKCS12.encryption_builder().kdf_rounds(2048)
                  .key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC).hmac_hash(hashes.SHA1())
                  .build(password.encode()))
    bundle = pkcs12.serialize_key_and_certificates(b"Orchard device identity", key, certificate, None, protection)
    return DeviceIdentityBundle(pkcs12=bundle, password=password)


@lru_cache(maxsize=4)
def load_ca_certificate(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def certificate_fingerprint(certificate: x509.Certificate) -> str:
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()


class DeviceCaRepository:
    def __init__(self, session: Session):
        self.session = session

    def get(self) -> Any:
        """The CA row (``certificate_pem``, ``sealed_private_key``), or None before the first profile."""
        return self.session.execute(sa.select(device_ca).where(device_ca.c.id == _CA_ROW)).first()

    def add_unless_present(self, certificate_pem: str, sealed_private_key: str, now: datetime) -> Any:
        """Store a CA unless another worker stored one first; the CA that is kept."""
        self.session.execute(_insert(self.session, device_ca).values(
            id=_CA_ROW, certificate_pem=certificate_pem, sealed_private_key=sealed_private_key, created_at=now,
        ).on_conflict_do_nothing())
        return self.get()


class DeviceIdentityRepository:
    def __init__(self, session: Session):
        self.session = session

    def fingerprint_of(self, udid: str) -> str | None:
        return self.session.scalar(sa.select(device_identities.c.certificate_sha256)
                                   .where(device_identities.c.udid == udid))

    def is_retired(self, fingerprint: str) -> bool:
        return self.session.scalar(sa.select(retired_identities.c.udid)
                                   .where(retired_identities.c.certificate_sha256 == fingerprint)) is not None

    def bind(self, udid: str, fingerprint: str, now: datetime) -> None:
        """Bind ``fingerprint`` to ``udid``; the identity it replaces (a re-enrolled device's old one) is retired."""
        previous = self.fingerprint_of(udid)
        if previous is not None and previous != fingerprint:
            self._retire(previous, udid, "superseded", now)
        insert = _insert(self.session, device_identities).values(udid=udid, certificate_sha256=fingerprint, bound_at=now)
        self.session.execute(insert.on_conflict_do_update(
            index_elements=["udid"], set_={"certificate_sha256": fingerprint, "bound_at": now}))

    def unbind(self, udid: str, now: datetime) -> None:
        """The device checked out: its identity signs nothing more, and a new enrollment brings a new one."""
        bound = self.fingerprint_of(udid)
        if bound is not None:
            self._retire(bound, udid, "checked_out", now)
            self.session.execute(device_identities.delete().where(device_identities.c.udid == udid))

    def _retire(self, fingerprint: str, udid: str, reason: str, now: datetime) -> None:
        self.session.execute(_insert(self.session, retired_identities).values(
            certificate_sha256=fingerprint, udid=udid, reason=reason, retired_at=now).on_conflict_do_nothing())


def _insert(session: Session, table: sa.Table) -> Any:
    return (postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert)(table)
