"""The enrollment profile (``.mobileconfig``) a device receives during enrollment.

It carries the device's own identity (a PKCS#12 payload) and an MDM payload that
names it in ``IdentityCertificateUUID`` with ``SignMessage``, so every check-in and
command response arrives with an ``Mdm-Signature`` made with that identity.
"""
from __future__ import annotations

import plistlib
import uuid
from dataclasses import dataclass, field

CONTENT_TYPE = "application/x-apple-aspen-config"
IDENTIFIER = "org.orchard.enrollment"


@dataclass(frozen=True)
class DeviceIdentityBundle:
    """A device identity as PKCS#12 (DER) and the password that opens it."""

    pkcs12: bytes = field(repr=False)
    password: str = field(repr=False)


def enrollment_mobileconfig(checkin_url: str, identity: DeviceIdentityBundle, topic: str | None,
                            organization: str = "Orchard") -> bytes:
    """The profile pointing the device at Orchard's check-in URL (XML plist).

    ``topic`` is the APNs topic of the push certificate; without one the profile is still
    served (labs, first setup) but a device cannot be woken until one is uploaded.
    """
    identity_uuid = _new_uuid()
    identity_payload = {
        "PayloadType": "com.apple.security.pkcs12", "PayloadVersion": 1,
        "PayloadIdentifier": f"{IDENTIFIER}.identity", "PayloadUUID": identity_uuid,
        "PayloadDisplayName": "Device identity", "PayloadContent": identity.pkcs12, "Password": identity.password,
    }
    mdm = {
        "PayloadType": "com.apple.mdm", "PayloadVersion": 1, "PayloadIdentifier": f"{IDENTIFIER}.mdm",
        "PayloadUUID": _new_uuid(), "PayloadDisplayName": "Device management",
        "ServerURL": checkin_url, "CheckInURL": checkin_url, "AccessRights": 8191,
        "CheckOutWhenRemoved": True, "SignMessage": True, "IdentityCertificateUUID": identity_uuid,
    }
    if topic:
        mdm["Topic"] = topic
    return plistlib.dumps({
        "PayloadType": "Configuration", "PayloadVersion": 1, "PayloadIdentifier": IDENTIFIER,
        "PayloadUUID": _new_uuid(), "PayloadDisplayName": f"{organization} enrollment",
        "PayloadOrganization": organization, "PayloadContent": [identity_payload, mdm],
    }, fmt=plistlib.FMT_XML)


def _new_uuid() -> str:
    return str(uuid.uuid4()).upper()


def current_push_topic(certificates: list[dict]) -> str | None:
    """The topic for new enrollments: of the unexpired push certificates, the one that lasts longest."""
    usable = [c for c in certificates if c.get("status") != "expired" and isinstance(c.get("topic"), str)]
    return max(usable, key=lambda c: str(c.get("not_after")))["topic"] if usable else None
