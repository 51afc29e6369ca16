"""``orchard push ...`` against the running push service."""
from __future__ import annotations

import base64
import csv

import pytest
import yaml
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from nameko.standalone.events import event_dispatcher

from apple_sandbox.push_portal import sign_push_request
from orchard_cli.main import cli
from services.push.service import PushService
from shared.contracts.enrollment import DeviceEnrolled
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def orchard(runner_factory, orchard_config, apns_sandbox, apple_ca, tmp_path, monkeypatch):
    vendor = apple_ca.issue_vendor_certificate()
    (tmp_path / "vendor.pem").write_text(vendor.certificate_pem)
    (tmp_path / "vendor.key").write_text(vendor.private_key_pem)
    orchard_config["SERVICES"]["push"].update(
        apns_url=apns_sandbox.url, apns_ca_file=apns_sandbox.ca_file,
        vendor_certificate_file=str(tmp_path / "vendor.pem"), vendor_private_key_file=str(tmp_path / "vendor.key"))
    runner_factory(orchard_config, PushService).start()
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(orchard_config))
    monkeypatch.setenv("ORCHARD_CONFIG", str(tmp_path / "config.yaml"))
    monkeypatch.chdir(tmp_path)
    cli_runner = CliRunner()

    def run(*args: str, exit_code: int = 0) -> str:
        result = cli_runner.invoke(cli, ["push", *args])
        assert result.exit_code == exit_code, result.output
        return result.output

    return run


def test_every_push_command(orchard, orchard_config, issue_push, apple_ca, tmp_path):
    issued = issue_push()
    (tmp_path / "push.pem").write_text(issued.certificate_pem)
    (tmp_path / "push.key").write_text(issued.private_key_pem)
    uploaded = orchard("upload", "push.pem", "--key", "push.key").splitlines()
    assert uploaded[0].split() == ["ID", "TOPIC", "SERIAL", "NUMBER", "EXPIRES", "DAYS", "LEFT", "DEVICES", "STATUS"]
    topic = uploaded[1].split()[1]
    assert uploaded[1].split()[0] == "1" and uploaded[1].split()[-1] == "ok"

    refused = orchard("upload", str(tmp_path / "push.key"), exit_code=1)
    assert "ValidationError: The certificate field holds a private key" in refused

    event = DeviceEnrolled(udid="UDID-CLI-1", serial_number="SNCLI1", topic=topic, push_token="ab" * 32,
                           push_magic="magic")
    event_dispatcher(orchard_config)(DeviceEnrolled.SOURCE, DeviceEnrolled.TYPE, event.to_payload())
    wait_for(lambda: orchard("list").splitlines()[1].split()[-2] == "1", what="the device counted")

    shown = orchard("show", "1")
    assert topic in shown and "devices enrolled  1" in shown
    assert "wrote 1 device(s)" in orchard("export", "1", "--out", "devices.csv")
    assert "the directory missing does not exist" in orchard("export", "1", "--out", "missing/devices.csv", exit_code=2)
    assert next(csv.DictReader((tmp_path / "devices.csv").open()))["UDID"] == "UDID-CLI-1"
    orchard("export", "1", "--format", "xlsx", "--out", "devices.xlsx")
    assert (tmp_path / "devices.xlsx").read_bytes()[:2] == b"PK"

    sent = orchard("send", "UDID-CLI-1", "UDID-NOBODY")
    assert sent.splitlines()[0].split() == ["UDID", "STATUS", "APNS", "STATUS", "WHY"]
    assert "UDID-CLI-1" in sent and "delivered" in sent and "unknown_device" in sent
    assert "1 delivered, 0 failed, 1 skipped" in sent

    assert "upload it at Apple Push Certificates Portal" in orchard("csr", "--out", "request.b64")
    renewed_pem = sign_push_request(apple_ca, (tmp_path / "request.b64").read_text(), renew_topic=topic)
    (tmp_path / "renewed.pem").write_text(renewed_pem)
    assert orchard("renew", "1", "renewed.pem").splitlines()[1].split()[1] == topic
    history = orchard("history", "1").splitlines()
    assert history[1].split()[2] == "certificate.renewed" and history[2].split()[2] == "certificate.uploaded"
    assert base64.b64decode((tmp_path / "request.b64").read_text())  # the file is the base64 plist itself


def test_binary_files_go_as_pkcs12_or_are_refused_in_one_line(orchard, issue_push, push_keys, tmp_path):
    issued = issue_push()
    certificate = x509.load_pem_x509_certificate(issued.certificate_pem.encode())
    (tmp_path / "push.pem").write_text(issued.certificate_pem)
    (tmp_path / "push.cer").write_bytes(certificate.public_bytes(serialization.Encoding.DER))
    (tmp_path / "push.der").write_bytes(push_keys[0].private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (tmp_path / "push.p12").write_bytes(pkcs12.serialize_key_and_certificates(
        b"push", push_keys[0], certificate, None, serialization.BestAvailableEncryption(b"s3cret")))
    (tmp_path / "udids.txt").write_bytes(b"\x00\xffUDID")

    refused = orchard("upload", "push.cer", exit_code=1)
    assert refused == ("Error: push.cer is not a text file: expected a PEM certificate (-----BEGIN CERTIFICATE-----) "
                       "or the certificate with its key as PKCS#12 (.p12 or .pfx, or any name with --p12); convert a "
                       "DER certificate with `openssl x509 -inform der -in push.cer -out certificate.pem`\n")
    refused = orchard("upload", "push.pem", "--key", "push.der", exit_code=1)
    assert refused.startswith("Error: push.der is not a text file: expected a PEM private key ")
    assert refused.count("\n") == 1
    refused = orchard("send", "--from-file", "udids.txt", exit_code=1)
    assert refused == "Error: udids.txt is not a text file: expected one device UDID per line\n"
    assert "a PKCS#12 file holds its own key" in orchard("upload", "push.p12", "--key", "push.der", exit_code=2)

    uploaded = orchard("upload", "push.p12", "--password", "s3cret").splitlines()
    assert uploaded[1].split()[0] == "1" and uploaded[1].split()[-1] == "ok"
