"""The wire format of the Mosyle Manager API v2 compatible roster endpoints.

Client scripts written for that API send ``{"accessToken": ..., "options": {...}}`` to
list and ``{"accessToken": ..., "elements": [{"operation": "save"|"delete", ...}]}``
to write (users also ``"assign_device"``, with ``id`` and ``serial_number``), either as a
JSON body or as a form field ``content`` holding the JSON. This
module turns such payloads into roster records and roster data into responses; the
HTTP adapter only moves bytes.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from services.roster.domain.device_preassignment import DeviceAssignmentFailure
from services.roster.domain.planning import MAX_ID_LENGTH, PlanOptions
from shared.contracts.roster import ClassRecord, ImportBatch, LocationRecord, RejectedRow, UserRecord
from shared.errors import ValidationError
from shared.unicode_text import may_hold_unstorable_text, refuse_unstorable_text

TYPE_TO_WIRE = {"student": "S", "teacher": "T", "staff": "STAFF"}
WIRE_TO_TYPE = {v: k for k, v in TYPE_TO_WIRE.items()}
USER_COLUMNS = ("id", "name", "type", "email", "managed_appleid", "locations", "serial_numbers")
CLASS_COLUMNS = ("id", "course_name", "class_name", "location", "idteacher", "students", "room",
                 "coordinators")
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_PAGE = 1_000_000  # keeps the offset far inside SQL's integers
MAX_ELEMENTS = 5000
SAVE, DELETE, ASSIGN_DEVICE = "save", "delete", "assign_device"
# enrollment's longest serial number: it echoes a longer one cut short, which would name no element
MAX_SERIAL_LENGTH = 64
# a page number sent as text: ASCII digits only ("²".isdigit() is true, int("²") fails),
# and few enough of them for int()
_DIGITS = re.compile(r"[0-9]{1,18}")


class WireError(ValidationError):
    """A request the API answers with ``{"status": "ERROR", ...}``."""


def decode_payload(text: str | bytes | None) -> dict[str, Any]:
    """The request object from a JSON body or the ``content`` form field."""
    if not text:
        raise WireError("the request has no body; send JSON, or a form field 'content' "
                        "holding the JSON")
    try:
        payload = json.loads(text)
        # neither the database nor the token hash can encode a lone surrogate: refused anywhere in the body
        if may_hold_unstorable_text(text):
            refuse_unstorable_text(payload, "the request body")
    except RecursionError:
        raise WireError("the request body nests too deeply; send the documented shape") from None
    except ValidationError as exc:
        raise WireError(f"{exc}; send valid UTF-8") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise WireError(f"the request body is not valid JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise WireError("the request body must be a JSON object")
    if not isinstance(payload.get("accessToken"), str) or not payload["accessToken"]:
        raise WireError("accessToken is missing")
    return payload


def error_response(message: str) -> dict[str, Any]:
    return {"status": "ERROR", "message": message}


# ---------------------------------------------------------------- lists


@dataclass(frozen=True)
class ListOptions:
    page: int = 1
    page_size: int = DEFAULT_PAGE_SIZE
    specific_columns: tuple[str, ...] | None = None
    user_types: tuple[str, ...] | None = None  # roster user types, from the wire "types"

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any], columns: Iterable[str]) -> "ListOptions":
        options = payload.get("options") or {}
        if not isinstance(options, dict):
            raise WireError("options must be an object")
        page = _positive_int(options.get("page", 1), "options.page")
        if page > MAX_PAGE:
            raise WireError(f"options.page must be a whole number from 1 to {MAX_PAGE}")
        page_size = min(_positive_int(options.get("page_size", DEFAULT_PAGE_SIZE),
                                      "options.page_size"), MAX_PAGE_SIZE)
        specific = options.get("specific_columns")
        if specific is not None:
            specific = _str_list(specific, "options.specific_columns")
            unknown = sorted(set(specific) - set(columns))
            if unknown:
                raise WireError(f"unknown column(s) {', '.join(unknown)} in specific_columns; "
                                f"known columns are {', '.join(columns)}")
            specific = tuple(specific)
        types = options.get("types")
        if types is not None:
            wire_types = _str_list(types, "options.types")
            bad = [t for t in wire_types if t.upper() not in WIRE_TO_TYPE]
            if bad:
                raise WireError(f"unknown user type(s) {', '.join(bad)}; use S, T or STAFF")
            types = tuple(WIRE_TO_TYPE[t.upper()] for t in wire_types)
        return cls(page=page, page_size=page_size, specific_columns=specific, user_types=types)

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.page_size


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise WireError(f"{where} must be a whole number from 1")
    return value


def _str_list(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise WireError(f"{where} must be a list of strings")
    return value


def user_to_wire(user: UserRecord, location_names: Mapping[str, str],
                 columns: tuple[str, ...] | None = None) -> dict[str, Any]:
    name = user.name or " ".join(p for p in (user.first_name, user.last_name) if p)
    wire = {
        "id": user.user_id, "name": name, "type": TYPE_TO_WIRE[user.user_type],
        "email": user.email or "", "managed_appleid": user.managed_apple_id or "",
        "locations": [{"name": location_names.get(lid, lid), "grade_level": user.grade_level or ""}
                      for lid in user.locations],
        "serial_numbers": list(user.serial_numbers),
    }
    return _only(wire, columns)


def class_to_wire(cls: ClassRecord, location_names: Mapping[str, str],
                  columns: tuple[str, ...] | None = None) -> dict[str, Any]:
    wire = {
        "id": cls.class_id, "course_name": cls.course_name or "", "class_name": cls.name,
        "location": location_names.get(cls.location_id, cls.location_id),
        "idteacher": cls.teacher_ids[0] if cls.teacher_ids else "",
        "students": list(cls.student_ids), "room": cls.room or "",
        "coordinators": list(cls.teacher_ids[1:]),
    }
    return _only(wire, columns)


def _only(wire: dict[str, Any], columns: tuple[str, ...] | None) -> dict[str, Any]:
    return wire if columns is None else {c: wire[c] for c in columns}


def list_response(key: str, items: list[dict[str, Any]], rows: int,
                  options: ListOptions) -> dict[str, Any]:
    return {"status": "OK", "response": {key: items, "rows": rows, "page": options.page,
                                         "page_size": options.page_size}}


# ---------------------------------------------------------------- writes


@dataclass
class WriteRequest:
    """The write elements of one request, as a partial import batch.

    Elements are numbered from 1; ``row_numbers`` lets the planner's rejections name
    the element they came from, ``errors`` holds the elements refused while parsing.
    ``sheet`` is the planner's name for the elements' kind ("Users" or "Classes").
    ``device_assignments`` are the ``assign_device`` operations: element -> (serial number,
    user ID), handed to enrollment once the rest is applied, as the plan's own devices are.
    """

    sheet: str
    batch: ImportBatch
    delete_ids: list[str]
    element_ids: list[str | None]
    operations: list[str | None]
    errors: dict[int, str] = field(default_factory=dict)
    row_numbers: dict[str, dict[str, int]] = field(default_factory=dict)
    device_assignments: dict[int, tuple[str, str]] = field(default_factory=dict)

    def plan_options(self) -> PlanOptions:
        """A write touches only what its elements name: nothing is deleted as missing, the deletions
        are the elements', and a new location comes only with an element the planner accepts."""
        deleted = "delete_user_ids" if self.sheet == "Users" else "delete_class_ids"
        return PlanOptions(delete_missing=False, add_unused_locations=False, max_user_delete_share=1.0,
                           **{deleted: tuple(self.delete_ids)})


