"""The kernel's plain-Python pieces: configuration, contracts, policy, secrets, the lease heartbeat."""
from pathlib import Path

import eventlet
import pytest
from cryptography.fernet import Fernet

from shared import auth, leases
from shared.auth import Actor, actor_from_context
from shared.config import expand, load_config, service_settings
from shared.contracts.enrollment import DeviceEnrolled
from shared.contracts.roster import ImportBatch, UserImported
from shared.errors import PermissionDenied, ValidationError
from shared.secrets import SecretBox, load_key
from tests.waiting import wait_for


def test_configuration_expands_environment_references_and_parses_whole_values():
    tree = {"a": "${PORT:9101}", "b": "amqp://${HOST:localhost}:5672/", "c": ["${MISSING:}"], "d": "${FLAG:true}"}
    assert expand(tree, {"HOST": "rabbit"}) == {"a": 9101, "b": "amqp://rabbit:5672/", "c": [None], "d": True}
    with pytest.raises(ValidationError, match="NEEDED"):
        expand("${NEEDED}", {})


def test_whole_references_are_typed_only_as_numbers_booleans_and_lists():
    environ = {"NAME": "Acme MDM: North campus", "CODE": "0123", "HEX": "0x1F", "WORD": "yes", "BROKEN": "[1, 2",
               "DELAYS": "[1, 5, 30]", "RATE": "2.5", "NEGATIVE": "-3"}
    typed = {key: expand(f"${{{key}}}", environ) for key in environ}
    assert typed == {"NAME": "Acme MDM: North campus", "CODE": "0123", "HEX": "0x1F", "WORD": "yes", "BROKEN": "[1, 2",
                     "DELAYS": [1, 5, 30], "RATE": 2.5, "NEGATIVE": -3}


def test_the_shipped_configuration_names_every_service(monkeypatch):
    monkeypatch.setenv("DATABASE_URL_ROSTER", "postgresql://db/roster")
    config = load_config()
    for name in ("push", "enrollment", "vpp", "roster", "directory"):
        settings = service_settings(config, name)
        assert isinstance(settings["metrics_port"], int)
        assert settings["database_url"]
    assert service_settings(config, "roster")["database_url"] == "postgresql://db/roster"
    assert len({service_settings(config, n)["metrics_port"] for n in config["SERVICES"]}) == 5


def test_events_round_trip_and_reject_wrong_payloads():
    event = DeviceEnrolled(udid="U1", serial_number="S1", topic="com.apple.mgmt.x", push_token="ab", push_magic="m")
    payload = event.to_payload()
    assert payload["v"] == 1 and payload["event_id"] and payload["occurred_at"]
    assert DeviceEnrolled.from_payload(payload) == event
    assert DeviceEnrolled.SOURCE == "enrollment" and DeviceEnrolled.TYPE == "DeviceEnrolled"
    assert UserImported.from_payload({**UserImported(user_id="u", user_type="student", source="csv").to_payload(),
                                      "added_later": 1}).user_id == "u"
    with pytest.raises(ValidationError, match="missing the required field 'udid'"):
        DeviceEnrolled.from_payload({"topic": "t", "push_token": "a", "push_magic": "m"})
    with pytest.raises(ValidationError, match=r"ImportBatch.users\[0\].locations must be a list"):
        ImportBatch.from_dict({"source": "csv", "users": [{"user_id": "u", "user_type": "student", "locations": "x"}]})


@pytest.mark.parametrize("context, message", [
    (None, "no actor"),
    ({"role": "administrator"}, "no id"),
    ({"id": "a", "role": "root"}, "not one of"),
    ({"id": "a", "role": "location_leader"}, "must name the locations"),
    ({"id": "a", "role": "administrator", "locations": "everywhere"}, "must be a list"),
    ({"id": "a" * 201, "role": "administrator"}, "at most 200 characters"),
    ({"id": "admin\n", "role": "administrator"}, "printable text"),
])
def test_a_missing_or_malformed_actor_is_refused(context, message):
    with pytest.raises(PermissionDenied, match=message):
        actor_from_context(context)


def test_the_policy_decides_roles_and_locations():
    leader = Actor("l", "location_leader", ("north",))
    msp = Actor("m", "msp")
    assert auth.require(Actor("a", "administrator"), "push:write")
    assert auth.allowed(leader, "push:read") and not auth.allowed(leader, "push:write")
    with pytest.raises(PermissionDenied, match="a msp may not read in push"):
        auth.require(msp, "push:read")
    assert auth.visible(leader, ["north", "south"]) and auth.visible(leader, None)
    assert not auth.visible(leader, ["south"]) and auth.visible(msp, ["south"])
    auth.require_locations(leader, ["north"])
    with pytest.raises(PermissionDenied, match="south"):
        auth.require_locations(leader, ["north", "south"])
    with pytest.raises(PermissionDenied, match="every location"):
        auth.require_locations(leader, None)


