"""The devices of one push certificate as a CSV or Excel file."""
from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from openpyxl import Workbook

COLUMNS = ("udid", "serial_number", "enrolled_at", "last_push_at", "last_push_result", "push_disabled_reason")
HEADINGS = ("UDID", "Serial number", "Enrolled at", "Last push at", "Last push result", "Push disabled because")
FORMATS = ("csv", "xlsx")


def export_devices(rows: Iterable[Any], file_format: str) -> bytes:
    """Write the rows (streamed from the database) in ``file_format`` (one of ``FORMATS``)."""
    if file_format == "csv":
        return _csv(rows)
    return _xlsx(rows)


def _values(row: Any) -> list[Any]:
    return [_cell(getattr(row, column)) for column in COLUMNS]


def _cell(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _csv(rows: Iterable[Any]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(HEADINGS)
    for row in rows:
        writer.writerow(["" if value is None else value for value in _values(row)])
    return buffer.getvalue().encode("utf-8")


def _xlsx(rows: Iterable[Any]) -> bytes:
    workbook = Workbook(write_only=True)  # streams rows: memory stays flat for large schools
    sheet = workbook.create_sheet("Devices")
    sheet.append(HEADINGS)
    for row in rows:
        sheet.append(_values(row))
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()
