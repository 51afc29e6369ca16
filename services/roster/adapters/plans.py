"""Stored plans: a summary row per plan (also the record of the import run) and its changes."""
from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any, Iterator

import sqlalchemy as sa
from sqlalchemy.orm import Session

from services.roster.adapters import tables as t
from services.roster.adapters.hierarchy import bulk_insert, chunks
from services.roster.domain.planning import Change, Plan, PlanSummary
from shared.errors import NotFound
from shared.storage import utc_now

PREVIEWED, APPLIED, EXPIRED = "previewed", "applied", "expired"
ORIGIN_LENGTH = t.plans.c.origin.type.length
UNAPPLIED_PLAN_LIFETIME = timedelta(days=2)
APPLIED_CHANGES_KEPT = timedelta(days=30)


class PlanStore:
    def __init__(self, session: Session):
        self.session = session

    def save(self, plan: Plan, *, actor_id: str, origin: str | None) -> str:
        plan_id = str(uuid.uuid4())
        self.session.execute(t.plans.insert().values(
            plan_id=plan_id, source=plan.summary.source, status=PREVIEWED,
            summary=plan.summary.to_dict(), actor_id=actor_id, origin=_shortened(origin),
            created_at=utc_now()))
        columns = ("plan_id", "seq", "entity", "action", "natural_id", "target", "after", "before")
        for start, part in enumerate(chunks(plan.changes, 2000)):
            bulk_insert(self.session, t.plan_changes, columns, [
                (plan_id, start * 2000 + i, c.entity, c.action, c.natural_id, c.target, c.after,
                 c.before)
                for i, c in enumerate(part)])
        return plan_id

    def get(self, plan_id: str, *, for_update: bool = False) -> Any:
        query = sa.select(t.plans).where(t.plans.c.plan_id == plan_id)
        if for_update:
            query = query.with_for_update()
        row = self.session.execute(query).first()
        if row is None:
            raise NotFound(f"there is no import plan {plan_id}; preview the import again")
        return row

    def summary(self, row: Any) -> PlanSummary:
        return PlanSummary.from_dict(row.summary)

    def changes(self, plan_id: str, *, after_seq: int = -1, limit: int | None = None,
                batch: int = 5000, entity: str | None = None) -> Iterator[Change]:
        """The plan's changes (of one entity, if given) in order, read a batch at a time (keyset pagination)."""
        remaining = limit
        query = sa.select(t.plan_changes).where(t.plan_changes.c.plan_id == plan_id)
        if entity is not None:
            query = query.where(t.plan_changes.c.entity == entity)
        while remaining is None or remaining > 0:
            size = batch if remaining is None else min(batch, remaining)
            rows = self.session.execute(
                query.where(t.plan_changes.c.seq > after_seq).order_by(t.plan_changes.c.seq).limit(size)).all()
            for row in rows:
                yield Change(row.entity, row.action, row.natural_id, after=row.after,
                             before=row.before, target=row.target)
            if len(rows) < size:
                return
            after_seq = rows[-1].seq
            if remaining is not None:
                remaining -= len(rows)

    def mark(self, plan_id: str, status: str, detail: str | None = None) -> None:
        values: dict[str, Any] = {"status": status, "outcome_detail": detail}
        if status == APPLIED:
            values["applied_at"] = utc_now()
        self.session.execute(t.plans.update().where(t.plans.c.plan_id == plan_id).values(**values))

    def prune(self) -> None:
        """Forget the changes of old plans; their summaries stay as the history of runs."""
        now = utc_now()
        stale = sa.select(t.plans.c.plan_id).where(sa.or_(
            sa.and_(t.plans.c.status != APPLIED,
                    t.plans.c.created_at < now - UNAPPLIED_PLAN_LIFETIME),
            sa.and_(t.plans.c.status == APPLIED,
                    t.plans.c.applied_at < now - APPLIED_CHANGES_KEPT)))
        self.session.execute(t.plan_changes.delete().where(t.plan_changes.c.plan_id.in_(stale)))
        self.session.execute(t.plans.update().where(
            t.plans.c.status == PREVIEWED, t.plans.c.created_at < now - UNAPPLIED_PLAN_LIFETIME)
            .values(status=EXPIRED))

    def runs(self, limit: int) -> list[Any]:
        return self.session.execute(
            sa.select(t.plans).order_by(t.plans.c.created_at.desc()).limit(limit)).all()


def _shortened(origin: str | None) -> str | None:
    """An origin the column can hold: a long file name keeps its start and its end."""
    if origin is None or len(origin) <= ORIGIN_LENGTH:
        return origin
    head = (ORIGIN_LENGTH - 1) // 2
    return f"{origin[:head]}…{origin[len(origin) - (ORIGIN_LENGTH - 1 - head):]}"
