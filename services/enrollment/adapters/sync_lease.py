"""How long an ADE sync's hold on its server token lasts unless renewed.

``SERVICES.enrollment.sync_lease_seconds`` (default 30). A running sync renews its lease every
third of that, however slowly Apple answers; a sync whose process died loses it that soon after,
and the next scheduled tick resumes it from the stored cursor. A sync that finds its lease taken
(it ran out during a long pause or a lost connection to the database, and another replica resumed
the sync) stops at its next page.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Any

from nameko.extensions import DependencyProvider

from shared.config import service_settings

DEFAULT_SYNC_LEASE_SECONDS = 30
SYNC_LEASE_LOST = ("stopped: this run's lease ran out (a long pause or a lost database connection) and another "
                   "replica took the sync over from the last stored page")


class SyncLeaseDuration(DependencyProvider):
    def setup(self) -> None:
        settings = service_settings(self.container.config, self.container.service_name)
        self.duration = timedelta(seconds=float(settings.get("sync_lease_seconds", DEFAULT_SYNC_LEASE_SECONDS)))

    def get_dependency(self, worker_ctx: Any) -> timedelta:
        return self.duration
