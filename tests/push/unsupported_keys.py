"""Keys and certificates of kinds ``cryptography`` cannot read (it raises ``UnsupportedAlgorithm``), built as DER."""
from __future__ import annotations

import base64

from asn1crypto import cms, core, keys, pem
from asn1crypto import pkcs12 as asn1_pkcs12
from asn1crypto import x509 as asn1_x509

SECP112R1 = "1.3.132.0.6"
SM2 = "1.2.156.10197.1.301"
_EC_PUBLIC_KEY = "1.2.840.10045.2.1"
_UNKNOWN_ALGORITHM = "1.3.6.1.4.1.99999.1"


def ec_private_key_pem(curve: str) -> str:
    """An "EC PRIVATE KEY" on ``curve`` (the key itself is nonsense: the curve is refused first)."""
    return pem.armor("EC PRIVATE KEY", _ec_private_key(curve)).decode()


def unknown_algorithm_key_pem() -> str:
    """A PKCS#8 "PRIVATE KEY" whose algorithm OID nobody knows."""
    der = _der(0x30, _der(0x02, b"\x00"), _der(0x30, _oid(_UNKNOWN_ALGORITHM)), _der(0x04, b"\x04\x02\x00\x01"))
    return pem.armor("PRIVATE KEY", der).decode()


def pkcs12_b64_with_ec_key(curve: str, certificate_pem: str) -> str:
    """An unencrypted .p12 holding ``certificate_pem`` and a PKCS#8 key on ``curve``."""
    key = _der(0x30, _der(0x02, b"\x00"), _der(0x30, _oid(_EC_PUBLIC_KEY), _oid(curve)),
               _der(0x04, _ec_private_key(curve, with_curve=False)))
    certificate = asn1_x509.Certificate.load(pem.unarmor(certificate_pem.encode())[2])
    bags = asn1_pkcs12.SafeContents([
        asn1_pkcs12.SafeBag({"bag_id": "key_bag", "bag_value": keys.PrivateKeyInfo.load(key)}),
        asn1_pkcs12.SafeBag({"bag_id": "cert_bag",
                             "bag_value": asn1_pkcs12.CertBag({"cert_id": "x509", "cert_value": certificate})}),
    ])
    safe = asn1_pkcs12.AuthenticatedSafe([cms.ContentInfo({"content_type": "data", "content": bags.dump()})])
    pfx = asn1_pkcs12.Pfx({"version": "v3", "auth_safe": cms.ContentInfo({"content_type": "data", "content": safe.dump()})})
    return base64.b64encode(pfx.dump()).decode()


def with_ec_public_key(certificate_pem: str, curve: str) -> str:
    """``certificate_pem`` with its public key swapped for a point on ``curve`` (the signature no longer matches:
    nothing here checks it)."""
    certificate = asn1_x509.Certificate.load(pem.unarmor(certificate_pem.encode())[2])
    public_key = _der(0x30, _der(0x30, _oid(_EC_PUBLIC_KEY), _oid(curve)), _der(0x03, b"\x00\x04" + b"\x01" * 28))
    certificate["tbs_certificate"]["subject_public_key_info"] = keys.PublicKeyInfo.load(public_key)
    return pem.armor("CERTIFICATE", certificate.dump(force=True)).decode()


def _ec_private_key(curve: str, with_curve: bool = True) -> bytes:
    parameters = [_der(0xA0, _oid(curve))] if with_curve else []
    return _der(0x30, _der(0x02, b"\x01"), _der(0x04, b"\x07" * 14), *parameters)


def _oid(dotted: str) -> bytes:
    return core.ObjectIdentifier(dotted).dump()


def _der(tag: int, *parts: bytes) -> bytes:
    content = b"".join(parts)
    assert len(content) < 128, "short-form lengths only"
    return bytes([tag, len(content)]) + content
