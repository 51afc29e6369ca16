"""The devices of one push certificate as a CSV or Excel file.

UDIDs and serial numbers come from the devices themselves, so a spreadsheet must never run one as a
formula: XLSX cells are always text, and a CSV value that a spreadsheet would read as a formula
(starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return) is prefixed with ``'``.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell

COLUMNS = ("udid", "serial_number", "enrolled_at", "last_push_at", "last_push_result", "push_disabled_reason")
HEADINGS = ("UDID", "Serial number", "Enrolled at", "Last push at", "Last push result", "Push disabled because")
FORMATS = ("csv", "xlsx")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


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
        writer.writerow([_csv_value(value) for value in _values(row)])
    return buffer.getvalue().encode("utf-8")


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value  # the usual CSV-injection guard: spreadsheets show the value as text
    return value


def _xlsx(rows: Iterable[Any]) -> bytes:
    workbook = Workbook(write_only=True)  # streams rows: memory stays flat for large schools
    sheet = workbook.create_sheet("Devices")
    sheet.append(HEADINGS)
    for row in rows:
        sheet.append([_xlsx_cell(sheet, value) for value in _values(row)])
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


def _xlsx_cell(sheet: Any, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    cell = WriteOnlyCell(sheet, value)
    cell.data_type = "s"  # openpyxl would store text starting with "=" as a formula
    return cell
