"""Hands workers their service's section of the configuration (``SERVICES.<name>``)."""
from __future__ import annotations

from typing import Any

from nameko.extensions import DependencyProvider

from shared.config import service_settings


class ServiceSettings(DependencyProvider):
    def setup(self) -> None:
        self.settings = service_settings(self.container.config, self.container.service_name)

    def get_dependency(self, worker_ctx: Any) -> dict[str, Any]:
        return self.settings
