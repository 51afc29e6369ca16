"""The ADE sync's Apple-side ports, on the Device Assignment API client."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from services.enrollment.adapters.dep_client import DepClient, Page
from services.enrollment.domain.device_sync import AssignOutcome, DevicePage
from shared import green

T = TypeVar("T")


class ClientPages:
    """``DevicePages``: fetch and sync, each downloading and reading one page ahead while the last one is stored."""

    def __init__(self, client: DepClient):
        self.client = client

    def fetch(self, cursor: str | None) -> Iterable[DevicePage]:
        return read_ahead(_records(self.client.fetch_device_pages(cursor)))

    def sync(self, cursor: str) -> Iterable[DevicePage]:
        return read_ahead(_records(self.client.sync_device_pages(cursor)))


def _records(pages: Iterator[Page]) -> Iterator[DevicePage]:
    for page in pages:
        yield DevicePage.from_apple(page.items, page.cursor, page.more_to_follow)


def read_ahead(pages: Iterator[T]) -> Iterator[T]:
    """Yield from ``pages`` while a green thread already downloads the next item."""
    done = object()
    pending = green.spawn(next, pages, done)
    try:
        while True:
            item = pending.wait()  # re-raises the download's error here, in the consumer
            if item is done:
                return
            pending = green.spawn(next, pages, done)
            yield item
    finally:
        pending.kill()


class ClientAssigner:
    """``ProfileAssigner``: assigns through ``/profile/devices``."""

    def __init__(self, client: DepClient):
        self.client = client

    def assign(self, profile_uuid: str, serial_numbers: list[str]) -> AssignOutcome:
        result = self.client.assign_profile(profile_uuid, serial_numbers)
        return AssignOutcome(result.statuses, result.retry_after_seconds)