def test_secrets_are_sealed_rotatable_and_never_shown(tmp_path, monkeypatch):
    monkeypatch.delenv("ORCHARD_SECRET_KEY", raising=False)
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    sealed = SecretBox(old).seal("AS_secret")
    assert "AS_secret" not in sealed and "AS_secret" not in repr(SecretBox(old))
    assert SecretBox(f"{new},{old}").open(sealed) == "AS_secret"
    with pytest.raises(ValidationError, match="cannot be decrypted"):
        SecretBox(new).open(sealed)
    with pytest.raises(ValidationError, match="not a valid key"):
        SecretBox("short")
    key_file = tmp_path / "var" / "secret.key"
    created = load_key(key_file=key_file, create=True)
    assert load_key(key_file=key_file) == created and oct(key_file.stat().st_mode)[-3:] == "600"


def test_a_lease_heartbeat_retries_failed_renewals_and_reports_a_taken_lease():
    answers = iter([True, OSError("the database is away"), True, False])
    calls = []

    def renew() -> bool:
        calls.append(1)
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    with leases.renewed(renew, every=0.01) as heartbeat:
        heartbeat.check()
        wait_for(lambda: heartbeat.lost, timeout=5, what="the taken lease to be noticed")
        eventlet.sleep(0.05)
        assert len(calls) == 4  # the failed renewal was tried again; a taken lease is not renewed any more
        with pytest.raises(leases.LeaseLost):
            heartbeat.check()


def test_lone_surrogates_and_nul_characters_are_found_escaped_or_raw_and_named():
    import json

    from shared.unicode_text import may_hold_unstorable_text, refuse_unstorable_text

    assert not may_hold_unstorable_text(json.dumps({"name": "Zoë"}, ensure_ascii=False).encode())
    assert may_hold_unstorable_text(json.dumps({"name": "\U0001F34E"}))  # a pair: walked, then found valid
    refuse_unstorable_text({"name": "\U0001F34E"}, "the body")
    raw = b'{"users": [{"name": "\xed\xa0\x80"}]}'  # a surrogate's bytes, which json.loads lets through
    assert may_hold_unstorable_text(raw)
    with pytest.raises(ValidationError, match=r"the body.users\[0\].name is not valid Unicode text"):
        refuse_unstorable_text(json.loads(raw), "the body")
    escaped_nul = json.dumps({"tags": {"x\x00": 1}})
    assert may_hold_unstorable_text(escaped_nul) and not may_hold_unstorable_text(json.dumps({"name": "Zoë"}))
    with pytest.raises(ValidationError, match="a key of the body.tags holds a NUL character"):
        refuse_unstorable_text(json.loads(escaped_nul), "the body")


def test_the_shipped_logging_keeps_headers_replies_and_query_strings_out_even_at_debug(tmp_path):
    """Run in a fresh interpreter: the configuration is applied to the process's loggers."""
    import subprocess
    import sys

    script = tmp_path / "log.py"
    script.write_text(
        "import logging, logging.config\n"
        "from shared.config import load_config\n"
        "logging.config.dictConfig(load_config()['LOGGING'])\n"
        "logging.getLogger('httpcore.http11').debug(\"receive_response_headers.complete (b'X-ADM-Auth-Session', b'SESSION-SECRET')\")\n"
        "logging.getLogger('hpack.hpack').debug(\"Adding b':path'=b'/3/device/DEVICE-TOKEN-SECRET'\")\n"
        "logging.getLogger('nameko.rpc').debug('RPC reply event complete resp_body=REPLY-SECRET')\n"
        "logging.getLogger('nameko.web.server').info('127.0.0.1 - - [x] \"GET /enroll?user=s1&password=QUERY-SECRET HTTP/1.1\" 200 5 0.1')\n"
        "logging.getLogger('services.enrollment').debug('a debug line of our own')\n"
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env={"LOG_LEVEL": "DEBUG"},
                            cwd=Path(__file__).resolve().parents[2])
    assert "a debug line of our own" in result.stderr, result.stderr
    assert "SECRET" not in result.stderr and "GET /enroll?[query removed] HTTP/1.1" in result.stderr


def test_a_doubling_delay_starts_short_and_stops_at_its_longest_however_long_the_failures_go_on():
    from datetime import timedelta

    from shared.backoff import doubling_delay

    assert [doubling_delay(n).total_seconds() for n in (0, 1, 2, 6, 7, 10_000)] == [30, 60, 120, 1920, 3600, 3600]
    assert doubling_delay(1, timedelta(minutes=5), timedelta(hours=6)) == timedelta(minutes=10)


def test_periodic_jobs_spread_their_ticks_so_replicas_do_not_tick_together():
    from shared.entrypoints import Periodic

    timer = Periodic(interval=60, jitter=0.1)
    delays = [timer._jittered_interval() for _ in range(2000)]
    assert 54 <= min(delays) < 56 and 64 < max(delays) <= 66  # within 10% either way, and using the spread
    assert len({round(delay, 3) for delay in delays}) > 1500
