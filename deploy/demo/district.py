"""A small school district, filled into the roster's CSV template (a zip of four CSV files)."""
from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

DOMAIN, APPLE_DOMAIN = "springfield.example", "appleid.springfield.example"
TEACHERS = [("t-2001", "Grace", "Hopper", "north"), ("t-2002", "Alan", "Turing", "south")]
STUDENTS = [("s-1001", "Ada", "Lovelace", "north", "7"), ("s-1002", "Charles", "Babbage", "north", "7"),
            ("s-1003", "Katherine", "Johnson", "north", "7"), ("s-1004", "Edsger", "Dijkstra", "south", "4"),
            ("s-1005", "Barbara", "Liskov", "south", "4"), ("s-1006", "Donald", "Knuth", "south", "4")]


def user_count() -> int:
    return len(TEACHERS) + len(STUDENTS)


def district_rows() -> dict[str, list[dict[str, str]]]:
    """The district per template file, each row keyed by the template's headers."""
    users = [_user(user_id, "Teacher", first, last, location, "") for user_id, first, last, location in TEACHERS]
    users += [_user(user_id, "Student", first, last, location, grade) for user_id, first, last, location, grade in STUDENTS]
    return {
        "users.csv": users,
        "locations.csv": [{"Location ID": "north", "Name": "North Middle School"},
                          {"Location ID": "south", "Name": "South Elementary"}],
        "grade_levels.csv": [{"Name": "7", "Location ID": "north"}, {"Name": "4", "Location ID": "south"}],
        "classes.csv": [
            {"Class ID": "maths-7a", "Class Name": "Maths 7A", "Course Name": "Maths", "Location ID": "north",
             "Room": "B12", "Teacher IDs": "t-2001", "Student IDs": "s-1001, s-1002, s-1003"},
            {"Class ID": "science-4b", "Class Name": "Science 4B", "Course Name": "Science", "Location ID": "south",
             "Room": "L3", "Teacher IDs": "t-2002", "Student IDs": "s-1004, s-1005, s-1006"},
        ],
    }


def fill_template(template: Path, out: Path) -> Path:
    """Write ``out``: the template's files and headers, with the example rows replaced by the district."""
    rows = district_rows()
    with zipfile.ZipFile(template) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for name in source.namelist():
            headers = next(csv.reader(io.StringIO(source.read(name).decode("utf-8-sig"))))
            text = io.StringIO()
            writer = csv.writer(text)
            writer.writerow(headers)
            writer.writerows([row.get(header, "") for header in headers] for row in rows.get(name, []))
            target.writestr(name, text.getvalue())
    return out


def _user(user_id: str, user_type: str, first: str, last: str, location: str, grade: str) -> dict[str, str]:
    local = f"{first}.{last}".lower()
    return {"User ID": user_id, "Type": user_type, "First Name": first, "Last Name": last,
            "Email": f"{local}@{DOMAIN}", "Managed Apple ID": f"{local}@{APPLE_DOMAIN}",
            "Location IDs": location, "Grade Level": grade}
