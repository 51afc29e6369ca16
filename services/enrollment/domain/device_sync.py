"""Keep our copy of an MDM server's devices in step with Apple School Manager.

First a fetch of every device (cursor pages), then incremental syncs from the
stored cursor. The cursor is saved after each stored page, so a run that dies
resumes where it stopped. Cursor trouble is handled as Apple documents it:
EXHAUSTED_CURSOR switches to sync, EXPIRED/INVALID_CURSOR starts over with a full
fetch (after which devices Apple no longer lists are removed). Sync records can
repeat: per serial, the latest ``op_date`` wins.
"""
from __future__ import annotations

import logging
import math
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from services.enrollment.domain.devices import DepDevice
from services.enrollment.domain.errors import (
    AccessDenied,
    CursorExhausted,
    CursorExpired,
    DepError,
    TermsNotAccepted,
    Throttled,
    TokenExpired,
)

log = logging.getLogger(__name__)

PHASE_FETCH = "fetch"
PHASE_SYNC = "sync"
PROFILE_RETRY_BATCH = 1000
PROFILE_ASSIGN_BATCH = 1000  # serials per request to Apple
DEFAULT_ASSIGN_RETRY = timedelta(seconds=60)  # when Apple throttles without saying how long to wait
# when Apple failed an assignment request (a 5xx, no answer): its devices wait that long, and the sync then asks again
ASSIGN_RETRY_AFTER_FAILURE = timedelta(minutes=5)
# a new device stored with its page, its profile asked of Apple once the page is committed; a run that dies first
# leaves it due, and the next sync assigns it (as it does a device whose request Apple failed, once that is due)
ASSIGN_QUEUED = "QUEUED"
WAITING_ASSIGN_RESULTS = ("THROTTLED", ASSIGN_QUEUED)  # what the sync asks Apple again, when due


@dataclass(frozen=True)
class DevicePage:
    devices: list[DepDevice]
    cursor: str | None
    more_to_follow: bool

    @classmethod
    def from_apple(cls, items: list[dict[str, Any]], cursor: str | None, more_to_follow: bool) -> DevicePage:
        devices = [DepDevice.from_apple(item) for item in items
                   if item.__class__ is dict and item.get("serial_number").__class__ is str and item["serial_number"]]
        if len(devices) < len(items):  # Apple's schema requires it: without one a record names no device
            log.warning("Apple listed %d device record(s) without a serial number; they are skipped",
                        len(items) - len(devices))
        return cls(devices, cursor, more_to_follow)


class DevicePages(Protocol):
    """Apple's device pages, read into records (an adapter may do that while the previous page is stored)."""

    def fetch(self, cursor: str | None) -> Iterable[DevicePage]: ...
    def sync(self, cursor: str) -> Iterable[DevicePage]: ...


@dataclass(frozen=True)
class CursorState:
    cursor: str
    phase: str  # PHASE_FETCH while a full fetch is under way, then PHASE_SYNC
    generation: str | None = None  # marks the devices seen by the current full fetch


class CursorStore(Protocol):
    def load(self) -> CursorState | None: ...
    def save(self, state: CursorState) -> None: ...


@dataclass(frozen=True)
class KnownDevice:
    serial_number: str
    op_date: str | None


class DeviceStore(Protocol):
    def get_many(self, serial_numbers: list[str]) -> dict[str, KnownDevice]: ...
    def put_many(self, devices: list[DepDevice], generation: str | None) -> set[str]: ...  # the serials that were new
    def delete_many(self, serial_numbers: list[str]) -> None: ...
    def remove_unseen(self, generation: str) -> list[str]: ...
    def record_assign_results(
        self, profile_uuid: str, statuses: dict[str, str], retry_at: datetime | None
    ) -> None: ...  # a THROTTLED or QUEUED device keeps profile_uuid, to be assigned with it at retry_at
    def due_profile_retries(self, now: datetime, limit: int) -> list[tuple[str, str]]: ...  # (serial, profile uuid)


@dataclass(frozen=True)
class AssignOutcome:
    statuses: dict[str, str]
    retry_after_seconds: int | None = None
    error: str | None = None  # why some devices were not sent (they are FAILED, or THROTTLED or QUEUED to be retried)
    apple_failed: bool = False  # Apple failed a request (a 5xx, no answer): the devices not sent are QUEUED


class ProfileAssigner(Protocol):
    def assign(self, profile_uuid: str, serial_numbers: list[str]) -> AssignOutcome: ...


class DeviceEvents(Protocol):
    def assigned(self, devices: list[DepDevice]) -> None: ...
    def removed(self, serial_numbers: list[str]) -> None: ...


@dataclass
class SyncCounts:
    added: int = 0
    modified: int = 0
    deleted: int = 0
    pages: int = 0
    refetched: bool = False
    kind: str = PHASE_SYNC  # "fetch" when the run listed every device
    assign_statuses: Counter = field(default_factory=Counter)
    # Apple failed a profile assignment: the run asks it nothing more, and the devices wait for a later sync
    assign_error: str | None = None


