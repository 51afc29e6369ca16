"""Preview and apply: the import pipeline run against the database.

Reading the hierarchy and writing the plan happen on the worker's session; the
CPU-bound comparison runs in a native thread (``eventlet.tpool``) on an in-memory
snapshot, so the worker keeps its broker heartbeats. Applying writes the plan in
batches and adds each batch's events to the outbox in the same transaction; the
relay publishes them after the commit, so the apply never waits on the broker.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import eventlet
from eventlet import tpool
from sqlalchemy.orm import Session

from services.roster import metrics
from services.roster.adapters.hierarchy import SqlHierarchy
from services.roster.adapters.plans import APPLIED, PREVIEWED, PlanStore
from services.roster.adapters.welcome_mails import WelcomeMails
from services.roster.domain import planning
from services.roster.domain.welcome import welcome_emails
from shared.auth import Actor, require_locations
from shared.contracts.base import Event
from shared.contracts.roster import ImportBatch, UserImported
from shared.errors import Conflict, NeedsApproval
from shared.storage import utc_now

APPLY_CHUNK = 5000


@dataclass(frozen=True)
class ImportRun:
    """A plan previewed and applied at once (a daily sync, an API write), or stopped by the deletion guard."""

    summary: dict[str, Any]  # the plan's preview, with its plan_id
    applied: dict[str, Any] | None  # what the apply answered; None when the guard stopped it
    stopped: NeedsApproval | None = None  # the guard's refusal: a person must look at the plan


class ImportRunner:
    def __init__(self, session: Session, publish: Callable[..., None]):
        self.session = session
        self.publish = publish
        self.plans = PlanStore(session)

    def preview(self, batch: ImportBatch, options: planning.PlanOptions, *, actor: Actor,
                origin: str | None = None,
                row_numbers: Mapping[str, Mapping[str, int]] | None = None,
                warnings: list[str] | None = None,
                source_identifiers: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Store the plan for ``batch``; returns its summary with ``plan_id``."""
        snapshot = planning.HierarchySnapshot.of(SqlHierarchy(self.session))
        plan = tpool.execute(planning.build_plan, snapshot, batch, options, row_numbers=row_numbers,
                             source_identifiers=source_identifiers)
        del snapshot
        plan.summary.warnings[:0] = warnings or []
        self.plans.prune()
        plan_id = self.plans.save(plan, actor_id=actor.id, origin=origin)
        metrics.IMPORT_RUNS.labels(batch.source, PREVIEWED).inc()
        metrics.REJECTED_ROWS.labels(batch.source).inc(len(plan.summary.rejected))
        return {"plan_id": plan_id, "status": PREVIEWED, **plan.summary.to_dict()}

    def apply(self, plan_id: str, *, actor: Actor, allow_mass_delete: bool = False) -> dict[str, Any]:
        row = self.plans.get(plan_id, for_update=True)
        summary = self.plans.summary(row)
        require_locations(actor, summary.locations)
        if row.status == APPLIED:  # applying twice changes nothing
            return {"plan_id": plan_id, "status": APPLIED, "already_applied": True,
                    "applied": {}, "events": 0}
        if row.status != PREVIEWED:
            raise Conflict(f"plan {plan_id} is {row.status}; preview the import again")
        hierarchy = SqlHierarchy(self.session)
        try:
            planning.check_can_apply(summary, hierarchy.version(),
                                     allow_mass_delete=allow_mass_delete)
            # a plan that changes nothing writes nothing, so the plans previewed beside it stay current
            if summary.total_changes:
                hierarchy.claim_version(summary.base_version)
        except Conflict:
            metrics.IMPORT_RUNS.labels(summary.source, "refused").inc()
            raise
        published = 0
        pending: list[Event] = []
        welcomes: list[UserImported] = []  # new users whose import asked for a welcome e-mail
        changes = self.plans.changes(plan_id, batch=APPLY_CHUNK)
        for event in planning.apply_plan(changes, hierarchy, summary.source,
                                         chunk_size=APPLY_CHUNK):
            pending.append(event)
            if len(pending) >= APPLY_CHUNK:
                published += self._flush(pending, welcomes)
        published += self._flush(pending, welcomes)
        if welcomes:  # in the apply's transaction: sent once it has committed, never for an apply undone
            names = {location.record.location_id: location.record.name for location in hierarchy.locations()}
            WelcomeMails(self.session).queue(welcome_emails(welcomes, names), utc_now())
        self.plans.mark(plan_id, APPLIED)
        for entity, actions in summary.counts.items():
            for action, count in actions.items():
                if count:
                    metrics.IMPORT_ROWS.labels(entity, action).inc(count)
        metrics.IMPORT_RUNS.labels(summary.source, APPLIED).inc()
        metrics.PLAN_TO_APPLY.observe((utc_now() - row.created_at).total_seconds())
        return {"plan_id": plan_id, "status": APPLIED, "already_applied": False,
                "applied": summary.counts, "events": published}

    def preview_and_apply(self, preview: Callable[[], dict[str, Any]], *, actor: Actor, attempts: int) -> ImportRun:
        """Apply at once the plan that ``preview`` stores (it returns the plan's summary, as ``self.preview`` does).

        A plan another apply made stale in between is rolled back and previewed again, ``attempts`` times in all;
        the last one's ``Conflict`` is raised. The deletion guard stops the run at its first plan: previewing
        again would not pass it."""
        for attempt in range(1, attempts + 1):
            summary = preview()
            try:
                return ImportRun(summary, self.apply(summary["plan_id"], actor=actor))
            except NeedsApproval as refused:
                return ImportRun(summary, None, refused)
            except Conflict:
                if attempt == attempts:
                    raise
                self.session.rollback()  # nothing of the stale plan is kept
        raise ValueError(f"attempts must be at least 1, not {attempts}")

    def _flush(self, pending: list[Event], welcomes: list[UserImported]) -> int:
        count = len(pending)
        welcomes.extend(event for event in pending if isinstance(event, UserImported) and event.welcome_email)
        if pending:
            self.publish(*pending)
            pending.clear()
            eventlet.sleep(0)  # let the hub run between batches
        return count
