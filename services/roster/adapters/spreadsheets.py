"""Spreadsheet import: the template, and reading a filled one into an ``ImportBatch``.

The template is an XLSX workbook with the sheets Users, Locations, Grade Levels and
Classes, or the same four tables as CSV files in a zip. Reading streams row by row:
XLSX through python-calamine (a Rust reader about twenty times faster than openpyxl's
read-only mode on a 100,000-row sheet; see the README), CSV through the csv module.

A problem with the file as a whole (wrong type, a missing sheet or header, a zip bomb)
raises ``ValidationError``; a problem with one row rejects that row, naming sheet, row
and reason, and the rest of the file stands.
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import itertools
import re
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator
from xml.etree import ElementTree

import openpyxl
import python_calamine
from openpyxl.styles import Font

from services.roster.domain.planning import SHEET_OF, grade_level_id
from shared.contracts.roster import (
    ClassRecord, GradeLevelRecord, ImportBatch, LocationRecord, RejectedRow, UserRecord,
)
from shared.errors import ValidationError
from shared.unicode_text import refuse_unstorable_text

USERS, LOCATIONS, GRADE_LEVELS, CLASSES = (
    SHEET_OF["user"], SHEET_OF["location"], SHEET_OF["grade_level"], SHEET_OF["class"])
SHEETS = (USERS, LOCATIONS, GRADE_LEVELS, CLASSES)

# sheet -> (header, example value); headers are matched case-insensitively, in any order
COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    USERS: (
        ("User ID", "s-1001"), ("Type", "Student"), ("First Name", "Ada"),
        ("Last Name", "Lovelace"), ("Email", "ada@school.example"),
        ("Managed Apple ID", "ada@appleid.school.example"), ("Location IDs", "north"),
        ("Grade Level", "7"), ("Device Serial Numbers", "F9FXK0AAHG7J"),
    ),
    LOCATIONS: (("Location ID", "north"), ("Name", "North Middle School")),
    GRADE_LEVELS: (("Name", "7"), ("Location ID", "north")),
    CLASSES: (
        ("Class ID", "maths-7a"), ("Class Name", "Maths 7A"), ("Course Name", "Maths"),
        # the example refers only to the example user, so the untouched template imports cleanly
        ("Location ID", "north"), ("Room", "B12"), ("Teacher IDs", ""), ("Student IDs", "s-1001"),
    ),
}
CSV_FILES = {USERS: "users.csv", LOCATIONS: "locations.csv",
             GRADE_LEVELS: "grade_levels.csv", CLASSES: "classes.csv"}

USER_TYPES_BY_WORD = {"student": "student", "s": "student", "teacher": "teacher",
                      "t": "teacher", "staff": "staff"}
_LIST_SEPARATORS = re.compile(r"[,;\n]")

# zip-bomb limits, checked on the declared sizes before anything is decompressed
MAX_UPLOAD_BYTES = 64 * 1024 * 1024
# reading takes about as much memory as the workbook's XML (a 100,000-user district's is about 53 MB);
# with one read at a time per process, a replica stays well within its 1 GiB
MAX_UNCOMPRESSED_BYTES = 384 * 1024 * 1024
MAX_COMPRESSION_RATIO = 150
MAX_ZIP_ENTRIES = 500
_RATIO_CHECK_FROM_BYTES = 1024 * 1024  # tiny members compress absurdly well and are harmless

_TEMPLATE_HINT = ("start from the template and do not delete any sheet or header, "
                  "even those you leave empty")

# what zipfile, zlib, the XML parsers and calamine raise for a file they cannot read: a bad
# checksum, corrupt or truncated compressed data, malformed XML or row numbers, a part the
# workbook names but lacks, an encrypted member or an unknown compression method
_UNREADABLE = (zipfile.BadZipFile, zlib.error, EOFError, ElementTree.ParseError, ValueError,
               KeyError, NotImplementedError, RuntimeError, python_calamine.CalamineError)
_SAVE_AGAIN = {
    "xlsx": "open it in Excel, save it as a new .xlsx file and import that",
    "csv": "make the zip again from the four CSV files and import the new one",
    None: "save or compress it again and import the new file",
}


# ---------------------------------------------------------------- template


def spreadsheet_template(fmt: str) -> bytes:
    """The import template as XLSX bytes, or (``fmt="csv"``) a zip of four CSV files."""
    if fmt == "xlsx":
        return _xlsx_template()
    if fmt == "csv":
        return _csv_template()
    raise ValidationError(f"unknown template format '{fmt}'; choose xlsx or csv")


def _xlsx_template() -> bytes:
    book = openpyxl.Workbook()
    book.remove(book.active)
    for sheet_name in SHEETS:
        sheet = book.create_sheet(sheet_name)
        columns = COLUMNS[sheet_name]
        sheet.append([header for header, _ in columns])
        sheet.append([example for _, example in columns])
        for index, (header, _) in enumerate(columns, start=1):
            letter = openpyxl.utils.get_column_letter(index)
            sheet.column_dimensions[letter].width = max(14, len(header) + 4)
            # text format keeps Excel from turning IDs like 1-2 into dates
            for row in range(1, 2001):
                sheet[f"{letter}{row}"].number_format = "@"
            sheet[f"{letter}1"].font = Font(bold=True)
        sheet.freeze_panes = "A2"
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def _csv_template() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for sheet_name in SHEETS:
            text = io.StringIO()
            writer = csv.writer(text, lineterminator="\n")
            writer.writerow([header for header, _ in COLUMNS[sheet_name]])
            writer.writerow([example for _, example in COLUMNS[sheet_name]])
            archive.writestr(CSV_FILES[sheet_name], text.getvalue())
    return out.getvalue()


# ---------------------------------------------------------------- file checks


def detect_format(filename: str, content: bytes) -> str:
    """``"xlsx"`` or ``"csv"`` (a zip of CSV files), judged by content, not by name."""
    if len(content) > MAX_UPLOAD_BYTES:
        raise ValidationError(f"'{filename}' is {len(content) // (1024 * 1024)} MB; "
                              f"at most {MAX_UPLOAD_BYTES // (1024 * 1024)} MB can be imported")
    if content.startswith(b"PK\x03\x04"):
        archive = _open_zip(filename, content)
        names = set(archive.namelist())
        if "xl/workbook.xml" in names:
            return "xlsx"
        if names & set(CSV_FILES.values()):
            return "csv"
        raise ValidationError(f"'{filename}' is a zip archive but neither an XLSX workbook nor "
                              f"the CSV template's files ({', '.join(CSV_FILES.values())})")
    if content.startswith(b"\xd0\xcf\x11\xe0"):
        raise ValidationError(f"'{filename}' is an old Excel 97-2003 (.xls) file; "
                              f"save it as .xlsx and import again")
    head = content[:4096]
    if b"\x00" in head or content.startswith((b"%PDF", b"\x89PNG", b"\xff\xd8")):
        raise ValidationError(f"'{filename}' is not a spreadsheet; import the XLSX template "
                              f"or the zip of its CSV files")
    raise ValidationError(f"'{filename}' looks like a single text/CSV file; a CSV import is "
                          f"the zip of the template's four files ({', '.join(CSV_FILES.values())})")


def _damaged(filename: str, fmt: str | None, exc: BaseException,
             part: str | None = None) -> ValidationError:
    detail = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc  # KeyError quotes its text
    return ValidationError(f"'{filename}' is damaged: {part or 'it'} cannot be read ({detail}); "
                           f"{_SAVE_AGAIN[fmt]}")


@contextmanager
def _unreadable_is_damaged(filename: str, fmt: str | None,
                           part: str | None = None) -> Iterator[None]:
    """Turn a reader's failure on a damaged file into a ``ValidationError`` saying so."""
    try:
        yield
    except _UNREADABLE as exc:
        raise _damaged(filename, fmt, exc, part) from None


