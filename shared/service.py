"""What every Orchard service has: the actor, metrics, health and its audit log."""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from shared.call_deadlines import CallerDeadline
from shared.entrypoints import Auth, rpc
from shared.errors import ValidationError
from shared.metrics import Metrics, orchard_version


class OrchardService:
    """Base class of the five services; each sets ``name`` and ``db = Database(...)``."""

    name: str
    auth = Auth()
    metrics = Metrics()
    caller_deadline = CallerDeadline()

    @rpc
    def health(self) -> dict[str, Any]:
        self.db.session.execute(sa.text("SELECT 1"))
        return {"service": self.name, "version": orchard_version(), "database": "ok"}

    @rpc
    def audit_log(self, target: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The newest audit entries, optionally only those about ``target``."""
        self.auth.require(f"{self.name}:audit")
        if target is not None and not isinstance(target, str):
            raise ValidationError("target must be a string")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise ValidationError("limit must be a whole number from 1 to 1000")
        return self.db.audit_entries(target, limit)
