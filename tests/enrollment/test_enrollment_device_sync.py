"""The ADE sync algorithm over in-memory ports, then over the DEP sandbox via the real client."""
from datetime import datetime, timedelta, timezone

import pytest

from services.enrollment.adapters.dep_client import Page
from services.enrollment.adapters.dep_ports import ClientAssigner, ClientPages
from services.enrollment.domain.device_sync import (
    ASSIGN_RETRY_AFTER_FAILURE,
    WAITING_ASSIGN_RESULTS,
    AssignOutcome,
    CursorState,
    DevicePage,
    DeviceSync,
    KnownDevice,
    assign_profile,
    latest_per_serial,
)
from services.enrollment.domain.devices import DepDevice, status_colour
from services.enrollment.domain.errors import (
    AccessDenied, CursorExhausted, CursorExpired, DepError, TermsNotAccepted, Throttled,
)

NOW = datetime(2026, 3, 1, tzinfo=timezone.utc)


class MemoryStore:
    def __init__(self):
        self.devices: dict[str, DepDevice] = {}
        self.seen: dict[str, str | None] = {}
        self.assignments: dict[str, tuple[str, str, datetime | None]] = {}
        self.looked_up: list[str] = []

    def get_many(self, serials):
        self.looked_up.extend(serials)
        return {s: KnownDevice(s, self.devices[s].op_date) for s in serials if s in self.devices}

    def put_many(self, devices, generation):
        new = {d.serial_number for d in devices} - set(self.devices)
        for device in devices:
            self.devices[device.serial_number] = device
            self.seen[device.serial_number] = generation
        return new

    def delete_many(self, serials):
        for serial in serials:
            self.devices.pop(serial, None)

    def remove_unseen(self, generation):
        gone = [s for s in self.devices if self.seen.get(s) != generation]
        self.delete_many(gone)
        return gone

    def record_assign_results(self, profile_uuid, statuses, retry_at):
        for serial, status in statuses.items():
            self.assignments[serial] = (profile_uuid, status, retry_at if status in WAITING_ASSIGN_RESULTS else None)

    def due_profile_retries(self, now, limit):
        return [(s, profile) for s, (profile, status, at) in self.assignments.items()
                if status in WAITING_ASSIGN_RESULTS and at <= now][:limit]


class MemoryCursors:
    def __init__(self, state=None):
        self.state = state
        self.saved: list[CursorState] = []

    def load(self):
        return self.state

    def save(self, state):
        self.state = state
        self.saved.append(state)


class RecordedEvents:
    def __init__(self):
        self.assigned_list: list[str] = []
        self.removed_serials: list[str] = []

    def assigned(self, devices):
        self.assigned_list.extend(d.serial_number for d in devices)

    def removed(self, serials):
        self.removed_serials.extend(serials)


class ScriptedPages:
    """Pages keyed by (mode, cursor); a value that is an exception is raised instead."""

    def __init__(self, script):
        self.script = script
        self.calls: list[tuple[str, str | None]] = []

    def _pages(self, mode, cursor):
        self.calls.append((mode, cursor))
        answer = self.script[(mode, cursor)]
        if isinstance(answer, Exception):
            raise answer
        for page in answer:
            if isinstance(page, Exception):
                raise page
            yield DevicePage.from_apple(page.items, page.cursor, page.more_to_follow)

    def fetch(self, cursor):
        return self._pages("fetch", cursor)

    def sync(self, cursor):
        return self._pages("sync", cursor)


class RecordingAssigner:
    """Answers SUCCESS unless told otherwise per serial; an exception in ``failures`` is raised by that call."""

    def __init__(self, outcomes=None, retry_after=None, failures=None):
        self.calls: list[list[str]] = []
        self.profiles: list[str] = []
        self.outcomes = outcomes or {}
        self.retry_after = retry_after
        self.failures = failures or {}

    def assign(self, profile_uuid, serials):
        self.calls.append(list(serials))
        self.profiles.append(profile_uuid)
        if len(self.calls) in self.failures:
            raise self.failures[len(self.calls)]
        return AssignOutcome({s: self.outcomes.pop(s, "SUCCESS") for s in serials}, self.retry_after)


def device(serial, op_type=None, op_date=None, **fields):
    return {"serial_number": serial, "model": "iPad", **fields, **({"op_type": op_type} if op_type else {}),
            **({"op_date": op_date} if op_date else {})}