def _open_zip(filename: str, content: bytes) -> zipfile.ZipFile:
    """Open a zip after checking its declared sizes, so a zip bomb is refused unread."""
    with _unreadable_is_damaged(filename, None):
        archive = zipfile.ZipFile(io.BytesIO(content))
    entries = archive.infolist()
    if len(entries) > MAX_ZIP_ENTRIES:
        raise ValidationError(f"'{filename}' holds {len(entries)} files; at most "
                              f"{MAX_ZIP_ENTRIES} are allowed")
    total = 0
    for entry in entries:
        total += entry.file_size
        if (entry.file_size > _RATIO_CHECK_FROM_BYTES
                and entry.file_size > MAX_COMPRESSION_RATIO * max(entry.compress_size, 1)):
            raise ValidationError(
                f"'{filename}' was refused: '{entry.filename}' would expand "
                f"{entry.file_size // max(entry.compress_size, 1)}-fold (a zip bomb?)")
    if total > MAX_UNCOMPRESSED_BYTES:
        raise ValidationError(f"'{filename}' was refused: it would expand to {total // (1024 * 1024)} MB, more "
                              f"than the {MAX_UNCOMPRESSED_BYTES // (1024 * 1024)} MB allowed (a zip bomb?); "
                              "a district that large imports in parts, a file per location")
    return archive


