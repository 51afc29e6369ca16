"""The directory tests' real OpenLDAP server and profiles pointing at it."""
from __future__ import annotations

from typing import Any, Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.slapd import BASE_DN, RunningSlapd, TreeShape, school_dn, start_slapd, teachers_group_dn

PASSWORDS = {"t00001": "correct horse battery", "lee*)(x": "parenthesised pass"}


@pytest.fixture(scope="session")
def slapd() -> Iterator[RunningSlapd]:
    server = start_slapd(TreeShape(passwords=PASSWORDS))
    try:
        yield server
    finally:
        server.stop()


def metrics_text(config: dict) -> str:
    return httpx.get(f"http://127.0.0.1:{config['SERVICES']['directory']['metrics_port']}/metrics").text


def metric_value(config: dict, name: str, **labels: str) -> float:
    """The directory service's sample ``name`` with exactly ``labels`` (0 when it has none yet)."""
    for family in text_string_to_metric_families(metrics_text(config)):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def ad_sync_settings(server: RunningSlapd) -> dict[str, Any]:
    """Active Directory defaults plus the rules only a school can know: which groups/OUs mean what."""
    schools = server.tree.shape.schools
    return {
        "users": {
            "user_types": [{"user_type": "teacher", "group": teachers_group_dn(s)} for s in schools]
            + [{"user_type": "student", "ou": f"OU=Students,{school_dn(s)}"} for s in schools]
            + [{"user_type": "staff", "ou": f"OU=Staff,{school_dn(s)}"} for s in schools],
        },
        "grade_levels": {"filter": "(&(objectCategory=group)(cn=Grade *))"},
        "classes": {"filter": "(&(objectCategory=group)(cn=*-MATH-*))"},
    }


@pytest.fixture
def profile_data(slapd: RunningSlapd):
    """``profile_data("starttls", host=...)``: a profile request for the test directory."""
    def build(security: str = "ldaps", **overrides: Any) -> dict[str, Any]:
        return _profile_data(slapd, security, **overrides)
    return build


def _profile_data(server: RunningSlapd, security: str, **overrides: Any) -> dict[str, Any]:
    data = {
        "name": "Orchard test directory",
        "host": server.host,
        "port": server.ldaps_port if security == "ldaps" else server.plain_port,
        "security": security,
        "ca_pem": server.ca_pem,
        "bind_dn": server.service_dn,
        "bind_password": server.service_password,
        "base_dn": BASE_DN,
        "connect_timeout": 5,
        "operation_timeout": 30,
        "sync": ad_sync_settings(server),
        "authentication": {"enabled": True, "login_attribute": "sAMAccountName"},
    }
    data.update(overrides)
    return data
