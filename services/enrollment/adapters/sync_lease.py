"""How long an ADE sync's hold on its server token lasts unless renewed.

``SERVICES.enrollment.sync_lease_seconds`` (default 30). A running sync renews its lease every
third of that, however slowly Apple answers; a sync whose process died loses it that soon after,
and the next scheduled tick resumes it from the stored cursor.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Any

from nameko.extensions import DependencyProvider

from shared.config import service_settings

DEFAULT_SYNC_LEASE_SECONDS = 30


class SyncLeaseDuration(DependencyProvider):
    def setup(self) -> None:
        settings = service_settings(self.container.config, self.container.service_name)
        self.duration = timedelta(seconds=float(settings.get("sync_lease_seconds", DEFAULT_SYNC_LEASE_SECONDS)))

    def get_dependency(self, worker_ctx: Any) -> timedelta:
        return self.duration