# ---------------------------------------------------------------- reading


@dataclass
class SpreadsheetImport:
    batch: ImportBatch
    row_numbers: dict[str, dict[str, int]] = field(default_factory=dict)  # sheet -> id -> row


class _RowProblem(Exception):
    pass


RowSource = Iterator[tuple[int, list[Any]]]  # (row number as the user sees it, cells)


class FormulaCells(list):
    """The cells of a row holding a formula (their cached values): rejected, yet what it names is known."""


class ErrorCells(list):
    """The cells of a row holding error values (#N/A, #REF!), which calamine reads as empty: a value pasted
    from a lookup that failed must not read as a field left empty, which would clear it."""

    def __init__(self, cells: list[Any], errors: dict[int, str]):
        super().__init__(cells)
        self.errors = errors  # column index -> the error value


def read_spreadsheet(filename: str, content: bytes) -> SpreadsheetImport:
    """Read a filled template into records, rejected rows and their row numbers."""
    fmt = detect_format(filename, content)
    tables = _xlsx_tables(filename, content) if fmt == "xlsx" else _csv_tables(filename, content)
    return _Reader(fmt, tables).read()


class _Reader:
    def __init__(self, fmt: str, tables: dict[str, RowSource]):
        self.fmt = fmt
        self.tables = tables
        self.rejected: list[RejectedRow] = []
        self.row_numbers: dict[str, dict[str, int]] = {s: {} for s in SHEETS}

    def read(self) -> SpreadsheetImport:
        locations = list(self._records(LOCATIONS, self._location))
        grade_levels = list(self._records(GRADE_LEVELS, self._grade_level))
        users = list(self._records(USERS, self._user))
        classes = list(self._records(CLASSES, self._class))
        batch = ImportBatch(source=self.fmt, locations=locations, grade_levels=grade_levels,
                            users=users, classes=classes, rejected=self.rejected)
        return SpreadsheetImport(batch=batch, row_numbers=self.row_numbers)

    def _records(self, sheet: str, build: Callable[[dict[str, str | None]], Any]) -> Iterator[Any]:
        rows = self.tables[sheet]
        header_row = next(rows, None)
        columns = _header_positions(sheet, header_row[1] if header_row else [])
        numbers = self.row_numbers[sheet]
        for number, cells in rows:
            if isinstance(cells, FormulaCells):
                self._reject(sheet, number, "holds a formula; paste values only", columns, cells)
                continue
            if isinstance(cells, ErrorCells) and (problem := _error_value(columns, cells.errors)):
                self._reject(sheet, number, problem, columns, cells)
                continue
            try:
                values = _values(columns, cells)
                if not any(values.values()):
                    continue  # empty rows, often trailing, mean nothing
                record = build(values)
                natural_id = _NATURAL_ID[sheet](record)
                if sheet == GRADE_LEVELS:  # the same grade level twice is harmless: named by its first row
                    numbers.setdefault(natural_id, number)
                elif natural_id in numbers:
                    raise _RowProblem(f"{_ID_NOUN[sheet]} '{natural_id}' already appears "
                                      f"in row {numbers[natural_id]}")
                else:
                    numbers[natural_id] = number
            except _RowProblem as problem:
                self._reject(sheet, number, str(problem), columns, cells)
                continue
            yield record

    def _reject(self, sheet: str, number: int, reason: str, columns: dict[str, int], cells: list[Any]) -> None:
        self.rejected.append(RejectedRow(sheet=sheet, row=number, reason=reason,
                                         id=_rejected_row_id(sheet, columns, cells)))

    def _location(self, values: dict[str, str | None]) -> LocationRecord:
        return LocationRecord(location_id=_required(values, "Location ID"),
                              name=_required(values, "Name"))

    def _grade_level(self, values: dict[str, str | None]) -> GradeLevelRecord:
        return GradeLevelRecord(name=_required(values, "Name"), location_id=values["Location ID"])

    def _user(self, values: dict[str, str | None]) -> UserRecord:
        kind = _required(values, "Type")
        user_type = USER_TYPES_BY_WORD.get(kind.lower())
        if user_type is None:
            raise _RowProblem(f"type '{kind}' is not one of Student, Teacher, Staff")
        return UserRecord(
            user_id=_required(values, "User ID"), user_type=user_type,
            first_name=values["First Name"], last_name=values["Last Name"], email=values["Email"],
            managed_apple_id=values["Managed Apple ID"], locations=_list(values["Location IDs"]),
            grade_level=values["Grade Level"],
            serial_numbers=[s.upper() for s in _list(values["Device Serial Numbers"])])

    def _class(self, values: dict[str, str | None]) -> ClassRecord:
        return ClassRecord(
            class_id=_required(values, "Class ID"), name=_required(values, "Class Name"),
            course_name=values["Course Name"], location_id=_required(values, "Location ID"),
            room=values["Room"], teacher_ids=_list(values["Teacher IDs"]),
            student_ids=_list(values["Student IDs"]))


