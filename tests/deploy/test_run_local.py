"""`make run`'s checks before it starts the services: one line saying what to do, and never a password."""
import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


def run_local(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deploy.run_local", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=60)


def test_a_broker_that_refuses_the_login_is_named_without_the_password():
    refused = run_local("broker", "amqp://guest:not-the-password@127.0.0.1:5672/")
    assert refused.returncode == 1 and refused.stdout == ""
    (line,) = refused.stderr.strip().splitlines()
    assert "refused guest@127.0.0.1:5672/" in line and "ACCESS_REFUSED" in line and "Set AMQP_URI" in line
    assert "not-the-password" not in line
    assert run_local("broker", "amqp://guest:guest@127.0.0.1:5672/").returncode == 0


def test_a_port_in_use_is_named_before_anything_starts():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = run_local("ports", "deploy/config.yaml", "roster", METRICS_PORT_ROSTER=str(port),
                         HTTP_ADDRESS_ROSTER=f"127.0.0.1:{free_port()}")
    assert busy.returncode == 1
    assert f"These ports are already in use: roster metrics :{port}. Is another" in busy.stderr


def test_migrations_name_the_services_they_know_and_say_what_they_did(tmp_path):
    def migrations(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "shared.migrations", *args], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120,
                              env={**os.environ, "ORCHARD_CONFIG": str(ROOT / "deploy" / "config.yaml"),
                                   "PYTHONPATH": str(ROOT)})

    unknown = migrations("upgrade", "nope")
    assert unknown.returncode == 2 and "invalid choice: 'nope' (choose from 'directory', 'enrollment'" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    done = migrations("upgrade", "push")
    assert done.returncode == 0 and done.stdout.strip().endswith("push: sqlite:///var/push.db has the newest schema")
    assert (tmp_path / "var" / "push.db").exists()


def test_the_secret_key_is_created_once_readable_by_its_owner_only_and_quietly(tmp_path):
    key_file = tmp_path / "var" / "secret.key"
    environment = {"ORCHARD_SECRET_KEY_FILE": str(key_file), "ORCHARD_SECRET_KEY": ""}
    created = run_local("secret-key", **environment)
    assert (created.returncode, created.stdout, created.stderr) == (0, "", "")  # not even a deprecation notice
    key = key_file.read_text()
    assert oct(key_file.stat().st_mode & 0o777) == "0o600" and len(key.strip()) == 44
    assert run_local("secret-key", **environment).returncode == 0 and key_file.read_text() == key
