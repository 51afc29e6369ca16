"""Leases are timed by the database's clock: replicas whose clocks disagree still agree on when one ran out."""
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

import shared.storage
from shared import leases
from shared.storage import KernelTables, add_kernel_tables, create_engine_for
from tests.conftest import postgres_database

SKEW = timedelta(minutes=2)


class _FastClock(datetime):
    """The clock of a replica's host that runs two minutes ahead."""

    @classmethod
    def now(cls, tz=None):
        return datetime.now(tz) + SKEW


@pytest.fixture
def lease_table() -> Iterator[tuple[sa.Engine, sa.Table]]:
    metadata = sa.MetaData()
    add_kernel_tables(metadata)
    with postgres_database() as url:
        engine = create_engine_for(url)
        metadata.create_all(engine)
        yield engine, KernelTables(metadata).leases
        engine.dispose()


def test_a_replica_whose_clock_runs_ahead_cannot_take_a_running_lease(lease_table, monkeypatch):
    engine, table = lease_table
    assert leases.acquire(engine, table, "job", "replica-a", timedelta(seconds=60))

    monkeypatch.setattr(shared.storage, "datetime", _FastClock)  # every clock Orchard reads is now ahead
    assert not leases.acquire(engine, table, "job", "replica-b", timedelta(seconds=60))

    # nor does the fast replica's own lease outlast its term by the skew
    leases.hold_for(engine, table, "job", "replica-a", timedelta(0))
    assert leases.acquire(engine, table, "job", "replica-b", timedelta(seconds=60))
    with engine.connect() as connection:
        left = connection.execute(sa.select(sa.type_coerce(table.c.expires_at - sa.func.clock_timestamp(), sa.Interval))).scalar_one()
    assert timedelta(seconds=55) < left <= timedelta(seconds=60)


def test_a_lease_given_up_is_free_at_once_and_a_held_one_is_not(lease_table):
    engine, table = lease_table
    assert leases.acquire(engine, table, "job", "replica-a", timedelta(seconds=60))
    assert leases.acquire(engine, table, "job", "replica-a", timedelta(seconds=60))  # the holder extends it
    assert not leases.acquire(engine, table, "job", "replica-b", timedelta(seconds=60))
    leases.hold_for(engine, table, "job", "replica-a", timedelta(0))
    assert leases.acquire(engine, table, "job", "replica-b", timedelta(seconds=60))