# what each sheet's rows are known by (the planner's natural IDs)
_NATURAL_ID: dict[str, Callable[[Any], str]] = {
    LOCATIONS: lambda record: record.location_id, GRADE_LEVELS: grade_level_id,
    USERS: lambda record: record.user_id, CLASSES: lambda record: record.class_id,
}
_ID_HEADER = {LOCATIONS: "Location ID", USERS: "User ID", CLASSES: "Class ID"}
_ID_NOUN = {LOCATIONS: "location ID", USERS: "user ID", CLASSES: "class ID"}


def _rejected_row_id(sheet: str, columns: dict[str, int], cells: list[Any]) -> str | None:
    """The natural ID of a row that was rejected, where its ID columns can be read, so the
    planner keeps what it names rather than delete it as missing from the file."""
    names = ("Name", "Location ID") if sheet == GRADE_LEVELS else (_ID_HEADER[sheet],)
    try:
        values = _values({name: columns[name] for name in names}, cells)
    except _RowProblem:
        return None
    if sheet != GRADE_LEVELS:
        return values[names[0]]
    if values["Name"] is None:
        return None
    return grade_level_id(GradeLevelRecord(name=values["Name"], location_id=values["Location ID"]))


def _header_positions(sheet: str, header: list[Any]) -> dict[str, int]:
    found: dict[str, int] = {}
    for index, cell in enumerate(header):
        name = str(cell).strip() if cell is not None else ""
        if not name:
            continue
        if name.lower() in found:  # otherwise the last of the two would silently win
            columns = [openpyxl.utils.get_column_letter(i + 1) for i in (found[name.lower()], index)]
            raise ValidationError(f"sheet '{sheet}' has the header '{name}' twice (columns "
                                  f"{' and '.join(columns)}); keep one of them and import again")
        found[name.lower()] = index
    positions = {}
    for name, _ in COLUMNS[sheet]:
        if name.lower() not in found:
            raise ValidationError(f"sheet '{sheet}' is missing the header '{name}'; "
                                  f"{_TEMPLATE_HINT}")
        positions[name] = found[name.lower()]
    return positions


def _values(columns: dict[str, int], cells: list[Any]) -> dict[str, str | None]:
    """The template's columns of one row as text (None when empty)."""
    values: dict[str, str | None] = {}
    count = len(cells)
    for name, index in columns.items():
        value = cells[index] if index < count else None
        if value.__class__ is str:  # the common case, kept cheap
            # NUL, in a CSV cell or an XLSX one as _x0000_, which PostgreSQL refuses in any text; the readers
            # decode strict UTF-8, so no lone surrogate gets this far
            if "\x00" in value:
                _refuse_unstorable(name, value)
            value = value.strip() or None
        elif value is not None:
            try:
                value = _text(value)
            except _RowProblem as problem:
                raise _RowProblem(f"column '{name}': {problem}") from None
        values[name] = value
    return values


