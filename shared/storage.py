"""Each service's own database: engine, kernel tables and a session per worker.

A service declares its tables on its own ``MetaData`` and adds the kernel's
(outbox, inbox, audit log, leases) with ``add_kernel_tables``. The ``Database``
dependency gives every worker a ``UnitOfWork``; Orchard's entrypoints commit it
when the method returns, *before* the RPC reply is sent or the message is
acknowledged, and roll it back otherwise.
"""
from __future__ import annotations

import fcntl
import logging
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from nameko.extensions import DependencyProvider
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from shared import json_text, runtime
from shared.errors import Conflict
from shared.auth import Actor
from shared.config import service_settings
from shared.contracts.base import MAX_EVENT_ID_LENGTH, Event

log = logging.getLogger(__name__)


def unique_key_taken(exc: BaseException) -> str | None:
    """The unique key (constraint name, or the columns on SQLite) a failed write collided with, else None.

    Two replicas that check "is it there?" and then insert can both find nothing: the loser's insert
    fails on the key, which is a conflict with the winner's change, not a fault.
    """
    if not isinstance(exc, sa.exc.IntegrityError):
        return None
    original = exc.orig
    if getattr(original, "pgcode", None) == "23505":  # unique_violation
        diagnostics = getattr(original, "diag", None)
        return getattr(diagnostics, "constraint_name", None) or "a unique key"
    text = str(original)
    return text.split("UNIQUE constraint failed: ", 1)[1] if "UNIQUE constraint failed: " in text else None


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def database_now(dialect_name: str, plus: timedelta = timedelta(0)) -> sa.ColumnElement[datetime]:
    """Now (plus ``plus``) by the database's clock, for times replicas compare, such as a lease's end.

    Replicas on different hosts disagree about the time by their clocks' skew; the one database
    they share gives them one clock. SQLite is a file on one host, whose clock it already is.
    """
    if dialect_name == "postgresql":
        # the statement's own time, not the transaction's start (``now()``): a transaction can be old
        now = sa.func.clock_timestamp(type_=UtcDateTime())
        return now + sa.literal(plus, sa.Interval()) if plus else now
    return sa.literal(utc_now() + plus, UtcDateTime())


class UtcDateTime(sa.types.TypeDecorator):
    """A timestamp that is always timezone-aware UTC, on SQLite as on PostgreSQL."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous; use UTC-aware ones")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def add_kernel_tables(metadata: sa.MetaData) -> None:
    """Add the tables every service needs to the service's own metadata."""
    sa.Table(
        "outbox", metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(MAX_EVENT_ID_LENGTH), nullable=False, unique=True),
        sa.Column("event_type", sa.String(100), nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
    )
    sa.Table(
        "inbox", metadata,
        sa.Column("handler", sa.String(200), primary_key=True),
        sa.Column("event_id", sa.String(MAX_EVENT_ID_LENGTH), primary_key=True),
        sa.Column("handled_at", UtcDateTime, nullable=False, index=True),
    )
    sa.Table(
        "audit_log", metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", UtcDateTime, nullable=False),
        sa.Column("actor_id", sa.String(200), nullable=False),
        sa.Column("actor_role", sa.String(40), nullable=False),
        sa.Column("action", sa.String(100), nullable=False),
        sa.Column("target", sa.String(200), nullable=True, index=True),
        sa.Column("details", sa.JSON, nullable=False),
    )
    sa.Table(
        "leases", metadata,
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("holder", sa.String(200), nullable=False),
        sa.Column("expires_at", UtcDateTime, nullable=False),
    )


def create_engine_for(url: str, pool_size: int = 10) -> Engine:
    """An engine tuned for eventlet workers.

    PostgreSQL goes through psycopg2, which eventlet makes cooperative; the pool
    is at least as large as the worker pool so workers never queue for a
    connection. SQLite's C calls cannot yield to the hub, so a process keeps a
    single connection that workers take in turn (a green lock, not a busy loop
    inside SQLite that would freeze every greenthread).
    """
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        # SQLAlchemy 2.1 would pick psycopg 3, whose C build blocks the event loop
        parsed = parsed.set(drivername="postgresql+psycopg2")
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            url, pool_size=1, max_overflow=0, pool_timeout=120, poolclass=sa.pool.QueuePool,
            connect_args={"check_same_thread": False, "timeout": 15}, **_ENGINE_OPTIONS,
        )

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return sa.create_engine(parsed, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, pool_timeout=30,
                            **_ENGINE_OPTIONS)