def _elements(payload: Mapping[str, Any]) -> list[Any]:
    elements = payload.get("elements")
    if not isinstance(elements, list) or not elements:
        raise WireError("elements must be a non-empty list")
    if len(elements) > MAX_ELEMENTS:
        raise WireError(f"{len(elements)} elements in one request; send at most {MAX_ELEMENTS}")
    return elements


def user_write_request(payload: Mapping[str, Any],
                       location_ids_by_name: Mapping[str, str]) -> WriteRequest:
    """Parse ``/v2/users`` elements; locations are named, and created if missing."""
    request, users, locations = _write_request(payload, "Users", "user", _user_from_wire, location_ids_by_name,
                                               (SAVE, DELETE, ASSIGN_DEVICE))
    request.batch = ImportBatch(source="api", users=users, locations=locations)
    return request


def class_write_request(payload: Mapping[str, Any],
                        location_ids_by_name: Mapping[str, str]) -> WriteRequest:
    """Parse ``/v2/classes`` elements; a class's location is created if missing."""
    request, classes, locations = _write_request(payload, "Classes", "class", _class_from_wire, location_ids_by_name)
    request.batch = ImportBatch(source="api", classes=classes, locations=locations)
    return request


def _write_request(payload: Mapping[str, Any], sheet: str, noun: str, parse: Callable[..., Any],
                   location_ids_by_name: Mapping[str, str], operations: tuple[str, ...] = (SAVE, DELETE),
                   ) -> tuple[WriteRequest, list[Any], list[LocationRecord]]:
    """Each element's operation and record; a bad element gets its own error and the rest stand."""
    request = _new_request(sheet, len(_elements(payload)))
    records: list[Any] = []
    named = _NamedLocations(location_ids_by_name)
    for number, element in enumerate(payload["elements"], start=1):
        try:
            operation, record_id = _operation_and_id(element, operations)
            request.element_ids[number - 1], request.operations[number - 1] = record_id, operation
            if operation == ASSIGN_DEVICE:  # no record: the user may be saved by another element of the request
                request.device_assignments[number] = (_serial_number(element.get("serial_number")),
                                                      _user_id(record_id))
                continue
            record = None if operation == DELETE else parse(element, record_id, named)
        except WireError as exc:
            request.errors[number] = exc.message
            continue
        if record_id in request.row_numbers[sheet]:
            request.errors[number] = f"{noun} '{record_id}' appears twice in this request"
            continue
        request.row_numbers[sheet][record_id] = number  # the planner's rejections name the element
        if record is None:
            request.delete_ids.append(record_id)
        else:
            records.append(record)
    return request, records, list(named.new.values())