def _refuse_unstorable(name: str, value: str) -> None:
    try:
        refuse_unstorable_text(value, f"column '{name}'")
    except ValidationError as refused:
        raise _RowProblem(f"{refused.message}; remove it from the cell and import again") from None


def _error_value(columns: dict[str, int], errors: dict[int, str]) -> str | None:
    """Why a row with error cells is rejected; None when they are all outside the template's columns."""
    for name, index in columns.items():
        if index in errors:
            shown = f" ({errors[index]})" if errors[index] else ""
            return f"column '{name}' holds an error value{shown}; correct the cell and import again"
    return None


def _required(values: dict[str, str | None], name: str) -> str:
    value = values[name]
    if value is None:
        raise _RowProblem(f"column '{name}' is empty")
    return value


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = value.strip()
        return value or None
    if isinstance(value, bool):
        raise _RowProblem(f"holds {str(value).upper()}, expected text")
    if isinstance(value, (dt.date, dt.time, dt.timedelta)):
        raise _RowProblem(f"holds a date or time ({value}); Excel turns values such as 7-1 "
                          f"into dates, so format the column as text and type it again")
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))  # an ID Excel stored as a number
        raise _RowProblem(f"holds the number {value!r}; format the column as text")
    if isinstance(value, int):
        return str(value)
    raise _RowProblem(f"holds an unexpected {type(value).__name__}")


def _list(value: str | None) -> list[str]:
    if not value:
        return []
    return [part.strip() for part in _LIST_SEPARATORS.split(value) if part.strip()]


# ---------------------------------------------------------------- XLSX


def _xlsx_tables(filename: str, content: bytes) -> dict[str, RowSource]:
    archive = _open_zip(filename, content)
    with _unreadable_is_damaged(filename, "xlsx"):
        sheet_paths = _xlsx_sheet_paths(archive)
    for sheet in SHEETS:
        if sheet not in sheet_paths:
            raise ValidationError(f"'{filename}' has no sheet '{sheet}'; {_TEMPLATE_HINT}")
    try:
        book = python_calamine.CalamineWorkbook.from_filelike(io.BytesIO(content))
    except Exception as exc:  # calamine's errors carry no useful type hierarchy
        raise _damaged(filename, "xlsx", exc) from None
    tables = {}
    for sheet in SHEETS:
        with _unreadable_is_damaged(filename, "xlsx", f"sheet '{sheet}'"):
            marks = _marked_rows(archive, sheet_paths[sheet])
        tables[sheet] = _calamine_rows(filename, book, sheet, marks)
    return tables


@dataclass
class _MarkedRows:
    """What calamine's values do not tell about a sheet's rows."""

    formulas: set[int] = field(default_factory=set)  # rows holding a formula
    errors: dict[int, dict[int, str]] = field(default_factory=dict)  # row -> column index -> error value


def _calamine_rows(filename: str, book: Any, sheet: str, marks: _MarkedRows) -> RowSource:
    with _unreadable_is_damaged(filename, "xlsx", f"sheet '{sheet}'"):  # calamine parses it here
        worksheet = book.get_sheet_by_name(sheet)
    # calamine's rows and cells begin at the sheet's first used row and column; with the cells before
    # them as empty, a cell's index is its column counted from A, as the sheet's references (and marks) count
    first_row, first_column = worksheet.start if worksheet.start else (0, 0)
    padding = [""] * first_column
    for number, cells in enumerate(worksheet.iter_rows(), start=first_row + 1):
        if padding:
            cells = padding + cells
        if number in marks.formulas:
            yield number, FormulaCells(cells)
        elif number in marks.errors:
            yield number, ErrorCells(cells, marks.errors[number])
        else:
            yield number, cells  # empty cells come as "", which reads as missing


_NS = {"m": "http://schemas.openxmlformats.org/spreadsheetml/2006/main",
       "r": "http://schemas.openxmlformats.org/officeDocument/2006/relationships",
       "rel": "http://schemas.openxmlformats.org/package/2006/relationships"}
