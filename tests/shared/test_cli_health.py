"""The ``orchard`` command against running services."""
import re

import pytest
import yaml
from click.testing import CliRunner

from orchard_cli.main import cli
from tests.shared.test_kernel_services import ALL_SERVICES

pytestmark = pytest.mark.integration


@pytest.fixture
def cli_env(orchard_config, tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(orchard_config))
    monkeypatch.setenv("ORCHARD_CONFIG", str(path))
    return CliRunner()


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


def test_an_unreachable_broker_is_named_without_its_password(orchard_config, tmp_path, monkeypatch):
    orchard_config["AMQP_URI"] = "pyamqp://orchard:hunter2-secret@127.0.0.1:1/orchard"  # nothing listens on port 1
    path = tmp_path / "unreachable.yaml"
    path.write_text(yaml.safe_dump(orchard_config))
    monkeypatch.setenv("ORCHARD_CONFIG", str(path))
    result = CliRunner().invoke(cli, ["enrollment", "token", "list"])
    assert result.exit_code == 1
    assert "cannot reach RabbitMQ at pyamqp://orchard:**@127.0.0.1:1/orchard" in result.output
    assert "hunter2" not in result.output
