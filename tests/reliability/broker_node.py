"""A RabbitMQ node of the test's own, so a test can restart the broker without disturbing the shared one.

The node has its own name, ports, database and logs under a temporary directory and runs without
plugins; the services use its default vhost. ``stop()`` ends the process (as an upgrade or a reboot of
the broker's host does) and ``start()`` starts it again on the same data: durable queues and
persistent messages come back, every connection is lost.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import eventlet
from kombu import Connection

from tests.conftest import free_port

# rabbitmqctl's own distribution ports; a node listening there would collide with the CLI tools
CLI_DISTRIBUTION_PORTS = range(35672, 35683)


def server_script() -> Path:
    """The real ``rabbitmq-server`` script: Debian's /usr/sbin one is a wrapper that switches to the
    rabbitmq user, who could not write the test's directory."""
    found = shutil.which("rabbitmq-server") or shutil.which("rabbitmq-server", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise RuntimeError("this test starts a RabbitMQ node of its own: install rabbitmq-server (Debian package)")
    return Path(os.path.realpath(found)).parent / "rabbitmq-server"


def _port() -> int:
    while (port := free_port()) in CLI_DISTRIBUTION_PORTS:
        pass
    return port


class BrokerNode:
    def __init__(self, script: Path, directory: Path):
        self.script = script
        self.port = _port()
        self.node = f"orchard-fault-{self.port}@localhost"
        self.amqp_uri = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        self.log_path = directory / "rabbitmq.out"
        (directory / "enabled_plugins").write_text("[].\n")
        self.env = {
            **os.environ,
            "HOME": str(directory),  # its own Erlang cookie
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(_port()),
            "RABBITMQ_MNESIA_BASE": str(directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(directory / "log"),
            "RABBITMQ_PID_FILE": str(directory / "rabbitmq.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(directory / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(directory / "rabbitmq"),  # neither exists: the defaults
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(directory / "advanced.config"),
        }
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> None:
        with open(self.log_path, "a") as log:
            self.process = subprocess.Popen([str(self.script)], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            cwd=self.env["HOME"])
        deadline = time.monotonic() + timeout
        while not self.accepts_connections():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"RabbitMQ node {self.node} did not start; see {self.log_path}")
            eventlet.sleep(0.2)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()  # RabbitMQ shuts down cleanly on SIGTERM
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def accepts_connections(self) -> bool:
        try:
            with Connection(self.amqp_uri, connect_timeout=1) as connection:
                connection.connect()
            return True
        except Exception:
            return False
