"""Deployment files, validated without Docker or a cluster."""
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SERVICES = ("push", "enrollment", "vpp", "roster", "directory")

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus)")


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], cwd=DEPLOY / "prometheus", capture_output=True, text=True)


@needs_promtool
def test_prometheus_configuration_and_rules_are_valid():
    checked = promtool("check", "config", "prometheus.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    rules = sorted(str(p.relative_to(DEPLOY / "prometheus")) for p in (DEPLOY / "prometheus" / "rules").glob("*.yml"))
    checked = promtool("check", "rules", *rules)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@needs_promtool
def test_every_alert_has_a_passing_unit_test():
    tests = sorted(str(p.relative_to(DEPLOY / "prometheus")) for p in (DEPLOY / "prometheus" / "tests").glob("*.yml"))
    result = promtool("test", "rules", *tests)
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = {rule["alert"] for path in (DEPLOY / "prometheus" / "rules").glob("*.yml")
              for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"] if "alert" in rule}
    tested = {case["alertname"] for path in (DEPLOY / "prometheus" / "tests").glob("*.yml")
              for test in yaml.safe_load(path.read_text())["tests"] for case in test.get("alert_rule_test", [])
              if case.get("exp_alerts")}
    assert alerts - tested == set(), "alerts without a unit test that fires them"


def test_kubernetes_manifests_match_the_schemas():
    documents = [doc for path in sorted((DEPLOY / "k8s").glob("*.yaml")) if path.name != "kustomization.yaml"
                 for doc in yaml.safe_load_all(path.read_text()) if doc]
    for document in documents:
        kubernetes_validate.validate(document, "1.30.0", strict=True)
    deployments = {d["metadata"]["name"] for d in documents if d["kind"] == "Deployment"}
    assert deployments == {f"orchard-{name}" for name in SERVICES}
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    assert all((DEPLOY / "k8s" / resource).exists() for resource in kustomization["resources"])


def test_kubernetes_services_take_their_public_addresses_from_the_site_config_map():
    site = yaml.safe_load((DEPLOY / "k8s" / "site.yaml").read_text())
    referenced = {}
    for name in SERVICES:
        deployment = next(d for d in yaml.safe_load_all((DEPLOY / "k8s" / f"{name}.yaml").read_text())
                          if d and d["kind"] == "Deployment")
        for variable in deployment["spec"]["template"]["spec"]["containers"][0]["env"]:
            ref = (variable.get("valueFrom") or {}).get("configMapKeyRef")
            if ref:
                assert ref["name"] == site["metadata"]["name"] and ref["key"] in site["data"], variable
                referenced.setdefault(name, set()).add(variable["name"])
    assert {"ENROLLMENT_PUBLIC_URL"} <= referenced["enrollment"] and {"VPP_PUBLIC_URL", "SMTP_HOST"} <= referenced["vpp"]


def test_the_image_tells_every_process_where_the_configuration_is():
    dockerfile = (DEPLOY.parent / "Dockerfile").read_text()
    assert "ORCHARD_CONFIG=/app/deploy/config.yaml" in dockerfile and "COPY deploy/config.yaml deploy/config.yaml" in dockerfile


def test_the_build_context_holds_what_the_image_copies_and_no_local_secrets():
    root = DEPLOY.parent
    ignored = {line.strip() for line in (root / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".venv", "var", ".git"} <= ignored  # var/ holds the secret key and the SQLite files
    copied = [source for line in (root / "Dockerfile").read_text().splitlines()
              if line.startswith("COPY ") and "--from=" not in line for source in line.split()[1:-1]]
    assert copied and all((root / source).exists() for source in copied), copied
    assert not {source.split("/")[0] for source in copied} & ignored


def test_the_config_map_carries_the_current_configuration():
    config_map = yaml.safe_load((DEPLOY / "k8s" / "configmap.yaml").read_text())
    assert config_map["data"]["config.yaml"] == (DEPLOY / "config.yaml").read_text(), \
        "run: python deploy/k8s/render_configmap.py"


def test_compose_runs_every_service_from_one_image_with_its_own_database():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
    for name in SERVICES:
        service = compose[name]
        assert service["image"] == "orchard:latest" and service["environment"]["SERVICE"] == name
        assert service["environment"][f"DATABASE_URL_{name.upper()}"].endswith(f"/{name}")
        assert "ports" not in service or all(not str(p).startswith("91") for p in service["ports"])  # scalable
    assert {"rabbitmq", "postgres", "prometheus", "grafana"} <= set(compose)
    created = (DEPLOY / "postgres" / "create-databases.sql").read_text()
    assert all(f"CREATE DATABASE {name};" in created for name in SERVICES)