def make_sync(pages, *, store=None, cursors=None, assigner=None, profile=None):
    return DeviceSync(pages=pages, store=store or MemoryStore(), cursors=cursors or MemoryCursors(),
                      events=RecordedEvents(), assigner=assigner, default_profile_uuid=profile, now=lambda: NOW)


def test_fetch_then_sync_persisting_the_cursor_after_each_page():
    pages = ScriptedPages({
        ("fetch", None): [Page([device("A"), device("B")], "c1", True), Page([device("C")], "c2", False)],
        ("sync", "c2"): [Page([], "c3", False)],
    })
    sync = make_sync(pages)
    counts = sync.run()
    assert (counts.added, counts.modified, counts.deleted, counts.pages, counts.kind) == (3, 0, 0, 3, "fetch")
    assert [(s.cursor, s.phase) for s in sync.cursors.saved] == [("c1", "fetch"), ("c2", "fetch"), ("c2", "sync"), ("c3", "sync")]
    assert sync.events.assigned_list == ["A", "B", "C"]


def test_undated_records_are_stored_without_a_lookup_and_only_new_devices_are_announced():
    store = MemoryStore()
    store.put_many([DepDevice("KNOWN", op_date="2026-02-10T00:00:00Z"), DepDevice("OTHER")], None)
    pages = ScriptedPages({("sync", "s1"): [
        Page([device("OTHER", color="RED"), device("NEW")], "s2", True),  # as fetch pages are: undated
        Page([device("KNOWN", "modified", "2026-02-01T00:00:00Z", color="OLD"), device("GONE", "deleted")], "s3", False),
    ]})
    sync = make_sync(pages, store=store, cursors=MemoryCursors(CursorState("s1", "sync")))
    counts = sync.run()
    assert store.looked_up == ["KNOWN", "GONE"]  # the undated page needed no lookup
    assert (counts.added, counts.modified, counts.deleted) == (1, 1, 0)
    assert sync.events.assigned_list == ["NEW"] and sync.events.removed_serials == []
    assert store.devices["OTHER"].color == "RED" and store.devices["KNOWN"].color is None


def test_killed_fetch_resumes_from_the_saved_cursor():
    boom = RuntimeError("worker killed")
    store, cursors = MemoryStore(), MemoryCursors()
    first = ScriptedPages({("fetch", None): [Page([device("A")], "c1", True), boom]})
    with pytest.raises(RuntimeError):
        make_sync(first, store=store, cursors=cursors).run()
    assert cursors.state.cursor == "c1" and cursors.state.phase == "fetch"
    second = ScriptedPages({("fetch", "c1"): [Page([device("B")], "c2", False)], ("sync", "c2"): []})
    counts = make_sync(second, store=store, cursors=cursors).run()
    assert second.calls == [("fetch", "c1"), ("sync", "c2")]
    assert counts.added == 1 and set(store.devices) == {"A", "B"}  # A was seen in the same fetch generation


def test_exhausted_cursor_switches_to_sync():
    cursors = MemoryCursors(CursorState("c9", "fetch", "gen"))
    pages = ScriptedPages({("fetch", "c9"): CursorExhausted("EXHAUSTED_CURSOR"), ("sync", "c9"): [Page([], "c10", False)]})
    sync = make_sync(pages, cursors=cursors)
    sync.run()
    assert pages.calls == [("fetch", "c9"), ("sync", "c9")] and cursors.state == CursorState("c10", "sync")


def test_expired_cursor_refetches_everything_and_removes_what_apple_no_longer_lists():
    store = MemoryStore()
    store.put_many([DepDevice("OLD"), DepDevice("KEEP")], None)
    pages = ScriptedPages({
        ("sync", "stale"): CursorExpired("EXPIRED_CURSOR"),
        ("fetch", None): [Page([device("KEEP"), device("NEW")], "f1", False)],
        ("sync", "f1"): [Page([], "f2", False)],
    })
    sync = make_sync(pages, store=store, cursors=MemoryCursors(CursorState("stale", "sync")))
    counts = sync.run()
    assert counts.refetched and (counts.added, counts.modified, counts.deleted) == (1, 1, 1)
    assert set(store.devices) == {"KEEP", "NEW"} and sync.events.removed_serials == ["OLD"]


