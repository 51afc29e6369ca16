"""Checks of RPC arguments that services make the same way."""
from __future__ import annotations

import reprlib
from typing import Any

from shared.errors import ValidationError

MAX_ROW_ID = 2**63 - 1  # the largest integer key PostgreSQL and SQLite hold


def row_id(value: Any, name: str) -> int:
    """``value`` as the id of a stored row: a whole number from 1 to ``MAX_ROW_ID``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_ROW_ID:
        raise ValidationError(f"{name} must be a whole number from 1 to {MAX_ROW_ID}, not {reprlib.repr(value)}")
    return value
