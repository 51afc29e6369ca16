"""Spreadsheet template and reader, including every bad input the import must survive."""
from __future__ import annotations

import datetime as dt
import io
import struct
import zipfile

import openpyxl
import pytest

from services.roster.adapters import spreadsheets as s
from services.roster.domain import planning
from shared.errors import ValidationError

HEADERS = {sheet: [h for h, _ in cols] for sheet, cols in s.COLUMNS.items()}
LOCATION = ["north", "North School"]
TEACHER = ["t1", "Teacher", "Tom", "Tutor", "t1@x.edu", "", "north", "", ""]


def student(uid, **kw):
    row = {"User ID": uid, "Type": "Student", "First Name": "Ann", "Last Name": "Lee",
           "Email": f"{uid}@x.edu", "Managed Apple ID": "", "Location IDs": "north",
           "Grade Level": "7", "Device Serial Numbers": ""}
    row.update(kw)
    return [row[h] for h in HEADERS["Users"]]


def workbook(users=(), classes=(), locations=(LOCATION,), grades=(), drop_sheet=None,
             headers=None) -> bytes:
    book = openpyxl.Workbook()
    book.remove(book.active)
    content = {"Users": users, "Locations": locations, "Grade Levels": grades, "Classes": classes}
    for sheet, rows in content.items():
        if sheet == drop_sheet:
            continue
        ws = book.create_sheet(sheet)
        ws.append((headers or {}).get(sheet, HEADERS[sheet]))
        for row in rows:
            ws.append(list(row))
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def csv_zip(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return out.getvalue()


def minimal_csv_files(users_csv: bytes) -> dict[str, bytes]:
    return {"users.csv": users_csv, "locations.csv": b"Location ID,Name\nnorth,North\n",
            "grade_levels.csv": b"Name,Location ID\n", "classes.csv": ",".join(
                HEADERS["Classes"]).encode() + b"\n"}


def reasons(result):
    return {(r.sheet, r.row): r.reason for r in result.batch.rejected}


@pytest.mark.parametrize("fmt", ["xlsx", "csv"])
def test_template_has_all_sheets_headers_and_an_example_that_reads_back(fmt):
    template = s.spreadsheet_template(fmt)
    result = s.read_spreadsheet(f"template.{fmt}", template)
    batch = result.batch
    assert batch.source == fmt and batch.rejected == []
    assert [u.user_id for u in batch.users] == ["s-1001"]
    assert batch.users[0].serial_numbers == ["F9FXK0AAHG7J"]
    assert batch.classes[0].student_ids == ["s-1001"] and batch.classes[0].teacher_ids == []
    assert [loc.location_id for loc in batch.locations] == ["north"]
    if fmt == "xlsx":
        book = openpyxl.load_workbook(io.BytesIO(template))
        assert book.sheetnames == ["Users", "Locations", "Grade Levels", "Classes"]
        assert [c.value for c in book["Users"][1]] == HEADERS["Users"]
    else:
        names = zipfile.ZipFile(io.BytesIO(template)).namelist()
        assert sorted(names) == ["classes.csv", "grade_levels.csv", "locations.csv", "users.csv"]


def test_unknown_template_format():
    with pytest.raises(ValidationError, match="xlsx or csv"):
        s.spreadsheet_template("ods")


def test_a_good_workbook_reads_into_records():
    data = workbook(users=[TEACHER, student("s1"), student("s2")],
                    classes=[["c1", "Maths", "Maths", "north", "B1", "t1", "s1, s2"]],
                    grades=[["7", "north"]])
    batch = s.read_spreadsheet("roster.xlsx", data).batch
    assert batch.rejected == []
    assert [(u.user_id, u.user_type) for u in batch.users] == [
        ("t1", "teacher"), ("s1", "student"), ("s2", "student")]
    assert batch.classes[0].teacher_ids == ["t1"]
    assert batch.grade_levels[0].name == "7"


@pytest.mark.parametrize("content,match", [
    (b"%PDF-1.7 something", "not a spreadsheet"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 100, "Excel 97-2003"),
    (b"User ID,Type\ns1,Student\n", "single text/CSV file"),
    (b"PK\x03\x04garbage", "damaged"),
])
def test_wrong_file_type_is_detected_by_content(content, match):
    with pytest.raises(ValidationError, match=match):
        s.read_spreadsheet("roster.xlsx", content)


def test_a_zip_that_is_neither_xlsx_nor_csv_template():
    with pytest.raises(ValidationError, match="neither an XLSX"):
        s.read_spreadsheet("roster.xlsx", csv_zip({"photo.jpg": b"x"}))


def test_missing_sheet_is_named():
    with pytest.raises(ValidationError, match="no sheet 'Grade Levels'.*do not delete"):
        s.read_spreadsheet("roster.xlsx", workbook(drop_sheet="Grade Levels"))


def test_missing_header_is_named():
    headers = {"Users": [h for h in HEADERS["Users"] if h != "Email"]}
    with pytest.raises(ValidationError, match="sheet 'Users' is missing the header 'Email'"):
        s.read_spreadsheet("roster.xlsx", workbook(headers=headers))


def test_missing_csv_file_is_named():
    files = minimal_csv_files(b"User ID\n")
    del files["classes.csv"]
    with pytest.raises(ValidationError, match="no file 'classes.csv'"):
        s.read_spreadsheet("roster.zip", csv_zip(files))


def test_csv_with_bom_and_semicolons():
    users = ("\ufeff" + ";".join(HEADERS["Users"]) + "\n"
             "s1;Student;Zoë;Lee;s1@x.edu;;north;7;\n").encode()
    batch = s.read_spreadsheet("roster.zip", csv_zip(minimal_csv_files(users))).batch
    assert batch.rejected == []
    assert batch.users[0].user_id == "s1" and batch.users[0].first_name == "Zoë"


def test_csv_that_is_not_utf8():
    users = (",".join(HEADERS["Users"]) + "\ns1,Student,Zo\xeb,Lee,,,north,,\n").encode("latin-1")
    with pytest.raises(ValidationError, match="not UTF-8"):
        s.read_spreadsheet("roster.zip", csv_zip(minimal_csv_files(users)))


def test_trailing_empty_rows_are_ignored():
    users = (",".join(HEADERS["Users"]) + "\ns1,Student,A,B,,,north,,\n,,,,,,,,\n\n;;\n").encode()
    csv_batch = s.read_spreadsheet("roster.zip", csv_zip(minimal_csv_files(users))).batch
    xlsx_batch = s.read_spreadsheet("roster.xlsx", workbook(
        users=[student("s1"), [None] * 9, ["", "", ""]])).batch
    for batch in (xlsx_batch,):
        assert batch.rejected == [] and len(batch.users) == 1
    # ";;" in a comma-separated file is a row with text, so it is rejected, not ignored
    assert len(csv_batch.users) == 1 and [r.row for r in csv_batch.rejected] == [5]


def test_formulas_are_rejected_per_row():
    data = workbook(users=[student("s1"), student("s2", **{"Last Name": "=UPPER(C3)"}),
                           student("s3")])
    result = s.read_spreadsheet("roster.xlsx", data)
    assert [u.user_id for u in result.batch.users] == ["s1", "s3"]
    assert "formula" in reasons(result)[("Users", 3)]


def test_dates_and_numbers_in_cells():
    data = workbook(users=[student("s1", **{"Grade Level": dt.datetime(2024, 7, 1)}),
                           student(12345), student("s3", **{"Grade Level": 7.5})])
    result = s.read_spreadsheet("roster.xlsx", data)
    assert "date" in reasons(result)[("Users", 2)]
    assert "7.5" in reasons(result)[("Users", 4)]
    assert [u.user_id for u in result.batch.users] == ["12345"]  # an ID stored as a number


def test_duplicate_user_ids_in_a_file():
    result = s.read_spreadsheet("roster.xlsx", workbook(users=[student("s1"), student("s1")]))
    assert len(result.batch.users) == 1
    assert reasons(result) == {("Users", 3): "user ID 's1' already appears in row 2"}


def test_wrong_user_type():
    result = s.read_spreadsheet("roster.xlsx", workbook(users=[student("s1", Type="Parent")]))
    assert "type 'Parent' is not one of Student, Teacher, Staff" in reasons(result)[("Users", 2)]


def test_unknown_teacher_and_over_long_name_are_rejected_with_their_rows(hierarchy):
    data = workbook(users=[TEACHER, student("s1", **{"First Name": "A" * 300}), student("s2")],
                    classes=[["c1", "Maths", "", "north", "", "t1", "s2"],
                             ["c2", "Art", "", "north", "", "ghost", "s2"]])
    result = s.read_spreadsheet("roster.xlsx", data)
    plan = planning.build_plan(hierarchy, result.batch, row_numbers=result.row_numbers)
    rejected = {(r.sheet, r.row): r.reason for r in plan.summary.rejected}
    assert "300 characters" in rejected[("Users", 3)]
    assert "ghost" in rejected[("Classes", 3)]
    assert plan.summary.counts["user"]["add"] == 2 and plan.summary.counts["class"]["add"] == 1


def test_zip_bomb_is_refused_before_reading():
    bomb = csv_zip({"users.csv": b"0" * (30 * 1024 * 1024), "xl/workbook.xml": b""})
    with pytest.raises(ValidationError, match="zip bomb"):
        s.read_spreadsheet("roster.xlsx", bomb)


def test_declared_total_size_is_checked(monkeypatch):
    monkeypatch.setattr(s, "MAX_UNCOMPRESSED_BYTES", 1000)
    with pytest.raises(ValidationError, match="would expand"):
        s.read_spreadsheet("roster.xlsx", workbook())


def rezip(data: bytes, changes: dict, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """``data``'s zip written again: members in ``changes`` transformed, or left out (None)."""
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as archive:
        for name in source.namelist():
            change = changes.get(name, lambda content: content)
            if change is not None:
                archive.writestr(name, change(source.read(name)))
    return out.getvalue()


def corrupt(data: bytes, member: str, at: int) -> bytes:
    """``data`` with one byte of ``member``'s stored (compressed) data inverted."""
    header = zipfile.ZipFile(io.BytesIO(data)).getinfo(member).header_offset
    name_length, extra_length = struct.unpack("<HH", data[header + 26:header + 30])
    damaged = bytearray(data)
    damaged[header + 30 + name_length + extra_length + at] ^= 0xFF
    return bytes(damaged)


USERS_SHEET = "xl/worksheets/sheet1.xml"
GOOD_CSV = csv_zip(minimal_csv_files((",".join(HEADERS["Users"]) + "\ns1,Student,A,B,,,north,,\n").encode()))
GOOD_XLSX = workbook(users=[student("s1")])
WITH_FORMULA = b'<row r="3"><c r="A3"><f>1+1</f><v>2</v></c></row></sheetData>'


@pytest.mark.parametrize("damage,advice", [
    # a bad checksum (BadZipFile), and corrupt compressed data (zlib.error)
    (lambda: corrupt(rezip(GOOD_CSV, {}, zipfile.ZIP_STORED), "users.csv", 3), "make the zip again"),
    (lambda: corrupt(GOOD_CSV, "users.csv", 3), "make the zip again"),
    (lambda: corrupt(rezip(GOOD_XLSX, {}, zipfile.ZIP_STORED), USERS_SHEET, 200), "save it as a new .xlsx"),
    (lambda: corrupt(GOOD_XLSX, USERS_SHEET, 20), "save it as a new .xlsx"),
    (lambda: corrupt(rezip(GOOD_XLSX, {}, zipfile.ZIP_STORED), "xl/workbook.xml", 50),
     "save it as a new .xlsx"),
    # malformed sheet XML, found by the formula scan (ParseError) or by calamine
    (lambda: rezip(GOOD_XLSX, {USERS_SHEET: lambda x: x.replace(b"</sheetData>", b"<f>1</f></sheetData")}),
     "save it as a new .xlsx"),
    (lambda: rezip(GOOD_XLSX, {USERS_SHEET: lambda x: x.replace(b"</sheetData>", b"</sheetDat")}),
     "save it as a new .xlsx"),
    # a row number that is no number (ValueError), and a worksheet part that is missing (KeyError)
    (lambda: rezip(GOOD_XLSX, {USERS_SHEET: lambda x: x.replace(b'<row r="2"', b'<row r="x2"')
                                .replace(b"</sheetData>", WITH_FORMULA)}), "save it as a new .xlsx"),
    (lambda: rezip(GOOD_XLSX, {USERS_SHEET: None}), "save it as a new .xlsx"),
], ids=["csv-checksum", "csv-deflate", "xlsx-checksum", "xlsx-deflate", "workbook-checksum",
        "sheet-xml-with-formula", "sheet-xml", "row-number", "missing-sheet-part"])
def test_a_damaged_file_is_refused_as_damaged(damage, advice):
    with pytest.raises(ValidationError, match=f"'roster.xlsx' is damaged: .* cannot be read .*{advice}"):
        s.read_spreadsheet("roster.xlsx", damage())


@pytest.mark.parametrize("fmt", ["xlsx", "csv"])
def test_a_repeated_header_is_refused_and_named(fmt):
    headers = HEADERS["Users"] + [" email "]
    if fmt == "xlsx":
        data = workbook(users=[student("s1") + ["other@x.edu"]], headers={"Users": headers})
    else:
        data = csv_zip(minimal_csv_files((",".join(headers) + "\n").encode()))
    with pytest.raises(ValidationError, match="sheet 'Users' has the header 'email' twice "
                                              r"\(columns E and J\)"):
        s.read_spreadsheet(f"roster.{fmt}", data)


def with_cached_values(data: bytes, cached: dict[bytes, bytes]) -> bytes:
    """The workbook as Excel saves it: each formula with the value it last computed (openpyxl stores none)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            part = source.read(item)
            for formula, value in cached.items():
                part = part.replace(b"<f>" + formula + b"</f><v />", b"<f>" + formula + b"</f><v>" + value + b"</v>")
            target.writestr(item, part)
    return out.getvalue()


def test_a_rejected_row_keeps_what_it_names_instead_of_deleting_it(hierarchy):
    classes = [["c1", "Maths", "", "north", "", "t1", "s1,s2"], ["c2", "Art", "", "north", "", "t1", "s3"]]
    users = [TEACHER] + [student(f"s{i}") for i in range(1, 11)]
    grades = [["7", "north"], ["8", "north"]]
    first = s.read_spreadsheet("a.xlsx", workbook(users=users, classes=classes, grades=grades))
    list(planning.apply_plan(planning.build_plan(hierarchy, first.batch).changes, hierarchy, "xlsx"))

    # the same district with mistakes: the teacher's type, a name too long, formulas, a class without its name
    teacher = list(TEACHER)
    teacher[1] = "Teachr"
    bad_users = [teacher, student("s1", **{"First Name": "A" * 300}), student("s2", **{"Last Name": "=UPPER(C3)"})]
    bad_classes = [classes[0], ["c2", "", "", "north", "", "t1", "s3"]]
    data = with_cached_values(workbook(users=bad_users + users[3:], classes=bad_classes,
                                       grades=[["7", "north"], ["=8", "north"]]), {b"8": b"8"})
    result = s.read_spreadsheet("b.xlsx", data)
    plan = planning.build_plan(hierarchy, result.batch, row_numbers=result.row_numbers)
    assert {(r.sheet, r.row): r.id for r in plan.summary.rejected} == {
        ("Users", 2): "t1", ("Users", 3): "s1", ("Users", 4): "s2", ("Classes", 3): "c2",
        ("Grade Levels", 3): "north/8"}
    assert plan.changes == []  # nothing a rejected row names is deleted, and c1 keeps its teacher and students
    assert plan.summary.warnings == [
        "grade level(s) north/8 kept, not deleted, because their rows were rejected; fix those rows and import again",
        "user(s) t1, s1, s2 kept, not deleted, because their rows were rejected; fix those rows and import again",
        "class(es) c2 kept, not deleted, because their rows were rejected; fix those rows and import again"]


def test_grade_level_rejections_name_their_sheet_rows(hierarchy):
    data = workbook(grades=[["7", "north"], [None, None], ["8", "nowhere"], ["G" * 300, "north"], ["7", "north"]])
    result = s.read_spreadsheet("grades.xlsx", data)
    plan = planning.build_plan(hierarchy, result.batch, row_numbers=result.row_numbers)
    rejected = {r.row: r.reason for r in plan.summary.rejected}
    assert sorted(rejected) == [4, 5]  # the empty row 3 and the header count; row 6 repeats row 2, harmlessly
    assert "nowhere" in rejected[4] and "300 characters" in rejected[5]


def test_error_values_are_rejected_per_row_not_read_as_empty(hierarchy):
    # what Excel leaves after pasting the values of a lookup that failed: cells of type "e" (openpyxl writes
    # "#N/A" so), which calamine reads as empty
    first = s.read_spreadsheet("a.xlsx", workbook(users=[student("s1"), student("s2"), student("s3")]))
    list(planning.apply_plan(planning.build_plan(hierarchy, first.batch).changes, hierarchy, "xlsx"))
    data = workbook(users=[student("s1", Email="#N/A"), student("s2", **{"Grade Level": "#REF!"}),
                           student("s3") + ["#DIV/0!"]])  # a column beyond the template's is not read
    result = s.read_spreadsheet("b.xlsx", data)
    assert reasons(result) == {
        ("Users", 2): "column 'Email' holds an error value (#N/A); correct the cell and import again",
        ("Users", 3): "column 'Grade Level' holds an error value (#REF!); correct the cell and import again"}
    plan = planning.build_plan(hierarchy, result.batch, row_numbers=result.row_numbers)
    assert plan.changes == []  # nothing cleared, nothing deleted


def starting_in_column_b(data: bytes) -> bytes:
    """The workbook with every sheet moved one column right, as when column A is left empty."""
    book = openpyxl.load_workbook(io.BytesIO(data))
    for sheet in book:
        sheet.insert_cols(1)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def test_error_values_are_found_in_their_column_when_the_data_starts_in_column_b():
    # calamine's cells begin at the first column used, the sheet's cell references at A
    data = starting_in_column_b(workbook(users=[
        student("s1", **{"Device Serial Numbers": "#REF!"}), student("s2", Email="#N/A"),
        student("s3", **{"Last Name": "=UPPER(D4)"}), student("s4", **{"Device Serial Numbers": "c02xyz"})]))
    result = s.read_spreadsheet("b.xlsx", data)
    assert reasons(result) == {
        ("Users", 2): "column 'Device Serial Numbers' holds an error value (#REF!); correct the cell and import "
                      "again",
        ("Users", 3): "column 'Email' holds an error value (#N/A); correct the cell and import again",
        ("Users", 4): "holds a formula; paste values only"}
    assert [(r.row, r.id) for r in result.batch.rejected] == [(2, "s1"), (3, "s2"), (4, "s3")]
    assert [(u.user_id, u.email, u.serial_numbers) for u in result.batch.users] == [("s4", "s4@x.edu", ["C02XYZ"])]
    with pytest.raises(ValidationError, match=r"the header 'Email' twice \(columns F and K\)"):
        s.read_spreadsheet("b.xlsx", starting_in_column_b(workbook(headers={"Users": HEADERS["Users"] + ["Email"]})))


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e"])
def test_a_csv_cell_holding_a_unicode_line_boundary_stays_in_its_record(separator):
    users = (",".join(HEADERS["Users"]) + f"\ns-1,Student,Ada{separator}Marie,Lovelace,ada@x.org,,north,7,\r\n"
             "s-2,Student,\"Bo\nB\",Lee,bo@x.org,,north,7,\n").encode()
    batch = s.read_spreadsheet("roster.zip", csv_zip(minimal_csv_files(users))).batch
    assert batch.rejected == []
    assert [(u.user_id, u.first_name, u.email) for u in batch.users] == [
        ("s-1", f"Ada{separator}Marie", "ada@x.org"), ("s-2", "Bo\nB", "bo@x.org")]


def with_replaced_text(data: bytes, old: bytes, new: bytes) -> bytes:
    """The workbook with ``old`` replaced in its parts, for what openpyxl refuses to write."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            target.writestr(item, source.read(item).replace(old, new))
    return out.getvalue()


def two_students(fmt: str, first_name: str) -> bytes:
    if fmt == "xlsx":
        return workbook(users=[student("s1", **{"First Name": first_name}), student("s2")])
    users = (",".join(HEADERS["Users"]) + f"\ns1,Student,{first_name},Lee,s1@x.edu,,north,7,\n"
             "s2,Student,Ann,Lee,s2@x.edu,,north,7,\n").encode()
    return csv_zip(minimal_csv_files(users))


@pytest.mark.parametrize("fmt", ["xlsx", "csv"])
def test_a_nul_character_rejects_its_row_naming_the_column(fmt, hierarchy):
    first = s.read_spreadsheet(f"a.{fmt}", two_students(fmt, "Ada"))
    list(planning.apply_plan(planning.build_plan(hierarchy, first.batch).changes, hierarchy, fmt))
    if fmt == "xlsx":  # XLSX holds a control character as an escape, _x0000_; openpyxl refuses to write it
        data = with_replaced_text(two_students(fmt, "AdaNUL"), b"AdaNUL", b"Ada_x0000_")
    else:
        data = two_students(fmt, "Ada\x00")
    result = s.read_spreadsheet(f"b.{fmt}", data)
    assert reasons(result) == {("Users", 2): "column 'First Name' holds a NUL character, which no text can be "
                                             "stored with; remove it from the cell and import again"}
    assert [u.user_id for u in result.batch.users] == ["s2"]
    plan = planning.build_plan(hierarchy, result.batch, row_numbers=result.row_numbers)
    assert plan.changes == []  # s1 is kept as it is, not deleted as missing
