"""Apple MDM push certificates: read what a customer uploads and decide whether Orchard may use it.

An MDM push certificate's subject is ``UID=com.apple.mgmt.External.<uuid>, CN=APSP:<uuid>, C=US``;
the UID is the APNs topic every enrolled device listens on, so it identifies the certificate
for its whole life (renewals keep it).

Expired certificates are refused, on upload and on renewal: APNs rejects an expired
client certificate during the TLS handshake, so storing one could only ever fail later
and further from its cause. The error tells the customer to renew it at Apple's portal.

Pure computation (``cryptography`` parsing only): no I/O, so it is unit-tested directly.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from asn1crypto import pkcs12 as asn1_pkcs12
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from shared.errors import Conflict, ValidationError

TOPIC_PREFIX = "com.apple.mgmt."
#: an Apple push certificate with its key is about 4 KB; anything far larger is not one
MAX_UPLOAD_BYTES = 256 * 1024
MAX_PEM_BLOCKS = 8
# what the certificate table holds; Apple's values are far shorter (a topic is about 60 characters)
MAX_TOPIC_LENGTH, MAX_SERIAL_LENGTH, MAX_ISSUER_LENGTH, MAX_NAME_LENGTH = 200, 80, 500, 200
EXPIRING_WITHIN = timedelta(days=30)

STATUS_OK = "ok"
STATUS_EXPIRING = "expiring"
STATUS_EXPIRED = "expired"

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.DOTALL)
_PEM_BEGIN = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")
_KEY_LABELS = {b"PRIVATE KEY", b"RSA PRIVATE KEY", b"EC PRIVATE KEY", b"ENCRYPTED PRIVATE KEY"}
_PORTAL_HINT = "Download it again from Apple Push Certificates Portal and upload the .pem file unchanged."


@dataclass(frozen=True)
class PushCertificate:
    """A validated push certificate, with its private key (never shown in reprs)."""

    topic: str
    serial_number: str  # upper-case hex, as Apple's portal shows it
    not_before: datetime
    not_after: datetime
    issuer: str
    common_name: str | None
    apple_id: str | None
    certificate_pem: str
    public_key_sha256: str  # pairs the certificate with a key Orchard kept from its own signing request
    private_key_pem: str | None = field(default=None, repr=False)


def days_left(not_after: datetime, now: datetime) -> int:
    """Whole days until expiry; negative once expired."""
    return math.floor((not_after - now).total_seconds() / 86400)


def certificate_status(not_after: datetime, now: datetime) -> str:
    if now >= not_after:
        return STATUS_EXPIRED
    if not_after - now <= EXPIRING_WITHIN:
        return STATUS_EXPIRING
    return STATUS_OK


def read_pem_certificate(
    certificate_pem: str | bytes, private_key_pem: str | bytes | None = None, *, now: datetime | None = None
) -> PushCertificate:
    """Validate an uploaded PEM certificate and, when given, its PEM private key.

    A key pasted into the certificate file (one .pem with both blocks) is used when no
    separate key is given. A file that also holds Apple's chain, in any order, is read as
    the certificate the key belongs to (without a key: the one with a topic).
    """
    cert_bytes = _as_bytes(certificate_pem, "certificate")
    key_bytes = _as_bytes(private_key_pem, "private key") if private_key_pem is not None else None
    _check_size(len(cert_bytes) + len(key_bytes or b""), "certificate upload")
    blocks = _pem_blocks(cert_bytes, "certificate")
    cert_blocks = [body for label, body in blocks if label == b"CERTIFICATE"]
    if not cert_blocks:
        if any(label in _KEY_LABELS for label, _ in blocks):
            raise ValidationError(
                "The certificate field holds a private key, not a certificate. "
                "Put the push certificate (-----BEGIN CERTIFICATE-----) there and the key in the key field."
            )
        raise ValidationError(f"The upload contains no certificate (-----BEGIN CERTIFICATE-----). {_PORTAL_HINT}")
    try:
        certificates = [x509.load_pem_x509_certificate(block) for block in cert_blocks]
    except ValueError:
        raise ValidationError(f"The certificate is damaged and cannot be decoded. {_PORTAL_HINT}") from None
    if key_bytes is None:
        key_block = next((body for label, body in blocks if label in _KEY_LABELS), None)
    else:
        key_block = _single_key_block(key_bytes)
    private_key = _load_private_key(key_block) if key_block is not None else None
    return _validated(_push_certificate_of(certificates, private_key), private_key, now)


def read_pkcs12(p12_b64: str | bytes, password: str | None, *, now: datetime | None = None) -> PushCertificate:
    """Validate a base64 PKCS#12 (.p12) bundle holding the push certificate and its key."""
    encoded = _as_bytes(p12_b64, "PKCS#12 upload")
    _check_size(len(encoded), "PKCS#12 upload")
    try:
        data = base64.b64decode(b"".join(encoded.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValidationError("The PKCS#12 upload is not valid base64: send the .p12 file's bytes base64-encoded.") from None
    if not _looks_like_pkcs12(data):
        raise ValidationError("The upload is not a PKCS#12 (.p12) file. Export the push certificate with its key as .p12 and try again.")
    secret = password.encode() if password else None
    try:
        key, certificate, _ = pkcs12.load_key_and_certificates(data, secret)
    except UnsupportedAlgorithm as exc:
        raise _unsupported_key("The PKCS#12 file's private key", exc) from None
    except ValueError:
        raise ValidationError("The PKCS#12 password is wrong (or the file is damaged). Check the password and try again.") from None
    if certificate is None:
        raise ValidationError("The PKCS#12 file contains no certificate. Export the push certificate together with its key.")
    if key is None:
        raise ValidationError("The PKCS#12 file contains no private key. Export the push certificate together with its key.")
    return _validated(certificate, key, now)


def check_renewal(stored_topic: str, stored_not_after: datetime, renewed: PushCertificate) -> None:
    """A renewal must keep the topic, or every device enrolled under it is orphaned."""
    if renewed.topic != stored_topic:
        raise Conflict(
            f"The uploaded certificate's topic '{renewed.topic}' differs from this certificate's topic "
            f"'{stored_topic}'. Accepting it would force every device enrolled under this certificate to "
            "re-enroll. Renew the existing certificate in Apple Push Certificates Portal ('Renew' on its row, "
            "with the same Apple Account), or upload the new one as a separate certificate."
        )
    if renewed.not_after < stored_not_after:
        raise ValidationError(
            f"The uploaded certificate expires on {renewed.not_after.isoformat()}, before the stored one "
            f"({stored_not_after.isoformat()}): it is an older certificate, not a renewal."
        )


def _push_certificate_of(certificates: list[x509.Certificate], private_key) -> x509.Certificate:
    """The push certificate among an upload's certificates: the key's, else the first with a topic (UID)."""
    if len(certificates) == 1:
        return certificates[0]  # checked against the key later, with the error that names the mismatch
    if private_key is not None:
        key_der = _public_key_der(private_key)
        matching = next((c for c in certificates if _public_key_der_or_none(c) == key_der), None)
        if matching is None:
            raise ValidationError(
                f"None of the {len(certificates)} certificates in the upload belongs to the private key. Upload "
                "the push certificate with the key that was used to create its signing request."
            )
        return matching
    return next((c for c in certificates if _has_topic(c)), certificates[0])


def _has_topic(certificate: x509.Certificate) -> bool:
    try:
        return _first_attribute(certificate.subject, NameOID.USER_ID) is not None
    except ValueError:  # a damaged subject: this is not the certificate to pick
        return False


def _public_key_der_or_none(certificate: x509.Certificate) -> bytes | None:
    try:
        return _public_key_der(certificate)
    except (ValueError, UnsupportedAlgorithm):  # an unsupported or damaged key: not the push certificate's
        return None


def _validated(certificate: x509.Certificate, private_key, now: datetime | None) -> PushCertificate:
    try:
        return _checked(certificate, private_key, now or datetime.now(timezone.utc))
    except ValidationError:
        raise
    except Exception:  # cryptography decodes the subject, issuer and key only when asked: damage shows up here
        raise ValidationError(f"The certificate is damaged and cannot be decoded. {_PORTAL_HINT}") from None


def _checked(certificate: x509.Certificate, private_key, now: datetime) -> PushCertificate:
    topic = _topic(certificate)
    not_after = certificate.not_valid_after_utc
    if now >= not_after:
        raise ValidationError(
            f"The certificate for topic '{topic}' expired on {not_after.isoformat()}. Renew it in Apple Push "
            "Certificates Portal with the same Apple Account and upload the renewed certificate."
        )
    public_key_der = _certificate_public_key_der(certificate)
    if private_key is not None and _public_key_der(private_key) != public_key_der:
        raise ValidationError(
            "The private key does not belong to this certificate. Upload the key that was used to create "
            "the certificate's signing request."
        )
    key_pem = None
    if private_key is not None:
        key_pem = private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
    return PushCertificate(
        topic=topic,
        serial_number=_fitting(_hex_serial(certificate.serial_number), "serial number", MAX_SERIAL_LENGTH),
        not_before=certificate.not_valid_before_utc,
        not_after=not_after,
        issuer=_fitting(certificate.issuer.rfc4514_string(), "issuer", MAX_ISSUER_LENGTH),
        common_name=_fitting(_first_attribute(certificate.subject, NameOID.COMMON_NAME), "common name", MAX_NAME_LENGTH),
        apple_id=_fitting(_first_attribute(certificate.subject, NameOID.EMAIL_ADDRESS), "Apple Account", MAX_NAME_LENGTH),
        certificate_pem=certificate.public_bytes(serialization.Encoding.PEM).decode(),
        public_key_sha256=_sha256_hex(public_key_der),
        private_key_pem=key_pem,
    )


def _topic(certificate: x509.Certificate) -> str:
    topic = _first_attribute(certificate.subject, NameOID.USER_ID)
    if topic is None:
        raise ValidationError(
            "The certificate has no UID (topic) in its subject, so it is not an Apple MDM push certificate. "
            "Use the certificate issued by Apple Push Certificates Portal."
        )
    if not topic.startswith(TOPIC_PREFIX):
        raise ValidationError(
            f"The certificate's topic '{topic}' does not start with '{TOPIC_PREFIX}': it is not an MDM push "
            "certificate (perhaps an app's push certificate). Use the certificate issued by Apple Push "
            "Certificates Portal."
        )
    return _fitting(topic, "topic", MAX_TOPIC_LENGTH)


def _fitting(value: str | None, what: str, limit: int) -> str | None:
    """``value`` if it is printable text within ``limit`` characters: Apple's certificates always are."""
    if value is not None and (len(value) > limit or not value.isprintable()):
        raise ValidationError(f"The certificate's {what} is longer than {limit} characters or holds control "
                              f"characters: it was not issued by Apple Push Certificates Portal. {_PORTAL_HINT}")
    return value


def _pem_blocks(data: bytes, what: str) -> list[tuple[bytes, bytes]]:
    begun = _PEM_BEGIN.findall(data)
    if not begun:
        raise ValidationError(
            f"The {what} is not PEM text (it should start with -----BEGIN ...-----). {_PORTAL_HINT}"
        )
    if len(begun) > MAX_PEM_BLOCKS:  # the block search rescans the rest of the text for each one: keep it linear
        raise ValidationError(f"The {what} holds {len(begun)} PEM blocks; a push certificate upload has a "
                              f"certificate, its key and perhaps its chain. {_PORTAL_HINT}")
    blocks = [(m.group(1), m.group(0)) for m in _PEM_BLOCK.finditer(data)]
    if len(begun) > len(blocks):
        raise ValidationError(f"The {what} is truncated: a -----BEGIN----- line has no matching -----END----- line. {_PORTAL_HINT}")
    return blocks


def _single_key_block(data: bytes) -> bytes:
    blocks = _pem_blocks(data, "private key")
    key_block = next((body for label, body in blocks if label in _KEY_LABELS), None)
    if key_block is None:
        raise ValidationError("The private key field holds no private key (-----BEGIN PRIVATE KEY-----).")
    return key_block


def _load_private_key(block: bytes):
    try:
        return serialization.load_pem_private_key(block, password=None)
    except UnsupportedAlgorithm as exc:
        raise _unsupported_key("The private key", exc) from None
    except TypeError:
        raise ValidationError(
            "The private key is protected by a password. Upload it unencrypted, or upload a PKCS#12 (.p12) "
            "file together with its password."
        ) from None
    except ValueError:
        raise ValidationError("The private key is damaged and cannot be decoded.") from None


def _unsupported_key(what: str, exc: UnsupportedAlgorithm) -> ValidationError:
    return ValidationError(f"{what} is of a kind Orchard cannot read ({_first_line(exc)}). An Apple push certificate's "
                           "key is an RSA key: upload the key that was used to create the certificate's signing request.")


def _certificate_public_key_der(certificate: x509.Certificate) -> bytes:
    try:
        return _public_key_der(certificate)
    except UnsupportedAlgorithm as exc:  # read only when asked: checked here, or one uploaded alone fails when paired
        raise ValidationError(f"The certificate's public key is of a kind Orchard cannot read ({_first_line(exc)}): "
                              f"Apple Push Certificates Portal issues certificates for RSA keys. {_PORTAL_HINT}") from None


def _first_line(exc: Exception) -> str:
    # cryptography adds advice about PEM labels on further lines, which does not apply here
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def _looks_like_pkcs12(data: bytes) -> bool:
    # cryptography reports a wrong password and a non-PKCS#12 file alike; the outer structure tells them apart
    try:
        pfx = asn1_pkcs12.Pfx.load(data, strict=True)
        return pfx["version"].native == "v3" and pfx["auth_safe"]["content_type"].native is not None
    except (ValueError, TypeError, KeyError):
        return False


def _check_size(size: int, what: str) -> None:
    if size > MAX_UPLOAD_BYTES:
        raise ValidationError(
            f"The {what} is {size / 1_000_000:.1f} MB; a push certificate with its key is a few kilobytes "
            f"(limit {MAX_UPLOAD_BYTES // 1024} KB). Check that you chose the right file."
        )


def _as_bytes(value: str | bytes, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "replace")
    raise ValidationError(f"The {what} must be text, not {type(value).__name__}.")


def _first_attribute(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    attributes = name.get_attributes_for_oid(oid)
    return str(attributes[0].value) if attributes else None


def _hex_serial(serial: int) -> str:
    digits = format(serial, "X")
    return digits.zfill(len(digits) + len(digits) % 2)


def _public_key_der(holder) -> bytes:
    return holder.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def public_key_sha256(holder) -> str:
    """SHA-256 of a key's or certificate's public key (DER): pairs a certificate with a key Orchard holds."""
    return _sha256_hex(_public_key_der(holder))


def private_key_id(private_key_pem: str) -> str:
    """``public_key_sha256`` of a PEM private key. Loading an RSA key checks it (tens of milliseconds of CPU):
    callers on an event loop run this in a worker thread."""
    return public_key_sha256(serialization.load_pem_private_key(private_key_pem.encode(), password=None))


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