# every engine: JSON columns (the outbox's payloads among them) are written and read with the fast codec, and a
# statement's parameters (push tokens, sealed secrets, people's details) are kept out of error texts, which reach logs
_ENGINE_OPTIONS = {"json_serializer": json_text.dumps, "json_deserializer": json_text.loads, "hide_parameters": True}


def database_url_for(config: dict[str, Any], service_name: str) -> str:
    """The service's ``database_url``; a SQLite file under ``var/`` when none is set."""
    return service_settings(config, service_name).get("database_url") or f"sqlite:///var/{service_name}.db"


class DatabaseInUse(RuntimeError):
    """Another process already serves this SQLite file (refused at start, before the service runs)."""


def hold_sqlite_file(url: str) -> Any | None:
    """Claim a SQLite database file for this process, or refuse with what to do instead.

    SQLite is for one process per service: a second process writing the same file would wait on
    its locks inside SQLite's C code, where the event loop cannot run, and two migrating at once
    can fail. The claim is an exclusive ``flock`` on ``<file>.lock``, which the kernel drops when
    the process ends, however it ends. Returns the open lock file (close it to give the claim up),
    or ``None`` for PostgreSQL and in-memory databases.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    path = Path(f"{parsed.database}.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_file = open(path, "a+")
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.seek(0)
        holder = lock_file.read().strip() or "unknown"
        lock_file.close()
        raise DatabaseInUse(
            f"{parsed.database} is in use by another process (pid {holder}). A SQLite database serves "
            f"one process per service; stop that process, or run replicas on PostgreSQL (database_url)."
        ) from None
    lock_file.truncate(0)
    lock_file.write(str(os.getpid()))
    lock_file.flush()
    return lock_file


def require_sqlite_file_free(url: str) -> None:
    """``DatabaseInUse`` if another process serves this SQLite file now: a look before starting, so the refusal
    is one line rather than a failure among the extensions starting in parallel (which claim it for good)."""
    claim = hold_sqlite_file(url)
    if claim is not None:
        claim.close()


class KernelTables:
    def __init__(self, metadata: sa.MetaData):
        self.outbox = metadata.tables["outbox"]
        self.inbox = metadata.tables["inbox"]
        self.audit_log = metadata.tables["audit_log"]
        self.leases = metadata.tables["leases"]


def claim_events(session: Session, inbox: sa.Table, handler: str, event_ids: list[str]) -> set[str]:
    """Record in the inbox that ``handler`` handles these events; the ids not recorded before.

    One statement that skips ids already there: a redelivery handled concurrently by another worker
    waits for that worker's transaction and is then skipped, instead of failing on the primary key.
    """
    if not event_ids:
        return set()
    dialect = session.get_bind().dialect.name
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(inbox)
    now = utc_now()
    claimed = session.execute(
        insert.on_conflict_do_nothing().returning(inbox.c.event_id),
        [{"handler": handler, "event_id": event_id, "handled_at": now} for event_id in dict.fromkeys(event_ids)],
    )
    return set(claimed.scalars())


class UnitOfWork:
    """One worker's transaction: its session, the events it publishes, its audit entries.

    Events are written to the outbox table in the same transaction as the change
    they announce, so they are published if and only if the change commits.
    """

    def __init__(self, session_factory: sessionmaker, kernel: KernelTables, after_commit: Any):
        self._session_factory = session_factory
        self._kernel = kernel
        self._after_commit = after_commit
        self._session: Session | None = None
        self._published = 0
        self._claims: list[tuple[str, list[str]]] = []  # (handler, event ids) being handled, claimed in this transaction
        self._withdrawn: list[tuple[str, list[str]]] = []  # claims kept out of a step's commit, put back at the end

    @property
    def session(self) -> Session:
        if self._session is None:
            self._session = self._session_factory()
        return self._session

    def publish(self, *events: Event) -> None:
        if not events:
            return
        now = utc_now()
        self.session.execute(
            self._kernel.outbox.insert(),
            [{"event_id": e.event_id, "event_type": e.TYPE, "payload": e.to_payload(), "created_at": now} for e in events],
        )
        self._published += len(events)

    def audit(self, actor: Actor, action: str, target: str | None, details: dict[str, Any] | None = None) -> None:
        self.session.execute(self._kernel.audit_log.insert().values(
            at=utc_now(), actor_id=actor.id, actor_role=actor.role, action=action, target=target,
            details=details or {},
        ))

    def audit_entries(self, target: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        table = self._kernel.audit_log
        query = sa.select(table).order_by(table.c.id.desc()).limit(limit)
        if target is not None:
            query = query.where(table.c.target == target)
        return [
            {"at": row.at.isoformat(), "actor_id": row.actor_id, "actor_role": row.actor_role,
             "action": row.action, "target": row.target, "details": row.details}
            for row in self.session.execute(query)
        ]

    def claim_events(self, handler: str, event_ids: list[str]) -> set[str]:
        """Record in the inbox that ``handler`` handles these events; the ids it had not handled before.

        The claim is committed with the handler's end (``finish_events``), never with a step the handler commits
        before it: a handler that fails, or whose process dies, after a step is run again by the retry or the
        redelivery, not skipped as a duplicate (its committed steps must be safe to repeat)."""
        fresh = claim_events(self.session, self._kernel.inbox, handler, event_ids)
        if fresh:
            self._claims.append((handler, sorted(fresh)))
        return fresh

    def finish_events(self) -> None:
        """Commit the handler's last step together with its claims: the events are handled."""
        withdrawn, self._withdrawn, self._claims = self._withdrawn, [], []
        for handler, event_ids in withdrawn:
            if claim_events(self.session, self._kernel.inbox, handler, event_ids) != set(event_ids):
                raise Conflict(f"another worker handled {handler}'s events while this one was at it; nothing of its "
                               "last step is kept")
        self.commit()

    def commit(self) -> None:
        """Commit the work so far; the claims of events still being handled stay out of it (``claim_events``), and
        out of the transactions after it until the handler's end, which keeps no connection while it waits."""
        if self._session is None:
            return
        inbox = self._kernel.inbox
        for handler, event_ids in self._claims:
            self._session.execute(inbox.delete().where(inbox.c.handler == handler, inbox.c.event_id.in_(event_ids)))
        self._withdrawn += self._claims
        self._claims = []
        self._commit()

    def _commit(self) -> None:
        self._session.commit()
        if self._published:
            self._published = 0
            self._after_commit()

    def close(self) -> None:
        if self._session is not None:
            self._session.close()  # rolls back anything not committed
            self._session = None
            self._published = 0
        self._claims, self._withdrawn = [], []


