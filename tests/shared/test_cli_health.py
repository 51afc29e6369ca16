"""The ``orchard`` command against running services, and its one-line errors."""
import re
from urllib.parse import urlsplit

import click
import pytest
import yaml
from click.testing import CliRunner
from kombu import Connection
from nameko.standalone.rpc import ClusterRpcProxy

from orchard_cli.main import cli
from orchard_cli.rpc import call
from services.roster.service import RosterService
from shared.call_deadlines import DEADLINE_KEY
from tests.conftest import ADMIN
from tests.shared.sample.services import BusyNotesService, NotesService
from tests.shared.test_kernel_services import ALL_SERVICES
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def configure(orchard_config, tmp_path, monkeypatch):
    """Point ``ORCHARD_CONFIG`` at the test configuration, with some values changed."""
    def write(**changes):
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump({**orchard_config, **changes}))
        monkeypatch.setenv("ORCHARD_CONFIG", str(path))
    return write


@pytest.fixture
def cli_env(configure):
    configure()
    return CliRunner()


def one_line_error(result) -> str:
    """The error of a command that failed cleanly (a message, not a traceback)."""
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exc_info
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
    return result.output


def test_health_prints_every_service_healthy(runner_factory, orchard_config, cli_env):
    runner_factory(orchard_config, *ALL_SERVICES).start()
    result = cli_env.invoke(cli, ["health"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["SERVICE", "STATUS", "VERSION", "DATABASE"]
    assert sorted(line.split()[0] for line in lines[1:] if "healthy" in line) == sorted(s.name for s in ALL_SERVICES)


def test_health_says_which_service_is_down(runner_factory, orchard_config, cli_env):
    runner_factory(orchard_config, *ALL_SERVICES[:-1]).start()
    result = cli_env.invoke(cli, ["health", "--timeout", "2"])
    assert result.exit_code == 1
    assert re.search(r"^directory +error .*not running", result.output, re.M)


def test_dead_letters_list_is_a_table_even_when_empty(orchard_config, cli_env):
    result = cli_env.invoke(cli, ["events", "dead-letters", "list"])
    assert result.exit_code == 0, result.output
    assert result.output.split()[:6] == ["QUEUE", "EVENT", "TYPE", "EVENT", "ID", "ATTEMPTS"]


@pytest.mark.parametrize("command", [["enrollment", "token", "list"], ["events", "dead-letters", "list"]])
def test_an_unreachable_broker_is_named_without_its_password(configure, command):
    configure(AMQP_URI="pyamqp://orchard:hunter2-secret@127.0.0.1:1/orchard")  # nothing listens on port 1
    output = one_line_error(CliRunner().invoke(cli, command))
    assert "cannot reach RabbitMQ at pyamqp://orchard:**@127.0.0.1:1/orchard" in output
    assert "hunter2" not in output


@pytest.mark.parametrize("change, refusal", [
    ({"netloc": "guest:wrong-secret@{host}"}, "ACCESS_REFUSED"),
    ({"path": "/no-such-vhost"}, "NOT_ALLOWED - vhost no-such-vhost not found"),
])
@pytest.mark.parametrize("command", [["push", "list"], ["events", "dead-letters", "list"]])
def test_a_broker_refusal_is_one_line(orchard_config, configure, command, change, refusal):
    uri = urlsplit(orchard_config["AMQP_URI"])
    changed = uri._replace(**{key: value.format(host=f"{uri.hostname}:{uri.port}") for key, value in change.items()})
    configure(AMQP_URI=changed.geturl())
    output = one_line_error(CliRunner().invoke(cli, command))
    assert f"RabbitMQ at {uri.scheme}://guest:**@{uri.hostname}:{uri.port}/" in output and refusal in output
    assert "wrong-secret" not in output


def test_a_configuration_that_cannot_be_read_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("ORCHARD_CONFIG", str(tmp_path / "nonexistent.yaml"))
    output = one_line_error(CliRunner().invoke(cli, ["push", "list"]))
    assert f"cannot read the configuration at {tmp_path / 'nonexistent.yaml'} (ORCHARD_CONFIG)" in output
    (tmp_path / "broken.yaml").write_text("AMQP_URI: [amqp://\nmax_workers: 10\n")
    monkeypatch.setenv("ORCHARD_CONFIG", str(tmp_path / "broken.yaml"))
    assert "at line 2, column 12" in one_line_error(CliRunner().invoke(cli, ["events", "dead-letters", "list"]))


def test_a_request_no_service_took_is_withdrawn_when_the_caller_gives_up(runner_factory, orchard_config, cli_env):
    runner = runner_factory(orchard_config, RosterService)
    runner.start()
    runner.stop()  # its request queue outlives it, unread
    result = cli_env.invoke(cli, ["health", "--timeout", "1"])
    assert re.search(r"^roster +error .*did not answer within 1 s: a request not started by then is not run",
                     result.output, re.M), result.output

    def queued() -> int:
        with Connection(orchard_config["AMQP_URI"]) as connection:
            return connection.default_channel.queue_declare("rpc-roster", passive=True).message_count
    wait_for(lambda: queued() == 0, timeout=10, what="the unanswered request to expire")


def every_command(group: click.Group, path: str = "orchard"):
    for name, command in group.commands.items():
        yield f"{path} {name}", command
        if isinstance(command, click.Group):
            yield from every_command(command, f"{path} {name}")


def test_every_command_has_help_and_the_environment_is_listed():
    assert [name for name, command in every_command(cli) if not command.get_short_help_str()] == []
    shown = CliRunner().invoke(cli, ["--help"]).output
    for variable in ("AMQP_URI", "ORCHARD_CONFIG", "ORCHARD_ACTOR_ID", "ORCHARD_ACTOR_ROLE", "ORCHARD_ACTOR_LOCATIONS"):
        assert variable in shown


def test_a_command_whose_call_a_replica_took_only_after_it_gave_up_is_not_run(
        runner_factory, orchard_config, cli_env, rpc_as):
    """The replica's only worker is busy past the command's timeout: the command fails, and its call is not run."""
    runner_factory({**orchard_config, "max_workers": 1}, BusyNotesService).start()
    with pytest.raises(click.ClickException, match="did not answer within 1 s"):
        call("notes", "take_many", "late", 1, timeout=1)
    with rpc_as() as rpc:
        assert rpc.notes.count() == 0


def test_a_deadline_that_cannot_be_read_does_not_stop_a_call(runner_factory, orchard_config):
    runner_factory(orchard_config, NotesService).start()
    context = {"actor": ADMIN.to_context(), DEADLINE_KEY: "whenever"}
    with ClusterRpcProxy(orchard_config, context_data=context, timeout=20) as rpc:
        rpc.notes.take_many("read", 1)
        assert rpc.notes.count() == 1