def test_sync_repeats_resolve_by_latest_op_date_and_deleted_devices_go():
    store = MemoryStore()
    store.put_many([DepDevice("A", color="RED"), DepDevice("B"), DepDevice("D", op_date="2026-02-10T00:00:00Z")], None)
    pages = ScriptedPages({("sync", "s1"): [
        Page([device("A", "modified", "2026-02-02T10:00:00Z", color="BLUE"),
              device("A", "modified", "2026-02-01T10:00:00Z", color="GREEN")], "s2", True),
        Page([device("A", "modified", "2026-02-01T09:00:00Z", color="PINK"),  # repeat, older than stored
              device("B", "deleted", "2026-02-02T11:00:00Z"),
              device("D", "modified", "2026-02-01T00:00:00Z", color="OLD"),
              device("Z", "deleted", "2026-02-02T11:00:00Z")], "s3", False),
    ]})
    sync = make_sync(pages, store=store, cursors=MemoryCursors(CursorState("s1", "sync")))
    counts = sync.run()
    assert store.devices["A"].color == "BLUE"
    assert "B" not in store.devices and store.devices["D"].color is None
    assert (counts.added, counts.modified, counts.deleted) == (0, 1, 1)
    assert sync.events.removed_serials == ["B"]


def test_default_profile_goes_to_new_and_moved_devices_only():
    store = MemoryStore()
    store.put_many([DepDevice("KNOWN")], None)
    pages = ScriptedPages({("sync", "s1"): [Page([
        device("NEW", "added", "2026-02-01T00:00:00Z"),
        device("MOVED", "modified", "2026-02-01T00:00:00Z"),  # moved from another MDM server: no `added`
        device("KNOWN", "modified", "2026-02-01T00:00:00Z"),
        device("MINE", "added", "2026-02-01T00:00:00Z", profile_uuid="PROFILE1"),
    ], "s2", False)]})
    assigner = RecordingAssigner({"MOVED": "THROTTLED"}, retry_after=120)
    sync = make_sync(pages, store=store, cursors=MemoryCursors(CursorState("s1", "sync")), assigner=assigner, profile="PROFILE1")
    counts = sync.run()
    assert assigner.calls == [["NEW", "MOVED"]]
    assert store.assignments["NEW"] == ("PROFILE1", "SUCCESS", None)
    assert store.assignments["MOVED"] == ("PROFILE1", "THROTTLED", NOW + timedelta(seconds=120))
    assert counts.assign_statuses == {"SUCCESS": 1, "THROTTLED": 1}
    assert sorted(sync.events.assigned_list) == ["MINE", "MOVED", "NEW"]

    # the next run, once the throttle has passed, retries the throttled serial first
    later = DeviceSync(pages=ScriptedPages({("sync", "s2"): []}), store=store, cursors=sync.cursors,
                       events=RecordedEvents(), assigner=assigner, default_profile_uuid="PROFILE1",
                       now=lambda: NOW + timedelta(minutes=5))
    later.run()
    assert assigner.calls[-1] == ["MOVED"] and store.assignments["MOVED"][1] == "SUCCESS"


class FailingAssigner:
    def __init__(self, error):
        self.error = error

    def assign(self, profile_uuid, serials):
        raise self.error


def test_assign_failure_is_recorded_but_a_revoked_token_stops_the_run():
    page = {("fetch", None): [Page([device("A")], "c1", False)], ("sync", "c1"): []}
    store = MemoryStore()
    refused = DepError("Apple answered 400 PROFILE_NOT_FOUND on /profile/devices.", status_code=400)
    make_sync(ScriptedPages(page), store=store, assigner=FailingAssigner(refused), profile="P").run()
    assert store.assignments["A"] == ("P", "FAILED", None)  # asking again would be refused again
    with pytest.raises(AccessDenied):
        make_sync(ScriptedPages(page), assigner=FailingAssigner(AccessDenied("revoked")), profile="P").run()


