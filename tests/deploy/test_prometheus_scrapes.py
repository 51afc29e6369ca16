"""A real Prometheus scrapes the five running services."""
import shutil
import subprocess
import time

import httpx
import pytest

from tests.conftest import free_port
from tests.shared.test_kernel_services import ALL_SERVICES
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian package prometheus")]


def test_prometheus_sees_every_service_up(runner_factory, orchard_config, tmp_path):
    runner_factory(orchard_config, *ALL_SERVICES).start()
    jobs = "\n".join(
        f"  - job_name: {name}\n    static_configs: [{{targets: ['127.0.0.1:{settings['metrics_port']}']}}]"
        for name, settings in ((s.name, orchard_config["SERVICES"][s.name]) for s in ALL_SERVICES)
    )
    (tmp_path / "prometheus.yml").write_text(f"global:\n  scrape_interval: 1s\nscrape_configs:\n{jobs}\n")
    port = free_port()
    prometheus = subprocess.Popen(
        ["prometheus", f"--config.file={tmp_path}/prometheus.yml", f"--storage.tsdb.path={tmp_path}/data",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        def all_up():
            try:
                targets = httpx.get(f"http://127.0.0.1:{port}/api/v1/targets", timeout=2).json()["data"]
            except (httpx.HTTPError, ValueError):
                return None
            health = {t["labels"]["job"]: t["health"] for t in targets["activeTargets"]}
            return health if health and all(state == "up" for state in health.values()) else None

        health = wait_for(all_up, timeout=30, interval=0.5, what="every target up")
        assert set(health) == {service.name for service in ALL_SERVICES}
        query = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": "orchard_service_info"}).json()
        # one registry per test process: services started by earlier tests may be listed too
        assert {r["metric"]["service"] for r in query["data"]["result"]} >= {s.name for s in ALL_SERVICES}
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=10)
