"""Fully automated pairing over the real broker and a real slapd: sign in on the enrollment page, get paired."""
from __future__ import annotations

import base64
import datetime
import plistlib
import re
from typing import Iterator

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from services.directory.service import DirectoryService
from services.enrollment.adapters.device_info_header import device_info_from_header
from services.enrollment.service import EnrollmentService
from services.roster.service import RosterService
from shared.auth import Actor
from shared.errors import NotFound, ValidationError
from tests.directory.conftest import _profile_data
from tests.enrollment.signing import identity_from_profile, put_checkin
from tests.slapd import RunningSlapd, TreeShape, start_slapd
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"


def device_plist(serial: str) -> bytes:
    return plistlib.dumps({"SERIAL": serial, "UDID": f"UDID-{serial}", "PRODUCT": "iPad13,18", "VERSION": "21F90",
                           "LANGUAGE": "en_US"}, fmt=plistlib.FMT_XML)


def signed_device_info(serial: str) -> str:
    """What Setup Assistant sends: base64 of a CMS SignedData around the plist."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Apple iPhone Device CA test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    der = (pkcs7.PKCS7SignatureBuilder().set_data(device_plist(serial))
           .add_signer(cert, key, hashes.SHA256()).sign(serialization.Encoding.DER, []))
    return base64.b64encode(der).decode()


def test_device_info_signed_or_plain_and_bad_input():
    assert device_info_from_header(signed_device_info("dmpx1")).serial_number == "DMPX1"
    plain = device_info_from_header(base64.b64encode(device_plist("DMPX2")).decode())
    assert (plain.serial_number, plain.udid, plain.product) == ("DMPX2", "UDID-DMPX2", "iPad13,18")
    for bad, message in ((None, "Setup Assistant"), ("%%%", "not base64"),
                         (base64.b64encode(b"\x30\x03\x02\x01\x01").decode(), "neither a signed"),
                         (base64.b64encode(plistlib.dumps({"UDID": "x"})).decode(), "no SERIAL"),
                         (base64.b64encode(b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]><plist/>').decode(),
                          "entities")):
        with pytest.raises(ValidationError, match=message):
            device_info_from_header(bad)


@pytest.fixture(scope="module")
def small_directory() -> Iterator[RunningSlapd]:
    server = start_slapd(TreeShape(students=10, teachers=3, staff=1, passwords={"t00001": PASSWORD, "s00001": PASSWORD}))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def enrollment_page(runner_factory, orchard_config, rpc_as, small_directory, dep_sandbox):
    """The services, the directory synced into the roster, and iPad PAIR1 from Apple School Manager (ADE)."""
    orchard_config["SERVICES"]["enrollment"]["dep_url"] = dep_sandbox.url
    runner = runner_factory(orchard_config, EnrollmentService, RosterService, DirectoryService)
    runner.start()
    with rpc_as() as rpc:
        profile_id = rpc.directory.add_ldap_profile(_profile_data(small_directory, "ldaps"))["id"]
        assert rpc.directory.sync_ldap_profile(profile_id, apply=True)["applied"]["status"] == "applied"
        token = rpc.enrollment.create_server_token("Lincoln")
        server = dep_sandbox.create_server(token["public_key_pem"].encode())
        dep_sandbox.server(server["server_uuid"], "devices", {"devices": [{"serial_number": "PAIR1", "model": "iPad"}]})
        rpc.enrollment.upload_server_token(token["id"], server["p7m"])
        wait_for(lambda: rpc.enrollment.list_devices(token["id"])["devices"], what="the ADE sync of PAIR1")
    return f"http://{orchard_config['SERVICES']['enrollment']['http_address']}/enroll"


def pairings(config: dict) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{config['SERVICES']['enrollment']['metrics_port']}/metrics").text
    return {m[0]: float(m[1]) for m in
            re.findall(r'^orchard_enrollment_automated_pairings_total\{result="(\w+)"\} (\S+)$', text, re.M)}


def test_a_directory_user_signs_in_and_the_device_is_paired(enrollment_page, orchard_config, rpc_as):
    before = pairings(orchard_config)
    info = signed_device_info("PAIR1")
    form = httpx.get(enrollment_page, headers={"x-apple-aspen-deviceinfo": info})
    assert form.status_code == 200 and 'name="password"' in form.text
    hidden = re.search(r'name="deviceinfo" value="([^"]+)"', form.text).group(1)

    wrong = httpx.post(enrollment_page, data={"deviceinfo": hidden, "username": "t00001", "password": "nope"})
    assert wrong.status_code == 401 and "not right" in wrong.text and 'name="password"' in wrong.text
    with rpc_as() as rpc:
        assert rpc.enrollment.device_assignment("PAIR1")["user_id"] is None

    paired = httpx.post(enrollment_page, data={"deviceinfo": hidden, "username": "t00001", "password": PASSWORD})
    assert paired.status_code == 200, paired.text
    assert paired.headers["content-type"] == "application/x-apple-aspen-config"
    mdm = next(p for p in plistlib.loads(paired.content)["PayloadContent"] if p["PayloadType"] == "com.apple.mdm")
    assert mdm["CheckInURL"] == enrollment_page.replace("/enroll", "/mdm/checkin")
    assert "Topic" not in mdm  # no push service, so no topic to name; the profile is served all the same
    identity = identity_from_profile(paired.content)  # the device's own identity, opened with the profile's password
    assert identity.certificate.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value == "PAIR1"
    authenticate = {"MessageType": "Authenticate", "UDID": "UDID-PAIR1", "Topic": "com.apple.mgmt.External.x",
                    "SerialNumber": "PAIR1"}
    assert put_checkin(orchard_config, authenticate, identity).status_code == 200
    assert put_checkin(orchard_config, authenticate, None).status_code == 401
    with rpc_as() as rpc:
        assignment = rpc.enrollment.device_assignment("PAIR1")
        assert (assignment["user_id"], assignment["source"]) == ("t00001", "pairing")
        assert rpc.enrollment.audit_log("device:PAIR1")[0]["actor_id"] == "system:enrollment"

    # another user of the school cannot take the device by sending its device information (not verified as Apple's)
    taken = httpx.post(enrollment_page, data={"deviceinfo": hidden, "username": "s00001", "password": PASSWORD})
    assert taken.status_code == 409 and "assigned to someone else" in taken.text
    with rpc_as() as rpc:
        assert rpc.enrollment.device_assignment("PAIR1")["user_id"] == "t00001"

    unknown = httpx.post(enrollment_page, headers={"x-apple-aspen-deviceinfo": signed_device_info("NOTHERE")},
                         data={"username": "t00001", "password": PASSWORD})
    assert unknown.status_code == 404 and "knows no device NOTHERE" in unknown.text
    assert httpx.get(enrollment_page).status_code == 400  # opened outside Setup Assistant

    with rpc_as() as rpc:  # a server token limited to one school hides its devices from the other's leader
        rpc.enrollment.update_server_token(rpc.enrollment.list_server_tokens()[0]["id"], locations=["Lincoln High"])
    with rpc_as(Actor("lead@roosevelt", "location_leader", ("Roosevelt High",))) as rpc:
        with pytest.raises(NotFound, match="no device PAIR1 in your locations"):
            rpc.enrollment.device_assignment("PAIR1")

    after = pairings(orchard_config)
    for result, count in (("paired", 1), ("wrong_credentials", 1), ("refused", 2), ("bad_device_info", 1)):
        assert after.get(result, 0) - before.get(result, 0) == count, result


def test_the_page_says_so_when_the_directory_is_not_running(runner_factory, orchard_config):
    runner_factory(orchard_config, EnrollmentService).start()
    page = f"http://{orchard_config['SERVICES']['enrollment']['http_address']}/enroll"
    answer = httpx.post(page, headers={"x-apple-aspen-deviceinfo": signed_device_info("PAIR9")},
                        data={"username": "t00001", "password": PASSWORD})
    assert answer.status_code == 503 and "not available right now" in answer.text and 'name="password"' in answer.text