def _new_request(sheet: str, count: int) -> WriteRequest:
    return WriteRequest(sheet=sheet, batch=ImportBatch(source="api"), delete_ids=[],
                        element_ids=[None] * count, operations=[None] * count,
                        row_numbers={sheet: {}})


def write_response(request: WriteRequest, rejected: Iterable[RejectedRow],
                   failed: str | None = None) -> dict[str, Any]:
    """One status per element, in request order.

    ``rejected`` are the planner's rejections (the row of one of the request's kind is
    the element number; others, such as a location the elements name, have rows of
    their own and show on the elements that depend on them); ``failed`` is a reason that
    applies to every element otherwise accepted (the whole write was refused, e.g. by
    the deletion guard).
    """
    reasons = dict(request.errors)
    for row in rejected:
        if row.sheet == request.sheet:
            reasons.setdefault(row.row, row.reason)
    results = []
    for number, (element_id, operation) in enumerate(
            zip(request.element_ids, request.operations), start=1):
        reason = reasons.get(number) or failed
        result: dict[str, Any] = {"id": element_id, "operation": operation}
        if reason:
            result.update(status="ERROR", error=reason)
        else:
            result["status"] = "OK"
        results.append(result)
    return {"status": "OK", "response": results}


def device_refusals(request: WriteRequest, failures: Iterable[DeviceAssignmentFailure]) -> list[RejectedRow]:
    """The devices enrollment refused, on the elements that named them: an ``assign_device`` operation, or
    a save with ``assign_device`` inside, whose user is saved all the same."""
    operations: dict[tuple[str, str], list[int]] = {}
    for number, pair in request.device_assignments.items():
        operations.setdefault(pair, []).append(number)
    saved = request.row_numbers.get(request.sheet, {})
    refusals = []
    for failure in failures:
        numbers = operations.get((failure.serial_number, failure.user_id))
        if numbers:
            refusals += [RejectedRow(sheet=request.sheet, row=number, reason=(
                f"device {failure.serial_number} was not assigned: {failure.reason}")) for number in numbers]
        elif failure.user_id in saved:
            refusals.append(RejectedRow(sheet=request.sheet, row=saved[failure.user_id], reason=(
                f"saved, but device {failure.serial_number} was not assigned: {failure.reason}")))
    return refusals


def _operation_and_id(element: Any, operations: tuple[str, ...]) -> tuple[str, str]:
    if not isinstance(element, dict):
        raise WireError("an element must be an object")
    operation = element.get("operation", SAVE)
    if operation not in operations:
        raise WireError(f"operation '{operation}' is not {', '.join(operations[:-1])} or {operations[-1]}")
    element_id = element.get("id")
    if isinstance(element_id, int) and not isinstance(element_id, bool):
        element_id = str(element_id)
    if not isinstance(element_id, str) or not element_id.strip():
        raise WireError("id is missing")
    return operation, element_id.strip()


def _optional_str(element: Mapping[str, Any], key: str) -> str | None:
    value = element.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise WireError(f"{key} must be a string")
    return value.strip() or None


