"""``orchard enrollment ...`` against the running enrollment service and the DEP sandbox."""
import re

import pytest
import yaml
from click.testing import CliRunner
from cryptography.fernet import Fernet

from orchard_cli.main import cli
from services.enrollment.service import EnrollmentService
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def orchard(runner_factory, orchard_config, dep_sandbox, roster_locations, tmp_path, monkeypatch):
    orchard_config["SECRET_KEY"] = Fernet.generate_key().decode()
    orchard_config["SERVICES"]["enrollment"]["dep_url"] = dep_sandbox.url
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(orchard_config))
    monkeypatch.setenv("ORCHARD_CONFIG", str(path))
    runner_factory(orchard_config, EnrollmentService).start()
    roster_locations("north", "south")
    runner = CliRunner()

    def run(*args: str, color: bool = False):
        return runner.invoke(cli, ["enrollment", *args], color=color)
    return run


def test_an_output_file_in_a_missing_directory_creates_no_token(orchard, tmp_path):
    refused = orchard("token", "create", "Springfield", "--out", str(tmp_path / "missing" / "orchard.pem"))
    assert refused.exit_code == 2 and "missing does not exist" in refused.output
    assert "(none)" in orchard("token", "list").output


def test_token_and_device_commands(orchard, dep_sandbox, tmp_path, monkeypatch):
    certificate = tmp_path / "orchard.pem"
    created = orchard("token", "create", "Springfield", "--out", str(certificate))
    assert created.exit_code == 0, created.output
    token_id = re.search(r"Token (\S+) created", created.output).group(1)

    server = dep_sandbox.create_server(certificate.read_bytes(), server_name="ASM Springfield")
    dep_sandbox.server(server["server_uuid"], "devices/generate", {"count": 12})
    p7m = tmp_path / "Springfield_Token_2026.p7m"
    p7m.write_text(server["p7m"])
    garbage = tmp_path / "garbage.p7m"
    garbage.write_text("hello")
    refused = orchard("token", "upload", token_id, str(garbage))
    assert refused.exit_code == 1 and "ValidationError: This file is not an MDM server token" in refused.output

    uploaded = orchard("token", "upload", token_id, str(p7m))
    assert uploaded.exit_code == 0 and re.search(r"^server name +ASM Springfield$", uploaded.output, re.M)
    wait_for(lambda: "upload" in orchard("token", "show", token_id).output and
             re.search(r"upload +fetch .* 12 ", orchard("token", "show", token_id).output), what="first sync")

    listed = orchard("token", "list")
    assert re.search(rf"^{token_id} +Springfield +ASM Springfield +Springfield Schools +ok ", listed.output, re.M)

    monkeypatch.setattr("click._termui_impl.isatty", lambda stream: True)  # draw progress as on a terminal
    # Apple asks to wait 2 s: the sync outlasts the first look at its progress
    dep_sandbox.script("POST /server/devices", {"status": 429, "headers": {"Retry-After": "2"}})
    synced = orchard("sync", token_id, "--full")
    assert synced.exit_code == 0, synced.output
    assert f"Syncing {token_id}" in synced.output, synced.output
    assert re.search(r"^kind +fetch$", synced.output, re.M) and re.search(r"^error +-$", synced.output, re.M)
    every = orchard("sync")
    assert every.exit_code == 0 and re.search(rf"^token +{token_id}$", every.output, re.M)
    assert re.search(r"^kind +sync$", every.output, re.M)
    # no "done/total" position: the total of a sync is not known in advance (it is not the devices known)
    assert not re.search(r"\d+/\d+", synced.output + every.output), synced.output + every.output

    devices = orchard("devices", token_id)
    assert devices.exit_code == 0 and devices.output.count("\n") == 14 and "empty: 12" in devices.output
    assert orchard("devices", token_id, "--status", "assigned").output.startswith("SERIAL NUMBER")

    assert "Leadership" in orchard("token", "rename", token_id, "Leadership").output
    restricted = orchard("token", "restrict", token_id, "--location", "north", "--location", "south")
    assert re.search(r"^locations +north, south$", restricted.output, re.M)
    misspelt = orchard("token", "restrict", token_id, "--location", "nowhere")
    assert misspelt.exit_code == 1 and "NotFound: the roster has no location 'nowhere'" in misspelt.output
    assert re.search(r"^locations +north, south$", orchard("token", "show", token_id).output, re.M)
    assert orchard("token", "restrict", token_id).exit_code == 2

    other = dep_sandbox.create_server(certificate.read_bytes())
    other_file = tmp_path / "other.p7m"
    other_file.write_text(other["p7m"])
    conflict = orchard("token", "renew", token_id, str(other_file))
    assert conflict.exit_code == 1 and "Conflict:" in conflict.output
    assert orchard("token", "renew", token_id, str(other_file), "--force").exit_code == 0

    assert orchard("token", "delete", token_id, "--yes").exit_code == 0
    assert "(none)" in orchard("token", "list").output


