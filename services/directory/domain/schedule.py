"""When a profile's daily automatic sync is due."""
from __future__ import annotations

from datetime import datetime, time


def daily_sync_due(daily_sync_time: str | None, last_run_on: str | None, now: datetime) -> bool:
    """Due once per UTC day, at or after ``daily_sync_time`` ("HH:MM"); ``last_run_on`` is a YYYY-MM-DD date."""
    if daily_sync_time is None:
        return False
    hours, minutes = (int(part) for part in daily_sync_time.split(":"))
    return now.time() >= time(hours, minutes) and last_run_on != now.date().isoformat()
