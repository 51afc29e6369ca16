"""The hierarchy in SQL: the planner's reader and writer ports over one session.

Writes are batched: each call of ``write`` gets a run of changes of one entity and
action and turns it into a handful of executemany statements.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable, Iterator, Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session

from services.roster.adapters import tables as t
from services.roster.domain.planning import (
    Change, StoredClass, StoredGradeLevel, StoredLocation, StoredUser,
)
from shared import json_text
from shared.contracts.roster import ClassRecord, GradeLevelRecord, LocationRecord, UserRecord
from shared.errors import Conflict

CHUNK = 1000
USER_COLUMNS = ("user_id", "user_type", "first_name", "last_name", "name", "email",
                "managed_apple_id", "grade_level")
CLASS_COLUMNS = ("name", "location_id", "course_name", "room")


def chunks(items: list[Any], size: int = CHUNK) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def bulk_insert(session: Session, table: sa.Table, columns: Sequence[str],
                rows: list[tuple[Any, ...]]) -> None:
    """Insert many rows (tuples in ``columns`` order) at once.

    On SQLite the rows go straight to the driver's executemany (SQLAlchemy's per-row
    parameter processing costs more than SQLite's own work for 100,000-row imports);
    elsewhere SQLAlchemy's batched multi-row INSERTs are the fast path.
    """
    if not rows:
        return
    connection = session.connection()
    if connection.dialect.name != "sqlite":
        session.execute(table.insert(), [dict(zip(columns, row)) for row in rows])
        return
    encoded = [i for i, name in enumerate(columns) if isinstance(table.c[name].type, sa.JSON)]
    if encoded:
        dumps = json_text.dumps  # as the engine writes JSON columns
        rows = [tuple(dumps(v) if i in encoded and v is not None else v for i, v in enumerate(row))
                for row in rows]
    connection.exec_driver_sql(
        f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
        rows)


def serials_text(serial_numbers: list[str]) -> str | None:
    return ",".join(serial_numbers) or None


def user_record(row: Any, locations: list[str]) -> UserRecord:
    return UserRecord(
        user_id=row.user_id, user_type=row.user_type, first_name=row.first_name,
        last_name=row.last_name, name=row.name, email=row.email,
        managed_apple_id=row.managed_apple_id, locations=sorted(locations),
        grade_level=row.grade_level,
        serial_numbers=row.serial_numbers.split(",") if row.serial_numbers else [])


def user_locations(session: Session, keys: list[int] | None = None) -> dict[int, list[str]]:
    """key -> location IDs, for the given users or all of them."""
    query = sa.select(t.user_locations.c.user_key, t.user_locations.c.location_id)
    if keys is not None:
        query = query.where(t.user_locations.c.user_key.in_(keys))
    located: dict[int, list[str]] = defaultdict(list)
    for key, location_id in session.execute(query):
        located[key].append(location_id)
    return located


class SqlHierarchy:
    """Implements ``HierarchyReader`` and ``HierarchyWriter`` on the roster tables."""

    def __init__(self, session: Session):
        self.session = session
        self._user_keys: dict[str, int] | None = None

    # ---------------------------------------------------------- reader

    def version(self) -> int:
        version = self.session.execute(sa.select(t.state.c.version).where(t.state.c.id == 1)).scalar()
        return version or 0

    def claim_version(self, expected: int) -> None:
        """Move to the next version, unless someone else applied since ``expected``."""
        if self.session.execute(sa.select(t.state.c.id)).first() is None:
            self.session.execute(t.state.insert().values(id=1, version=0))
        result = self.session.execute(
            t.state.update().where(t.state.c.id == 1, t.state.c.version == expected)
            .values(version=expected + 1))
        if result.rowcount != 1:
            raise Conflict("the roster changed since this plan was previewed; "
                           "preview again and apply the new plan")

    def locations(self) -> list[StoredLocation]:
        return [StoredLocation(record=LocationRecord(location_id=r.location_id, name=r.name),
                               source=r.source)
                for r in self.session.execute(sa.select(t.locations))]

    def grade_levels(self) -> list[StoredGradeLevel]:
        return [StoredGradeLevel(record=GradeLevelRecord(name=r.name, location_id=r.location_id),
                                 source=r.source)
                for r in self.session.execute(sa.select(t.grade_levels))]

    def users(self) -> Iterator[StoredUser]:
        located = user_locations(self.session)
        result = self.session.execute(sa.select(t.users).execution_options(yield_per=5000))
        for row in result:
            yield StoredUser(key=row.id, record=user_record(row, located.get(row.id, [])),
                             source=row.source, source_identifier=row.source_identifier)

    def users_by_source_identifier(self) -> dict[str, str]:
        """The source's own identifier of a person -> the user ID, where one is recorded."""
        return {identifier: user_id for identifier, user_id in self.session.execute(
            sa.select(t.users.c.source_identifier, t.users.c.user_id)
            .where(t.users.c.source_identifier.is_not(None)))}

    def classes(self) -> list[StoredClass]:
        members = self.class_members()
        return [StoredClass(record=ClassRecord(
            class_id=r.class_id, name=r.name, location_id=r.location_id, course_name=r.course_name,
            room=r.room, teacher_ids=members[r.class_id]["teacher"],
            student_ids=members[r.class_id]["student"]), source=r.source)
            for r in self.session.execute(sa.select(t.classes))]

    def class_members(self, class_ids: Iterable[str] | None = None) -> dict[str, dict[str, list[str]]]:
        # in their order (the primary teacher first); memberships of the same position by user ID
        query = (sa.select(t.memberships.c.class_id, t.memberships.c.role, t.users.c.user_id)
                 .join(t.users, t.users.c.id == t.memberships.c.user_key)
                 .order_by(t.memberships.c.position, t.users.c.user_id))
        if class_ids is not None:
            query = query.where(t.memberships.c.class_id.in_(list(class_ids)))
        members: dict[str, dict[str, list[str]]] = defaultdict(lambda: {"teacher": [], "student": []})
        for class_id, role, user_id in self.session.execute(query):
            members[class_id][role].append(user_id)
        return members

    # ---------------------------------------------------------- writer
    # an add records its import's source; an update leaves it as it is, since it names the creator, the only
    # source whose imports may delete the row as missing (see planning.HierarchyWriter)

    def write(self, entity: str, action: str, changes: list[Change], source: str) -> None:
        getattr(self, f"_{entity}_{action}")(changes, source)

    def _location_add(self, changes: list[Change], source: str) -> None:
        self.session.execute(t.locations.insert(), [
            {"location_id": c.natural_id, "name": c.after["name"], "source": source} for c in changes])

    def _location_update(self, changes: list[Change], source: str) -> None:
        self.session.execute(
            t.locations.update().where(t.locations.c.location_id == sa.bindparam("key"))
            .values(name=sa.bindparam("new_name")),
            [{"key": c.natural_id, "new_name": c.after["name"]} for c in changes])

    def _location_delete(self, changes: list[Change], source: str) -> None:
        # only the location: the planner deletes one that nothing stays in, its grade levels in rows of their own
        ids = [c.natural_id for c in changes]
        self.session.execute(t.locations.delete().where(t.locations.c.location_id.in_(ids)))

    def _grade_level_add(self, changes: list[Change], source: str) -> None:
        self.session.execute(t.grade_levels.insert(), [
            {"name": c.after["name"], "location_id": c.after["location_id"], "source": source}
            for c in changes])

    def _grade_level_delete(self, changes: list[Change], source: str) -> None:
        for c in changes:
            location = t.grade_levels.c.location_id
            self.session.execute(t.grade_levels.delete().where(
                t.grade_levels.c.name == c.before["name"],
                location.is_(None) if c.before["location_id"] is None
                else location == c.before["location_id"]))

    def _user_add(self, changes: list[Change], source: str) -> None:
        # keys are handed out here rather than by the database, which saves a RETURNING
        # round trip per batch; applies are serialised by claim_version, so none collide
        keys = self.user_keys()
        next_key = (self.session.execute(sa.select(sa.func.max(t.users.c.id))).scalar() or 0) + 1
        rows, location_rows = [], []
        for key, c in enumerate(changes, start=next_key):
            after = c.after
            rows.append((key, source, serials_text(after["serial_numbers"]),
                         *[after.get(col) for col in USER_COLUMNS]))
            location_rows.extend((key, lid) for lid in after["locations"])
            keys[c.natural_id] = key
        bulk_insert(self.session, t.users, ("id", "source", "serial_numbers", *USER_COLUMNS), rows)
        bulk_insert(self.session, t.user_locations, ("user_key", "location_id"), location_rows)

    def _user_update(self, changes: list[Change], source: str) -> None:
        keys = self.user_keys()
        rows = [{**{f"new_{col}": c.after.get(col) for col in USER_COLUMNS}, "key": c.target,
                 "new_serial_numbers": serials_text(c.after["serial_numbers"])}
                for c in changes]
        self.session.execute(
            t.users.update().where(t.users.c.id == sa.bindparam("key")).values(
                serial_numbers=sa.bindparam("new_serial_numbers"),
                **{col: sa.bindparam(f"new_{col}") for col in USER_COLUMNS}),
            rows)
        for c in changes:
            if c.before and "user_id" in c.before:
                keys.pop(c.before["user_id"], None)
            keys[c.natural_id] = c.target
        moved = [c for c in changes if c.before and "locations" in c.before]
        if moved:
            self.session.execute(t.user_locations.delete().where(
                t.user_locations.c.user_key.in_([c.target for c in moved])))
            bulk_insert(self.session, t.user_locations, ("user_key", "location_id"),
                        [(c.target, lid) for c in moved for lid in c.after["locations"]])

    def _user_delete(self, changes: list[Change], source: str) -> None:
        keys = self.user_keys()
        targets = [c.target for c in changes]
        for table, column in ((t.memberships, t.memberships.c.user_key),
                              (t.user_locations, t.user_locations.c.user_key),
                              (t.users, t.users.c.id)):
            self.session.execute(table.delete().where(column.in_(targets)))
        for c in changes:
            keys.pop(c.natural_id, None)

    def _source_identifier_record(self, changes: list[Change], source: str) -> None:
        keys = self.user_keys()
        identifiers = [c.after["source_identifier"] for c in changes]
        # a person is one user: an identifier given to another user is taken from the one that had it
        self.session.execute(t.users.update().where(t.users.c.source_identifier.in_(identifiers))
                             .values(source_identifier=None))
        self.session.execute(
            t.users.update().where(t.users.c.id == sa.bindparam("key"))
            .values(source_identifier=sa.bindparam("new_identifier")),
            [{"key": c.target if c.target is not None else keys[c.natural_id],
              "new_identifier": c.after["source_identifier"]} for c in changes])

    def _class_add(self, changes: list[Change], source: str) -> None:
        self.session.execute(t.classes.insert(), [
            {"class_id": c.natural_id, "source": source, **{col: c.after.get(col) for col in CLASS_COLUMNS}}
            for c in changes])
        self._set_members(changes, replace=False)

    def _class_update(self, changes: list[Change], source: str) -> None:
        self.session.execute(
            t.classes.update().where(t.classes.c.class_id == sa.bindparam("key")).values(
                **{col: sa.bindparam(f"new_{col}") for col in CLASS_COLUMNS}),
            [{"key": c.natural_id, **{f"new_{col}": c.after.get(col) for col in CLASS_COLUMNS}}
             for c in changes])
        self._set_members(changes, replace=True)

    def _class_delete(self, changes: list[Change], source: str) -> None:
        ids = [c.natural_id for c in changes]
        self.session.execute(t.memberships.delete().where(t.memberships.c.class_id.in_(ids)))
        self.session.execute(t.classes.delete().where(t.classes.c.class_id.in_(ids)))

    def _set_members(self, changes: list[Change], replace: bool) -> None:
        if replace:
            self.session.execute(t.memberships.delete().where(
                t.memberships.c.class_id.in_([c.natural_id for c in changes])))
        keys = self.user_keys()
        rows = [(c.natural_id, keys[user_id], role, position)
                for c in changes for role in ("teacher", "student")
                for position, user_id in enumerate(c.after[f"{role}_ids"])]
        bulk_insert(self.session, t.memberships, ("class_id", "user_key", "role", "position"), rows)

    def user_keys(self) -> dict[str, int]:
        """user ID -> key, loaded once and kept current by this writer's own writes."""
        if self._user_keys is None:
            self._user_keys = {user_id: key for user_id, key in self.session.execute(
                sa.select(t.users.c.user_id, t.users.c.id))}
        return self._user_keys
