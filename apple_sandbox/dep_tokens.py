"""Issue MDM server tokens (``.p7m``) the way Apple School Manager does.

The token JSON is wrapped in an inner MIME part, encrypted to the MDM's
certificate as CMS EnvelopedData and wrapped in S/MIME headers. Apple's files are
BER with indefinite lengths (``MIAGCSqGSIb3DQEHA6CA...``) and a chunked encrypted
content, as OpenSSL streams them; the DER variant exists so tests cover both.
"""
from __future__ import annotations

import base64
import json
import os
import textwrap

from asn1crypto import cms
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import padding, serialization
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SMIME_HEADERS = (
    'Content-Type: application/pkcs7-mime; name="smime.p7m"; smime-type=enveloped-data\r\n'
    "Content-Transfer-Encoding: base64\r\n"
    'Content-Disposition: attachment; filename="smime.p7m"\r\n'
    "Content-Description: S/MIME Encrypted Message\r\n"
    "\r\n"
)
_CHUNK = 1000  # OpenSSL streams the encrypted content in pieces of this order


def token_plaintext(credentials: dict, *, message_lines: bool = True) -> bytes:
    """The inner MIME part Apple encrypts: headers, then the JSON (optionally in MESSAGE lines)."""
    body = json.dumps(credentials)
    if message_lines:
        body = f"-----BEGIN MESSAGE-----\n{body}\n-----END MESSAGE-----\n"
    return ("Content-Type: text/plain;charset=UTF-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n" + body).encode()


def envelope(plaintext: bytes, certificate_pem: bytes, *, cipher: str = "aes128_cbc", ber: bool = True) -> bytes:
    """CMS EnvelopedData of ``plaintext`` for the certificate's RSA key; BER indefinite or DER."""
    certificate = x509.load_pem_x509_certificate(certificate_pem)
    if cipher == "aes128_cbc":
        content_key, iv, block_bits = os.urandom(16), os.urandom(16), 128
        algorithm = algorithms.AES(content_key)
    elif cipher == "tripledes_3key":
        content_key, iv, block_bits = os.urandom(24), os.urandom(8), 64
        algorithm = TripleDES(content_key)
    else:
        raise ValueError(f"unsupported cipher {cipher}")
    padder = padding.PKCS7(block_bits).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithm, modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    encrypted_key = certificate.public_key().encrypt(content_key, PKCS1v15())  # type: ignore[union-attr]

    issuer_cert = asn1_x509.Certificate.load(certificate.public_bytes(serialization.Encoding.DER))
    recipient = cms.KeyTransRecipientInfo({
        "version": "v0",
        "rid": cms.RecipientIdentifier({
            "issuer_and_serial_number": cms.IssuerAndSerialNumber({
                "issuer": issuer_cert.issuer, "serial_number": issuer_cert.serial_number,
            })
        }),
        "key_encryption_algorithm": cms.KeyEncryptionAlgorithm({"algorithm": "rsaes_pkcs1v15"}),
        "encrypted_key": encrypted_key,
    })
    content_info = cms.ContentInfo({
        "content_type": "enveloped_data",
        "content": cms.EnvelopedData({
            "version": "v0",
            "recipient_infos": [cms.RecipientInfo({"ktri": recipient})],
            "encrypted_content_info": cms.EncryptedContentInfo({
                "content_type": "data",
                "content_encryption_algorithm": cms.EncryptionAlgorithm({"algorithm": cipher, "parameters": iv}),
                "encrypted_content": ciphertext,
            }),
        }),
    })
    der = content_info.dump()
    return to_indefinite_ber(der) if ber else der


def smime(cms_bytes: bytes) -> bytes:
    """S/MIME file around CMS bytes, with Apple's headers and base64 in 64-character lines."""
    body = "\r\n".join(textwrap.wrap(base64.b64encode(cms_bytes).decode(), 64))
    return (SMIME_HEADERS + body + "\r\n").encode()


def issue_token_file(
    credentials: dict, certificate_pem: bytes, *, ber: bool = True, message_lines: bool = True,
    cipher: str = "aes128_cbc",
) -> bytes:
    """The ``.p7m`` an admin downloads from Apple School Manager."""
    return smime(envelope(token_plaintext(credentials, message_lines=message_lines), certificate_pem, cipher=cipher, ber=ber))


def to_indefinite_ber(der: bytes) -> bytes:
    """Re-encode DER the way OpenSSL streams an envelope (``openssl smime -encrypt -stream``).

    The outer containers (ContentInfo, its [0], EnvelopedData, EncryptedContentInfo)
    get indefinite lengths and the encrypted content becomes a constructed, chunked
    [0]; the recipient infos stay DER, as in Apple's files.
    """
    out = bytearray()
    _reencode(memoryview(der), out, ())
    return bytes(out)


_STREAMED = {(0,), (0, 1), (0, 1, 0), (0, 1, 0, 2)}
_ENCRYPTED_CONTENT = (0, 1, 0, 2, 2)


def _reencode(data: memoryview, out: bytearray, parent: tuple[int, ...]) -> None:
    offset, index = 0, 0
    while offset < len(data):
        path = parent + (index,)
        index += 1
        tag = bytes(data[offset:offset + 1])  # CMS uses only low tag numbers
        length = data[offset + 1]
        offset += 2
        if length & 0x80:
            count = length & 0x7F
            length = int.from_bytes(data[offset:offset + count], "big")
            offset += count
        value = data[offset:offset + length]
        offset += length
        if path in _STREAMED:
            out += tag + b"\x80"
            _reencode(value, out, path)
            out += b"\x00\x00"
        elif path == _ENCRYPTED_CONTENT:
            out += b"\xa0\x80"
            for start in range(0, length, _CHUNK):
                chunk = bytes(value[start:start + _CHUNK])
                out += b"\x04" + _der_length(len(chunk)) + chunk
            out += b"\x00\x00"
        else:
            out += tag + _der_length(length) + bytes(value)


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    encoded = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(encoded)]) + encoded
