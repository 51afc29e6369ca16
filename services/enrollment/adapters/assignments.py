"""Device assignments and shared device groups in the enrollment database."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable

import sqlalchemy as sa
from sqlalchemy.orm import Session

from services.enrollment.adapters.tables import checkins, dep_devices, device_assignments, server_tokens, shared_groups
from services.enrollment.domain.assignments import Assignment, SharedGroup
from shared.errors import NotFound
from shared.storage import utc_now

CHUNK = 900  # stays under SQLite's bound-parameter limit


def _chunks(values: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(values), CHUNK):
        yield values[start:start + CHUNK]


def _assignment(row: Any) -> Assignment:
    return Assignment(row.serial_number, user_id=row.user_id, group_id=row.group_id,
                      locations=tuple(row.locations or ()), source=row.source)


class AssignmentRepository:
    def __init__(self, session: Session):
        self.session = session

    # --- devices enrollment knows ----------------------------------------------------------

    def unknown_serials(self, serials: list[str]) -> list[str]:
        known: set[str] = set()
        for chunk in _chunks(serials):
            known.update(self.session.scalars(sa.select(dep_devices.c.serial_number)
                                              .where(dep_devices.c.serial_number.in_(chunk))))
            known.update(self.session.scalars(sa.select(checkins.c.serial_number)
                                              .where(checkins.c.serial_number.in_(chunk))))
        return [s for s in serials if s not in known]

    def device_token_locations(self, serials: list[str]) -> dict[str, list[str] | None]:
        """For ADE devices, the locations of their server token (None: every location)."""
        found: dict[str, list[str] | None] = {}
        for chunk in _chunks(serials):
            for serial, locations in self.session.execute(
                    sa.select(dep_devices.c.serial_number, server_tokens.c.locations)
                    .join(server_tokens, server_tokens.c.id == dep_devices.c.token_id)
                    .where(dep_devices.c.serial_number.in_(chunk))):
                found[serial] = locations
        return found

    # --- assignments -----------------------------------------------------------------------

    def assignments(self, serials: Iterable[str]) -> dict[str, Assignment]:
        found: dict[str, Assignment] = {}
        for chunk in _chunks(list(serials)):
            for row in self.session.execute(sa.select(device_assignments)
                                            .where(device_assignments.c.serial_number.in_(chunk))):
                found[row.serial_number] = _assignment(row)
        return found

    def of_users(self, user_ids: Iterable[str]) -> list[Assignment]:
        found: list[Assignment] = []
        for chunk in _chunks(sorted(set(user_ids))):
            found.extend(_assignment(row) for row in self.session.execute(
                sa.select(device_assignments).where(device_assignments.c.user_id.in_(chunk))))
        return found

    def put(self, assignment: Assignment, actor_id: str) -> None:
        self.session.execute(device_assignments.delete()
                             .where(device_assignments.c.serial_number == assignment.serial_number))
        self.add_many([assignment], actor_id)

    def add_many(self, assignments: list[Assignment], actor_id: str) -> None:
        now = utc_now()
        rows = [{"serial_number": a.serial_number, "user_id": a.user_id, "group_id": a.group_id,
                 "locations": list(a.locations), "locations_at": now if a.user_id else None, "source": a.source,
                 "assigned_at": now, "assigned_by": actor_id}
                for a in assignments]
        for start in range(0, len(rows), 1000):
            self.session.execute(device_assignments.insert(), rows[start:start + 1000])

    def remove(self, serials: list[str]) -> None:
        for chunk in _chunks(serials):
            self.session.execute(device_assignments.delete().where(device_assignments.c.serial_number.in_(chunk)))

    def follow_user(self, user_id: str, locations: list[str], changed_at: datetime,
                    previous_user_id: str | None = None) -> list[str]:
        """The user's devices take the user ID and locations the roster gave them at ``changed_at``, unless newer
        are stored; ``previous_user_id`` is the ID the user had before, if the roster changed it. The serial
        numbers that changed hands that way."""
        c = device_assignments.c
        older = sa.or_(c.locations_at.is_(None), c.locations_at < changed_at)
        renamed: list[str] = []
        if previous_user_id is not None:
            renamed = sorted(self.session.scalars(
                sa.select(c.serial_number).where(c.user_id == previous_user_id, older)))
        held_by = [user_id] if previous_user_id is None else [user_id, previous_user_id]
        self.session.execute(device_assignments.update().where(c.user_id.in_(held_by), older)
                             .values(user_id=user_id, locations=list(locations), locations_at=changed_at))
        return renamed

    def release_user(self, user_id: str, deleted_at: datetime) -> list[str]:
        """Free the devices the user had when the roster deleted them; a device assigned to a user of that id
        since (a re-created user) stays. The serial numbers freed."""
        c = device_assignments.c
        held = sa.and_(c.user_id == user_id, sa.or_(c.locations_at.is_(None), c.locations_at <= deleted_at))
        serials = sorted(self.session.scalars(sa.select(c.serial_number).where(held)))
        self.remove(serials)
        return serials

    # --- shared groups ---------------------------------------------------------------------

    def group(self, group_id: Any) -> SharedGroup:
        row = None
        if isinstance(group_id, str):
            row = self.session.execute(sa.select(shared_groups).where(shared_groups.c.id == group_id)).first()
        if row is None:
            raise NotFound(f"there is no shared device group {group_id}; list the groups to find the id")
        return self._with_devices([row])[0]

    def groups(self, group_ids: Iterable[str] | None = None) -> list[SharedGroup]:
        query = sa.select(shared_groups).order_by(shared_groups.c.location_id, shared_groups.c.name)
        if group_ids is not None:
            query = query.where(shared_groups.c.id.in_(list(group_ids)))
        return self._with_devices(list(self.session.execute(query)))

    def group_named(self, location_id: str, name: str) -> str | None:
        return self.session.scalar(sa.select(shared_groups.c.id).where(
            shared_groups.c.location_id == location_id, shared_groups.c.name == name))

    def add_group(self, group_id: str, name: str, location_id: str, actor_id: str) -> None:
        self.session.execute(shared_groups.insert().values(
            id=group_id, name=name, location_id=location_id, created_at=utc_now(), created_by=actor_id))

    def rename_group(self, group_id: str, name: str) -> None:
        self.session.execute(shared_groups.update().where(shared_groups.c.id == group_id).values(name=name))

    def delete_group(self, group_id: str) -> None:
        self.session.execute(device_assignments.delete().where(device_assignments.c.group_id == group_id))
        self.session.execute(shared_groups.delete().where(shared_groups.c.id == group_id))

    def _with_devices(self, rows: list[Any]) -> list[SharedGroup]:
        members: dict[str, list[str]] = {row.id: [] for row in rows}
        if members:
            for group_id, serial in self.session.execute(
                    sa.select(device_assignments.c.group_id, device_assignments.c.serial_number)
                    .where(device_assignments.c.group_id.in_(list(members)))
                    .order_by(device_assignments.c.serial_number)):
                members[group_id].append(serial)
        return [SharedGroup(row.id, row.name, row.location_id, tuple(members[row.id])) for row in rows]

    # --- metrics ---------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Known devices by how they are used: ``user``, ``shared`` or ``unassigned``."""
        known = sa.union(sa.select(dep_devices.c.serial_number),
                         sa.select(checkins.c.serial_number).where(checkins.c.serial_number.is_not(None))).subquery()
        total = self.session.scalar(sa.select(sa.func.count()).select_from(known)) or 0
        by_owner = dict(self.session.execute(
            sa.select(sa.case((device_assignments.c.user_id.is_not(None), "user"), else_="shared"), sa.func.count())
            .group_by(sa.case((device_assignments.c.user_id.is_not(None), "user"), else_="shared"))).all())
        user, shared = by_owner.get("user", 0), by_owner.get("shared", 0)
        return {"user": user, "shared": shared, "unassigned": max(total - user - shared, 0)}
