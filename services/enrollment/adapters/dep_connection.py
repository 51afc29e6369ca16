"""Hands workers Device Assignment API clients sharing one connection pool and the service's settings."""
from __future__ import annotations

import time
from typing import Any

import httpx
from nameko.extensions import DependencyProvider

from services.enrollment import metrics
from services.enrollment.adapters.dep_client import APPLE_DEP_URL, DepClient
from services.enrollment.domain.server_tokens import OAuthCredentials
from shared.config import service_settings


# clients kept per set of credentials, so calls in a row (a roster import's pages) reuse the Apple session
# and the /account limits instead of opening a session and reading /account for every call; for minutes
# only, so what /account advertises is read again by the next scheduled sync
CACHED_CLIENTS = 64
CLIENT_REUSE_SECONDS = 600.0


class DepConnector:
    def __init__(self, provider: DepConnection):
        self._provider = provider

    def client(self, credentials: OAuthCredentials) -> DepClient:
        p = self._provider
        made_at, client = p.clients.pop(credentials, (0.0, None))
        if client is None or time.monotonic() - made_at > CLIENT_REUSE_SECONDS:
            made_at = time.monotonic()
            client = DepClient(credentials, base_url=p.base_url, http=p.http, observe_call=metrics.observe_apple_call,
                               max_retry_after_seconds=p.max_retry_after)
        p.clients[credentials] = (made_at, client)  # the most recently used last
        while len(p.clients) > CACHED_CLIENTS:
            p.clients.pop(next(iter(p.clients)))
        return client


class DepConnection(DependencyProvider):
    """``SERVICES.enrollment``: ``dep_url``, ``dep_max_retry_after_seconds`` (how long one request waits out
    Apple's 429s in all; when Apple asks for longer it stops at once and says when to try again) and
    ``dep_timeout_seconds`` (how long to wait for Apple to connect and for each read before the sync ends with a
    timeout)."""

    def setup(self) -> None:
        settings = service_settings(self.container.config, self.container.service_name)
        self.base_url = settings.get("dep_url") or APPLE_DEP_URL
        self.max_retry_after = float(settings.get("dep_max_retry_after_seconds", 300))
        timeout = float(settings.get("dep_timeout_seconds", 60))
        self.http = httpx.Client(timeout=timeout, limits=httpx.Limits(max_connections=20, max_keepalive_connections=10))
        self.clients: dict[OAuthCredentials, tuple[float, DepClient]] = {}

    def stop(self) -> None:
        self.http.close()

    def kill(self) -> None:
        self.http.close()

    def get_dependency(self, worker_ctx: Any) -> DepConnector:
        return DepConnector(self)