# Apple refusals that end the run: retrying them only makes noise
_FATAL = (AccessDenied, TermsNotAccepted, TokenExpired)


@dataclass
class DeviceSync:
    pages: DevicePages
    store: DeviceStore
    cursors: CursorStore
    events: DeviceEvents
    assigner: ProfileAssigner | None = None
    default_profile_uuid: str | None = None
    now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)
    progress: Callable[[SyncCounts], None] | None = None
    # ends the store's unit of work, so that nothing of the database is held while Apple answers
    checkpoint: Callable[[], None] = lambda: None

    def run(self, *, full: bool = False) -> SyncCounts:
        counts = SyncCounts()
        state = None if full else self.cursors.load()
        due = self.store.due_profile_retries(self.now(), PROFILE_RETRY_BATCH) if self.assigner else []
        self.checkpoint()
        if due:
            self._retry_throttled_assignments(due, counts)
            self.checkpoint()  # the retried assignments' results stand, whatever the pages bring
        if state is None:
            state = self._fetch(None, counts)
        elif state.phase == PHASE_FETCH:
            try:
                state = self._fetch(state, counts)
            except CursorExhausted:
                state = self._finish_fetch(state, counts)
            except CursorExpired:
                counts.refetched = True
                state = self._fetch(None, counts)
        try:
            self._sync(state, counts)
        except CursorExpired:
            counts.refetched = True
            self._sync(self._fetch(None, counts), counts)
        return counts

    def _fetch(self, resume: CursorState | None, counts: SyncCounts) -> CursorState:
        counts.kind = PHASE_FETCH
        generation = resume.generation if resume and resume.generation else uuid.uuid4().hex
        state = resume or CursorState("", PHASE_FETCH, generation)
        for page in self.pages.fetch(resume.cursor if resume else None):
            queued = self._apply(page, counts, generation)
            if page.cursor:
                state = CursorState(page.cursor, PHASE_FETCH, generation)
                self.cursors.save(state)
            self._assign_queued(queued, counts)
        return self._finish_fetch(state, counts)

    def _finish_fetch(self, state: CursorState, counts: SyncCounts) -> CursorState:
        if state.generation:
            gone = self.store.remove_unseen(state.generation)
            if gone:
                counts.deleted += len(gone)
                self.events.removed(gone)
        synced = CursorState(state.cursor, PHASE_SYNC)
        self.cursors.save(synced)
        return synced

    def _sync(self, state: CursorState, counts: SyncCounts) -> None:
        for page in self.pages.sync(state.cursor):
            queued = self._apply(page, counts, None)
            if page.cursor:
                self.cursors.save(CursorState(page.cursor, PHASE_SYNC))
            self._assign_queued(queued, counts)

    def _apply(self, page: DevicePage, counts: SyncCounts, generation: str | None) -> list[str]:
        """Store the page; the new devices the default profile is to be assigned to (queued with the page)."""
        records = latest_per_serial(page.devices)
        # only a dated record can be older than what we stored, and only a stored device can be deleted;
        # the rest (a whole fetch page: Apple dates sync records only) are stored without a lookup
        to_check = [r.serial_number for r in records if r.op_date or r.op_type == "deleted"]
        known = self.store.get_many(to_check) if to_check else {}
        upserts: list[DepDevice] = []
        deletes: list[str] = []
        for record in records:
            existing = known.get(record.serial_number)
            if existing and _older(record.op_date, existing.op_date):
                continue  # a repeat older than what we stored
            if record.op_type == "deleted":
                if existing:
                    deletes.append(record.serial_number)
                continue
            upserts.append(record)
        stored_first_time = self.store.put_many(upserts, generation) if upserts else set()
        new = [d for d in upserts if d.serial_number in stored_first_time]  # also a `modified` device that moved to us
        if deletes:
            self.store.delete_many(deletes)
            self.events.removed(deletes)
        if new:
            self.events.assigned(new)
        counts.added += len(new)
        counts.modified += len(upserts) - len(new)
        counts.deleted += len(deletes)
        counts.pages += 1
        profile = self.default_profile_uuid
        queued = [d.serial_number for d in new if d.profile_uuid != profile] if profile and self.assigner else []
        if queued:
            # once Apple failed an assignment, this run asks no more: the devices wait as long as those it failed
            due = self.now() if counts.assign_error is None else self.now() + ASSIGN_RETRY_AFTER_FAILURE
            self.store.record_assign_results(profile, dict.fromkeys(queued, ASSIGN_QUEUED), due)
        if self.progress:
            self.progress(counts)
        return queued

    def _assign_queued(self, serial_numbers: list[str], counts: SyncCounts) -> None:
        """Ask Apple for the page's queued assignments once the page is committed: nothing of the database is held
        while Apple answers, and the results are committed before the next page."""
        if serial_numbers and self.default_profile_uuid:
            self.checkpoint()
            self._assign(self.default_profile_uuid, serial_numbers, counts)
            self.checkpoint()

    def _assign(self, profile_uuid: str, serial_numbers: list[str], counts: SyncCounts) -> None:
        if not serial_numbers or self.assigner is None or counts.assign_error:
            return  # after a failure Apple is not asked again within the run (each try could wait out a timeout)
        outcome = assign_profile(self.assigner, self.store, profile_uuid, serial_numbers, self.now())
        counts.assign_statuses.update(outcome.statuses.values())
        if outcome.apple_failed:
            counts.assign_error = outcome.error

    def _retry_throttled_assignments(self, due: list[tuple[str, str]], counts: SyncCounts) -> None:
        by_profile: dict[str, list[str]] = {}
        for serial, profile_uuid in due:
            by_profile.setdefault(profile_uuid, []).append(serial)
        for profile_uuid, serials in by_profile.items():
            self._assign(profile_uuid, serials, counts)


