"""The vendor-signed push certificate request that a customer uploads to Apple Push Certificates Portal.

Apple issues MDM push certificates only for a signing request vouched for by an MDM vendor:
the customer's CSR (RSA-2048, DER) is signed with the vendor's "MDM CSR" key (RSA PKCS#1 v1.5
over SHA-256 of the CSR DER), and CSR, vendor chain and signature travel as an XML plist,
itself base64-encoded: that text is the file the customer uploads. Orchard keeps the new
private key so that the certificate Apple returns can be paired with it.

Pure computation; key generation takes a noticeable fraction of a second, so callers on an
event loop run it in a worker thread.
"""
from __future__ import annotations

import base64
import plistlib
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from services.push.domain.certificates import public_key_sha256
from shared.errors import ValidationError

KEY_SIZE = 2048


@dataclass(frozen=True)
class SigningRequest:
    csr_der: bytes
    request_b64: str  # upload this to Apple Push Certificates Portal
    public_key_sha256: str  # the key's id, read here so that the caller need not load the key again
    private_key_pem: str = field(repr=False)


def create_signing_request(
    vendor_certificate_pem: str,
    vendor_private_key_pem: str,
    *,
    vendor_chain_pem: str = "",
    country: str = "US",
    common_name: str = "MDM Push",
) -> SigningRequest:
    """Make a new push key and CSR, and wrap the CSR in the vendor-signed plist Apple expects.

    ``vendor_chain_pem`` is what follows the vendor certificate in the chain (Apple's WWDR
    intermediate and root in production).
    """
    vendor_certificate, vendor_key = _vendor_credentials(vendor_certificate_pem, vendor_private_key_pem)
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_SIZE)
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, common_name), x509.NameAttribute(NameOID.COUNTRY_NAME, country)]
    )
    csr_der = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .sign(private_key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )
    signature = vendor_key.sign(csr_der, padding.PKCS1v15(), hashes.SHA256())
    chain = vendor_certificate.public_bytes(serialization.Encoding.PEM).decode() + vendor_chain_pem
    plist = plistlib.dumps(
        {
            "PushCertRequestCSR": base64.b64encode(csr_der).decode(),
            "PushCertCertificateChain": chain,
            "PushCertSignature": base64.b64encode(signature).decode(),
        },
        fmt=plistlib.FMT_XML,
    )
    key_pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return SigningRequest(csr_der=csr_der, request_b64=base64.b64encode(plist).decode(),
                          public_key_sha256=public_key_sha256(private_key), private_key_pem=key_pem)


def _vendor_credentials(certificate_pem: str, private_key_pem: str):
    try:
        certificate = x509.load_pem_x509_certificate(certificate_pem.encode())
        key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
    except (ValueError, TypeError):
        raise ValidationError(
            "The MDM vendor signing certificate or key in the push service's configuration cannot be read; "
            "configure the unencrypted PEM certificate and key of the vendor's MDM CSR certificate."
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValidationError("The configured MDM vendor signing key must be an RSA key.")
    public_der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*public_der) != certificate.public_key().public_bytes(*public_der):
        raise ValidationError("The configured MDM vendor signing key does not belong to the vendor certificate.")
    return certificate, key
