"""The ADE sync's Apple-side ports, on the Device Assignment API client."""
from __future__ import annotations

from collections.abc import Iterable

from services.enrollment.adapters.dep_client import DepClient, Page
from services.enrollment.domain.device_sync import AssignOutcome


class ClientPages:
    """``DevicePages``: fetch and sync page iterators."""

    def __init__(self, client: DepClient):
        self.client = client

    def fetch(self, cursor: str | None) -> Iterable[Page]:
        return self.client.fetch_device_pages(cursor)

    def sync(self, cursor: str) -> Iterable[Page]:
        return self.client.sync_device_pages(cursor)


class ClientAssigner:
    """``ProfileAssigner``: assigns through ``/profile/devices``."""

    def __init__(self, client: DepClient):
        self.client = client

    def assign(self, profile_uuid: str, serial_numbers: list[str]) -> AssignOutcome:
        result = self.client.assign_profile(profile_uuid, serial_numbers)
        return AssignOutcome(result.statuses, result.retry_after_seconds)
