"""A device's side of enrollment for the tests: fetch a profile, take its identity out, sign check-ins as iOS does.

iOS signs every check-in body with the identity of its enrollment profile and sends the
detached CMS SignedData (DER, base64) in ``Mdm-Signature``, its certificate included.
"""
from __future__ import annotations

import base64
import hashlib
import plistlib
from dataclasses import dataclass
from typing import Any

import httpx
from asn1crypto import cms
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12

from tests.waiting import wait_for


@dataclass(frozen=True)
class DeviceIdentity:
    key: Any
    certificate: x509.Certificate


def enrollment_base(config: dict) -> str:
    return f"http://{config['SERVICES']['enrollment']['http_address']}"


def device_info(serial: str, udid: str | None) -> bytes:
    info = {"SERIAL": serial, "UDID": udid, "PRODUCT": "iPad13,18", "VERSION": "21F90", "LANGUAGE": "en_US"}
    return plistlib.dumps({key: value for key, value in info.items() if value is not None}, fmt=plistlib.FMT_XML)


def assign_ade_devices(rpc: Any, dep_sandbox: Any, serials: list[str]) -> None:
    """Apple assigns ``serials`` to a new MDM server, connected to Orchard and synced: the devices may enroll."""
    token = rpc.enrollment.create_server_token("Apple School Manager")
    server = dep_sandbox.create_server(token["public_key_pem"].encode())
    dep_sandbox.server(server["server_uuid"], "devices", {"devices": [{"serial_number": s} for s in serials]})
    rpc.enrollment.upload_server_token(token["id"], server["p7m"])
    wait_for(lambda: len(rpc.enrollment.list_devices(token["id"])["devices"]) == len(serials), what="the ADE sync")


def request_profile(config: dict, serial: str, udid: str | None) -> bytes:
    """The profile Setup Assistant gets for an ADE device (the device information POSTed to ``/mdm/enroll``)."""
    answer = httpx.post(f"{enrollment_base(config)}/mdm/enroll", content=device_info(serial, udid),
                        headers={"Content-Type": "application/pkcs7-signature"}, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/x-apple-aspen-config"
    return answer.content


def identity_from_profile(mobileconfig: bytes) -> DeviceIdentity:
    """The identity the profile installs, opened with the password the profile carries, as iOS does."""
    payloads = {p["PayloadType"]: p for p in plistlib.loads(mobileconfig)["PayloadContent"]}
    identity, mdm = payloads["com.apple.security.pkcs12"], payloads["com.apple.mdm"]
    assert mdm["SignMessage"] is True and mdm["IdentityCertificateUUID"] == identity["PayloadUUID"]
    key, certificate, _ = pkcs12.load_key_and_certificates(identity["PayloadContent"], identity["Password"].encode())
    assert key is not None and certificate is not None
    return DeviceIdentity(key, certificate)


def enrolled_identity(config: dict, serial: str, udid: str | None) -> DeviceIdentity:
    return identity_from_profile(request_profile(config, serial, udid))


def mdm_signature(body: bytes, identity: DeviceIdentity, digest: str = "sha256") -> str:
    """The ``Mdm-Signature`` header: a detached CMS SignedData (DER, base64) over ``body``, certificate included."""
    if digest == "sha1":
        return _sha1_signature(body, identity)
    der = (pkcs7.PKCS7SignatureBuilder().set_data(body).add_signer(identity.certificate, identity.key, hashes.SHA256())
           # Binary: sign the body's exact bytes (without it, line ends would become CRLF first)
           .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary]))
    return base64.b64encode(der).decode()


def _sha1_signature(body: bytes, identity: DeviceIdentity) -> str:
    """What older devices send: SHA-1 digests (cryptography's builder no longer makes them, so built by hand)."""
    certificate = asn1_x509.Certificate.load(identity.certificate.public_bytes(serialization.Encoding.DER))
    attributes = cms.CMSAttributes([
        cms.CMSAttribute({"type": "content_type", "values": ["data"]}),
        cms.CMSAttribute({"type": "message_digest", "values": [hashlib.sha1(body).digest()]}),
    ])
    signature = identity.key.sign(attributes.dump(), PKCS1v15(), hashes.SHA1())
    signer = cms.SignerInfo({
        "version": "v1",
        "sid": cms.SignerIdentifier({"issuer_and_serial_number": cms.IssuerAndSerialNumber(
            {"issuer": certificate.issuer, "serial_number": certificate.serial_number})}),
        "digest_algorithm": {"algorithm": "sha1"}, "signed_attrs": attributes,
        "signature_algorithm": {"algorithm": "rsassa_pkcs1v15"}, "signature": signature,
    })
    signed = cms.SignedData({"version": "v1", "digest_algorithms": [{"algorithm": "sha1"}],
                             "encap_content_info": {"content_type": "data"}, "certificates": [certificate],
                             "signer_infos": [signer]})
    return base64.b64encode(cms.ContentInfo({"content_type": "signed_data", "content": signed}).dump()).decode()


def put_checkin(config: dict, message: dict | bytes, identity: DeviceIdentity | None,
                **sign: Any) -> httpx.Response:
    """PUT a check-in (a dict becomes an XML plist), signed with ``identity`` unless it is None."""
    body = message if isinstance(message, bytes) else plistlib.dumps(message, fmt=plistlib.FMT_XML)
    headers = {"Content-Type": "application/x-apple-aspen-mdm-checkin"}
    if identity is not None:
        headers["Mdm-Signature"] = mdm_signature(body, identity, **sign)
    return httpx.put(f"{enrollment_base(config)}/mdm/checkin", content=body, headers=headers, timeout=30)
