"""The ports of the ADE sync, on the service's database: devices, the cursor, the events.

A page of devices is written with one ``INSERT ... ON CONFLICT DO UPDATE``. On PostgreSQL
the page travels as one JSON parameter, an array of arrays read as ``jsonb`` (a third of the size
of one object per device, and a third of the server's time; as ``json`` every ``->>`` would
parse its element again: five times slower), and the same statement tells which
devices are new (``xmax = 0`` marks a row this statement inserted): one round trip per page, besides
taking the token's row first (``hold_token``).
While a full fetch fills a token that had no devices, a page is a plain ``INSERT`` instead: every
device is new, and skipping the conflict check takes a quarter off the database's time per page.
A serial already stored (Apple listing a device twice) fails that insert; the page is redone as an
upsert, and so is the rest of the fetch.
SQLite runs in the process, so there a lookup before an executemany costs no round trip.
Events go to the outbox one per page, not one per device.
"""
from __future__ import annotations

import operator
from collections.abc import Callable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.enrollment.adapters.tables import dep_devices, server_tokens
from services.enrollment.adapters.token_repository import hold_token
from services.enrollment.domain.device_sync import WAITING_ASSIGN_RESULTS, CursorState, KnownDevice
from services.enrollment.domain.devices import DepDevice
from shared import json_text
from shared.contracts.enrollment import MAX_DEVICES_PER_EVENT, AssignedDevice, DevicesAssigned, DevicesRemoved
from shared.errors import NotFound
from shared.storage import utc_now

_APPLE_FIELDS = ("model", "description", "color", "asset_tag", "os", "device_family", "profile_status", "profile_uuid",
                 "profile_assign_time", "device_assigned_date", "device_assigned_by", "op_date")
_UPDATED = _APPLE_FIELDS + ("updated_at",)
_PAGE_FIELDS = ("serial_number",) + _APPLE_FIELDS
_page_values = operator.attrgetter(*_PAGE_FIELDS)
_PG_PAGE = ", ".join(f"device->>{index}" for index in range(len(_PAGE_FIELDS)))
_PG_INSERT = (f"INSERT INTO dep_devices (token_id, seen_generation, updated_at, {', '.join(_PAGE_FIELDS)})"
              f" SELECT :token_id, :generation, :updated_at, {_PG_PAGE}"
              " FROM jsonb_array_elements(CAST(:devices AS jsonb)) AS device")
_PG_PUT = (f"WITH stored AS ({_PG_INSERT}"
           " ON CONFLICT (token_id, serial_number) DO UPDATE SET {assignments}"
           " RETURNING serial_number, xmax = 0 AS inserted)"
           " SELECT coalesce(array_agg(serial_number), '{{}}') FROM stored WHERE inserted")  # one row, not one per device