def test_devices_show_their_profile_status_in_the_colour_the_service_gives(orchard, dep_sandbox, tmp_path):
    certificate = tmp_path / "orchard.pem"
    token_id = re.search(r"Token (\S+) created", orchard("token", "create", "Springfield", "--out",
                                                         str(certificate)).output).group(1)
    server = dep_sandbox.create_server(certificate.read_bytes())
    statuses = ("empty", "assigned", "pushed", "removed")
    dep_sandbox.server(server["server_uuid"], "devices", {"devices": [
        {"serial_number": f"S{status.upper()}", "model": "iPad", "profile_status": status} for status in statuses]})
    p7m = tmp_path / "Springfield_Token_2026.p7m"
    p7m.write_text(server["p7m"])
    assert orchard("token", "upload", token_id, str(p7m)).exit_code == 0
    wait_for(lambda: "removed: 1" in orchard("devices", token_id).output, what="the first sync")

    shown = orchard("devices", token_id, color=True)
    assert shown.exit_code == 0, shown.output
    for status, colour in zip(statuses, ("33", "32", "36", "90")):  # the service's grey is the terminal's bright black
        assert re.search(rf"^S{status.upper()} .*\x1b\[{colour}m{status}\x1b\[0m ", shown.output, re.M), shown.output
    assert "\x1b[" not in orchard("devices", token_id).output  # no colours when the output is not a terminal


def test_a_sync_that_cannot_run_says_so_in_one_line(orchard):
    nothing = orchard("sync")
    assert nothing.exit_code == 0 and nothing.output.count("\n") == 1, nothing.output
    assert "nothing to sync" in nothing.output and "orchard enrollment token upload" in nothing.output
    token_id = re.search(r"^# token id: (\S+)$", orchard("token", "create", "Springfield").output, re.M).group(1)
    assert "nothing to sync" in orchard("sync").output  # a token awaiting its .p7m is not connected yet

    not_uploaded = orchard("sync", token_id)
    assert not_uploaded.exit_code == 1
    assert not_uploaded.output == ("Error: ValidationError: Upload the token from Apple School Manager before "
                                   "syncing devices.\n")
    unknown = orchard("sync", "no-such-token")
    assert unknown.exit_code == 1 and unknown.output.startswith("Error: NotFound: ")
    assert unknown.output.count("\n") == 1, unknown.output


def test_a_binary_token_file_is_refused_before_the_service_is_asked(orchard, tmp_path):
    token_id = re.search(r"^# token id: (\S+)$", orchard("token", "create", "Springfield").output, re.M).group(1)
    binary = tmp_path / "Springfield.zip"
    binary.write_bytes(b"PK\x03\x04\x14\x00\x00\x00\x08\x00\xe3\x9a")
    for command in ("upload", "renew"):
        refused = orchard("token", command, token_id, str(binary))
        assert refused.exit_code == 1
        assert refused.output == (f"Error: {binary} is not a text file: expected the .p7m server token as "
                                  f"downloaded from Apple School Manager\n")
