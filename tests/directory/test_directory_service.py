"""The directory service over the real broker: profiles, connection test, sign-in, metrics."""
from __future__ import annotations

import socket
import time
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Iterator

import eventlet
import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.fernet import Fernet

from services.directory.adapters.tables import ldap_profiles
from services.directory.service import DirectoryService
from shared.auth import Actor
from shared.config import DEFAULT_CONFIG_PATH, load_config
from shared.errors import Conflict, NotFound, PermissionDenied, UpstreamError, ValidationError
from shared.storage import create_engine_for
from tests.conftest import free_port, replicas_on_postgresql, settle
from tests.directory.conftest import metric_value, metrics_text

pytestmark = pytest.mark.integration

EGRESS = ["203.0.113.10", "2001:db8::10"]


@pytest.fixture
def directory_config(orchard_config):
    orchard_config["SECRET_KEY"] = Fernet.generate_key().decode()
    orchard_config["SERVICES"]["directory"]["egress_ips"] = EGRESS
    return orchard_config


@pytest.fixture
def directory_service(runner_factory, directory_config):
    runner = runner_factory(directory_config, DirectoryService)
    runner.start()
    return runner


def auth_attempts(config) -> dict[str, float]:
    """The sign-in counter by result (counters live for the whole test process: compare differences)."""
    prefix = 'orchard_directory_auth_attempts_total{result="'
    counts = {}
    for line in metrics_text(config).splitlines():
        if line.startswith(prefix):
            result, _, value = line[len(prefix):].partition('"} ')
            counts[result] = float(value)
    return counts


def test_profiles_are_kept_without_ever_returning_the_password(directory_service, rpc_as, profile_data, slapd):
    with rpc_as() as rpc:
        added = rpc.directory.add_ldap_profile(profile_data("starttls"))
        assert slapd.service_password not in str(added) and "bind_password" not in added
        assert (added["security"], added["port"], added["bind_dn"]) == ("starttls", slapd.plain_port, slapd.service_dn)
        assert rpc.directory.list_ldap_profiles() == [rpc.directory.get_ldap_profile(added["id"])]

        with pytest.raises(Conflict, match="already exists"):
            rpc.directory.add_ldap_profile(profile_data())
        with pytest.raises(ValidationError, match="only secure connections are supported"):
            rpc.directory.add_ldap_profile(profile_data(security="ldap", name="plain"))
        with pytest.raises(ValidationError, match="only secure connections are supported"):
            rpc.directory.update_ldap_profile(added["id"], {"security": "ldap"})

        updated = rpc.directory.update_ldap_profile(added["id"], {"sync": {"daily_sync_time": "03:15"}})
        assert updated["sync"]["daily_sync_time"] == "03:15"
        # the sealed password survived the update: the service account still binds
        steps = rpc.directory.test_ldap_profile(added["id"])
        assert [s["step"] for s in steps][:3] == ["connect", "tls", "bind"] and all(s["ok"] for s in steps)

        actions = [entry["action"] for entry in rpc.directory.audit_log(f"ldap_profile:{added['id']}")]
        assert actions == ["ldap_profile.updated", "ldap_profile.added"]
        assert rpc.directory.delete_ldap_profile(added["id"]) == {"deleted": added["id"]}
        with pytest.raises(NotFound):
            rpc.directory.get_ldap_profile(added["id"])


def test_moving_a_profile_to_another_server_needs_its_bind_password(directory_service, rpc_as, profile_data, slapd):
    with rpc_as() as rpc:
        added = rpc.directory.add_ldap_profile(profile_data())
        with pytest.raises(ValidationError, match="changing host needs the bind password again"):
            rpc.directory.update_ldap_profile(added["id"], {"host": "ldap.attacker.example"})
        assert rpc.directory.get_ldap_profile(added["id"]) == added
        assert [e["action"] for e in rpc.directory.audit_log(f"ldap_profile:{added['id']}")] == ["ldap_profile.added"]
        moved = rpc.directory.update_ldap_profile(added["id"], {"host": "127.0.0.1",
                                                                "bind_password": slapd.service_password})
        assert moved["host"] == "127.0.0.1"


