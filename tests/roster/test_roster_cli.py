"""``orchard roster`` against a running roster service."""
import re

import pytest
import yaml
from click.testing import CliRunner

from orchard_cli.main import cli
from services.roster.service import RosterService
from tests.roster.test_roster_service import FakeEnrollment

pytestmark = pytest.mark.integration


@pytest.fixture
def cli_runner(runner_factory, orchard_config, tmp_path, monkeypatch):
    runner_factory(orchard_config, RosterService).start()
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(orchard_config))
    monkeypatch.setenv("ORCHARD_CONFIG", str(path))
    monkeypatch.chdir(tmp_path)
    return CliRunner()


def test_template_import_apply_and_list(cli_runner, tmp_path):
    result = cli_runner.invoke(cli, ["roster", "template", "--output", "t.xlsx"])
    assert result.exit_code == 0 and "replace each sheet's example row (user s-1001" in result.output, result.output
    result = cli_runner.invoke(cli, ["roster", "import", "t.xlsx"])
    assert result.exit_code == 0, result.output
    assert "nothing was changed" in result.output
    assert "rejected" not in result.output.lower()  # the untouched template imports cleanly
    result = cli_runner.invoke(cli, ["roster", "import", "t.xlsx", "--apply"])
    assert result.exit_code == 0, result.output
    assert "applied; 2 event(s) published" in result.output  # the user and the class
    # the template's user lists a device, which enrollment (not running here) cannot take
    assert "1 device(s) not assigned:" in result.output
    assert re.search(r"^s-1001 +F9FXK0AAHG7J +the enrollment service is not running", result.output, re.M)
    result = cli_runner.invoke(cli, ["roster", "users"])
    assert "s-1001" in result.output and "1 user(s)" in result.output
    result = cli_runner.invoke(cli, ["roster", "user", "s-1001"])
    assert result.exit_code == 0, result.output
    assert re.search(r"^devices +F9FXK0AAHG7J$", result.output, re.M), result.output
    assert re.search(r"^classes +maths-7a \(student\)$", result.output, re.M)
    assert re.search(r"^welcome e-mail +none asked for$", result.output, re.M)
    result = cli_runner.invoke(cli, ["roster", "user", "nobody"])
    assert result.exit_code == 1 and "there is no user 'nobody'" in result.output
    result = cli_runner.invoke(cli, ["roster", "locations"])
    assert result.exit_code == 0 and re.search(r"^north +North Middle School +xlsx +1$", result.output, re.M), result.output
    result = cli_runner.invoke(cli, ["roster", "runs"])
    assert result.output.count(" applied ") == 1 and result.output.count(" previewed ") == 1


def test_an_output_file_in_a_missing_directory_is_refused_before_asking(cli_runner, tmp_path):
    result = cli_runner.invoke(cli, ["roster", "template", "--output", "missing/t.xlsx"])
    assert result.exit_code == 2 and "the directory missing does not exist" in result.output
    assert not (tmp_path / "missing").exists()


def test_api_tokens_and_errors(cli_runner, runner_factory, orchard_config):
    runner_factory(orchard_config, FakeEnrollment).start()  # every server token but "tok-gone" exists
    result = cli_runner.invoke(cli, ["roster", "api-token", "create", "sis", "--allow-ip", "10.0.0.0/8"])
    assert result.exit_code == 0, result.output
    assert "token: orch_" in result.output
    listed = cli_runner.invoke(cli, ["roster", "api-token", "list"])
    assert "restricted" in listed.output and "orch_" not in listed.output
    assert cli_runner.invoke(cli, ["roster", "api-token", "revoke", "1"]).exit_code == 0
    bad = cli_runner.invoke(cli, ["roster", "apply", "nope"])
    assert bad.exit_code != 0 and "NotFound" in bad.output
    prefs = cli_runner.invoke(cli, ["roster", "asm", "prefs", "tok", "--set", "sync_time=02:30",
                                    "--set", "skip_student_email=true"])
    assert prefs.exit_code == 0, prefs.output
    assert "02:30" in prefs.output
    for args in (["asm", "prefs", "tok-gone"], ["asm", "prefs", "tok-gone", "--set", "sync_time=02:30"]):
        gone = cli_runner.invoke(cli, ["roster", *args])
        assert gone.exit_code == 1 and gone.output == "Error: NotFound: there is no server token tok-gone\n"


def test_an_unknown_api_token_points_to_the_list_command(cli_runner):
    unknown = cli_runner.invoke(cli, ["roster", "api-token", "revoke", "999"])
    assert unknown.exit_code == 1
    assert unknown.output == ("Error: NotFound: there is no API token 999; list them with `orchard roster api-token "
                              "list` (or the list_api_tokens RPC)\n")


def test_asm_locations_are_a_list_even_of_one(cli_runner, runner_factory, orchard_config, rpc_as):
    runner_factory(orchard_config, FakeEnrollment).start()
    for value, stored in (("north", ["north"]), ("north, south", ["north", "south"]), ("all", None)):
        result = cli_runner.invoke(cli, ["roster", "asm", "prefs", "tok", "--set", f"locations={value}"])
        assert result.exit_code == 0, result.output
        with rpc_as() as rpc:
            assert rpc.roster.get_asm_preferences("tok")["preferences"]["locations"] == stored
