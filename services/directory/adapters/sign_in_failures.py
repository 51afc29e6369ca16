"""Failed sign-ins in the service's database, so the limit holds across replicas."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import sqlalchemy as sa
from eventlet.semaphore import Semaphore
from sqlalchemy.orm import Session

from shared import advisory_locks
from services.directory.adapters.tables import sign_in_failures as failures


class SqlFailureLog:
    def __init__(self, session: Session):
        self.session = session

    def hold(self, key: str) -> None:
        """Until this transaction ends, other sign-ins of ``key`` wait, across replicas (PostgreSQL)."""
        advisory_locks.hold(self.session, key)

    def failures_since(self, key: str, since: float) -> list[float]:
        query = sa.select(failures.c.at).where(failures.c.username == key, failures.c.at > since).order_by(failures.c.at)
        return list(self.session.execute(query).scalars())

    def add(self, key: str, at: float, forget_before: float) -> None:
        self.session.execute(failures.delete().where(failures.c.at <= forget_before))
        self.session.execute(failures.insert().values(username=key, at=at))

    def clear(self, key: str) -> None:
        self.session.execute(failures.delete().where(failures.c.username == key))


@contextmanager
def sign_in_failure_log(session: Session, commit: Callable[[], None]) -> Iterator[SqlFailureLog]:
    """The failure log for one sign-in.

    On PostgreSQL the sign-in's transaction holds the names it checks (advisory locks) until it ends,
    across replicas. On SQLite the process has the database's one connection, which every other call
    needs while the directories answer (a domain controller that does not answer takes a minute), so
    each read and write is committed at once and the names are held in this process instead: it is the
    only one on the file (a second is refused at start).
    """
    if session.get_bind().dialect.name == "postgresql":
        yield SqlFailureLog(session)
        return
    log = _CommittedAtOnce(session, commit)
    try:
        yield log
    finally:
        log.let_go()


class _CommittedAtOnce(SqlFailureLog):
    def __init__(self, session: Session, commit: Callable[[], None]):
        super().__init__(session)
        self._commit = commit
        self._held: list[str] = []

    def hold(self, key: str) -> None:
        _NAMES.take(key)
        self._held.append(key)

    def failures_since(self, key: str, since: float) -> list[float]:
        found = super().failures_since(key, since)
        self._commit()
        return found

    def add(self, key: str, at: float, forget_before: float) -> None:
        super().add(key, at, forget_before)
        self._commit()

    def clear(self, key: str) -> None:
        super().clear(key)
        self._commit()

    def let_go(self) -> None:
        while self._held:
            _NAMES.give(self._held.pop())


class _NameTurns:
    """One holder at a time per name, within this process; a name nobody holds or waits for is forgotten."""

    def __init__(self) -> None:
        self._names: dict[str, tuple[Semaphore, list[int]]] = {}

    def take(self, name: str) -> None:
        turn, count = self._names.setdefault(name, (Semaphore(1), [0]))
        count[0] += 1  # before waiting: a name is forgotten only once no one holds or waits for it
        turn.acquire()

    def give(self, name: str) -> None:
        turn, count = self._names[name]
        count[0] -= 1
        if not count[0]:
            del self._names[name]
        turn.release()


_NAMES = _NameTurns()