def test_a_misspelt_setting_is_refused_and_nothing_is_stored(directory_service, rpc_as, profile_data):
    with rpc_as() as rpc:
        with pytest.raises(ValidationError, match="unknown setting prot: check the spelling"):
            rpc.directory.add_ldap_profile({**profile_data(), "prot": 636})
        assert rpc.directory.list_ldap_profiles() == []

        added = rpc.directory.add_ldap_profile(profile_data())
        with pytest.raises(ValidationError, match=r"unknown setting sync\.users\.filtr: .*sync\.users accepts filter,"):
            rpc.directory.update_ldap_profile(added["id"], {"sync": {"users": {"filtr": "(sAMAccountName=t*)"}}})
        assert rpc.directory.get_ldap_profile(added["id"]) == added
        assert [e["action"] for e in rpc.directory.audit_log(f"ldap_profile:{added['id']}")] == ["ldap_profile.added"]


def test_only_administrators_change_profiles(directory_service, rpc_as, profile_data):
    leader = Actor(id="lead@school.example", role="location_leader", locations=("Lincoln High",))
    with rpc_as(leader) as rpc:
        with pytest.raises(PermissionDenied):
            rpc.directory.add_ldap_profile(profile_data())
        assert rpc.directory.egress_ips() == EGRESS


def deployed_egress_ips(environment: str) -> object:
    """``egress_ips`` as deploy/config.yaml reads it when ORCHARD_EGRESS_IPS is ``environment``."""
    config = load_config(DEFAULT_CONFIG_PATH, environ={"ORCHARD_EGRESS_IPS": environment})
    return config["SERVICES"]["directory"]["egress_ips"]


@pytest.mark.parametrize("environment, addresses", [
    ("203.0.113.5", ["203.0.113.5"]),
    ("203.0.113.5,198.51.100.7", ["203.0.113.5", "198.51.100.7"]),
    ("2001:db8::1", ["2001:db8::1"]),
])
def test_egress_addresses_set_in_plain_form_in_the_environment(runner_factory, directory_config, rpc_as,
                                                               environment, addresses):
    directory_config["SERVICES"]["directory"]["egress_ips"] = deployed_egress_ips(environment)
    runner_factory(directory_config, DirectoryService).start()
    with rpc_as() as rpc:
        assert rpc.directory.egress_ips() == addresses


def test_an_egress_entry_that_is_not_an_address_stops_the_service_at_start(runner_factory, directory_config):
    directory_config["SERVICES"]["directory"]["egress_ips"] = deployed_egress_ips("203.0.113.5, nat.school.example")
    with pytest.raises(ValidationError, match="'nat.school.example' is not an IP address or network"):
        runner_factory(directory_config, DirectoryService).start()


def test_the_connection_test_reports_each_step_and_the_certificate_expiry(
        directory_service, directory_config, rpc_as, profile_data):
    with rpc_as() as rpc:
        profile_id = rpc.directory.add_ldap_profile(profile_data())["id"]
        steps = rpc.directory.test_ldap_profile(profile_id, "t00001", "correct horse battery")
        assert {s["step"]: s["ok"] for s in steps} == {
            "connect": True, "tls": True, "bind": True, "search grade levels": True, "search users": True,
            "search classes": True, "authenticate": True}
        assert rpc.directory.get_ldap_profile(profile_id)["certificate_not_after"] == steps[1]["not_after"]
        bad = rpc.directory.add_ldap_profile(profile_data(name="wrong password", bind_password="nope"))
        steps = rpc.directory.test_ldap_profile(bad["id"])
        assert steps[-1]["step"] == "bind" and not steps[-1]["ok"] and "refused the bind" in steps[-1]["detail"]
    text = metrics_text(directory_config)
    assert f'orchard_directory_tls_certificate_expiry_timestamp_seconds{{profile="{profile_id}"}}' in text
    assert f'orchard_directory_bind_failures_total{{profile="{bad["id"]}"}}' in text


