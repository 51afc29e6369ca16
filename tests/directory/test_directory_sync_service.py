"""Directory syncs into the real roster service over RabbitMQ: preview, apply, only-add-new, guards, schedule;
and, with a roster that holds its answers (``HeldRoster``), what other requests see while a sync runs."""
from __future__ import annotations

import threading
from datetime import datetime, timezone

import eventlet
import pytest
from cryptography.fernet import Fernet
from nameko.events import event_handler
from nameko.rpc import rpc
from nameko.testing.services import entrypoint_hook
from nameko.testing.utils import get_container

import shared.storage
from services.directory.service import DirectoryService
from services.roster.service import RosterService
from shared.errors import Conflict, UpstreamError
from tests.conftest import free_port, postgres_database, settle
from tests.directory.conftest import metric_value
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

IMPORTED: list[dict] = []
AD_USERS = "(&(objectCategory=person)(objectClass=user))"
TEACHERS = f"(&{AD_USERS}(sAMAccountName=t*))"  # a small district keeps the slower tests quick


def with_users_filter(data: dict, users_filter: str, **sync) -> dict:
    return {**data, "sync": {**data["sync"], **sync, "users": {**data["sync"]["users"], "filter": users_filter}}}


class ImportedUsers:
    name = "directory_test_imported_users"

    @event_handler("roster", "UserImported")
    def user_imported(self, payload):
        IMPORTED.append(payload)


class HeldRoster:
    """The roster service, answering each preview only once the test lets it: a sync as long as a test needs."""
    name = "roster"
    previews: list[tuple[str, bool]] = []  # each preview's source and only_add_new, in the order asked
    previewing = threading.Event()
    released = threading.Event()

    @rpc
    def preview_records(self, payload, options):
        HeldRoster.previews.append((payload["source"], options["only_add_new"]))
        HeldRoster.previewing.set()
        HeldRoster.released.wait(timeout=60)
        return {"plan_id": f"plan {len(HeldRoster.previews)}", "counts": {}, "total_changes": 0}

    @rpc
    def apply_plan(self, plan_id):
        return {"plan_id": plan_id, "status": "applied"}


@pytest.fixture
def held_roster(runner_factory, orchard_config):
    """The directory service (on SQLite) and a ``HeldRoster``."""
    orchard_config["SECRET_KEY"] = Fernet.generate_key().decode()
    HeldRoster.previews.clear()
    HeldRoster.previewing.clear()
    HeldRoster.released.clear()
    runner = runner_factory(orchard_config, DirectoryService, HeldRoster)
    runner.start()
    yield runner
    HeldRoster.released.set()  # a test that failed midway leaves no worker waiting


@pytest.fixture
def services(runner_factory, orchard_config):
    orchard_config["SECRET_KEY"] = Fernet.generate_key().decode()
    IMPORTED.clear()
    runner = runner_factory(orchard_config, DirectoryService, RosterService, ImportedUsers)
    runner.start()
    return runner


def test_preview_then_apply_imports_the_directory_and_publishes_user_imported(services, rpc_as, profile_data, slapd):
    people = slapd.tree.people
    with rpc_as() as rpc:
        profile_id = rpc.directory.add_ldap_profile(profile_data(sync={
            **profile_data()["sync"], "welcome_email": True}))["id"]

        preview = rpc.directory.sync_ldap_profile(profile_id)
        assert preview["read"] == {"users": len(people), "grade_levels": 8, "classes": len(slapd.tree.classes),
                                   "locations": 2, "rejected": 0}
        assert preview["plan"]["counts"]["user"]["add"] == len(people) and preview["applied"] is None
        assert rpc.roster.list_users()["total"] == 0  # a preview writes nothing

        applied = rpc.directory.sync_ldap_profile(profile_id, apply=True)
        assert applied["applied"]["status"] == "applied"
        assert rpc.roster.list_users()["total"] == len(people)
        stored, person = rpc.roster.get_user("s00001"), slapd.tree.person("s00001")
        assert (stored["user_type"], stored["grade_level"], stored["locations"]) == (
            "student", f"Grade {person.grade}", [person.school])
        last = rpc.directory.get_ldap_profile(profile_id)["last_sync"]
        assert last["outcome"] == "applied" and last["message"].startswith(f"read {len(people)} users")

        again = rpc.directory.sync_ldap_profile(profile_id)  # the directory did not change: nothing to do
        assert again["plan"]["total_changes"] == 0

    wait_for(lambda: len(IMPORTED) >= len(people), timeout=30, what="UserImported for every directory user")
    teacher = next(p for p in IMPORTED if p["user_id"] == "t00001")
    assert teacher["source"].startswith("ldap:")  # each profile is its own source
    assert (teacher["user_type"], teacher["welcome_email"]) == ("teacher", True)
    assert teacher["email"] == "t00001@orchard.test"


