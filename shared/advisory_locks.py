"""Locks named by text that a transaction holds until it ends, across replicas (PostgreSQL's advisory locks).

SQLite lets one writer at a time through anyway, so there they are no-ops.
"""
from __future__ import annotations

import hashlib

import sqlalchemy as sa
from sqlalchemy.orm import Session


def hold(session: Session, name: str) -> None:
    """Wait until no other transaction holds ``name``, then hold it."""
    if _on_postgresql(session):
        session.execute(sa.select(sa.func.pg_advisory_xact_lock(_key(name))))


def _on_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