class Database(DependencyProvider):
    """The service's database, migrated at start, with a ``UnitOfWork`` per worker."""

    def __init__(self, metadata: sa.MetaData, migrations: str):
        self.metadata = metadata
        self.migrations = migrations  # dotted package holding the Alembic environment
        self.sqlite_claim: Any | None = None
        self.relay: Any | None = None  # none yet if the setup stopped early (the file in use, say)

    def setup(self) -> None:
        from shared.migrations import upgrade
        from shared.outbox import OutboxRelay

        url = database_url_for(self.container.config, self.container.service_name)
        self.sqlite_claim = hold_sqlite_file(url)
        self.engine = create_engine_for(url, pool_size=int(self.container.config.get("max_workers", 10)) + 2)
        upgrade(self.engine, self.migrations)
        self.kernel = KernelTables(self.metadata)
        self.session_factory = sessionmaker(self.engine, expire_on_commit=False)
        self.relay = OutboxRelay(self.container, self.engine, self.kernel)
        self.units: dict[Any, UnitOfWork] = {}

    def start(self) -> None:
        self.relay.start()
        runtime.freeze_start_up_objects()  # every extension is set up by now (migrations included)

    def stop(self) -> None:
        if self.relay is not None:
            self.relay.stop()
            self.engine.dispose()
        self._give_up_claim()

    def kill(self) -> None:
        if self.relay is not None:
            self.relay.stop()
        self._give_up_claim()

    def _give_up_claim(self) -> None:
        if self.sqlite_claim is not None:
            self.sqlite_claim.close()
            self.sqlite_claim = None

    def get_dependency(self, worker_ctx: Any) -> UnitOfWork:
        unit = UnitOfWork(self.session_factory, self.kernel, self.relay.wake)
        self.units[worker_ctx] = unit
        return unit

    def worker_teardown(self, worker_ctx: Any) -> None:
        unit = self.units.pop(worker_ctx, None)
        if unit is not None:
            unit.close()

    def check(self) -> str:
        with self.engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
        return "ok"
