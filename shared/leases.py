"""Leases: at most one replica of a service runs a given job at a given time.

A lease is a row (name, holder, expires_at) in the service's own database. Taking
it is a single conditional UPDATE (or an INSERT for a new name), which the
database serialises, so two replicas can never both succeed. Its end is set and
compared by the database's clock, so replicas whose clocks disagree still agree
on when it ran out.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

import eventlet
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from shared.errors import Conflict
from shared.storage import database_now

log = logging.getLogger(__name__)


def acquire(engine: Engine, leases: sa.Table, name: str, holder: str, duration: timedelta) -> bool:
    """Take or extend the lease ``name`` for ``holder``; False while someone else holds it."""
    dialect = engine.dialect.name
    expires = database_now(dialect, duration)
    with engine.begin() as connection:
        updated = connection.execute(
            leases.update()
            .where(leases.c.name == name,
                   sa.or_(leases.c.expires_at <= database_now(dialect), leases.c.holder == holder))
            .values(holder=holder, expires_at=expires)
        ).rowcount
        if updated:
            return True
    try:
        with engine.begin() as connection:
            connection.execute(leases.insert().values(name=name, holder=holder, expires_at=expires))
        return True
    except sa.exc.IntegrityError:
        return False  # another replica inserted it first


def hold_for(engine: Engine, leases: sa.Table, name: str, holder: str, duration: timedelta) -> None:
    """Keep the lease for ``duration`` from now (after a run, so the job is not repeated within its interval;
    zero gives it up)."""
    with engine.begin() as connection:
        connection.execute(leases.update().where(leases.c.name == name, leases.c.holder == holder)
                           .values(expires_at=database_now(engine.dialect.name, duration)))


class LeaseLost(Conflict):
    """The lease ran out and another holder took it: the work under it must stop."""


class Heartbeat:
    """What the work under ``renewed`` learns of its lease."""

    def __init__(self) -> None:
        self.lost = False

    def check(self) -> None:
        """Raise ``LeaseLost`` once a renewal found the lease taken; call it where stopping is safe."""
        if self.lost:
            raise LeaseLost("the lease ran out and another holder took it")


@contextmanager
def renewed(renew: Callable[[], bool], every: float) -> Iterator[Heartbeat]:
    """Call ``renew`` every ``every`` seconds while the block runs (a green thread beside it).

    A lease renewed by a heartbeat can be short: a live holder keeps it however slow its work is,
    and a holder that died loses it soon. ``renew`` returns False when the lease is no longer ours
    (it ran out, e.g. during a long pause, and someone else took it): the beats stop and the yielded
    ``Heartbeat`` says so, for the work to stop at its next safe point. A failed renewal (an
    exception) is logged and tried at the next beat.
    """
    heartbeat = Heartbeat()

    def beat() -> None:
        while True:
            eventlet.sleep(every)
            try:
                if not renew():
                    heartbeat.lost = True
                    return
            except Exception:
                log.warning("could not renew a lease; trying again in %.0f s", every, exc_info=True)

    heart = eventlet.spawn(beat)
    try:
        yield heartbeat
    finally:
        heart.kill()