def test_only_add_new_adds_users_and_leaves_existing_ones_alone(services, rpc_as, profile_data):
    with rpc_as() as rpc:
        profile_id = rpc.directory.add_ldap_profile(
            with_users_filter(profile_data(), f"(&{TEACHERS}(!(sAMAccountName=t0000*)))"))["id"]
        rpc.directory.sync_ldap_profile(profile_id, apply=True)
        # everyone's name would now change (cn instead of displayName), and nine teachers are new
        rpc.directory.update_ldap_profile(profile_id, {"sync": {
            "only_add_new": True, "users": {"filter": TEACHERS, "display_name": "cn"}}})
        plan = rpc.directory.sync_ldap_profile(profile_id, apply=True)["plan"]
        assert plan["counts"]["user"] == {"add": 9, "update": 0, "delete": 0}
        assert plan["skipped_updates"] > 0
        assert rpc.roster.get_user("t00010")["name"] == "Kai Adams"  # kept, not "t00010"
        assert rpc.roster.get_user("t00003")["name"] == "t00003"  # new: mapped with the new settings


def sync_runs(config: dict, profile_id: int, outcome: str) -> float:
    return metric_value(config, "orchard_directory_sync_runs_total", profile=str(profile_id), trigger="manual",
                        mode="apply", outcome=outcome)


def test_a_failed_read_is_an_error_and_never_an_empty_plan(services, orchard_config, rpc_as, profile_data):
    with rpc_as() as rpc:
        good = rpc.directory.add_ldap_profile(with_users_filter(profile_data(), TEACHERS))["id"]
        before = {outcome: sync_runs(orchard_config, good, outcome) for outcome in ("success", "error")}
        rpc.directory.sync_ldap_profile(good, apply=True)
        total = rpc.roster.list_users()["total"]

        rpc.directory.update_ldap_profile(good, {"sync": {"users": {"filter": "(sAMAccountName=left-the-district)"}}})
        with pytest.raises(UpstreamError, match="matched nothing"):
            rpc.directory.sync_ldap_profile(good, apply=True)
        rpc.directory.update_ldap_profile(good, {"sync": {"users": {"filter": TEACHERS}}, "bind_password": "expired"})
        with pytest.raises(UpstreamError, match="refused the bind"):
            rpc.directory.sync_ldap_profile(good, apply=True)

        assert rpc.roster.list_users()["total"] == total
        last = rpc.directory.get_ldap_profile(good)["last_sync"]
        assert last["outcome"] == "failed" and "refused the bind" in last["message"]
    # counted per profile, so that one profile's successes cannot hide another's failures
    assert {outcome: sync_runs(orchard_config, good, outcome) - before[outcome] for outcome in before} == {
        "success": 1, "error": 2}


def test_the_daily_sync_applies_once_a_day(services, rpc_as, profile_data, slapd):
    with rpc_as() as rpc:
        profile_id = rpc.directory.add_ldap_profile(
            with_users_filter(profile_data(), TEACHERS, daily_sync_time="00:00"))["id"]
        rpc.directory.add_ldap_profile(profile_data(name="manual only"))
    container = get_container(services, DirectoryService)
    with entrypoint_hook(container, "run_daily_syncs") as run_daily_syncs:
        run_daily_syncs()
    with rpc_as() as rpc:
        profiles = {p["id"]: p for p in rpc.directory.list_ldap_profiles()}
        assert profiles[profile_id]["last_sync"]["outcome"] == "applied"
        assert [p["last_sync"]["outcome"] for i, p in profiles.items() if i != profile_id] == [None]
        assert rpc.roster.list_users()["total"] == len(slapd.tree.of_kind("teacher")) - 1  # not lee*)(x
        first_run = profiles[profile_id]["last_sync"]["at"]
    with entrypoint_hook(container, "run_daily_syncs") as run_daily_syncs:
        run_daily_syncs()  # already ran today: nothing happens
    with rpc_as() as rpc:
        assert rpc.directory.get_ldap_profile(profile_id)["last_sync"]["at"] == first_run


class SchoolClock(datetime):
    """The clock every part of Orchard in this process reads (``shared.storage.utc_now``), set by the test."""
    at = datetime(2026, 3, 2, 3, 0, tzinfo=timezone.utc)

    @classmethod
    def now(cls, tz=None):
        return cls.at.astimezone(tz) if tz else cls.at.replace(tzinfo=None)