@pytest.mark.parametrize("failure", [
    DepError("Apple answered 500 INTERNAL_SERVER_ERROR on /profile/devices.", status_code=500),
    DepError("Could not reach Apple's device enrollment service (ReadTimeout); try again later."),
], ids=["5xx", "no answer"])
def test_a_batch_apple_fails_waits_with_the_rest_and_the_batches_before_it_keep_their_results(failure):
    serials = [f"S{i:04d}" for i in range(2500)]
    store = MemoryStore()
    failed = assign_profile(RecordingAssigner(failures={2: failure}), store, "P", serials, NOW)
    assert (failed.error, failed.apple_failed) == (str(failure), True)
    assert [failed.statuses[s] for s in ("S0000", "S0999", "S1000", "S2499")] == ["SUCCESS", "SUCCESS", "QUEUED", "QUEUED"]
    assert store.assignments["S0999"] == ("P", "SUCCESS", None)
    # not FAILED for good: the sync asks Apple again once the wait is over
    assert store.assignments["S1000"] == store.assignments["S2499"] == ("P", "QUEUED", NOW + ASSIGN_RETRY_AFTER_FAILURE)
    assert store.due_profile_retries(NOW, 5000) == []
    assert len(store.due_profile_retries(NOW + ASSIGN_RETRY_AFTER_FAILURE, 5000)) == 1500

    refused = DepError("Apple answered 400 MALFORMED_REQUEST_BODY on /profile/devices.", status_code=400)
    outcome = assign_profile(RecordingAssigner(failures={1: refused}), store, "P", ["R1"], NOW)
    assert (outcome.statuses, outcome.apple_failed) == ({"R1": "FAILED"}, False)

    throttled = RecordingAssigner(failures={1: Throttled("still throttled after 5 attempts")})
    assert set(assign_profile(throttled, store, "P", serials[:10], NOW).statuses.values()) == {"THROTTLED"}
    assert store.assignments["S0000"] == ("P", "THROTTLED", NOW + timedelta(seconds=60))  # retried, not failed


def test_a_sync_whose_assignment_apple_fails_says_so_and_a_later_sync_assigns_the_waiting_devices():
    store, cursors = MemoryStore(), MemoryCursors(CursorState("s1", "sync"))
    pages = ScriptedPages({("sync", "s1"): [Page([device("NEW1", "added", "2026-02-01T00:00:00Z")], "s2", True),
                                            Page([device("NEW2", "added", "2026-02-01T00:00:00Z")], "s3", False)]})
    failing = RecordingAssigner(failures={1: DepError("Apple answered 503 on /profile/devices.", status_code=503)})
    counts = make_sync(pages, store=store, cursors=cursors, assigner=failing, profile="P").run()
    assert counts.assign_error == "Apple answered 503 on /profile/devices."  # the run is not a success
    assert failing.calls == [["NEW1"]]  # the next page's devices are not sent to an Apple that just failed
    retry_at = NOW + ASSIGN_RETRY_AFTER_FAILURE
    assert store.assignments == {"NEW1": ("P", "QUEUED", retry_at), "NEW2": ("P", "QUEUED", retry_at)}
    assert cursors.state.cursor == "s3"  # the devices themselves are stored

    assigner = RecordingAssigner()
    later = DeviceSync(pages=ScriptedPages({("sync", "s3"): []}), store=store, cursors=cursors, events=RecordedEvents(),
                       assigner=assigner, default_profile_uuid="P", now=lambda: retry_at)
    assert later.run().assign_error is None
    assert assigner.calls == [["NEW1", "NEW2"]]
    assert store.assignments == {"NEW1": ("P", "SUCCESS", None), "NEW2": ("P", "SUCCESS", None)}


def test_a_new_devices_profile_is_asked_of_apple_once_its_page_is_committed():
    """Nothing of the database is held while Apple answers; a run that dies before leaves the device due."""
    store, cursors = MemoryStore(), MemoryCursors(CursorState("s1", "sync"))
    pages = ScriptedPages({("sync", "s1"): [Page([device("NEW", "added", "2026-02-01T00:00:00Z")], "s2", False)]})
    committed_before_apple = []

    class DyingAssigner:
        def assign(self, profile_uuid, serials):
            committed_before_apple.append((cursors.state.cursor, store.assignments["NEW"]))
            raise RuntimeError("the process dies while Apple answers")

    with pytest.raises(RuntimeError):
        make_sync(pages, store=store, cursors=cursors, assigner=DyingAssigner(), profile="P").run()
    assert committed_before_apple == [("s2", ("P", "QUEUED", NOW))]

    assigner = RecordingAssigner()
    make_sync(ScriptedPages({("sync", "s2"): []}), store=store, cursors=cursors, assigner=assigner, profile="P").run()
    assert assigner.calls == [["NEW"]] and store.assignments["NEW"] == ("P", "SUCCESS", None)


