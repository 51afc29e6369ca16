"""Failed sign-ins in the service's database, so the limit holds across replicas."""
from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from shared import advisory_locks
from services.directory.adapters.tables import sign_in_failures as failures


class SqlFailureLog:
    def __init__(self, session: Session):
        self.session = session

    def hold(self, key: str) -> None:
        """Until this transaction ends, other sign-ins of ``key`` wait (on PostgreSQL, across replicas; SQLite
        lets one writer at a time through anyway)."""
        advisory_locks.hold(self.session, key)

    def failures_since(self, key: str, since: float) -> list[float]:
        query = sa.select(failures.c.at).where(failures.c.username == key, failures.c.at > since).order_by(failures.c.at)
        return list(self.session.execute(query).scalars())

    def add(self, key: str, at: float, forget_before: float) -> None:
        self.session.execute(failures.delete().where(failures.c.at <= forget_before))
        self.session.execute(failures.insert().values(username=key, at=at))

    def clear(self, key: str) -> None:
        self.session.execute(failures.delete().where(failures.c.username == key))
