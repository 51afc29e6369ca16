"""Apple School Manager sync: stored preferences, and the roster fetched through enrollment.

Only the enrollment service holds the server token's credentials; the roster asks it
for each roster endpoint page by page (``enrollment.fetch_roster``).
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from services.roster.adapters import tables as t
from services.roster.domain.asm_mapping import AsmPreferences, AsmRoster
from shared.errors import UpstreamError
from shared.storage import utc_now

# enrollment's roster kinds -> the AsmRoster list they fill
ROSTER_KINDS = {"location": "locations", "course": "courses", "class": "classes", "person": "persons"}
MAX_PAGES = 10_000  # a cursor that never ends is Apple's bug, not a reason to loop forever


class AsmPreferenceStore:
    def __init__(self, session: Session):
        self.session = session

    def get(self, token_id: str) -> AsmPreferences:
        row = self._row(token_id)
        return AsmPreferences.from_dict(row.preferences) if row else AsmPreferences()

    def status(self, token_id: str) -> dict[str, Any]:
        row = self._row(token_id)
        return {"last_sync_at": row.last_sync_at.isoformat() if row and row.last_sync_at else None,
                "last_sync_outcome": row.last_sync_outcome if row else None}

    def set(self, token_id: str, prefs: AsmPreferences) -> None:
        values = {"preferences": prefs.to_dict(), "updated_at": utc_now()}
        if self._row(token_id) is None:
            self.session.execute(t.asm_preferences.insert().values(token_id=token_id, **values))
        else:
            self.session.execute(t.asm_preferences.update()
                                 .where(t.asm_preferences.c.token_id == token_id).values(**values))

    def record_sync(self, token_id: str, outcome: str) -> None:
        self.session.execute(t.asm_preferences.update().where(t.asm_preferences.c.token_id == token_id)
                             .values(last_sync_at=utc_now(), last_sync_outcome=outcome[:2000]))

    def due(self, now: datetime) -> list[str]:
        """Tokens whose daily sync time has passed today and that have not synced since."""
        due = []
        for row in self.session.execute(sa.select(t.asm_preferences)):
            sync_time = (row.preferences or {}).get("sync_time")
            if not sync_time:
                continue
            hours, minutes = (int(part) for part in sync_time.split(":"))
            scheduled = now.replace(hour=hours, minute=minutes, second=0, microsecond=0)
            if now >= scheduled and (row.last_sync_at is None or row.last_sync_at < scheduled):
                due.append(row.token_id)
        return due

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
