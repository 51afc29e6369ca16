"""The image's entrypoint runs one service whose whole output, from its first line, is JSON log lines."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import free_port
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def push_answers(rpc_as) -> bool:
    try:
        with rpc_as(timeout=2) as rpc:
            return rpc.push.health()["database"] == "ok"
    except Exception:
        return False


def test_a_service_started_by_the_entrypoint_writes_only_json_lines(orchard_config, rpc_as, tmp_path):
    shipped = yaml.safe_load((ROOT / "deploy" / "config.yaml").read_text())
    config = tmp_path / "orchard.yaml"
    config.write_text(yaml.safe_dump({**orchard_config, "LOGGING": shipped["LOGGING"]}))
    environment = {**os.environ, "SERVICE": "push", "ORCHARD_CONFIG": str(config),
                   "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    environment.pop("PYTHONWARNINGS", None)
    process = subprocess.Popen([str(ROOT / "deploy" / "entrypoint.sh")], cwd=ROOT, env=environment,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: push_answers(rpc_as), timeout=30, interval=0.2, what="the push service to answer")
    finally:
        process.terminate()
        time.sleep(0.2)
        process.terminate()  # an impatient second stop changes nothing: the service still stops, and soon
        output, _ = process.communicate(timeout=15)
    assert process.returncode == 0
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines, "the service wrote nothing"
    for line in lines:
        try:
            assert isinstance(json.loads(line), dict)
        except ValueError:
            pytest.fail(f"not a JSON log line: {line!r}")


def test_the_runner_reads_the_configuration_with_orchards_loader(tmp_path):
    """A variable the configuration needs and the environment lacks stops the start, by name (Nameko's own
    loader would have made it nothing and started anyway)."""
    config = tmp_path / "orchard.yaml"
    config.write_text("AMQP_URI: ${ORCHARD_TEST_BROKER_NOWHERE}\n")
    environment = {k: v for k, v in os.environ.items() if k != "ORCHARD_TEST_BROKER_NOWHERE"}

    def start(*services: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "shared.run", "--config", str(config), *services], cwd=ROOT,
                              capture_output=True, text=True, timeout=60, env=environment)

    started = start("services.push.service:PushService")
    assert started.returncode == 2
    assert started.stderr.strip() == (f"cannot read the configuration {config}: configuration needs the environment "
                                      "variable ORCHARD_TEST_BROKER_NOWHERE (no default is given)")
    config.write_text("AMQP_URI: amqp://guest:guest@127.0.0.1:5672/\n")
    unknown = start("services.nope.service:NopeService")
    assert (unknown.returncode, unknown.stderr.strip()) == (2, "cannot start: No module named 'services.nope'")


def test_a_second_process_on_one_sqlite_file_is_refused_until_the_first_is_gone(orchard_config, rpc_as, tmp_path):
    """SQLite serves one process per service: a second one stops at start, naming the first; once the first is
    killed (no chance to clean up), the file is free again."""
    def start(config: dict, name: str) -> subprocess.Popen:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        return subprocess.Popen([sys.executable, "-m", "shared.run", "--config", str(path),
                                 "services.push.service:PushService"], cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)

    first = start(orchard_config, "first")
    second = None
    try:
        wait_for(lambda: push_answers(rpc_as), timeout=30, interval=0.2, what="the push service to answer")
        second_config = {**orchard_config, "SERVICES": {**orchard_config["SERVICES"], "push": {
            **orchard_config["SERVICES"]["push"], "metrics_port": free_port()}}}
        second = start(second_config, "second")
        _, errors = second.communicate(timeout=60)
        database = orchard_config["SERVICES"]["push"]["database_url"].removeprefix("sqlite:///")
        assert second.returncode == 2
        assert errors.strip() == (
            f"cannot start: {database} is in use by another process (pid {first.pid}). A SQLite database serves "
            f"one process per service; stop that process, or run replicas on PostgreSQL (database_url).")
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(timeout=30)
    third = start(orchard_config, "third")
    try:
        wait_for(lambda: push_answers(rpc_as), timeout=30, interval=0.2,
                 what="the push service to answer after the first was killed")
    finally:
        third.terminate()
        third.wait(timeout=30)
