"""When daily syncs run, when a failed one is tried again, and which egress addresses are accepted."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from services.directory.domain.egress import egress_addresses
from services.directory.domain.ports import BindRefused
from services.directory.domain.schedule import daily_sync_due, worth_retrying
from shared.errors import Conflict, NeedsApproval, NotFound, UpstreamError, ValidationError

DAY = datetime(2026, 3, 2, tzinfo=timezone.utc)


def at(hour: int, minute: int, second: int = 0, day: datetime = DAY) -> datetime:
    return day.replace(hour=hour, minute=minute, second=second)


def test_the_daily_sync_is_due_once_a_day_from_its_time():
    assert not daily_sync_due(None, None, at(12, 0))
    assert not daily_sync_due("03:00", None, at(2, 59))
    assert daily_sync_due("03:00", None, at(3, 0))
    assert daily_sync_due("03:00", "2026-03-01", at(23, 59))
    assert not daily_sync_due("03:00", "2026-03-02", at(23, 59))


def test_a_failed_daily_sync_waits_as_long_as_it_has_been_failing_between_five_minutes_and_an_hour():
    def due(now: datetime, failed_at: datetime) -> bool:
        return daily_sync_due("03:00", "2026-03-01", now, failed_at)

    assert not due(at(3, 5, 9), failed_at=at(3, 0, 10)) and due(at(3, 5, 10), failed_at=at(3, 0, 10))
    assert not due(at(3, 19), failed_at=at(3, 10)) and due(at(3, 20), failed_at=at(3, 10))
    assert not due(at(4, 19), failed_at=at(3, 40)) and due(at(4, 20), failed_at=at(3, 40))
    assert not due(at(10, 59), failed_at=at(10, 0)) and due(at(11, 0), failed_at=at(10, 0))
    # a failure before today's sync time (yesterday's, or a manual sync's) does not hold today's up
    assert due(at(3, 0), failed_at=at(2, 58)) and due(at(3, 0), failed_at=at(3, 30, day=DAY - timedelta(days=1)))


def test_only_failures_that_may_pass_are_tried_again_the_same_day():
    assert worth_retrying(UpstreamError("the directory failed while connecting: timed out"))
    assert worth_retrying(Conflict("a sync of LDAP profile 1 is already running"))
    assert worth_retrying(Conflict("the roster changed since this plan was previewed"))
    assert not worth_retrying(NeedsApproval("this plan deletes 40 of 100 users (40%), more than the allowed 10%"))
    assert not worth_retrying(BindRefused("the directory refused the bind as CN=orchard"))
    assert not worth_retrying(ValidationError("the roster refused the records"))
    assert not worth_retrying(NotFound("there is no LDAP profile 1"))


@pytest.mark.parametrize("value, addresses", [
    (None, []),
    ("", []),
    ([], []),
    ("203.0.113.5", ["203.0.113.5"]),
    ("203.0.113.5,198.51.100.7", ["203.0.113.5", "198.51.100.7"]),
    (" 203.0.113.5, 198.51.100.7 ", ["203.0.113.5", "198.51.100.7"]),
    ("203.0.113.5 2001:db8::1\n198.51.100.0/28", ["203.0.113.5", "2001:db8::1", "198.51.100.0/28"]),
    ("2001:db8::1", ["2001:db8::1"]),
    (["203.0.113.10", "2001:db8::10"], ["203.0.113.10", "2001:db8::10"]),
])
def test_egress_addresses_are_a_list_or_text_separated_by_commas_or_spaces(value, addresses):
    assert egress_addresses(value) == addresses


@pytest.mark.parametrize("value, named", [
    ("203.0.113.5,nat.school.example", "'nat.school.example'"),
    ("203.0.113.5;198.51.100.7", "'203.0.113.5;198.51.100.7'"),
    ("198.51.100.7/24", "'198.51.100.7/24'"),
    (["203.0.113.5", "300.1.1.1"], "'300.1.1.1'"),
    (10, "'10'"),
])
def test_an_egress_entry_that_is_not_an_address_or_network_is_refused_by_name(value, named):
    with pytest.raises(ValidationError, match=f"egress_ips \\(ORCHARD_EGRESS_IPS\\): {named} is not an IP address"):
        egress_addresses(value)
