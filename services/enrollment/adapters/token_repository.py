"""Server tokens, their sync runs and device check-ins in the database, and how they are shown."""
from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from services.enrollment.adapters.tables import checkins, dep_devices, server_tokens, sync_runs
from services.enrollment.domain.device_sync import SyncCounts
from services.enrollment.domain.devices import status_colour
from services.enrollment.domain.server_tokens import days_left, token_status
from shared.errors import NotFound
from shared.storage import database_now, utc_now

STATUS_AWAITING_UPLOAD = "awaiting_upload"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def hold_token(session: Session, token_id: str | sa.ScalarSelect[Any]) -> None:
    """Lock the token's row before writing its devices or sync runs; NotFound once the token is deleted.

    A delete takes the token row first, then its runs and devices. A writer holding some of those rows while it
    waits for the token row (a sync page saving its cursor, an assignment bringing the next sync forward) would
    deadlock with it on PostgreSQL: taking the token row first, the two queue on that one row instead. FOR KEY
    SHARE, as a foreign key would: the sync's own cursor and lease updates of the row go on beside it.
    """
    c = server_tokens.c
    if session.execute(sa.select(c.id).where(c.id == token_id).with_for_update(read=True, key_share=True)).first() is None:
        raise NotFound("The server token was deleted meanwhile; list the tokens to find the id.")


class TokenRepository:
    def __init__(self, session: Session):
        self.session = session

    def get(self, token_id: Any, for_update: bool = False) -> Any:
        if not isinstance(token_id, str):
            raise NotFound("server token ids are strings; list the tokens to find the id")
        query = sa.select(server_tokens).where(server_tokens.c.id == token_id)
        row = self.session.execute(query.with_for_update() if for_update else query).first()
        if row is None:
            raise NotFound(f"there is no server token {token_id}; list the tokens to find the id")
        return row

    def all(self) -> list[Any]:
        return list(self.session.execute(sa.select(server_tokens).order_by(server_tokens.c.name)))

    def add(self, **values: Any) -> None:
        self.session.execute(server_tokens.insert().values(**values))

    def holds_credentials(self, token_id: str, sealed_credentials: str | None) -> bool:
        """Whether the token still holds these credentials (not renewed or deleted since). The token stays locked
        until the transaction ends, so a renewal waits until what Apple said of the old ones is recorded."""
        c = server_tokens.c
        stored = self.session.execute(
            sa.select(c.sealed_credentials).where(c.id == token_id).with_for_update()).first()
        return stored is not None and stored.sealed_credentials == sealed_credentials

    def update(self, token_id: str, **values: Any) -> None:
        self.session.execute(server_tokens.update().where(server_tokens.c.id == token_id).values(**values))

    def delete(self, token_id: str) -> None:
        # the token row first, as every writer of its devices and runs takes it first (hold_token): a sync's page
        # waits for this delete and then stops, and the devices of any page it committed before are seen and removed
        self.session.execute(server_tokens.delete().where(server_tokens.c.id == token_id))
        self.session.execute(dep_devices.delete().where(dep_devices.c.token_id == token_id))
        self.session.execute(sync_runs.delete().where(sync_runs.c.token_id == token_id))

    def due_for_sync(self, now: datetime) -> list[str]:
        c = server_tokens.c
        query = sa.select(c.id).where(
            c.sealed_credentials.is_not(None),
            sa.or_(c.apple_refusal.is_(None), c.apple_refusal != "revoked_or_invalid"),
            c.access_token_expiry > now,
            # or a sync's lease ran out unreleased: the process running it died, so resume it now
            sa.or_(c.next_sync_at.is_(None), c.next_sync_at <= now,
                   c.sync_lease_until < database_now(self.session.get_bind().dialect.name)),
        ).order_by(c.next_sync_at)
        return list(self.session.scalars(query))


def token_summary(row: Any, now: datetime | None = None) -> dict[str, Any]:
    """What an admin sees about a token: never its key or credentials."""
    now = now or utc_now()
    uploaded = row.sealed_credentials is not None
    return {
        "id": row.id,
        "name": row.name,
        "display_name": row.server_name and f"{row.name} ({row.server_name})" or row.name,
        "server_name": row.server_name,
        "server_uuid": row.server_uuid,
        "org_name": row.org_name,
        "apple_admin_id": row.apple_admin_id,
        "integrated_by": row.integrated_by,
        "integrated_at": _iso(row.integrated_at),
        "locations": row.locations,
        "access_token_expiry": _iso(row.access_token_expiry),
        "days_left": days_left(row.access_token_expiry, now) if row.access_token_expiry else None,
        "status": token_status(row.access_token_expiry, now, apple_refusal=row.apple_refusal) if uploaded else STATUS_AWAITING_UPLOAD,
        "default_profile_uuid": row.default_profile_uuid,
        "last_sync_at": _iso(row.last_sync_at),
        "last_sync_result": row.last_sync_result,
        "last_sync_error": row.last_sync_error,
        "last_successful_sync_at": _iso(row.last_successful_sync_at),
        "next_sync_at": _iso(row.next_sync_at),
        "created_at": _iso(row.created_at),
        "created_by": row.created_by,
    }