@contextmanager
def profile_updates() -> Iterator[list[str]]:
    """The UPDATE statements on LDAP profiles that this process sends while the block runs."""
    statements: list[str] = []

    def seen(connection, cursor, statement, parameters, context, executemany) -> None:
        if statement.lstrip().upper().startswith("UPDATE LDAP_PROFILES"):
            statements.append(statement)
    sa.event.listen(sa.Engine, "before_cursor_execute", seen)
    try:
        yield statements
    finally:
        sa.event.remove(sa.Engine, "before_cursor_execute", seen)


def test_sign_ins_keep_the_certificate_expiry_current_without_writing_it_each_time(
        directory_service, directory_config, rpc_as, profile_data, slapd):
    server_certificate = x509.load_pem_x509_certificate((slapd.workdir / "server.pem").read_bytes())
    expires = server_certificate.not_valid_after_utc
    with rpc_as() as rpc:
        profile_id = rpc.directory.add_ldap_profile(profile_data())["id"]  # used for sign-ins only
        assert rpc.directory.authenticate("t00001", "correct horse battery")["authenticated"] is True
        assert rpc.directory.get_ldap_profile(profile_id)["certificate_not_after"] == expires.isoformat()
        assert metric_value(directory_config, "orchard_directory_tls_certificate_expiry_timestamp_seconds",
                            profile=str(profile_id)) == expires.timestamp()

        with profile_updates() as updates:
            assert rpc.directory.authenticate("t00001", "correct horse battery")["authenticated"] is True
            assert rpc.directory.authenticate("t00001", "incorrect")["authenticated"] is False
        assert updates == []  # the same certificate: nothing to write

        engine = create_engine_for(directory_config["SERVICES"]["directory"]["database_url"])
        with engine.begin() as connection:  # what an earlier certificate of the server left
            connection.execute(ldap_profiles.update().values(certificate_not_after=expires - timedelta(days=365)))
        engine.dispose()
        rpc.directory.authenticate("t00001", "incorrect")
        assert datetime.fromisoformat(rpc.directory.get_ldap_profile(profile_id)["certificate_not_after"]) == expires


def test_sign_in_against_the_directory(directory_service, directory_config, rpc_as, profile_data):
    before = auth_attempts(directory_config)
    with rpc_as() as rpc:
        with pytest.raises(NotFound, match="no LDAP profile validates passwords"):
            rpc.directory.authenticate("t00001", "correct horse battery")
        rpc.directory.add_ldap_profile(profile_data())
        assert rpc.directory.authenticate("t00001", "correct horse battery") == {
            "authenticated": True, "user_id": "t00001"}
        assert rpc.directory.authenticate("lee*)(x", "parenthesised pass")["authenticated"] is True
        wrong = rpc.directory.authenticate("t00001", "incorrect")
        unknown = rpc.directory.authenticate("nobody", "incorrect")
        wildcard = rpc.directory.authenticate("*)(sAMAccountName=*", "correct horse battery")
        assert wrong == unknown == wildcard == {"authenticated": False, "user_id": None}
        with pytest.raises(ValidationError, match="a password is required"):
            rpc.directory.authenticate("t00001", "")
        for _ in range(4):
            rpc.directory.authenticate("t00001", "incorrect")
        with pytest.raises(PermissionDenied, match="too many failed sign-ins"):
            rpc.directory.authenticate("t00001", "correct horse battery")
    after = auth_attempts(directory_config)
    assert {result: after[result] - before.get(result, 0) for result in after} == {
        "success": 2, "failure": 7, "refused": 1, "rate_limited": 1}


