"""The demo's background processes: the Apple sandbox and the five services, and stopping them."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from deploy.demo.terminal import DemoFailed

SERVICES = ("push", "enrollment", "vpp", "roster", "directory")
HTTP_SERVICES = ("enrollment", "vpp", "roster")
SANDBOX_PORTS = {"dep": 9201, "vpp": 9202, "apns": 9203, "apns-admin": 9204, "smtp": 9225}
METRICS_PORTS = dict(zip(SERVICES, range(9101, 9106)))
HTTP_PORTS = {"enrollment": 8102, "vpp": 8103, "roster": 8104}
STOP_SECONDS = 20


@dataclass(frozen=True)
class Ports:
    sandbox: dict[str, int]
    metrics: dict[str, int]
    http: dict[str, int]

    @classmethod
    def fixed(cls) -> "Ports":
        return cls(dict(SANDBOX_PORTS), dict(METRICS_PORTS), dict(HTTP_PORTS))

    @classmethod
    def free(cls) -> "Ports":
        return cls({name: free_port() for name in SANDBOX_PORTS}, {name: free_port() for name in SERVICES},
                   {name: free_port() for name in HTTP_SERVICES})

    def all(self) -> dict[str, int]:
        return {**{f"sandbox {k}": v for k, v in self.sandbox.items()},
                **{f"{k} metrics": v for k, v in self.metrics.items()}, **{f"{k} http": v for k, v in self.http.items()}}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def require_free(ports: Ports) -> None:
    busy = [f"{name} :{port}" for name, port in ports.all().items() if listening(port)]
    if busy:
        raise DemoFailed(f"these ports are already in use: {', '.join(busy)}. Is `make run` or another demo running? "
                         "Stop it, or give the demo free ports and its own RabbitMQ virtual host "
                         "(`AMQP_URI=amqp://.../<vhost> make demo DEMO_ARGS=--free-ports`, see the README).")


@dataclass
class Children:
    """Every process the demo started, stopped together (SIGTERM, then SIGKILL after a grace period)."""

    root: Path
    state_dir: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start_sandbox(self, ports: Ports, env: dict[str, str]) -> dict[str, str]:
        """Start ``python -m apple_sandbox``; the settings it prints (DEP_URL, VPP_URL, APNS_URL, ...)."""
        args = [sys.executable, "-m", "apple_sandbox", "--state-dir", str(self.state_dir / "apple_sandbox")]
        args += [arg for name, port in ports.sandbox.items() for arg in (f"--{name}-port", str(port))]
        with open(self.state_dir / "apple_sandbox.log", "wb") as log:
            process = subprocess.Popen(args, cwd=self.root, env=env, stdout=subprocess.PIPE, stderr=log, text=True,
                                       start_new_session=True)
        self.processes["apple sandbox"] = process
        lines = [process.stdout.readline() for _ in range(3)]
        if not lines[0].startswith("Apple sandbox running"):
            raise DemoFailed(f"the Apple sandbox did not start; see {self.state_dir / 'apple_sandbox.log'}")
        settings = dict(re.findall(r"(\w+)=(\S+)", lines[1]))
        settings["admin"] = lines[2].strip()
        return settings

    def start_services(self, env: dict[str, str]) -> None:
        for service in SERVICES:
            with open(self.state_dir / f"{service}.log", "wb") as log:
                self.processes[service] = subprocess.Popen(
                    [sys.executable, "-m", "shared.run", "--config", "deploy/config.yaml",
                     f"services.{service}.service:{service.capitalize()}Service"],
                    cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_for_ports(self, ports: dict[str, int], seconds: float) -> None:
        deadline = time.monotonic() + seconds
        waiting = dict(ports)
        while waiting:
            self.check_alive()
            waiting = {name: port for name, port in waiting.items() if not listening(port)}
            if waiting and time.monotonic() > deadline:
                raise DemoFailed(f"{', '.join(waiting)} did not start listening within {seconds:g} s; "
                                 f"see the logs in {self.state_dir}/")
            if waiting:
                time.sleep(0.3)

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                log = "apple_sandbox" if name == "apple sandbox" else name
                raise DemoFailed(f"{name} stopped (exit status {process.returncode}); "
                                 f"see {self.state_dir / (log + '.log')}")

    def wait_until_one_stops(self) -> str:
        while True:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    return name
            time.sleep(0.5)

    def stop(self) -> None:
        """SIGTERM each child and wait; then SIGKILL whatever is left in its process group.

        Each child leads its own process group, so a grandchild that outlives its parent (the
        sandbox's APNs stand-in inherits the sandbox's blocked SIGTERM) is stopped too.
        """
        running = [p for p in self.processes.values() if p.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        for process in running:
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                pass
        for process in self.processes.values():
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
