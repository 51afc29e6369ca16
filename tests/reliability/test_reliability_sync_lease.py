"""Fault 6: an ADE sync loses its lease while it runs (its process paused past the lease, or lost PostgreSQL
for a while, and another replica took the token over). The run stops at its next page instead of syncing in
parallel with the new holder, says why in its run record and the log, and leaves the new holder's lease alone."""
import logging
from datetime import datetime, timedelta, timezone

import pytest

import shared.storage
from services.enrollment.service import EnrollmentService
from shared.errors import Conflict
from tests.conftest import postgres_database
from tests.reliability.conftest import connect_server_token, device_count, execute, query, sync_runs
from tests.reliability.fault_proxy import FaultProxy
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

DEVICES = 3000
PAGE = 100
LEASE_SECONDS = 3  # renewed every second


def token_lease(config: dict, token_id: str) -> tuple:
    return tuple(query(config, "enrollment", "select sync_holder, sync_lease_until, last_sync_result, next_sync_at "
                                             f"from server_tokens where id = '{token_id}'")[0])


def test_a_sync_whose_lease_was_taken_stops_at_its_next_page(
        runner_factory, orchard_config, dep_sandbox, rpc_as, caplog):
    config = orchard_config
    proxy = FaultProxy(int(dep_sandbox.url.rsplit(":", 1)[1]))
    with postgres_database() as database_url:
        config["SERVICES"]["enrollment"].update(database_url=database_url, dep_url=proxy.url_for(dep_sandbox.url),
                                                sync_lease_seconds=LEASE_SECONDS)
        try:
            runner_factory(config, EnrollmentService).start()
            with rpc_as(timeout=60) as rpc:
                token_id, server = connect_server_token(rpc, dep_sandbox)
                wait_for(lambda: sync_runs(config) and sync_runs(config)[-1].finished_at, what="the first (empty) sync")
                dep_sandbox.server(server["server_uuid"], "settings", {"page_maximum": PAGE})
                dep_sandbox.server(server["server_uuid"], "devices/generate", {"count": DEVICES})
                dep_sandbox.http.delete("/_sandbox/requests")
                proxy.delay = 0.1  # a page every ~0.1 s: the run takes seconds, several renewals
                pending = rpc.enrollment.sync_devices.call_async(token_id)
                wait_for(lambda: sync_runs(config)[-1].pages >= 5, what="a few pages stored")

                # our lease ran out and another replica took the token (as its _take_sync_lease does)
                other_until = datetime.now(timezone.utc) + timedelta(minutes=10)
                execute(config, "enrollment", f"update server_tokens set sync_holder = 'other-replica', "
                                              f"sync_lease_until = '{other_until.isoformat()}' where id = '{token_id}'")
                pages_when_taken = device_count(config) // PAGE  # committed pages (the run record shows them twice a second)
                taken = token_lease(config, token_id)
                with caplog.at_level(logging.WARNING, logger="services.enrollment.service"):
                    stopped = pending.result()
        finally:
            proxy.close()

        # stopped within the next renewal (1 s, about ten pages), long before the 30 pages of the whole fetch
        assert stopped["finished_at"] and "another replica took the sync over" in stopped["error"], stopped
        assert pages_when_taken <= stopped["pages"] <= pages_when_taken + 15, (pages_when_taken, stopped)
        assert stopped["pages"] < DEVICES // PAGE
        assert dep_sandbox.counts()["POST /devices/sync 200"] <= stopped["pages"] + 2  # the page it dropped, one read ahead
        # every page the run counted is stored, with the cursor after it; nothing more
        assert device_count(config) == stopped["added"] == stopped["pages"] * PAGE
        cursor = query(config, "enrollment", f"select cursor from server_tokens where id = '{token_id}'")[0][0]
        assert cursor
        # the new holder's lease and the token's sync state are as it set them
        assert token_lease(config, token_id) == taken
        assert taken[0] == "other-replica"
        assert any("stopped: this run's lease ran out" in r.getMessage() and token_id in r.getMessage()
                   for r in caplog.records)


class _FastClock(datetime):
    """The clock of a replica's host that runs two minutes ahead."""

    @classmethod
    def now(cls, tz=None):
        return datetime.now(tz) + timedelta(minutes=2)


def test_a_replica_whose_clock_runs_ahead_does_not_take_a_running_sync(
        runner_factory, orchard_config, dep_sandbox, rpc_as, monkeypatch):
    config = orchard_config
    with postgres_database() as database_url:
        config["SERVICES"]["enrollment"].update(database_url=database_url, dep_url=dep_sandbox.url)
        runner_factory(config, EnrollmentService).start()
        with rpc_as(timeout=60) as rpc:
            token_id, _ = connect_server_token(rpc, dep_sandbox)
            wait_for(lambda: sync_runs(config) and sync_runs(config)[-1].finished_at, what="the first (empty) sync")
            # another replica runs a sync; its lease lasts another minute by the database's clock
            execute(config, "enrollment", "update server_tokens set sync_holder = 'other-replica', "
                                          f"sync_lease_until = now() + interval '60 seconds' where id = '{token_id}'")
            taken = token_lease(config, token_id)

            monkeypatch.setattr(shared.storage, "datetime", _FastClock)  # this replica's clock is two minutes ahead
            with pytest.raises(Conflict, match="already running"):
                rpc.enrollment.sync_devices(token_id)
        assert token_lease(config, token_id) == taken
        assert len(sync_runs(config)) == 1
