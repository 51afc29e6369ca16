"""``orchard directory ...`` against the running directory service."""
from __future__ import annotations

import re

import pytest
import yaml
from click.testing import CliRunner
from cryptography.fernet import Fernet

from orchard_cli.main import cli
from services.directory.service import DirectoryService

pytestmark = pytest.mark.integration


@pytest.fixture
def orchard(runner_factory, orchard_config, tmp_path, monkeypatch, request):
    orchard_config["SECRET_KEY"] = Fernet.generate_key().decode()
    orchard_config["SERVICES"]["directory"]["egress_ips"] = getattr(request, "param", ["198.51.100.7"])
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(orchard_config))
    monkeypatch.setenv("ORCHARD_CONFIG", str(path))
    runner_factory(orchard_config, DirectoryService).start()
    runner = CliRunner()

    def run(*args: str, input: str | None = None, env: dict | None = None):
        return runner.invoke(cli, ["directory", *args], input=input, env=env)
    return run


def test_profile_commands_test_and_sign_in(orchard, profile_data, slapd, tmp_path):
    settings = profile_data("starttls")
    password = settings.pop("bind_password")
    settings_file = tmp_path / "profile.yaml"
    settings_file.write_text(yaml.safe_dump(settings))

    added = orchard("profile", "add", str(settings_file), env={"ORCHARD_LDAP_BIND_PASSWORD": password})
    assert added.exit_code == 0, added.output
    assert re.search(r"^id +1$", added.output, re.M) and password not in added.output

    listed = orchard("profile", "list")
    assert listed.exit_code == 0, listed.output
    assert re.search(rf"^1 +Orchard test directory +starttls://localhost:{slapd.plain_port}", listed.output, re.M)

    changes = tmp_path / "changes.yaml"
    changes.write_text(yaml.safe_dump({"sync": {"daily_sync_time": "04:00"}}))
    updated = orchard("profile", "update", "1", str(changes))
    assert updated.exit_code == 0 and "daily_sync_time: 04:00" in updated.output.replace("'", "")

    tested = orchard("test", "1", "--user", "t00001", input="correct horse battery\n")
    assert tested.exit_code == 0, tested.output
    assert re.search(r"^authenticate +ok +signed in as t00001", tested.output, re.M)
    assert "search users sample:" in tested.output

    assert orchard("auth", "t00001", input="correct horse battery\n").output.endswith("authenticated as t00001\n")
    refused = orchard("auth", "t00001", input="wrong\n")
    assert refused.exit_code == 1 and "not authenticated" in refused.output

    assert orchard("egress-ips").output == "198.51.100.7\n"
    assert orchard("profile", "delete", "1", "--yes").exit_code == 0
    missing = orchard("profile", "show", "1")
    assert missing.exit_code == 1 and "NotFound" in missing.output


@pytest.mark.parametrize("orchard", [[]], indirect=True)
def test_no_egress_ips_and_a_broken_settings_file_are_explained(orchard, tmp_path):
    assert orchard("egress-ips").output == "(none configured; set ORCHARD_EGRESS_IPS for the directory service)\n"
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: North\nhost: [ldap.example\nport: 636\n")
    added = orchard("profile", "add", str(broken), env={"ORCHARD_LDAP_BIND_PASSWORD": "secret"})
    assert added.exit_code == 1 and isinstance(added.exception, SystemExit)
    assert added.output == f"Error: cannot read {broken}: expected ',' or ']', but got ':' at line 3, column 5\n"
    binary = tmp_path / "settings.xlsx"
    binary.write_bytes(b"PK\x03\x04\x14\x00\xe3")
    added = orchard("profile", "add", str(binary), env={"ORCHARD_LDAP_BIND_PASSWORD": "secret"})
    assert added.exit_code == 1 and isinstance(added.exception, SystemExit)
    assert added.output == f"Error: {binary} is not a text file: expected YAML or JSON profile settings\n"
