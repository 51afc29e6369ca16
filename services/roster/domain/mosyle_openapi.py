"""The OpenAPI 3.0 document of the Mosyle-compatible roster API.

OpenAPI 3.0.3 (not 3.1) because it is what Postman and Insomnia import most reliably.
"""
from __future__ import annotations

from typing import Any

from services.roster.domain.mosyle_api import (
    CLASS_COLUMNS, DEFAULT_PAGE_SIZE, MAX_ELEMENTS, MAX_PAGE_SIZE, MAX_SERIAL_LENGTH, USER_COLUMNS,
)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _string_list() -> dict[str, Any]:
    return {"type": "array", "items": {"type": "string"}}


def _body(schema: str, example: dict[str, Any]) -> dict[str, Any]:
    return {
        "required": True,
        "content": {
            "application/json": {"schema": _ref(schema), "example": example},
            "application/x-www-form-urlencoded": {
                "schema": {"type": "object", "required": ["content"], "properties": {
                    "content": {"type": "string", "description": f"the {schema} as JSON"}}},
            },
        },
    }


def _responses(schema: str) -> dict[str, Any]:
    return {
        "200": {"description": "Handled; see `status` (lists) or each element's status (writes).",
                "content": {"application/json": {"schema": {"oneOf": [_ref(schema), _ref("Error")]}}}},
        "401": {"description": "Unknown or revoked access token.",
                "content": {"application/json": {"schema": _ref("Error")}}},
        "403": {"description": "The token may not be used from this IP address.",
                "content": {"application/json": {"schema": _ref("Error")}}},
    }


def _list_operation(summary: str, key: str, item: str, columns: tuple[str, ...],
                    with_types: bool) -> dict[str, Any]:
    options: dict[str, Any] = {
        "page": {"type": "integer", "minimum": 1, "default": 1},
        "page_size": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE,
                      "default": DEFAULT_PAGE_SIZE},
        "specific_columns": {"type": "array", "items": {"type": "string", "enum": list(columns)}},
    }
    if with_types:
        options["types"] = {"type": "array", "items": {"type": "string",
                                                       "enum": ["S", "T", "STAFF"]}}
    request = f"List{key.capitalize()}Request"
    response = f"List{key.capitalize()}Response"
    return {
        "summary": summary,
        "operationId": f"list_{key}",
        "requestBody": _body(request, {"accessToken": "YOUR_TOKEN",
                                       "options": {"page": 1, "page_size": 50}}),
        "responses": _responses(response),
    }, {
        request: {"type": "object", "required": ["accessToken"], "properties": {
            "accessToken": {"type": "string"},
            "options": {"type": "object", "properties": options}}},
        response: {"type": "object", "properties": {
            "status": {"type": "string", "enum": ["OK"]},
            "response": {"type": "object", "properties": {
                key: {"type": "array", "items": _ref(item)},
                "rows": {"type": "integer", "description": "rows matching, on all pages"},
                "page": {"type": "integer"}, "page_size": {"type": "integer"}}}}},
    }


def _write_operation(summary: str, key: str, element: str,
                     example: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    request = f"Write{key.capitalize()}Request"
    return {
        "summary": summary,
        "operationId": f"write_{key}",
        "requestBody": _body(request, {"accessToken": "YOUR_TOKEN", "elements": [example]}),
        "responses": _responses("WriteResponse"),
    }, {
        request: {"type": "object", "required": ["accessToken", "elements"], "properties": {
            "accessToken": {"type": "string"},
            "elements": {"type": "array", "maxItems": MAX_ELEMENTS, "items": _ref(element)}}},
    }


def openapi_document(server_url: str = "/") -> dict[str, Any]:
    user = {"type": "object", "required": ["id"], "properties": {
        "operation": {"type": "string", "enum": ["save", "delete", "assign_device"], "default": "save",
                      "description": "assign_device hands the device serial_number to the user id, who must be "
                                     "in the roster (or saved by another element of the request)"},
        "id": {"type": "string", "description": "the user ID"},
        "name": {"type": "string"},
        "type": {"type": "string", "enum": ["S", "T", "STAFF"],
                 "description": "student, teacher or staff"},
        "email": {"type": "string"},
        "managed_appleid": {"type": "string"},
        "locations": {"type": "array", "description": (
            "location names (created if missing, when the element is accepted) with the grade level, "
            "as objects or as [name, grade_level] pairs"),
            "items": {"oneOf": [
                {"type": "object", "properties": {"name": {"type": "string"},
                                                  "grade_level": {"type": "string"}}},
                {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 2}]}},
        "welcome_email": {"type": "boolean"},
        "assign_device": {"type": "object", "properties": {"serial_number": {"type": "string"}},
                          "description": "with save: a device to assign to the user as well"},
        "serial_number": {"type": "string", "maxLength": MAX_SERIAL_LENGTH,
                          "description": "with operation assign_device: the device's serial number"},
        "serial_numbers": {**_string_list(), "readOnly": True},
    }}
    cls = {"type": "object", "required": ["id"], "properties": {
        "operation": {"type": "string", "enum": ["save", "delete"], "default": "save"},
        "id": {"type": "string", "description": "the class ID"},
        "course_name": {"type": "string"},
        "class_name": {"type": "string"},
        "location": {"type": "string",
                     "description": "location name, created if missing, when the element is accepted"},
        "idteacher": {"type": "string", "description": "the class's primary teacher"},
        "students": _string_list(),
        "room": {"type": "string"},
        "coordinators": {**_string_list(), "description": "the class's other teachers"},
    }}
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {
        "User": user, "Class": cls,
        "Error": {"type": "object", "properties": {
            "status": {"type": "string", "enum": ["ERROR"]}, "message": {"type": "string"}}},
        "WriteResponse": {"type": "object", "properties": {
            "status": {"type": "string", "enum": ["OK"]},
            "response": {"type": "array", "items": {"type": "object", "properties": {
                "id": {"type": "string"},
                "operation": {"type": "string"},
                "status": {"type": "string", "enum": ["OK", "ERROR"]},
                "error": {"type": "string"}}}}}},
    }
    for path, (operation, new_schemas) in {
        "/v2/listusers": _list_operation("List users", "users", "User", USER_COLUMNS, True),
        "/v2/listclasses": _list_operation("List classes", "classes", "Class", CLASS_COLUMNS, False),
        "/v2/users": _write_operation("Create, update or delete users", "users", "User", {
            "operation": "save", "id": "s-1001", "name": "Ada Lovelace", "type": "S",
            "email": "ada@school.example", "locations": [{"name": "North", "grade_level": "7"}]}),
        "/v2/classes": _write_operation("Create, update or delete classes", "classes", "Class", {
            "operation": "save", "id": "maths-7a", "course_name": "Maths",
            "class_name": "Maths 7A", "location": "North", "idteacher": "t-2001",
            "students": ["s-1001"]}),
    }.items():
        paths[path] = {"post": {**operation, "tags": ["roster"]}}
        schemas.update(new_schemas)
    return {
        "openapi": "3.0.3",
        "info": {"title": "Orchard roster API (Mosyle Manager API v2 compatible)",
                 "version": "2.0.0",
                 "description": ("Users and classes of the Orchard roster. Every request carries "
                                 "an access token in `accessToken`; tokens may be limited to "
                                 "IP addresses. Writes are applied at once and answer with a "
                                 "status per element.")},
        "servers": [{"url": server_url}],
        "tags": [{"name": "roster"}],
        "paths": paths,
        "components": {"schemas": schemas},
    }