def test_a_refused_token_ends_an_assignment_and_keeps_the_results_of_the_batches_before_it():
    serials = [f"S{i:04d}" for i in range(2500)]
    store = MemoryStore()
    refusing = RecordingAssigner({"S0001": "THROTTLED"}, retry_after=120, failures={2: TermsNotAccepted("T_C_NOT_SIGNED")})
    with pytest.raises(TermsNotAccepted):
        assign_profile(refusing, store, "P", serials, NOW)
    assert store.assignments["S0999"] == ("P", "SUCCESS", None)  # Apple assigned it before refusing
    assert store.assignments["S0001"] == ("P", "THROTTLED", NOW + timedelta(seconds=120))  # retried when Apple said
    assert store.assignments["S1000"] == store.assignments["S2499"] == ("P", "FAILED", None)


def test_a_throttled_assignment_waits_as_long_as_apples_retry_after():
    store = MemoryStore()
    throttled = RecordingAssigner(failures={1: Throttled("Apple asked Orchard to wait 3600 s", retry_after=3599.5)})
    outcome = assign_profile(throttled, store, "P", ["A", "B"], NOW)
    assert (outcome.statuses, outcome.retry_after_seconds) == ({"A": "THROTTLED", "B": "THROTTLED"}, 3600)
    assert store.assignments["A"] == ("P", "THROTTLED", NOW + timedelta(hours=1))  # not in a minute


def test_a_throttled_assignment_is_retried_with_the_profile_it_asked_for():
    store = MemoryStore()
    assign_profile(RecordingAssigner({"A": "THROTTLED"}, retry_after=30), store, "CHOSEN", ["A"], NOW)
    assigner = RecordingAssigner()
    later = DeviceSync(pages=ScriptedPages({("sync", "s1"): []}), store=store, cursors=MemoryCursors(CursorState("s1", "sync")),
                       events=RecordedEvents(), assigner=assigner, default_profile_uuid="DEFAULT",
                       now=lambda: NOW + timedelta(seconds=31))
    later.run()
    assert (assigner.calls, assigner.profiles) == ([["A"]], ["CHOSEN"])
    assert store.assignments["A"] == ("CHOSEN", "SUCCESS", None)


def test_records_without_a_serial_number_are_skipped():
    pages = ScriptedPages({("fetch", None): [Page([device("A"), {"model": "iPad"}, {"serial_number": ""}, "junk",
                                                   {"serial_number": 7}, device("B")], "c1", False)],
                           ("sync", "c1"): []})
    sync = make_sync(pages)
    counts = sync.run()
    assert counts.added == 2 and sorted(sync.store.devices) == ["A", "B"]


def test_latest_per_serial_keeps_later_record_on_ties():
    records = [DepDevice("A", color="1", op_date="2026-01-01T00:00:00Z"), DepDevice("A", color="2", op_date="2026-01-01T00:00:00Z")]
    assert [r.color for r in latest_per_serial(records)] == ["2"]


def test_status_colours():
    assert [status_colour(s) for s in ("empty", "assigned", "pushed", "removed")] == ["yellow", "green", "cyan", "grey"]


def test_sync_against_the_sandbox(dep_client, dep_sandbox, mdm_server):
    server = mdm_server["server_uuid"]
    dep_sandbox.server(server, "settings", {"page_maximum": 1000, "reverse_sync_pages": True})
    first = dep_sandbox.server(server, "devices/generate", {"count": 2500})["first"]
    profile = dep_client.define_profile({"profile_name": "Default", "url": "https://mdm.school.example/enroll"})["profile_uuid"]
    store, cursors = MemoryStore(), MemoryCursors()
    sync = DeviceSync(pages=ClientPages(dep_client), store=store, cursors=cursors, events=RecordedEvents(),
                      assigner=ClientAssigner(dep_client), default_profile_uuid=profile)
    counts = sync.run()
    assert (counts.added, counts.pages) == (2500, 4) and len(store.devices) == 2500
    assert counts.assign_statuses == {"SUCCESS": 2500}
    assert dep_sandbox.device(server, first)["profile_status"] == "assigned"

    serial = first[:5] + "0000007"
    dep_sandbox.server(server, "devices", {"devices": [{"serial_number": serial, "color": "GOLD"}]})
    dep_sandbox.server(server, "devices", {"devices": [{"serial_number": serial, "color": "ROSE"}]})
    dep_sandbox.server(server, "devices/delete", {"serial_numbers": [first]})
    counts = sync.run()
    assert (counts.added, counts.modified, counts.deleted, counts.kind) == (0, 1, 1, "sync")
    assert store.devices[serial].color == "ROSE" and first not in store.devices

    dep_sandbox.post("clock", {"advance_seconds": 8 * 86400})  # the stored cursor is now too old
    counts = sync.run()
    assert counts.refetched and len(store.devices) == 2499