INTERRUPTED = "interrupted: the process running this sync stopped; the next sync resumed from its last stored page"


class SyncRunRepository:
    def __init__(self, session: Session):
        self.session = session

    def start(self, token_id: str, trigger: str, kind: str) -> int:
        """A new run; called with the token's sync lease held, so an unfinished earlier run died with its process."""
        hold_token(self.session, token_id)
        now = utc_now()
        self.session.execute(sync_runs.update().where(
            sync_runs.c.token_id == token_id, sync_runs.c.finished_at.is_(None),
        ).values(finished_at=now, error=INTERRUPTED))
        result = self.session.execute(sync_runs.insert().values(
            token_id=token_id, trigger=trigger, kind=kind, started_at=now, pages=0, added=0, modified=0, deleted=0))
        return int(result.inserted_primary_key[0])

    def progress(self, run_id: int, counts: SyncCounts) -> None:
        """Written with a page, which then saves its cursor on the token row: that row is taken first."""
        hold_token(self.session, sa.select(sync_runs.c.token_id).where(sync_runs.c.id == run_id).scalar_subquery())
        self._write(run_id, counts)

    def finish(self, run_id: int, counts: SyncCounts, error: str | None) -> None:
        """Written after the token's lease is released (or with the token gone): no token row to wait for after it."""
        self._write(run_id, counts, finished_at=utc_now(), error=error)

    def _write(self, run_id: int, counts: SyncCounts, **values: Any) -> None:
        self.session.execute(sync_runs.update().where(sync_runs.c.id == run_id).values(
            kind=counts.kind, pages=counts.pages, added=counts.added, modified=counts.modified, deleted=counts.deleted,
            **values))

    def get(self, run_id: int) -> dict[str, Any]:
        return run_summary(self.session.execute(sa.select(sync_runs).where(sync_runs.c.id == run_id)).one())

    def of_token(self, token_id: str, limit: int) -> list[dict[str, Any]]:
        query = sa.select(sync_runs).where(sync_runs.c.token_id == token_id).order_by(sync_runs.c.id.desc()).limit(limit)
        return [run_summary(row) for row in self.session.execute(query)]


def run_summary(row: Any) -> dict[str, Any]:
    return {
        "id": row.id, "token_id": row.token_id, "trigger": row.trigger, "kind": row.kind,
        "started_at": _iso(row.started_at), "finished_at": _iso(row.finished_at), "pages": row.pages,
        "added": row.added, "modified": row.modified, "deleted": row.deleted, "error": row.error,
    }


def list_devices(session: Session, token_id: str, profile_status: str | None, limit: int, after: str | None) -> dict[str, Any]:
    c = dep_devices.c
    query = sa.select(dep_devices).where(c.token_id == token_id).order_by(c.serial_number).limit(limit + 1)
    if profile_status:
        query = query.where(c.profile_status == profile_status)
    if after:
        query = query.where(c.serial_number > after)
    rows = list(session.execute(query))
    more = len(rows) > limit
    rows = rows[:limit]
    counts = dict(session.execute(
        sa.select(c.profile_status, sa.func.count()).where(c.token_id == token_id).group_by(c.profile_status)).all())
    return {
        "devices": [device_summary(row) for row in rows],
        "next_after": rows[-1].serial_number if more and rows else None,
        "counts": counts,
    }


def device_summary(row: Any) -> dict[str, Any]:
    return {
        "serial_number": row.serial_number, "model": row.model, "description": row.description, "color": row.color,
        "asset_tag": row.asset_tag, "os": row.os, "device_family": row.device_family,
        "profile_status": row.profile_status, "status_colour": status_colour(row.profile_status),
        "profile_uuid": row.profile_uuid, "profile_assign_time": row.profile_assign_time,
        "device_assigned_date": row.device_assigned_date, "device_assigned_by": row.device_assigned_by,
        "assigned_by": row.assigned_by, "assign_result": row.assign_result,
        "assign_retry_at": _iso(row.assign_retry_at),
    }


class CheckinRepository:
    def __init__(self, session: Session):
        self.session = session

    def serial_of(self, udid: str) -> str | None:
        return self.session.scalar(sa.select(checkins.c.serial_number).where(checkins.c.udid == udid))

    def record(self, udid: str, message: str, *, serial_number: str | None = None, topic: str | None = None,
               enrolled: bool | None = None) -> None:
        existing = self.session.execute(sa.select(checkins).where(checkins.c.udid == udid)).first()
        values: dict[str, Any] = {"last_message": message, "updated_at": utc_now()}
        if serial_number:
            values["serial_number"] = serial_number
        if topic:
            values["topic"] = topic
        if enrolled is not None:
            values["enrolled"] = enrolled
        if existing is None:
            self.session.execute(checkins.insert().values(udid=udid, **{"enrolled": False, **values}))
        else:
            self.session.execute(checkins.update().where(checkins.c.udid == udid).values(**values))
