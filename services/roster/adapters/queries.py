"""Read-side queries over the hierarchy, paginated and filtered by location in SQL."""
from __future__ import annotations

from typing import Any, Iterable

import sqlalchemy as sa
from sqlalchemy.orm import Session

from services.roster.adapters import tables as t
from services.roster.adapters.hierarchy import SqlHierarchy, user_locations, user_record
from shared.contracts.roster import ClassRecord, UserRecord


class RosterQueries:
    def __init__(self, session: Session):
        self.session = session

    def users(self, *, locations: Iterable[str] | None, user_types: Iterable[str] | None,
              offset: int, limit: int) -> tuple[list[UserRecord], int]:
        """A page of users (by user ID) and how many match in all."""
        query = sa.select(t.users)
        if locations is not None:
            query = query.where(t.users.c.id.in_(
                sa.select(t.user_locations.c.user_key)
                .where(t.user_locations.c.location_id.in_(list(locations)))))
        if user_types is not None:
            query = query.where(t.users.c.user_type.in_(list(user_types)))
        total = self.session.execute(
            sa.select(sa.func.count()).select_from(query.subquery())).scalar_one()
        rows = self.session.execute(
            query.order_by(t.users.c.user_id).offset(offset).limit(limit)).all()
        located = user_locations(self.session, [row.id for row in rows])
        return [user_record(row, located.get(row.id, [])) for row in rows], total

    def user(self, user_id: str) -> UserRecord | None:
        row = self.session.execute(sa.select(t.users).where(t.users.c.user_id == user_id)).first()
        if row is None:
            return None
        return user_record(row, user_locations(self.session, [row.id]).get(row.id, []))

    def classes_of_user(self, user_id: str) -> list[dict[str, str]]:
        rows = self.session.execute(
            sa.select(t.memberships.c.class_id, t.memberships.c.role)
            .join(t.users, t.users.c.id == t.memberships.c.user_key)
            .where(t.users.c.user_id == user_id).order_by(t.memberships.c.class_id))
        return [{"class_id": class_id, "role": role} for class_id, role in rows]

    def classes(self, *, locations: Iterable[str] | None, offset: int,
                limit: int) -> tuple[list[ClassRecord], int]:
        query = sa.select(t.classes)
        if locations is not None:
            query = query.where(t.classes.c.location_id.in_(list(locations)))
        total = self.session.execute(
            sa.select(sa.func.count()).select_from(query.subquery())).scalar_one()
        rows = self.session.execute(query.order_by(t.classes.c.class_id).offset(offset).limit(limit)).all()
        members = SqlHierarchy(self.session).class_members([r.class_id for r in rows])
        return [ClassRecord(class_id=r.class_id, name=r.name, location_id=r.location_id,
                            course_name=r.course_name, room=r.room,
                            teacher_ids=members[r.class_id]["teacher"],  # the primary teacher first
                            student_ids=sorted(members[r.class_id]["student"]))
                for r in rows], total

    def locations(self) -> list[dict[str, Any]]:
        counts = {location_id: count for location_id, count in self.session.execute(
            sa.select(t.user_locations.c.location_id, sa.func.count())
            .group_by(t.user_locations.c.location_id))}
        return [{"location_id": r.location_id, "name": r.name, "source": r.source,
                 "users": counts.get(r.location_id, 0)}
                for r in self.session.execute(sa.select(t.locations).order_by(t.locations.c.name))]

    def location_names(self) -> dict[str, str]:
        return {location_id: name for location_id, name in self.session.execute(
            sa.select(t.locations.c.location_id, t.locations.c.name))}

    def grade_levels(self) -> list[dict[str, Any]]:
        return [{"name": r.name, "location_id": r.location_id, "source": r.source}
                for r in self.session.execute(
                    sa.select(t.grade_levels).order_by(t.grade_levels.c.location_id,
                                                       t.grade_levels.c.name))]

    def users_in_scope(self, *, locations: Iterable[str] | None, grade_levels: Iterable[str] | None,
                       classes: Iterable[str] | None, user_types: Iterable[str] | None,
                       user_ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """``[{user_id, locations}]`` of the users matching every given dimension (any value within one)."""
        query = sa.select(t.users.c.id, t.users.c.user_id)
        if user_ids is not None:
            query = query.where(t.users.c.user_id.in_(list(user_ids)))
        if locations is not None:
            query = query.where(t.users.c.id.in_(
                sa.select(t.user_locations.c.user_key)
                .where(t.user_locations.c.location_id.in_(list(locations)))))
        if grade_levels is not None:
            query = query.where(t.users.c.grade_level.in_(list(grade_levels)))
        if classes is not None:
            query = query.where(t.users.c.id.in_(
                sa.select(t.memberships.c.user_key).where(t.memberships.c.class_id.in_(list(classes)))))
        if user_types is not None:
            query = query.where(t.users.c.user_type.in_(list(user_types)))
        rows = self.session.execute(query.order_by(t.users.c.user_id)).all()
        located = user_locations(self.session, None if len(rows) > 900 else [row.id for row in rows])
        return [{"user_id": row.user_id, "locations": sorted(located.get(row.id, []))} for row in rows]
