"""Roster import benchmark: a district as XLSX and CSV, previewed and applied.

    .venv/bin/python bench/roster_import.py [--users 100000] [--classes 4000]
        [--members-per-class 50] [--database postgresql|sqlite] [--keep DIR]

Generates a district (users, classes with one teacher and students, so
``classes * members_per_class`` memberships), then measures, each in its own process
so that peak RSS belongs to one run:

- ours: preview (read the file, plan, store the plan) plus apply (write the
  hierarchy, add every event to the outbox), for XLSX and for CSV;
- floor (a): read the XLSX with openpyxl read-only and bulk-insert the same users,
  classes and memberships with SQLAlchemy Core;
- floor (b): the same with python-calamine's ``iter_rows``.

Each run is repeated (``--repeat``, interleaved) and the fastest repetition counts.

Prints rows per second, seconds, peak RSS and each run's time as a ratio to the floors.
Goal: ours on XLSX at most floor (a) (ratio <= 1.0), peak RSS under 500 MB.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

POSTGRES_ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
SCHOOLS = 20
MEMORY_GOAL_MB = 500


# ---------------------------------------------------------------- the district


def district_rows(users: int, classes: int, members_per_class: int):
    """Rows for the four sheets; teachers first, one per class, then students."""
    from services.roster.adapters.spreadsheets import COLUMNS, GRADE_LEVELS, LOCATIONS, USERS, CLASSES

    teachers = classes
    students = users - teachers
    locations = [[f"school-{s}", f"School {s}"] for s in range(SCHOOLS)]
    grades = [[str(g), f"school-{s}"] for s in range(SCHOOLS) for g in range(1, 13)]

    def user_rows():
        for i in range(users):
            school = f"school-{i % SCHOOLS}"
            if i < teachers:
                yield [f"t{i}", "Teacher", "Terry", f"Teacher{i}", f"t{i}@district.example",
                       f"t{i}@appleid.district.example", school, "", ""]
            else:
                yield [f"s{i}", "Student", "Sam", f"Student{i}", f"s{i}@district.example",
                       f"s{i}@appleid.district.example", school, str(1 + i % 12),
                       f"SER{i:08d}" if i % 10 == 0 else ""]

    def class_rows():
        per_class = members_per_class - 1
        by_school = [[i for i in range(teachers, users) if i % SCHOOLS == school]
                     for school in range(SCHOOLS)]
        for c in range(classes):
            school = c % SCHOOLS
            pupils = by_school[school]
            start = (c // SCHOOLS) * per_class
            ids = [f"s{pupils[(start + k) % len(pupils)]}" for k in range(per_class)]
            yield [f"class-{c}", f"Class {c}", f"Course {c % 200}", f"school-{school}",
                   f"R{c % 50}", f"t{c}", ", ".join(ids)]

    headers = {sheet: [h for h, _ in cols] for sheet, cols in COLUMNS.items()}
    return headers, {USERS: user_rows, LOCATIONS: lambda: iter(locations),
                     GRADE_LEVELS: lambda: iter(grades), CLASSES: class_rows}


def write_files(directory: Path, users: int, classes: int, members: int) -> tuple[Path, Path]:
    import openpyxl

    from services.roster.adapters.spreadsheets import CSV_FILES, SHEETS

    headers, rows = district_rows(users, classes, members)
    xlsx = directory / "district.xlsx"
    book = openpyxl.Workbook(write_only=True)
    for sheet in SHEETS:
        ws = book.create_sheet(sheet)
        ws.append(headers[sheet])
        for row in rows[sheet]():
            ws.append(row)
    book.save(xlsx)
    csv_zip = directory / "district.zip"
    with zipfile.ZipFile(csv_zip, "w", zipfile.ZIP_DEFLATED) as archive:
        for sheet in SHEETS:
            text = io.StringIO()
            writer = csv.writer(text, lineterminator="\n")
            writer.writerow(headers[sheet])
            writer.writerows(rows[sheet]())
            archive.writestr(CSV_FILES[sheet], text.getvalue())
    return xlsx, csv_zip


# ---------------------------------------------------------------- databases


def fresh_database(kind: str, directory: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{directory}/bench-{uuid.uuid4().hex[:8]}.db"
    import sqlalchemy as sa

    name = f"orchard_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"


def drop_database(url: str) -> None:
    if not url.startswith("postgresql"):
        return
    import sqlalchemy as sa

    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[-1]}" WITH (FORCE)'))
    admin.dispose()


# ---------------------------------------------------------------- the measured runs


def run_ours(path: Path, url: str) -> dict:
    from sqlalchemy.orm import sessionmaker

    from services.roster.adapters import spreadsheets, tables
    from services.roster.adapters.imports import ImportRunner
    from shared.auth import Actor
    from shared.migrations import upgrade
    from shared.storage import KernelTables, UnitOfWork, create_engine_for

    engine = create_engine_for(url)
    upgrade(engine, "services.roster.migrations")
    unit = UnitOfWork(sessionmaker(engine, expire_on_commit=False), KernelTables(tables.metadata),
                      after_commit=lambda: None)
    actor = Actor(id="bench", role="administrator")
    content = path.read_bytes()

    started = time.perf_counter()
    read = spreadsheets.read_spreadsheet(path.name, content)
    del content
    runner = ImportRunner(unit.session, unit.publish)
    summary = runner.preview(read.batch, _options(), actor=actor, origin=path.name,
                             row_numbers=read.row_numbers)
    del read
    unit.commit()
    previewed = time.perf_counter()
    result = ImportRunner(unit.session, unit.publish).apply(summary["plan_id"], actor=actor)
    unit.commit()
    applied = time.perf_counter()

    counts = summary["counts"]
    import sqlalchemy as sa
    with engine.connect() as connection:
        outbox = connection.execute(sa.select(sa.func.count()).select_from(tables.metadata.tables["outbox"])).scalar_one()
    engine.dispose()
    return {"seconds": applied - started, "preview_seconds": previewed - started,
            "apply_seconds": applied - previewed, "rows": _rows(counts),
            "users": counts["user"]["add"], "classes": counts["class"]["add"],
            "memberships": counts["membership"]["add"], "rejected": len(summary["rejected"]),
            "events_in_outbox": outbox, "events": result["events"], "peak_rss_mb": _peak_rss_mb()}


def _options():
    from services.roster.domain.planning import PlanOptions

    return PlanOptions()


def _rows(counts: dict) -> int:
    return counts["user"]["add"] + counts["class"]["add"] + counts["membership"]["add"]


def run_floor(path: Path, url: str, reader: str) -> dict:
    """Read Users and Classes with ``reader`` and bulk-insert them with SQLAlchemy Core."""
    import sqlalchemy as sa

    metadata = sa.MetaData()
    users = sa.Table("users", metadata, sa.Column("id", sa.Integer, primary_key=True),
                     *[sa.Column(c, sa.String(255)) for c in (
                         "user_id", "user_type", "first_name", "last_name", "email",
                         "managed_apple_id", "location_id", "grade_level", "serials")])
    classes = sa.Table("classes", metadata, sa.Column("class_id", sa.String(128), primary_key=True),
                       *[sa.Column(c, sa.String(255)) for c in (
                           "name", "course_name", "location_id", "room")])
    members = sa.Table("memberships", metadata, sa.Column("class_id", sa.String(128), primary_key=True),
                       sa.Column("user_id", sa.String(128), primary_key=True),
                       sa.Column("role", sa.String(10), primary_key=True))
    engine = sa.create_engine(url)
    metadata.create_all(engine)

    started = time.perf_counter()
    sheets = _open_reader(path, reader)
    counts = {"users": 0, "classes": 0, "memberships": 0}
    with engine.begin() as connection:
        batch = []
        for row in sheets("Users"):
            batch.append(dict(zip(("user_id", "user_type", "first_name", "last_name", "email",
                                   "managed_apple_id", "location_id", "grade_level", "serials"),
                                  [None if v in ("", None) else str(v) for v in row])))
            if len(batch) == 1000:
                connection.execute(users.insert(), batch)
                counts["users"] += len(batch)
                batch = []
        if batch:
            connection.execute(users.insert(), batch)
            counts["users"] += len(batch)
        class_batch, member_batch = [], []
        for row in sheets("Classes"):
            class_id, name, course, location, room, teacher, students = (
                None if v in ("", None) else str(v) for v in row[:7])
            class_batch.append({"class_id": class_id, "name": name, "course_name": course,
                                "location_id": location, "room": room})
            member_batch.append({"class_id": class_id, "user_id": teacher, "role": "teacher"})
            member_batch.extend({"class_id": class_id, "user_id": s.strip(), "role": "student"}
                                for s in (students or "").split(",") if s.strip())
            if len(member_batch) >= 5000:
                connection.execute(classes.insert(), class_batch)
                connection.execute(members.insert(), member_batch)
                counts["classes"] += len(class_batch)
                counts["memberships"] += len(member_batch)
                class_batch, member_batch = [], []
        if class_batch:
            connection.execute(classes.insert(), class_batch)
            connection.execute(members.insert(), member_batch)
            counts["classes"] += len(class_batch)
            counts["memberships"] += len(member_batch)
    seconds = time.perf_counter() - started
    engine.dispose()
    return {"seconds": seconds, "rows": sum(counts.values()), **counts, "peak_rss_mb": _peak_rss_mb()}


def _open_reader(path: Path, reader: str):
    if reader == "openpyxl":
        import openpyxl

        book = openpyxl.load_workbook(path, read_only=True)

        def rows(sheet):
            iterator = book[sheet].iter_rows(values_only=True)
            next(iterator)
            return iterator
        return rows
    import python_calamine

    book = python_calamine.CalamineWorkbook.from_path(str(path))

    def rows(sheet):
        iterator = book.get_sheet_by_name(sheet).iter_rows()
        next(iterator)
        return iterator
    return rows


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# ---------------------------------------------------------------- driver


def measure(kind: str, path: Path, database: str, directory: Path) -> dict:
    """Run one measurement in a fresh process on a fresh database."""
    url = fresh_database(database, directory)
    try:
        output = subprocess.run(
            [sys.executable, __file__, "--run", kind, "--file", str(path), "--url", url],
            check=True, capture_output=True, text=True, cwd=ROOT).stdout
    finally:
        drop_database(url)
    return json.loads(output.strip().splitlines()[-1])


def _best(results: list[dict]) -> dict:
    """The fastest of the repetitions, with the highest peak RSS seen in any of them."""
    best = dict(min(results, key=lambda r: r["seconds"]))
    best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in results)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=4_000)
    parser.add_argument("--members-per-class", type=int, default=50)
    parser.add_argument("--database", choices=["postgresql", "sqlite"], default="sqlite")
    parser.add_argument("--repeat", type=int, default=3,
                        help="repetitions of each run; the fastest counts (the machine may be shared)")
    parser.add_argument("--keep", type=Path,
                        help="keep the generated files in this folder (and reuse them next time)")
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.run:  # a child process: one measurement, printed as JSON
        import warnings
        warnings.filterwarnings("ignore")
        result = run_ours(args.file, args.url) if args.run == "ours" else run_floor(
            args.file, args.url, args.run)
        print(json.dumps(result))
        return

    with tempfile.TemporaryDirectory() as scratch:
        directory = args.keep or Path(scratch)
        directory.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        xlsx, csv_zip = directory / "district.xlsx", directory / "district.zip"
        if not (args.keep and xlsx.exists() and csv_zip.exists()):  # --keep reuses a district
            xlsx, csv_zip = write_files(directory, args.users, args.classes, args.members_per_class)
        print(f"district: {args.users} users, {args.classes} classes, "
              f"{args.classes * args.members_per_class} memberships "
              f"(generated in {time.perf_counter() - started:.1f} s; "
              f"XLSX {xlsx.stat().st_size / 1e6:.1f} MB, CSV zip {csv_zip.stat().st_size / 1e6:.1f} MB); "
              f"database {args.database}")
        runs = {"openpyxl": xlsx, "calamine": xlsx, "ours-xlsx": xlsx, "ours-csv": csv_zip}
        results: dict[str, list[dict]] = {kind: [] for kind in runs}
        for _ in range(args.repeat):  # interleaved, so that load from elsewhere hits all alike
            for kind, path in runs.items():
                results[kind].append(measure(kind.split("-")[0], path, args.database, directory))
        floor_a, floor_b, ours_xlsx, ours_csv = (_best(results[kind]) for kind in runs)

    print(f"{'run':34} {'rows':>8} {'seconds':>8} {'rows/s':>9} {'peak RSS':>9} "
          f"{'÷ floor a':>9} {'÷ floor b':>9}")
    for label, result in (("floor (a) openpyxl + Core insert", floor_a),
                          ("floor (b) calamine + Core insert", floor_b),
                          ("ours XLSX preview+apply", ours_xlsx),
                          ("ours CSV preview+apply", ours_csv)):
        print(f"{label:34} {result['rows']:>8} {result['seconds']:>8.2f} "
              f"{result['rows'] / result['seconds']:>9.0f} {result['peak_rss_mb']:>7.0f}MB "
              f"{result['seconds'] / floor_a['seconds']:>9.2f} {result['seconds'] / floor_b['seconds']:>9.2f}")
    for label, result in (("XLSX", ours_xlsx), ("CSV", ours_csv)):
        print(f"ours {label}: preview {result['preview_seconds']:.2f} s + apply "
              f"{result['apply_seconds']:.2f} s; {result['events_in_outbox']} events queued in the "
              f"outbox for the relay (the apply does not wait for the broker); "
              f"{result['rejected']} rejected rows")
    ratio = ours_xlsx["seconds"] / floor_a["seconds"]
    memory = max(ours_xlsx["peak_rss_mb"], ours_csv["peak_rss_mb"])
    print(f"goal: XLSX time ratio to floor (a) {ratio:.2f} (≤ 1.0: "
          f"{'met' if ratio <= 1.0 else 'NOT met'}); peak RSS {memory:.0f} MB "
          f"(< {MEMORY_GOAL_MB} MB: {'met' if memory < MEMORY_GOAL_MB else 'NOT met'})")


if __name__ == "__main__":
    main()
