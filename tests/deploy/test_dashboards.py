"""Grafana dashboards query only metrics the services really export."""
import json
import re
from pathlib import Path

import httpx
import pytest
import yaml

from tests.shared.test_kernel_services import ALL_SERVICES

pytestmark = pytest.mark.integration
GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"


def exported_names(metrics_text: str) -> set[str]:
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", metrics_text, re.M):
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        if kind == "counter" and not name.endswith("_total"):
            names.add(f"{name}_total")
    return names


def test_every_dashboard_metric_is_exported(runner_factory, orchard_config):
    runner_factory(orchard_config, *ALL_SERVICES).start()
    exported = set()
    for service in ALL_SERVICES:  # each service's own endpoint, as Prometheus scrapes them
        port = orchard_config["SERVICES"][service.name]["metrics_port"]
        exported |= exported_names(httpx.get(f"http://127.0.0.1:{port}/metrics").text)

    boards = sorted((GRAFANA / "dashboards").glob("*.json"))
    assert {b.stem for b in boards} == {"overview", "push", "enrollment", "vpp", "roster", "directory"}
    for board in boards:
        for panel in json.loads(board.read_text())["panels"]:
            for target in panel["targets"]:
                used = set(re.findall(r"\b(orchard_[a-z_]+)\b", target["expr"]))
                assert used, f"{board.name}: panel '{panel['title']}' queries no Orchard metric"
                assert used <= exported, f"{board.name}: '{panel['title']}' queries unknown {used - exported}"


def test_grafana_provisioning_points_at_the_dashboards():
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "orchard.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uids = {json.loads(b.read_text())["panels"][0]["datasource"]["uid"] for b in (GRAFANA / "dashboards").glob("*.json")}
    assert uids == {datasource["datasources"][0]["uid"]}