def test_the_sign_in_limit_holds_while_another_directory_is_down(directory_service, rpc_as, profile_data):
    """A wrong guess answered by the first directory counts though the second one's failure is the reply, and
    the RPC's error does not undo it."""
    with rpc_as() as rpc:
        rpc.directory.add_ldap_profile(profile_data())
        rpc.directory.add_ldap_profile(profile_data(name="second school, domain controller down", port=free_port()))
        for guess in range(5):
            with pytest.raises(UpstreamError, match="the directory failed while connecting"):
                rpc.directory.authenticate("t00001", f"guess {guess}")
        with pytest.raises(PermissionDenied, match="too many failed sign-ins"):
            rpc.directory.authenticate("t00001", "correct horse battery")


def test_the_sign_in_limit_holds_across_replicas(runner_factory, directory_config, rpc_as, profile_data):
    with replicas_on_postgresql(runner_factory, directory_config, DirectoryService):
        with rpc_as() as rpc:
            rpc.directory.add_ldap_profile(profile_data())
            for _ in range(5):  # spread over both replicas by the broker
                assert rpc.directory.authenticate("t00002", "incorrect")["authenticated"] is False
            for _ in range(4):
                with pytest.raises(PermissionDenied, match="too many failed sign-ins"):
                    rpc.directory.authenticate("t00002", "correct horse battery")


def test_any_username_sign_in_accepts_fits_the_database(runner_factory, directory_config, database_url, rpc_as,
                                                        profile_data):
    directory_config["SERVICES"]["directory"]["database_url"] = database_url  # SQLite, then PostgreSQL
    runner_factory(directory_config, DirectoryService).start()
    with rpc_as() as rpc:
        rpc.directory.add_ldap_profile(profile_data())
        with pytest.raises(ValidationError, match="at most 320"):
            rpc.directory.authenticate("t" * 321, "incorrect")
        # the longest names, grown by case folding (ß -> ss) or NFKC (one character -> 18), still fit
        for username in ("ß" * 320, "\ufdfa" * 320):
            assert rpc.directory.authenticate(username, "incorrect") == {"authenticated": False, "user_id": None}


def ten_wrong_passwords_at_once_count_against_one_limit(rpc_as, profile_data, username: str) -> None:
    with rpc_as() as rpc:
        rpc.directory.add_ldap_profile(profile_data())
        replies = [rpc.directory.authenticate.call_async(username, f"guess {n}") for n in range(10)]
        outcomes = settle(replies, PermissionDenied)
        refused = [o for o in outcomes if "too many failed sign-ins" in str(o)]
        assert outcomes.count({"authenticated": False, "user_id": None}) == 5 and len(refused) == 5, outcomes


def test_on_sqlite_sign_ins_of_one_username_at_once_count_against_one_limit(directory_service, rpc_as, profile_data):
    """The process holds each name while its sign-in runs, not the database: the failures are counted all the same."""
    ten_wrong_passwords_at_once_count_against_one_limit(rpc_as, profile_data, "t00004")


def test_on_sqlite_other_calls_are_answered_while_a_sign_in_waits_for_a_directory(directory_service, rpc_as,
                                                                                 profile_data):
    """A domain controller that accepts the connection and then says nothing: the sign-in waits its timeout out,
    holding no database connection, which is the process's only one on SQLite."""
    silent = socket.create_server(("127.0.0.1", 0))
    try:
        with rpc_as() as rpc:
            rpc.directory.add_ldap_profile(profile_data(port=silent.getsockname()[1], connect_timeout=4,
                                                        operation_timeout=4))
            signing_in = rpc.directory.authenticate.call_async("t00001", "a guess")
            eventlet.sleep(0.5)
            started = time.monotonic()
            assert len(rpc.directory.list_ldap_profiles()) == 1
            assert time.monotonic() - started < 2
            with pytest.raises(UpstreamError):
                signing_in.result()
    finally:
        silent.close()


def test_sign_ins_of_one_username_at_once_count_against_one_limit(runner_factory, directory_config, rpc_as, profile_data):
    """Ten wrong passwords at once over two replicas on PostgreSQL: each sees the failures before it."""
    with replicas_on_postgresql(runner_factory, directory_config, DirectoryService):
        ten_wrong_passwords_at_once_count_against_one_limit(rpc_as, profile_data, "t00003")
