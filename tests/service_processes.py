"""Services run in processes of their own (``shared.run``, as deployed), so a test can kill one outright."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import yaml

from tests.conftest import TEST_SECRET_KEY
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def service_process(config: dict, tmp_path: Path, targets: list[str]) -> Iterator[subprocess.Popen]:
    """Services in a process of their own, on the test's vhost and databases; its output goes
    to ``tmp_path / "services.log"``."""
    path = tmp_path / "orchard.yaml"
    path.write_text(yaml.safe_dump(config))
    log = open(tmp_path / "services.log", "a")
    process = subprocess.Popen([sys.executable, "-m", "shared.run", "--config", str(path), *targets], cwd=ROOT,
                               stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "ORCHARD_SECRET_KEY": TEST_SECRET_KEY})
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()


def wait_until_serving(rpc_as, *services: str) -> None:
    def answers() -> bool:
        try:
            with rpc_as(timeout=2) as rpc:
                return all(getattr(rpc, service).health()["database"] == "ok" for service in services)
        except Exception:
            return False
    wait_for(answers, timeout=30, interval=0.2, what=f"{', '.join(services)} to answer")


def kill(process: subprocess.Popen) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)
