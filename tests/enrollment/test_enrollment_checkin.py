"""MDM check-in plists shaped like a device's, and hostile ones."""
import plistlib

import pytest

from services.enrollment.domain.checkin import (
    MAX_CHECKIN_BYTES,
    Authenticate,
    CheckOut,
    CommandPoll,
    MalformedCheckin,
    TokenUpdate,
    parse_checkin,
)
from shared.errors import ValidationError

UDID = "00008030-001A2D3E1E38802E"
TOPIC = "com.apple.mgmt.External.18a16429-886b-41f1-9c30-2bd04ae4fc37"
TOKEN = bytes.fromhex("c4b1a1d2e3f40516273849abcdef0123456789abcdef0123456789abcdef0123")


def device_plist(message: dict) -> bytes:
    return plistlib.dumps(message, fmt=plistlib.FMT_XML)  # carries Apple's DOCTYPE, as devices send


def test_authenticate():
    body = device_plist({"MessageType": "Authenticate", "UDID": UDID, "Topic": TOPIC, "SerialNumber": "DMPXK1234567",
                         "BuildVersion": "21F90", "OSVersion": "17.5.1", "ProductName": "iPad13,18",
                         "Model": "MK2K3LL/A", "ModelName": "iPad", "DeviceName": "Cart 3 – 12"})
    assert b"<!DOCTYPE plist PUBLIC" in body
    message = parse_checkin(body)
    assert message == Authenticate(udid=UDID, topic=TOPIC, serial_number="DMPXK1234567", model="MK2K3LL/A",
                                   model_name="iPad", product_name="iPad13,18", os_version="17.5.1",
                                   build_version="21F90", device_name="Cart 3 – 12")


def test_token_update_gives_hex_token_and_ignores_the_unlock_token():
    body = device_plist({"MessageType": "TokenUpdate", "UDID": UDID, "Topic": TOPIC, "Token": TOKEN,
                         "PushMagic": "2A1C7F5E-4B9D-4C0A-8E43-8F8B39E1D0AA", "UnlockToken": b"\x01" * 200,
                         "AwaitingConfiguration": True})
    message = parse_checkin(body)
    assert message == TokenUpdate(udid=UDID, topic=TOPIC, push_token=TOKEN.hex(),
                                  push_magic="2A1C7F5E-4B9D-4C0A-8E43-8F8B39E1D0AA", awaiting_configuration=True)
    assert "unlock" not in repr(message).lower()


def test_user_channel_token_update_is_flagged():
    body = device_plist({"MessageType": "TokenUpdate", "UDID": UDID, "Topic": TOPIC, "Token": TOKEN,
                         "PushMagic": "m", "UserID": "501", "UserShortName": "student"})
    assert parse_checkin(body).user_channel is True


def test_checkout():
    assert parse_checkin(device_plist({"MessageType": "CheckOut", "UDID": UDID, "Topic": TOPIC})) == CheckOut(UDID, TOPIC)


def test_polls_of_the_server_url():
    assert parse_checkin(device_plist({"Status": "Idle", "UDID": UDID})) == CommandPoll(UDID, "Idle")
    result = {"Status": "Acknowledged", "UDID": UDID, "CommandUUID": "5B0B2F7A-0C5E-4F6A-9E55-8D1A2F0C7B31"}
    assert parse_checkin(device_plist(result)) == CommandPoll(UDID, "Acknowledged", "5B0B2F7A-0C5E-4F6A-9E55-8D1A2F0C7B31")


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE plist [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>
<plist version="1.0"><dict><key>MessageType</key><string>&b;</string></dict></plist>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE plist SYSTEM "file:///etc/passwd">
<plist version="1.0"><dict><key>MessageType</key><string>CheckOut</string></dict></plist>"""


@pytest.mark.parametrize("body,reason", [
    (b"", "empty"),
    (b"not xml at all", "not an XML property list"),
    (plistlib.dumps({"MessageType": "CheckOut", "UDID": UDID}, fmt=plistlib.FMT_BINARY), "not an XML"),
    (BILLION_LAUGHS, "entities"),
    (EXTERNAL_ENTITY, "document type"),
    (b"<?xml version='1.0'?><plist><dict><key>MessageType</key>", "cannot be read"),
    (b"<?xml version='1.0'?><plist><dict><key>UDID</key><date>garbage</date></dict></plist>", "cannot be read"),
    (device_plist(["a", "list"]), "must be a dictionary"),
    (device_plist({"MessageType": "TokenUpdate", "Topic": TOPIC}), "no UDID"),
    (device_plist({"MessageType": "TokenUpdate", "UDID": UDID, "Topic": TOPIC, "PushMagic": "m"}), "no push Token"),
    (device_plist({"MessageType": "TokenUpdate", "UDID": UDID, "Topic": TOPIC, "Token": TOKEN}), "no PushMagic"),
    (device_plist({"MessageType": "Authenticate", "UDID": UDID}), "no Topic"),
    (device_plist({"MessageType": "DeclarativeManagement", "UDID": UDID}), "not supported"),
    (device_plist({"Status": "Sleeping", "UDID": UDID}), "not one of Idle"),
    (device_plist({"Status": "Idle"}), "no UDID"),
    (device_plist({"MessageType": "CheckOut", "UDID": "U" * 101}), "UDID is longer than 100"),
    (device_plist({"MessageType": "CheckOut", "UDID": '=HYPERLINK("http://evil.example")'}), "UDID holds characters"),
    (device_plist({"MessageType": "Authenticate", "UDID": UDID, "Topic": TOPIC, "SerialNumber": "C02\tX"}),
     "SerialNumber holds characters"),
    (device_plist({"MessageType": "Authenticate", "UDID": UDID, "Topic": "t" * 201}), "Topic is longer than 200"),
    (device_plist({"MessageType": "TokenUpdate", "UDID": UDID, "Topic": TOPIC, "Token": b"t" * 101, "PushMagic": "m"}),
     "at most 100 bytes"),
    (b"<?xml version='1.0'?>" + b" " * MAX_CHECKIN_BYTES, "larger than"),
])
def test_malformed_checkins_are_refused(body, reason):
    with pytest.raises(MalformedCheckin, match=reason) as error:
        parse_checkin(body)
    assert isinstance(error.value, ValidationError)
