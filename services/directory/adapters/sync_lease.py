"""One sync of a profile at a time: a lease in the service's database (the kernel's ``leases`` table).

A lease rather than a lock held by the sync's transaction: the sync holds no database connection while
the directory and the roster work, which on SQLite (one connection per process) would keep every other
request waiting for minutes. It holds on every database and across replicas; a running sync renews it,
and one whose process died loses it within ``SYNC_LEASE``.
"""
from __future__ import annotations

import logging
import uuid
from contextlib import contextmanager
from datetime import timedelta
from typing import Iterator

from sqlalchemy.engine import Engine

from services.directory.adapters.tables import metadata
from shared import leases
from shared.errors import Conflict

log = logging.getLogger(__name__)

SYNC_LEASE = timedelta(seconds=30)
_LEASES = metadata.tables["leases"]


@contextmanager
def sync_lease(engine: Engine, profile_id: int) -> Iterator[leases.Heartbeat]:
    """Hold the profile's sync lease while the block runs; ``Conflict`` at once while another sync holds it.

    Enter and leave it with no database connection held by the caller: it uses connections of its own.
    """
    name, holder = f"directory.sync:{profile_id}", uuid.uuid4().hex
    if not leases.acquire(engine, _LEASES, name, holder, SYNC_LEASE):
        raise Conflict(f"a sync of LDAP profile {profile_id} is already running; try again once it has finished")
    try:
        with leases.renewed(lambda: leases.acquire(engine, _LEASES, name, holder, SYNC_LEASE),
                            every=SYNC_LEASE.total_seconds() / 3) as heartbeat:
            yield heartbeat
    finally:
        try:
            leases.hold_for(engine, _LEASES, name, holder, timedelta(0))
        except Exception:
            log.warning("could not give up the sync lease of LDAP profile %s; it lapses within %s", profile_id,
                        SYNC_LEASE, exc_info=True)
