"""``orchard vpp ...`` against the running vpp service and the Apps and Books sandbox."""
import csv

import pytest
import yaml
from click.testing import CliRunner

from orchard_cli.main import cli

pytestmark = pytest.mark.integration


@pytest.fixture
def orchard(vpp_runner, vpp_config, tmp_path, monkeypatch):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(vpp_config))
    monkeypatch.setenv("ORCHARD_CONFIG", str(tmp_path / "config.yaml"))
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def run(*args: str, exit_code: int = 0) -> str:
        result = runner.invoke(cli, ["vpp", *args])
        assert result.exit_code == exit_code, result.output
        return result.output

    return run


def test_every_vpp_command(orchard, vpp_sandbox, tmp_path):
    stoken = vpp_sandbox.issue_token(locationName="North Campus")
    vpp_sandbox.add_asset(stoken, "111", 5, name="Keynote")
    vpp_sandbox.add_asset(stoken, "900", 2, product_type="Book")
    vpp_sandbox.post("assignments", sToken=stoken, adamId="111", serialNumbers=["STRANGER"])
    (tmp_path / "north.vpptoken").write_text(stoken)
    (tmp_path / "broken.vpptoken").write_text("not a token")

    assert "ValidationError: This is not a content token" in orchard("token", "add", "broken.vpptoken", exit_code=1)
    added = orchard("token", "add", "north.vpptoken", "--name", "North", "--auto-invite")
    token_id = next(line.split()[-1] for line in added.splitlines() if line.startswith("id "))
    assert stoken not in added
    listed = orchard("token", "list").splitlines()
    assert listed[0].split()[:3] == ["ID", "NAME", "LOCATION"] and listed[1].split()[:2] == [token_id, "North"]
    shown = {line[:25].strip(): line[25:].strip() for line in orchard("token", "show", token_id).splitlines()}
    assert shown["auto invite method"] == "managed_apple_id" and shown["status"] == "ok" and shown["locations"] == "-"

    assert orchard("sync", token_id).strip() == "2 assets, 1 licences in use, 0 users"
    apps = orchard("assets", token_id).splitlines()
    assert apps[1].split()[:2] == ["111", "Keynote"] and "900" not in "".join(apps)
    assert orchard("assets", token_id, "--books").splitlines()[1].split()[0] == "900"

    assert orchard("assign", token_id, "111", "--serial", "IPAD-1").strip() == "assigned: 1 device(s), 0 user(s)"
    assert "Book licences can never be revoked" in orchard("revoke", token_id, "900", "--user", "u1", exit_code=1)
    dry = orchard("revoke-unknown", token_id)
    assert "2 licence(s) would be revoked" in dry and "STRANGER" in dry and "IPAD-1" in dry
    assert "revoked 2 of 2" in orchard("revoke-unknown", token_id, "--apply")
    assert vpp_sandbox.state(stoken)["assignments"] == 0

    assert orchard("invites", token_id).strip().endswith("(none)")
    orchard("invites", token_id, "--export", "invites.csv")
    refused = orchard("invites", token_id, "--export", "missing/invites.csv", exit_code=2)
    assert "the directory missing does not exist" in refused
    assert next(csv.reader(open(tmp_path / "invites.csv")))[:2] == ["user_id", "name"]

    orchard("token", "delete", token_id, "--yes")
    assert orchard("token", "list").strip().endswith("(none)")


def test_a_binary_token_file_and_a_location_added_twice_say_what_to_do(orchard, vpp_sandbox, tmp_path):
    (tmp_path / "north.p12").write_bytes(b"0\x82\x04\x00\x02\x01\x03\x00")
    expected = ("Error: north.p12 is not a text file: expected the .vpptoken content token as downloaded from Apple "
                "School Manager\n")
    assert orchard("token", "add", "north.p12", exit_code=1) == expected

    (tmp_path / "north.vpptoken").write_text(vpp_sandbox.issue_token(locationName="North Campus"))
    added = orchard("token", "add", "north.vpptoken")
    token_id = next(line.split()[-1] for line in added.splitlines() if line.startswith("id "))
    again = orchard("token", "add", "north.vpptoken", exit_code=1)
    assert f"`orchard vpp token renew {token_id} FILE.vpptoken` (or the renew_content_token RPC)" in again
    assert orchard("token", "renew", token_id, "north.p12", exit_code=1) == expected


def test_a_token_another_mdm_took_is_claimed_back_with_renew_take_over(orchard, vpp_sandbox, tmp_path):
    stoken = vpp_sandbox.issue_token(locationName="North Campus")
    (tmp_path / "north.vpptoken").write_text(stoken)
    added = orchard("token", "add", "north.vpptoken")
    token_id = next(line.split()[-1] for line in added.splitlines() if line.startswith("id "))
    vpp_sandbox.post("mdm-info", sToken=stoken, mdmInfo={"id": "other", "name": "Other MDM"})
    assert "Conflict" in orchard("sync", token_id, exit_code=1)

    refused = orchard("token", "renew", token_id, "north.vpptoken", exit_code=1)
    assert f"orchard vpp token renew {token_id} FILE.vpptoken --take-over" in refused
    renewed = orchard("token", "renew", token_id, "north.vpptoken", "--take-over")
    assert {line[:25].strip(): line[25:].strip() for line in renewed.splitlines()}["status"] == "ok"
    assert vpp_sandbox.state(stoken)["mdmInfo"]["id"] == "orchard-test"