# a formula is an <f> element (<x:f> with a namespace prefix), an error value a cell of type "e";
# a false hit only costs a parse
_MARKERS = (b"<f>", b"<f ", b"<f/", b":f>", b":f ", b'"e"', b"'e'")


def _xlsx_sheet_paths(archive: zipfile.ZipFile) -> dict[str, str]:
    """Sheet name -> the worksheet part inside the zip."""
    workbook = ElementTree.fromstring(archive.read("xl/workbook.xml"))
    rels = ElementTree.fromstring(archive.read("xl/_rels/workbook.xml.rels"))
    targets = {r.get("Id"): r.get("Target", "") for r in rels.findall("rel:Relationship", _NS)}
    paths = {}
    for sheet in workbook.iterfind("m:sheets/m:sheet", _NS):
        target = targets.get(sheet.get(f"{{{_NS['r']}}}id"), "")
        paths[sheet.get("name")] = target.lstrip("/") if target.startswith("/") else f"xl/{target}"
    return paths


def _marked_rows(archive: zipfile.ZipFile, path: str) -> _MarkedRows:
    """Rows holding formulas or error values: a byte scan first, an XML parse only if one may be there."""
    marks = _MarkedRows()
    with archive.open(path) as part:
        tail = b""
        while chunk := part.read(1 << 20):
            window = tail + chunk
            if any(marker in window for marker in _MARKERS):
                break
            tail = chunk[-16:]
        else:
            return marks
    with archive.open(path) as part:
        row = column = 0
        for event, element in ElementTree.iterparse(part, events=("start", "end")):
            tag = element.tag.rsplit("}", 1)[-1]
            if event == "end":
                if tag == "row":
                    element.clear()
                elif tag == "c" and element.get("t") == "e":
                    value = next((child.text for child in element if child.tag.rsplit("}", 1)[-1] == "v"), None)
                    marks.errors.setdefault(row, {})[column] = value or ""
            elif tag == "row":
                # rows and cells without a reference follow the previous one, as in Excel
                row = int(element.get("r") or row + 1)
                column = -1
            elif tag == "c":
                reference = element.get("r")
                column = (openpyxl.utils.column_index_from_string(reference.rstrip("0123456789")) - 1
                          if reference else column + 1)
            elif tag == "f":
                marks.formulas.add(row)
    return marks


# ---------------------------------------------------------------- CSV


def _csv_tables(filename: str, content: bytes) -> dict[str, RowSource]:
    archive = _open_zip(filename, content)
    # files may sit in a folder inside the zip (as when a folder is compressed)
    by_name = {name.rsplit("/", 1)[-1].lower(): name for name in archive.namelist()
               if not name.startswith("__MACOSX/")}
    tables = {}
    for sheet in SHEETS:
        member = by_name.get(CSV_FILES[sheet])
        if member is None:
            raise ValidationError(f"'{filename}' has no file '{CSV_FILES[sheet]}' (sheet "
                                  f"'{sheet}'); {_TEMPLATE_HINT}")
        tables[sheet] = _csv_rows(filename, archive, member)
    return tables


def _csv_rows(filename: str, archive: zipfile.ZipFile, member: str) -> RowSource:
    # outside the try below: a UnicodeDecodeError is a ValueError, but means something else
    with _unreadable_is_damaged(filename, "csv", f"'{member}'"), archive.open(member) as raw:
        # utf-8-sig drops the byte order mark Excel writes at the start of "CSV UTF-8"; newline="" leaves
        # line ends to the csv module, so U+2028, NEL, VT or FF in a cell does not end the record there
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
        try:
            first_line = text.readline()
            delimiter = _delimiter(first_line)
            reader = csv.reader(itertools.chain([first_line], text), delimiter=delimiter)
            for number, cells in enumerate(reader, start=1):
                yield number, cells
        except UnicodeDecodeError:
            raise ValidationError(f"'{member}' in '{filename}' is not UTF-8 text; save it as "
                                  f"\"CSV UTF-8\" and import again") from None
        except csv.Error as exc:
            raise ValidationError(f"'{member}' in '{filename}' is not valid CSV ({exc})") from None


def _delimiter(header_line: str) -> str:
    """Headers never hold separators, so the most frequent candidate in them is the one."""
    counts = {d: header_line.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=counts.__getitem__)
    return best if counts[best] else ","