def assign_profile(assigner: ProfileAssigner, store: DeviceStore, profile_uuid: str, serial_numbers: list[str],
                   now: datetime) -> AssignOutcome:
    """Assign ``profile_uuid`` in batches and keep every device's result.

    Apple failing a batch does not lose the results of the batches before it: that batch and the
    rest are THROTTLED (retried with the same profile when Apple said, or in a minute) if Apple
    throttled; QUEUED (asked again by a sync in a few minutes, ``apple_failed``) if Apple failed
    (a 5xx, no answer, an answer that cannot be read); FAILED if Apple refused the request itself
    (a 4xx such as PROFILE_NOT_FOUND, which asking again would not change). A revoked token or
    unsigned terms end it, nothing more can succeed: the results so far are kept, the rest FAILED,
    and the refusal is raised.
    The retry waits for the longest time Apple gave, per serial or in a 429's Retry-After.
    """
    statuses: dict[str, str] = {}
    retry_after: int | None = None
    error: str | None = None
    unsent_status = "FAILED"
    for start in range(0, len(serial_numbers), PROFILE_ASSIGN_BATCH):
        batch = serial_numbers[start:start + PROFILE_ASSIGN_BATCH]
        if error is None:
            try:
                outcome = assigner.assign(profile_uuid, batch)
            except _FATAL:
                statuses.update(dict.fromkeys(serial_numbers[start:], "FAILED"))
                _record(store, profile_uuid, statuses, retry_after, now)
                raise
            except Throttled as exc:
                error, unsent_status = str(exc), "THROTTLED"
                if exc.retry_after is not None:
                    retry_after = max(retry_after or 0, math.ceil(exc.retry_after))
            except DepError as exc:
                error, unsent_status = str(exc), ASSIGN_QUEUED if _apple_failed(exc) else "FAILED"
            else:
                statuses.update(outcome.statuses)
                if outcome.retry_after_seconds is not None:
                    retry_after = max(retry_after or 0, outcome.retry_after_seconds)
                continue
        statuses.update(dict.fromkeys(batch, unsent_status))
    _record(store, profile_uuid, statuses, retry_after, now)
    return AssignOutcome(statuses, retry_after, error, apple_failed=unsent_status == ASSIGN_QUEUED)


def _apple_failed(error: DepError) -> bool:
    """Apple failed rather than refused: no answer (no status), a 5xx, or a success we could not read.
    A 4xx refuses the request itself (PROFILE_NOT_FOUND, MALFORMED_REQUEST_BODY): it would be refused again."""
    return error.status_code is None or not 400 <= error.status_code < 500


def _record(store: DeviceStore, profile_uuid: str, statuses: dict[str, str], retry_after: int | None,
            now: datetime) -> None:
    """Keep every device's result; THROTTLED ones are retried when Apple said, or in a minute, and QUEUED ones
    (Apple failed) in a few minutes."""
    retry_at = None
    if "THROTTLED" in statuses.values():
        retry_at = now + (timedelta(seconds=retry_after) if retry_after else DEFAULT_ASSIGN_RETRY)
    if ASSIGN_QUEUED in statuses.values():
        retry_at = max(retry_at or now, now + ASSIGN_RETRY_AFTER_FAILURE)
    store.record_assign_results(profile_uuid, statuses, retry_at)


def latest_per_serial(records: Iterable[DepDevice]) -> list[DepDevice]:
    """One record per serial: the one with the latest op_date (the later one on a tie)."""
    chosen: dict[str, DepDevice] = {}
    for record in records:
        current = chosen.get(record.serial_number)
        if current is None or not _older(record.op_date, current.op_date):
            chosen[record.serial_number] = record
    return list(chosen.values())


def _older(candidate: str | None, than: str | None) -> bool:
    if not candidate or not than:
        return False
    return _instant(candidate) < _instant(than)


def _instant(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=timezone.utc)
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
