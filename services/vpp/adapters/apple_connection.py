"""Hands workers Apps and Books clients that share one connection pool and the service's settings."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from nameko.extensions import DependencyProvider

from services.vpp import metrics
from services.vpp.adapters.apple_client import DEFAULT_BASE_URL, AppsAndBooksClient, MdmIdentity
from shared.config import service_settings


class AppleConnector:
    def __init__(self, provider: "AppleConnection"):
        self._provider = provider

    @property
    def mdm(self) -> MdmIdentity:
        return self._provider.mdm

    def client(self, stoken: str, reload_stoken: Callable[[], str] | None = None) -> AppsAndBooksClient:
        p = self._provider
        return AppsAndBooksClient(
            stoken, p.mdm, base_url=p.base_url, http=p.http, reload_stoken=reload_stoken,
            observer=metrics.observe_apple_call, poll_interval=p.poll_interval, busy_backoff=p.busy_backoff)


class AppleConnection(DependencyProvider):
    """``SERVICES.vpp``: ``vpp_url``, ``mdm_id``/``mdm_name`` (how Apple tells MDMs apart), poll and backoff
    seconds, and ``apple_timeout_seconds`` (a call Apple leaves unanswered that long is retried like a dropped
    connection)."""

    def setup(self) -> None:
        settings = service_settings(self.container.config, self.container.service_name)
        self.base_url = settings.get("vpp_url") or DEFAULT_BASE_URL
        self.mdm = MdmIdentity(str(settings.get("mdm_id") or "orchard"), str(settings.get("mdm_name") or "Orchard"))
        self.poll_interval = float(settings.get("apple_poll_interval", 2.0))
        self.busy_backoff = float(settings.get("apple_busy_backoff", 5.0))
        timeout = float(settings.get("apple_timeout_seconds", 30))
        self.http = httpx.Client(timeout=timeout, limits=httpx.Limits(max_connections=50, max_keepalive_connections=20))

    def stop(self) -> None:
        self.http.close()

    def kill(self) -> None:
        self.http.close()

    def get_dependency(self, worker_ctx: Any) -> AppleConnector:
        return AppleConnector(self)
