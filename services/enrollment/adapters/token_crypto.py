"""The crypto behind MDM server tokens: our key pair and decrypting Apple's CMS envelope.

Apple sends the EnvelopedData BER-encoded with indefinite lengths, which
``cryptography``'s PKCS#7 functions refuse; asn1crypto parses BER, and the key
transport and content cipher are done with ``cryptography`` primitives.
These calls are CPU-bound: services run them through ``eventlet.tpool``.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from asn1crypto import cms
from cryptography import x509
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.x509.oid import NameOID

from services.enrollment.adapters.x509_text import fitted
from shared.errors import ValidationError

KEY_BITS = 2048
CERTIFICATE_YEARS = 10

_WRONG_KEY = (
    "The token could not be decrypted with this server token's key. Download the token again from "
    "the MDM server in Apple School Manager whose public key came from this server token."
)
_NOT_ENVELOPED = "This file is not an encrypted MDM server token (no CMS EnvelopedData inside)."


def generate_key_and_certificate(common_name: str) -> tuple[bytes, bytes]:
    """A new RSA key (PKCS#8 PEM) and its self-signed certificate (PEM) to upload to ASM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    name = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, fitted(common_name) or "Orchard MDM"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Orchard"),
    ])
    now = datetime.now(timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=365 * CERTIFICATE_YEARS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_encipherment=True, content_commitment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, certificate.public_bytes(serialization.Encoding.PEM)


def decrypt_enveloped_data(cms_bytes: bytes, private_key_pem: bytes) -> bytes:
    """The plaintext of a CMS EnvelopedData (BER or DER) addressed to ``private_key_pem``."""
    try:
        content_info = cms.ContentInfo.load(cms_bytes)
        if content_info["content_type"].native != "enveloped_data":
            raise ValidationError(_NOT_ENVELOPED)
        enveloped = content_info["content"]
        recipients = [r.chosen for r in enveloped["recipient_infos"] if r.name == "ktri"]
        encrypted_info = enveloped["encrypted_content_info"]
        algorithm = encrypted_info["content_encryption_algorithm"]
        cipher_name = algorithm["algorithm"].native
        iv = algorithm["parameters"].native
        ciphertext = encrypted_info["encrypted_content"].native
    except ValidationError:
        raise
    except Exception:  # asn1crypto raises many types for malformed input; all mean "not a token"
        raise ValidationError(_NOT_ENVELOPED) from None
    if not recipients or not isinstance(ciphertext, bytes) or not isinstance(iv, bytes):
        raise ValidationError(_NOT_ENVELOPED)

    key = serialization.load_pem_private_key(private_key_pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValidationError("Server tokens need an RSA key; this server token's key is of another kind.")
    for recipient in recipients:
        try:
            content_key = key.decrypt(recipient["encrypted_key"].native, PKCS1v15())  # type: ignore[union-attr]
        except ValueError:
            continue
        plaintext = _decrypt_content(cipher_name, content_key, iv, ciphertext)
        if plaintext is not None:
            return plaintext
    raise ValidationError(_WRONG_KEY)


def _decrypt_content(cipher_name: str, content_key: bytes, iv: bytes, ciphertext: bytes) -> bytes | None:
    """None when the key cannot be right (PKCS#1 v1.5 gives garbage, not an error, for a wrong key)."""
    if cipher_name in ("aes128_cbc", "aes192_cbc", "aes256_cbc"):
        if len(content_key) != int(cipher_name[3:6]) // 8:
            return None
        algorithm, block_bits = algorithms.AES(content_key), 128
    elif cipher_name == "tripledes_3key":
        if len(content_key) != 24:
            return None
        algorithm, block_bits = TripleDES(content_key), 64
    else:
        raise ValidationError(f"The token uses the content cipher '{cipher_name}', which Orchard does not support.")
    if len(iv) * 8 != block_bits or len(ciphertext) % (block_bits // 8):
        return None
    decryptor = Cipher(algorithm, modes.CBC(iv)).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    unpadder = padding.PKCS7(block_bits).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        return None