class _NamedLocations:
    """The locations a request's elements name: by name, as the API does, or by ID, else new."""

    def __init__(self, ids_by_name: Mapping[str, str]):
        self.ids_by_name = ids_by_name
        self.ids = set(ids_by_name.values())
        self.new: dict[str, LocationRecord] = {}

    def location_id(self, name: str) -> str:
        if name in self.ids_by_name:
            return self.ids_by_name[name]
        # a name that is an existing location's ID is that location (the template's "north"): were it
        # new, its record would rename that location to its ID
        if name in self.ids:
            return name
        # a location the API names for the first time is created, its name doubling as ID
        self.new.setdefault(name, LocationRecord(location_id=name, name=name))
        return name


def _user_from_wire(element: Mapping[str, Any], user_id: str, named: _NamedLocations) -> UserRecord:
    wire_type = element.get("type")
    if not isinstance(wire_type, str) or wire_type.upper() not in WIRE_TO_TYPE:
        raise WireError(f"type '{wire_type}' is not one of S, T, STAFF")
    name = _optional_str(element, "name")
    if name is None:
        raise WireError("name is missing")
    locations: list[str] = []
    grade_level = None
    raw_locations = element.get("locations") or []
    if not isinstance(raw_locations, list):
        raise WireError("locations must be a list")
    for entry in raw_locations:
        if isinstance(entry, dict):
            loc_name, grade = entry.get("name"), entry.get("grade_level")
        elif isinstance(entry, list) and 1 <= len(entry) <= 2:
            loc_name, grade = entry[0], entry[1] if len(entry) == 2 else None
        else:
            raise WireError("each location must be {\"name\", \"grade_level\"} or "
                            "[name, grade_level]")
        if not isinstance(loc_name, str) or not loc_name.strip():
            raise WireError("a location has no name")
        if grade is not None and not isinstance(grade, (str, int)):
            raise WireError("grade_level must be a string")
        locations.append(named.location_id(loc_name.strip()))
        if grade not in (None, "") and grade_level is None:
            grade_level = str(grade)
    serials = []
    assign = element.get("assign_device")  # a save may assign a device too
    if assign is not None:
        if not isinstance(assign, dict) or not isinstance(assign.get("serial_number"), str):
            raise WireError("assign_device must be {\"serial_number\": ...}")
        serials.append(assign["serial_number"].strip().upper())
    welcome = element.get("welcome_email", False)
    if welcome in (0, 1, "0", "1"):
        welcome = welcome in (1, "1")
    if not isinstance(welcome, bool):
        raise WireError("welcome_email must be true/false or 1/0")
    return UserRecord(
        user_id=user_id, user_type=WIRE_TO_TYPE[wire_type.upper()], name=name,
        email=_optional_str(element, "email"),
        managed_apple_id=_optional_str(element, "managed_appleid"),
        locations=locations, grade_level=grade_level, serial_numbers=serials,
        welcome_email=welcome)


def _user_id(user_id: str) -> str:
    if len(user_id) > MAX_ID_LENGTH:  # no user's: the roster's user IDs are no longer
        raise WireError(f"id is {len(user_id)} characters long; at most {MAX_ID_LENGTH} are allowed")
    return user_id


def _serial_number(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise WireError("serial_number is missing; assign_device names the device by its serial number")
    if len(value.strip()) > MAX_SERIAL_LENGTH:
        raise WireError(f"serial_number is {len(value.strip())} characters long; at most {MAX_SERIAL_LENGTH} "
                        f"are allowed")
    return value.strip().upper()


def _class_from_wire(element: Mapping[str, Any], class_id: str, named: _NamedLocations) -> ClassRecord:
    class_name = _optional_str(element, "class_name") or _optional_str(element, "course_name")
    if class_name is None:
        raise WireError("class_name is missing")
    location = _optional_str(element, "location")
    if location is None:
        raise WireError("location is missing")
    teacher = _optional_str(element, "idteacher")
    students = _id_list(element.get("students"), "students")
    coordinators = _id_list(element.get("coordinators"), "coordinators")
    teachers = ([teacher] if teacher else []) + [c for c in coordinators if c != teacher]
    return ClassRecord(
        class_id=class_id, name=class_name, course_name=_optional_str(element, "course_name"),
        location_id=named.location_id(location),
        room=_optional_str(element, "room"), teacher_ids=teachers, student_ids=students)


def _id_list(value: Any, where: str) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, (str, int)) for v in value):
        raise WireError(f"{where} must be a list of user IDs")
    return [str(v).strip() for v in value if str(v).strip()]
