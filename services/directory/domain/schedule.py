"""When a profile's daily automatic sync is due, and when a failed one is tried again."""
from __future__ import annotations

from datetime import datetime, time, timedelta

from services.directory.domain.ports import BindRefused
from shared.errors import Conflict, NeedsApproval, OrchardError, UpstreamError

#: a failed daily sync waits as long as the day's sync has been failing, within these bounds
SHORTEST_RETRY_WAIT = timedelta(minutes=5)
LONGEST_RETRY_WAIT = timedelta(hours=1)


def daily_sync_due(daily_sync_time: str | None, last_run_on: str | None, now: datetime,
                   failed_at: datetime | None = None) -> bool:
    """Due once per UTC day, at or after ``daily_sync_time`` ("HH:MM"), until a run marks the day done.

    ``last_run_on`` is the YYYY-MM-DD date of the last run that did; ``failed_at`` is when the last
    sync failed, if it did. A server rebooting at the sync time is tried again 5 minutes later, and a
    longer outage less and less often, at least once an hour, until the day ends.
    """
    if daily_sync_time is None:
        return False
    hours, minutes = (int(part) for part in daily_sync_time.split(":"))
    scheduled = datetime.combine(now.date(), time(hours, minutes), tzinfo=now.tzinfo)
    if now < scheduled or last_run_on == now.date().isoformat():
        return False
    if failed_at is None or failed_at < scheduled:
        return True
    wait = min(max(failed_at - scheduled, SHORTEST_RETRY_WAIT), LONGEST_RETRY_WAIT)
    return now >= failed_at + wait


def worth_retrying(error: OrchardError) -> bool:
    """Whether a failed daily sync may succeed later the same day.

    The directory or the roster out of reach, or another sync of the profile running, may pass. A refused
    service-account password will not, and trying it again could lock the account; nor will data the
    roster refuses as invalid, or a plan its deletion guard stops (a person must look at it).
    """
    if isinstance(error, UpstreamError):
        return not isinstance(error, BindRefused)
    # another sync running, or the roster changing between preview and apply, passes; a plan the roster's
    # deletion guard stops waits for a person
    return isinstance(error, Conflict) and not isinstance(error, NeedsApproval)
