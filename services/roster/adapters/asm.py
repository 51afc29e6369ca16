"""Apple School Manager sync: stored preferences, and the roster fetched through enrollment.

Only the enrollment service holds the server token's credentials; the roster asks it
for each roster endpoint page by page (``enrollment.fetch_roster``).
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from services.roster.adapters import tables as t
from services.roster.domain.asm_mapping import AsmPreferences, AsmRoster
from shared.backoff import doubling_delay
from shared.errors import UpstreamError
from shared.storage import utc_now

# enrollment's roster kinds -> the AsmRoster list they fill
ROSTER_KINDS = {"location": "locations", "course": "courses", "class": "classes", "person": "persons"}
MAX_PAGES = 10_000  # a cursor that never ends is Apple's bug, not a reason to loop forever
# a failed daily sync is tried again after 5 minutes, then after twice as long each time, at most 6 hours
FIRST_RETRY = timedelta(minutes=5)
LONGEST_RETRY = timedelta(hours=6)
_NEVER = datetime.min.replace(tzinfo=timezone.utc)


class AsmPreferenceStore:
    def __init__(self, session: Session):
        self.session = session

    def get(self, token_id: str) -> AsmPreferences:
        row = self._row(token_id)
        return AsmPreferences.from_dict(row.preferences) if row else AsmPreferences()

    def status(self, token_id: str) -> dict[str, Any]:
        row = self._row(token_id)
        return {"last_sync_at": row.last_sync_at.isoformat() if row and row.last_sync_at else None,
                "last_sync_outcome": row.last_sync_outcome if row else None,
                "retry_at": row.retry_at.isoformat() if row and row.retry_at else None}

    def set(self, token_id: str, prefs: AsmPreferences) -> None:
        values = {"preferences": prefs.to_dict(), "updated_at": utc_now()}
        if self._row(token_id) is None:
            self.session.execute(t.asm_preferences.insert().values(token_id=token_id, **values))
        else:
            self.session.execute(t.asm_preferences.update()
                                 .where(t.asm_preferences.c.token_id == token_id).values(**values))

    def record_sync(self, token_id: str, outcome: str) -> None:
        """A run that worked (or stopped at the deletion guard, which a person must look at)."""
        self._record(token_id, outcome, failed_syncs=0, retry_at=None)

    def record_failure(self, token_id: str, outcome: str) -> datetime:
        """A run that failed; returns when it is tried again, later after each failure in a row."""
        failed = (self.session.execute(sa.select(t.asm_preferences.c.failed_syncs)
                                       .where(t.asm_preferences.c.token_id == token_id)).scalar() or 0) + 1
        retry_at = utc_now() + doubling_delay(failed - 1, FIRST_RETRY, LONGEST_RETRY)
        self._record(token_id, outcome, failed_syncs=failed, retry_at=retry_at)
        return retry_at

    def _record(self, token_id: str, outcome: str, **values: Any) -> None:
        self.session.execute(t.asm_preferences.update().where(t.asm_preferences.c.token_id == token_id)
                             .values(last_sync_at=utc_now(), last_sync_outcome=outcome[:2000], **values))

    def due(self, now: datetime) -> list[str]:
        """Tokens to sync: their daily time has passed today and they have not run since, or a failed run's
        retry time has come. The token that ran longest ago comes first, so a failing one holds up no other."""
        due = []
        for row in self.session.execute(sa.select(t.asm_preferences)):
            sync_time = (row.preferences or {}).get("sync_time")
            if not sync_time:
                continue
            if row.retry_at is not None:  # failing: its retry time, not the daily one, says when
                if row.retry_at <= now:
                    due.append(row)
                continue
            hours, minutes = (int(part) for part in sync_time.split(":"))
            scheduled = now.replace(hour=hours, minute=minutes, second=0, microsecond=0)
            if now >= scheduled and (row.last_sync_at is None or row.last_sync_at < scheduled):
                due.append(row)
        due.sort(key=lambda row: row.last_sync_at or _NEVER)
        return [row.token_id for row in due]

    def _row(self, token_id: str) -> Any:
        return self.session.execute(
            sa.select(t.asm_preferences).where(t.asm_preferences.c.token_id == token_id)).first()


def fetch_roster(enrollment: Any, token_id: str) -> AsmRoster:
    """Every page of the four roster endpoints, through ``enrollment.fetch_roster``.

    Each answer is one page of Apple's objects: ``{"kind", "items", "cursor",
    "more_to_follow"}``.
    """
    roster = AsmRoster()
    for kind, attribute in ROSTER_KINDS.items():
        cursor = None
        for _ in range(MAX_PAGES):
            page = enrollment.fetch_roster(token_id, kind, cursor)
            if not isinstance(page, dict):
                raise UpstreamError(f"enrollment.fetch_roster returned no page for {kind}")
            getattr(roster, attribute).extend(page.get("items") or [])
            cursor = page.get("cursor")
            if not page.get("more_to_follow") or not cursor:
                break
        else:
            raise UpstreamError(f"Apple School Manager kept returning {kind} pages; "
                                f"the sync stopped after {MAX_PAGES}")
    return roster
