"""The enrollment profile (``.mobileconfig``) a device receives once its user has signed in."""
from __future__ import annotations

import plistlib
import uuid

CONTENT_TYPE = "application/x-apple-aspen-config"
IDENTIFIER = "org.orchard.enrollment"


def enrollment_mobileconfig(checkin_url: str, organization: str = "Orchard") -> bytes:
    """An MDM payload pointing the device at Orchard's check-in URL (XML plist)."""
    mdm = {
        "PayloadType": "com.apple.mdm", "PayloadVersion": 1, "PayloadIdentifier": f"{IDENTIFIER}.mdm",
        "PayloadUUID": str(uuid.uuid4()).upper(), "PayloadDisplayName": "Device management",
        "ServerURL": checkin_url, "CheckInURL": checkin_url, "AccessRights": 8191,
        "CheckOutWhenRemoved": True, "SignMessage": False,
    }
    return plistlib.dumps({
        "PayloadType": "Configuration", "PayloadVersion": 1, "PayloadIdentifier": IDENTIFIER,
        "PayloadUUID": str(uuid.uuid4()).upper(), "PayloadDisplayName": f"{organization} enrollment",
        "PayloadOrganization": organization, "PayloadContent": [mdm],
    }, fmt=plistlib.FMT_XML)
