"""The ``Mdm-Signature`` header: base64 of a detached CMS SignedData over the exact check-in body.

A device with ``SignMessage`` signs every check-in with the identity from its enrollment
profile and includes that certificate. The header is untrusted input: it is size-bounded,
parsed with asn1crypto (any parse error is a rejection) and verified with ``cryptography``.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime

from asn1crypto import cms
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.x509.oid import NameOID

from services.enrollment.adapters.device_ca import certificate_fingerprint
from services.enrollment.domain.device_identity import (
    BAD_SIGNATURE,
    DIGEST_MISMATCH,
    EXPIRED_CERTIFICATE,
    MALFORMED_SIGNATURE,
    UNKNOWN_ISSUER,
    CheckinRejected,
    SignerIdentity,
)

SIGNATURE_HEADER = "Mdm-Signature"
MAX_SIGNATURE_CHARS = 16 * 1024  # a signature with one certificate is 2–3 KB
_DIGESTS: dict[str, type[hashes.HashAlgorithm]] = {"sha256": hashes.SHA256, "sha1": hashes.SHA1}


@dataclass(frozen=True)
class _Signed:
    """What verification needs from the SignedData."""

    digest: str
    message_digest: bytes
    signed_attributes: bytes
    signature: bytes
    signature_algorithm: str
    certificate: x509.Certificate


def verify_checkin_signature(header: str | None, body: bytes, ca_certificate: x509.Certificate | None,
                             now: datetime) -> SignerIdentity | None:
    """The signer of ``body``, None when the header is absent; ``CheckinRejected`` for any other failure."""
    if header is None or not header.strip():
        return None
    signed = _parse(header)
    if not hmac.compare_digest(signed.message_digest, hashlib.new(signed.digest, body).digest()):
        raise CheckinRejected(DIGEST_MISMATCH)
    certificate = signed.certificate
    try:  # first, with our CA's key: the signer's own key could be one built to be slow to verify with
        if ca_certificate is None or certificate.issuer != ca_certificate.subject:
            raise ValueError("another issuer")
        certificate.verify_directly_issued_by(ca_certificate)
    except (ValueError, TypeError, InvalidSignature):
        raise CheckinRejected(UNKNOWN_ISSUER) from None
    _verify(signed)
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        raise CheckinRejected(EXPIRED_CERTIFICATE)
    udids = certificate.subject.get_attributes_for_oid(NameOID.USER_ID)
    serials = certificate.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
    return SignerIdentity(fingerprint=certificate_fingerprint(certificate),
                          udid=str(udids[0].value) if udids else None,
                          serial_number=str(serials[0].value) if serials else None)


def _parse(header: str) -> _Signed:
    if len(header) > MAX_SIGNATURE_CHARS:
        raise CheckinRejected(MALFORMED_SIGNATURE)
    # asn1crypto parses lazily and a hostile structure can fail anywhere below with any error
    # type; every one of them means the same thing: not a signature we accept
    try:
        info = cms.ContentInfo.load(base64.b64decode("".join(header.split()), validate=True), strict=True)
        if info["content_type"].native != "signed_data":
            raise ValueError("not SignedData")
        signed_data = info["content"]
        if signed_data["encap_content_info"]["content"].native is not None:
            raise ValueError("not detached")
        if signed_data["encap_content_info"]["content_type"].native != "data":
            raise ValueError("signs something other than data")
        if len(signed_data["signer_infos"]) != 1:
            raise ValueError("one signer expected")
        signer = signed_data["signer_infos"][0]
        digest = signer["digest_algorithm"]["algorithm"].native
        if digest not in _DIGESTS:
            raise ValueError("unsupported digest")
        attributes = signer["signed_attrs"]
        values = {attribute["type"].native: attribute["values"] for attribute in attributes}
        if len(values.get("message_digest", ())) != 1:
            raise ValueError("no messageDigest")
        if "content_type" in values and values["content_type"][0].native != "data":
            raise ValueError("signs something other than data")
        return _Signed(
            digest=digest, message_digest=values["message_digest"][0].native,
            # the signature covers the attributes DER-encoded as a SET OF, not with their [0] tag
            signed_attributes=attributes.untag().dump(), signature=signer["signature"].native,
            signature_algorithm=signer["signature_algorithm"].signature_algo,
            certificate=_signer_certificate(signed_data, signer["sid"]),
        )
    except CheckinRejected:
        raise
    except Exception:
        raise CheckinRejected(MALFORMED_SIGNATURE) from None


def _signer_certificate(signed_data: cms.SignedData, sid: cms.SignerIdentifier) -> x509.Certificate:
    for choice in signed_data["certificates"] or ():
        if choice.name != "certificate":
            continue
        candidate = choice.chosen
        if sid.name == "issuer_and_serial_number":
            # names compared as encoded: the signer copies them from its certificate, and asn1crypto's
            # semantic comparison (LDAP string preparation) costs milliseconds per check-in
            matches = (candidate.serial_number == sid.chosen["serial_number"].native
                       and candidate.issuer.dump() == sid.chosen["issuer"].dump())
        else:
            matches = candidate.key_identifier == sid.chosen.native
        if matches:
            return x509.load_der_x509_certificate(candidate.dump())
    raise ValueError("the signer's certificate is not included")


def _verify(signed: _Signed) -> None:
    algorithm = _DIGESTS[signed.digest]()
    try:
        key = signed.certificate.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise CheckinRejected(MALFORMED_SIGNATURE) from None
    try:
        if isinstance(key, rsa.RSAPublicKey) and signed.signature_algorithm == "rsassa_pkcs1v15":
            key.verify(signed.signature, signed.signed_attributes, PKCS1v15(), algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey) and signed.signature_algorithm == "ecdsa":
            key.verify(signed.signature, signed.signed_attributes, ec.ECDSA(algorithm))
        else:
            raise CheckinRejected(MALFORMED_SIGNATURE)
    except InvalidSignature:
        raise CheckinRejected(BAD_SIGNATURE) from None
