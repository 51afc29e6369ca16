"""The device export files: what a device reports is written as text, never as something a spreadsheet runs."""
from __future__ import annotations

import csv
import io
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest
from openpyxl import load_workbook

from services.push.adapters.device_export import COLUMNS, export_devices

ENROLLED_AT = datetime(2025, 3, 1, 8, 30, tzinfo=timezone.utc)
HOSTILE = ['=HYPERLINK("http://evil.example","Open")', "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(1,1)", "\t=1+1"]


def device(udid: str, serial_number: str | None) -> SimpleNamespace:
    return SimpleNamespace(**{**dict.fromkeys(COLUMNS), "udid": udid, "serial_number": serial_number,
                              "enrolled_at": ENROLLED_AT})


def test_xlsx_cells_hold_what_the_device_sent_as_text():
    content = export_devices([device(value, value) for value in HOSTILE] + [device("00008030-0001", None)], "xlsx")
    sheet = load_workbook(io.BytesIO(content)).active
    rows = list(sheet.iter_rows(min_row=2))
    for row, value in zip(rows, HOSTILE):
        assert [(cell.value, cell.data_type) for cell in row[:2]] == [(value, "s"), (value, "s")]
    assert (rows[-1][0].value, rows[-1][1].value, rows[-1][2].value) == ("00008030-0001", None, ENROLLED_AT.isoformat())


def test_csv_values_a_spreadsheet_would_run_start_with_a_quote():
    hostile = [*HOSTILE, "\r=1+1"]
    content = export_devices([device(value, value) for value in hostile] + [device("00008030-0001", None)], "csv")
    rows = list(csv.reader(io.StringIO(content.decode(), newline="")))
    assert [row[:2] for row in rows[1:-1]] == [["'" + value, "'" + value] for value in hostile]
    assert rows[-1][:3] == ["00008030-0001", "", ENROLLED_AT.isoformat()]


@pytest.mark.parametrize("file_format", ["csv", "xlsx"])
def test_an_empty_export_has_the_headings(file_format):
    assert export_devices([], file_format)
