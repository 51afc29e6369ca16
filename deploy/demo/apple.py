"""Apple's side of the story, played by the sandbox's admin routes, and devices checking in."""
from __future__ import annotations

import base64
import os
import plistlib
import uuid
from dataclasses import dataclass
from typing import Any, NamedTuple

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12

from deploy.demo.terminal import DemoFailed

class AsmDevice(NamedTuple):
    serial_number: str
    model: str
    family: str
    os: str
    colour: str
    profile_status: str


DEMO_DEVICES = (  # devices Apple School Manager already holds for the school, with their profile statuses
    AsmDevice("DMPDEMO00001", "iPad (9th generation)", "iPad", "iPadOS", "SPACE GRAY", "assigned"),
    AsmDevice("DMPDEMO00002", "iPad (9th generation)", "iPad", "iPadOS", "SPACE GRAY", "pushed"),
    AsmDevice("DMPDEMO00003", "iPad Air (5th generation)", "iPad", "iPadOS", "BLUE", "empty"),
    AsmDevice("C02DEMO00004", "MacBook Air (M2, 2022)", "Mac", "OSX", "MIDNIGHT", "removed"),
)
GENERATED_DEVICES = 8
NEW_DEVICES = 3
ASSETS = (  # adamId, pricing, type, licences bought
    ("361309726", "STDQ", "App", 120),   # Pages
    ("361285480", "STDQ", "App", 120),   # Keynote
    ("1440231441", "STDQ", "Book", 30),  # a book
)


@dataclass(frozen=True)
class AppleSandbox:
    dep_url: str
    vpp_admin_url: str

    @classmethod
    def from_settings(cls, settings: dict[str, str]) -> "AppleSandbox":
        vpp_base = settings["VPP_URL"].split("/mdm/")[0]
        return cls(settings["DEP_URL"].rstrip("/"), f"{vpp_base}/_sandbox")

    def create_mdm_server(self, public_key_pem: str) -> tuple[str, str]:
        """Add our MDM server in Apple School Manager with the school's devices; its id and ``.p7m`` token."""
        created = _post(f"{self.dep_url}/_sandbox/servers", {
            "certificate_pem": public_key_pem, "server_name": "Orchard Demo", "org_name": "Springfield Schools"})
        devices = [{"serial_number": d.serial_number, "model": d.model, "description": d.model.upper(), "color": d.colour,
                    "os": d.os, "device_family": d.family, "profile_status": d.profile_status,
                    "device_assigned_by": "asm.admin@springfield.example", "device_assigned_date": "2026-08-20T09:00:00Z"}
                   for d in DEMO_DEVICES]
        _post(f"{self.dep_url}/_sandbox/servers/{created['server_uuid']}/devices", {"devices": devices})
        _post(f"{self.dep_url}/_sandbox/servers/{created['server_uuid']}/devices/generate", {"count": GENERATED_DEVICES})
        return created["server_uuid"], created["p7m"]

    def assign_new_devices(self, server_uuid: str) -> None:
        _post(f"{self.dep_url}/_sandbox/servers/{server_uuid}/devices/generate", {"count": NEW_DEVICES})

    def content_token(self, location_name: str) -> str:
        """A ``.vpptoken`` for the location, holding licences for a few apps and a book."""
        stoken = _post(f"{self.vpp_admin_url}/tokens", {"locationName": location_name,
                                                        "orgName": "Springfield Schools"})["sToken"]
        for adam_id, pricing, product_type, total in ASSETS:
            _post(f"{self.vpp_admin_url}/assets", {"sToken": stoken, "adamId": adam_id, "pricingParam": pricing,
                                                   "productType": product_type, "totalCount": total})
        return stoken


def check_in(enrollment_url: str, serial_number: str, topic: str, index: int) -> str:
    """A device enrolling: its profile from the ADE profile URL, then Authenticate and TokenUpdate signed
    with the profile's identity, as plists shaped like an iPad's; its UDID."""
    udid = f"00008030-{index:016X}"
    key, certificate = _profile_identity(f"{enrollment_url}/mdm/enroll", serial_number, udid)
    authenticate = {"MessageType": "Authenticate", "UDID": udid, "Topic": topic, "SerialNumber": serial_number,
                    "BuildVersion": "21F90", "OSVersion": "17.5.1", "ProductName": "iPad13,18", "Model": "MK2K3LL/A",
                    "ModelName": "iPad", "DeviceName": f"Cart 1 - {index}"}
    token_update = {"MessageType": "TokenUpdate", "UDID": udid, "Topic": topic, "Token": os.urandom(32),
                    "PushMagic": str(uuid.uuid4()).upper(), "UnlockToken": os.urandom(64),
                    "AwaitingConfiguration": True}
    for message in (authenticate, token_update):
        body = plistlib.dumps(message, fmt=plistlib.FMT_XML)
        # SignMessage: the device signs the exact body (detached CMS, DER) with its identity's key
        signature = (pkcs7.PKCS7SignatureBuilder().set_data(body).add_signer(certificate, key, hashes.SHA256())
                     .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary]))
        answer = httpx.put(f"{enrollment_url}/mdm/checkin", content=body, timeout=30,
                           headers={"Content-Type": "application/x-apple-aspen-mdm-checkin",
                                    "Mdm-Signature": base64.b64encode(signature).decode()})
        if answer.status_code != 200:
            raise DemoFailed(f"the {message['MessageType']} check-in of {serial_number} got HTTP {answer.status_code}: "
                             f"{answer.text[:200]}")
    return udid


def _profile_identity(profile_url: str, serial_number: str, udid: str) -> tuple[Any, x509.Certificate]:
    """What Setup Assistant does for an ADE device: POST its device information, install the profile's identity."""
    device_info = plistlib.dumps({"SERIAL": serial_number, "UDID": udid, "PRODUCT": "iPad13,18"}, fmt=plistlib.FMT_XML)
    answer = httpx.post(profile_url, content=device_info, headers={"Content-Type": "application/pkcs7-signature"},
                        timeout=30)
    if answer.status_code != 200:
        raise DemoFailed(f"the enrollment profile of {serial_number} got HTTP {answer.status_code}: {answer.text[:200]}")
    payload = next(p for p in plistlib.loads(answer.content)["PayloadContent"]
                   if p["PayloadType"] == "com.apple.security.pkcs12")
    key, certificate, _ = pkcs12.load_key_and_certificates(payload["PayloadContent"], payload["Password"].encode())
    if key is None or certificate is None:
        raise DemoFailed(f"the enrollment profile of {serial_number} carries no identity")
    return key, certificate


def _post(url: str, body: dict) -> dict:
    try:
        answer = httpx.post(url, json=body, timeout=30)
    except httpx.HTTPError as exc:
        raise DemoFailed(f"the Apple sandbox did not answer at {url}: {exc}") from None
    if answer.status_code >= 300:
        raise DemoFailed(f"the Apple sandbox refused {url}: HTTP {answer.status_code} {answer.text[:200]}")
    return answer.json()