def test_a_failed_daily_sync_is_tried_again_the_same_day(services, rpc_as, profile_data, slapd, monkeypatch):
    monkeypatch.setattr(shared.storage, "datetime", SchoolClock)
    with rpc_as() as rpc:
        rebooting = rpc.directory.add_ldap_profile(with_users_filter(  # its server does not answer at 03:00
            profile_data(port=free_port()), TEACHERS, daily_sync_time="03:00"))["id"]
        refused = rpc.directory.add_ldap_profile(with_users_filter(
            profile_data(name="expired password", bind_password="expired"), TEACHERS, daily_sync_time="03:00"))["id"]
    container = get_container(services, DirectoryService)

    def run_at(day: int, hour: int, minute: int) -> dict[int, dict]:
        monkeypatch.setattr(SchoolClock, "at", datetime(2026, 3, day, hour, minute, tzinfo=timezone.utc))
        with entrypoint_hook(container, "run_daily_syncs") as run_daily_syncs:
            run_daily_syncs()
        with rpc_as() as rpc:
            return {p["id"]: p["last_sync"] for p in rpc.directory.list_ldap_profiles()}

    first = run_at(2, 3, 0)
    assert first[rebooting]["outcome"] == first[refused]["outcome"] == "failed"
    assert "refused the bind" in first[refused]["message"]
    assert run_at(2, 3, 4) == first  # not before five minutes have passed

    with rpc_as() as rpc:
        rpc.directory.update_ldap_profile(rebooting, {"port": slapd.ldaps_port})  # the server is back
    retried = run_at(2, 3, 5)
    assert retried[rebooting]["outcome"] == "applied" and retried[rebooting]["at"].startswith("2026-03-02T03:05")
    assert retried[refused] == first[refused]  # a refused password is not tried again: it could lock the account
    assert run_at(2, 4, 0) == retried  # the day's sync is done

    next_day = run_at(3, 3, 0)
    assert next_day[refused]["at"].startswith("2026-03-03T03:00") and next_day[rebooting]["at"].startswith("2026-03-03")


def test_a_second_sync_of_a_profile_while_one_runs_is_refused_at_once(runner_factory, orchard_config, rpc_as,
                                                                       profile_data, slapd):
    """On PostgreSQL, shared by replicas: the second caller learns so at once instead of holding a worker."""
    orchard_config["SECRET_KEY"] = Fernet.generate_key().decode()
    with postgres_database() as database_url:
        orchard_config["SERVICES"]["directory"]["database_url"] = database_url
        runner_factory(orchard_config, DirectoryService, RosterService).start()
        with rpc_as() as rpc:
            profile_id = rpc.directory.add_ldap_profile(profile_data())["id"]
            outcomes = settle([rpc.directory.sync_ldap_profile.call_async(profile_id) for _ in range(2)], Conflict)
            assert sum(isinstance(o, dict) and o["read"]["users"] == len(slapd.tree.people) for o in outcomes) == 1, outcomes
            assert f"a sync of LDAP profile {profile_id} is already running" in str(outcomes)
            assert rpc.directory.sync_ldap_profile(profile_id)["plan"]["counts"]["user"]["add"] == len(slapd.tree.people)


def test_a_running_sync_keeps_no_one_waiting_for_the_database(held_roster, rpc_as, profile_data):
    """On SQLite the process has one database connection: a sync takes it only to read or write, not while the
    directory and the roster work (sign-ins at the enrollment page would wait minutes behind it), and a second
    sync of the profile is refused at once there too."""
    with rpc_as() as rpc, rpc_as(timeout=5) as quick:
        profile_id = rpc.directory.add_ldap_profile(with_users_filter(profile_data(), TEACHERS))["id"]
        syncing = rpc.directory.sync_ldap_profile.call_async(profile_id)
        assert HeldRoster.previewing.wait(timeout=20)
        assert quick.directory.get_ldap_profile(profile_id)["id"] == profile_id
        assert quick.directory.authenticate("t00001", "correct horse battery")["authenticated"] is True
        with pytest.raises(Conflict, match=f"a sync of LDAP profile {profile_id} is already running"):
            quick.directory.sync_ldap_profile(profile_id)
        HeldRoster.released.set()
        assert syncing.result()["plan"]["plan_id"] == "plan 1"
        assert rpc.directory.get_ldap_profile(profile_id)["last_sync"]["outcome"] == "previewed"
        assert rpc.directory.sync_ldap_profile(profile_id)["plan"]["plan_id"] == "plan 2"  # the lease was given up


def test_each_daily_sync_uses_its_profile_as_it_is_when_its_turn_comes(held_roster, rpc_as, profile_data):
    """Profiles sync one after the other, each taking minutes in a large district: one an administrator changes or
    deletes meanwhile is synced as it is by then, or not at all, never with the settings the round began with."""
    with rpc_as() as rpc:
        first, deleted, changed = (
            rpc.directory.add_ldap_profile(with_users_filter(profile_data(name=name), TEACHERS,
                                                             daily_sync_time="00:00"))["id"]
            for name in ("first", "deleted meanwhile", "changed meanwhile"))
    with entrypoint_hook(get_container(held_roster, DirectoryService), "run_daily_syncs") as run_daily_syncs:
        round_of_syncs = eventlet.spawn(run_daily_syncs)
        assert HeldRoster.previewing.wait(timeout=20)  # the first profile's sync is running
        with rpc_as() as rpc:
            rpc.directory.delete_ldap_profile(deleted)
            rpc.directory.update_ldap_profile(changed, {"sync": {"only_add_new": True}})
        HeldRoster.released.set()
        round_of_syncs.wait()
    assert HeldRoster.previews == [(f"ldap:{first}", False), (f"ldap:{changed}", True)]