class DeviceRepository:
    """``DeviceStore`` for one token. Each write takes the token's row first (``hold_token``): a delete of the
    token then waits for the write's transaction, or the write for the delete, never each for the other."""

    def __init__(self, session: Session, token_id: str, *, assigned_by: str):
        self.session = session
        self.token_id = token_id
        self.assigned_by = assigned_by
        # the generation of a full fetch into a token that had no devices; "" once known not to be; None until asked
        self._filling: str | None = None

    def get_many(self, serial_numbers: list[str]) -> dict[str, KnownDevice]:
        c = dep_devices.c
        rows = self.session.execute(
            sa.select(c.serial_number, c.op_date).where(c.token_id == self.token_id, c.serial_number.in_(serial_numbers))
        )
        return {serial: KnownDevice(serial, op_date) for serial, op_date in rows}

    def put_many(self, devices: list[DepDevice], generation: str | None) -> set[str]:
        hold_token(self.session, self.token_id)
        updated = _UPDATED + (("seen_generation",) if generation else ())
        if self._dialect == "postgresql":
            page = {"token_id": self.token_id, "generation": generation, "updated_at": utc_now(),
                    "devices": json_text.dumps([_page_values(d) for d in devices])}
            if generation and self._fills_empty_token(generation):
                try:
                    with self.session.begin_nested():  # a failed page must not undo the transaction's earlier writes
                        self.session.execute(sa.text(_PG_INSERT), page)
                    return {d.serial_number for d in devices}
                except IntegrityError:
                    self._filling = ""
            assignments = ", ".join(f"{name} = EXCLUDED.{name}" for name in updated)
            return set(self.session.execute(sa.text(_PG_PUT.format(assignments=assignments)), page).scalar_one())
        rows = self._rows(devices, generation)
        known = set(self.get_many([d.serial_number for d in devices]))
        insert = sqlite.insert(dep_devices)
        self.session.execute(insert.on_conflict_do_update(
            index_elements=["token_id", "serial_number"], set_={name: insert.excluded[name] for name in updated}), rows)
        return {d.serial_number for d in devices} - known

    def delete_many(self, serial_numbers: list[str]) -> None:
        hold_token(self.session, self.token_id)
        c = dep_devices.c
        self.session.execute(dep_devices.delete().where(c.token_id == self.token_id, c.serial_number.in_(serial_numbers)))

    def remove_unseen(self, generation: str) -> list[str]:
        hold_token(self.session, self.token_id)
        c = dep_devices.c
        unseen = sa.and_(c.token_id == self.token_id, sa.or_(c.seen_generation.is_(None), c.seen_generation != generation))
        gone = list(self.session.scalars(sa.select(c.serial_number).where(unseen)))
        if gone:
            self.session.execute(dep_devices.delete().where(unseen))
        return gone

    def record_assign_results(self, profile_uuid: str, statuses: dict[str, str], retry_at: datetime | None) -> None:
        hold_token(self.session, self.token_id)
        now = utc_now()
        c = dep_devices.c
        for status in set(statuses.values()):
            serials = [serial for serial, value in statuses.items() if value == status]
            throttled = status in WAITING_ASSIGN_RESULTS
            values: dict[str, Any] = {"assign_result": status, "updated_at": now,
                                      "assign_retry_at": retry_at if throttled else None,
                                      "assign_retry_profile_uuid": profile_uuid if throttled else None}
            if status == "SUCCESS":
                values.update(profile_status="assigned", profile_uuid=profile_uuid, assigned_by=self.assigned_by,
                              profile_assign_time=now.strftime("%Y-%m-%dT%H:%M:%SZ"))
            for start in range(0, len(serials), 1000):
                self.session.execute(dep_devices.update().where(
                    c.token_id == self.token_id, c.serial_number.in_(serials[start:start + 1000])).values(**values))

    def due_profile_retries(self, now: datetime, limit: int) -> list[tuple[str, str]]:
        c = dep_devices.c
        return [(serial, profile_uuid) for serial, profile_uuid in self.session.execute(
            sa.select(c.serial_number, c.assign_retry_profile_uuid).where(
                self._throttled(), c.assign_retry_at <= now).limit(limit))]

    def next_profile_retry(self) -> datetime | None:
        """When the earliest throttled assignment of the token is due, if any."""
        return self.session.scalar(sa.select(sa.func.min(dep_devices.c.assign_retry_at)).where(self._throttled()))

    def _throttled(self) -> sa.ColumnElement[bool]:
        c = dep_devices.c
        return sa.and_(c.token_id == self.token_id, c.assign_result.in_(WAITING_ASSIGN_RESULTS),
                       c.assign_retry_profile_uuid.is_not(None))

    def _fills_empty_token(self, generation: str) -> bool:
        """Whether this page belongs to a full fetch that began with no device stored for the token.

        Asked at the fetch's first page; its later pages find only what the fetch itself stored.
        """
        if self._filling is None:
            c = dep_devices.c
            stored = self.session.execute(sa.select(c.serial_number).where(c.token_id == self.token_id).limit(1)).first()
            self._filling = "" if stored else generation
        return self._filling == generation

    def _rows(self, devices: list[DepDevice], generation: str | None) -> list[dict[str, Any]]:
        now = utc_now()
        return [{"token_id": self.token_id, "serial_number": d.serial_number, "seen_generation": generation,
                 "updated_at": now, **{name: getattr(d, name) for name in _APPLE_FIELDS}} for d in devices]

    @property
    def _dialect(self) -> str:
        return self.session.get_bind().dialect.name


class TokenCursorStore:
    """``CursorStore`` on the token row; ``on_saved`` commits, so each page is durable."""

    def __init__(self, session: Session, token_id: str, on_saved: Callable[[], None]):
        self.session = session
        self.token_id = token_id
        self.on_saved = on_saved

    def load(self) -> CursorState | None:
        row = self.session.execute(
            sa.select(server_tokens.c.cursor, server_tokens.c.cursor_phase, server_tokens.c.cursor_generation)
            .where(server_tokens.c.id == self.token_id)).one()
        return CursorState(row.cursor, row.cursor_phase, row.cursor_generation) if row.cursor else None

    def save(self, state: CursorState) -> None:
        saved = self.session.execute(server_tokens.update().where(server_tokens.c.id == self.token_id).values(
            cursor=state.cursor or None, cursor_phase=state.phase, cursor_generation=state.generation)).rowcount
        if not saved:  # deleted meanwhile: this page's devices must not outlive it (they have no foreign key)
            raise NotFound("The server token was deleted during its device sync.")
        self.on_saved()


class DeviceEventOutbox:
    """``DeviceEvents`` through the unit of work's outbox, in the page's transaction: one event per page."""

    def __init__(self, publish: Callable[..., None], token_id: str):
        self.publish = publish
        self.token_id = token_id

    def assigned(self, devices: list[DepDevice]) -> None:
        self.publish(*(DevicesAssigned(token_id=self.token_id, devices=[
            AssignedDevice(serial_number=d.serial_number, model=d.model, device_family=d.device_family, os=d.os)
            for d in devices[start:start + MAX_DEVICES_PER_EVENT]]) for start in range(0, len(devices), MAX_DEVICES_PER_EVENT)))

    def removed(self, serial_numbers: list[str]) -> None:
        self.publish(*(DevicesRemoved(token_id=self.token_id, serial_numbers=serial_numbers[start:start + MAX_DEVICES_PER_EVENT])
                       for start in range(0, len(serial_numbers), MAX_DEVICES_PER_EVENT)))
