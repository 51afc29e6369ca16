"""The Mosyle Manager API v2 compatible wire format."""
from __future__ import annotations

import json

import pytest

from services.roster.domain import mosyle_api as m
from services.roster.domain import planning
from services.roster.domain.device_preassignment import DeviceAssignmentFailure
from services.roster.domain.mosyle_openapi import openapi_document
from shared.contracts.roster import ClassRecord, LocationRecord, UserRecord


def test_payload_from_json_or_form_content():
    payload = m.decode_payload('{"accessToken": "tok", "options": {}}')
    assert payload["accessToken"] == "tok"
    with pytest.raises(m.WireError, match="accessToken is missing"):
        m.decode_payload('{"options": {}}')
    with pytest.raises(m.WireError, match="not valid JSON"):
        m.decode_payload("content=")
    with pytest.raises(m.WireError, match="no body"):
        m.decode_payload(b"")


def test_list_options():
    options = m.ListOptions.from_payload(
        {"options": {"page": "2", "page_size": 10, "specific_columns": ["id", "email"],
                     "types": ["S", "staff"]}}, m.USER_COLUMNS)
    assert (options.page, options.page_size, options.offset) == (2, 10, 10)
    assert options.user_types == ("student", "staff")
    assert m.ListOptions.from_payload({}, m.USER_COLUMNS).page == 1
    with pytest.raises(m.WireError, match="unknown column"):
        m.ListOptions.from_payload({"options": {"specific_columns": ["shoe"]}}, m.USER_COLUMNS)
    with pytest.raises(m.WireError, match="page must be"):
        m.ListOptions.from_payload({"options": {"page": 0}}, m.USER_COLUMNS)
    with pytest.raises(m.WireError, match="S, T or STAFF"):
        m.ListOptions.from_payload({"options": {"types": ["P"]}}, m.USER_COLUMNS)


def test_user_and_class_to_wire_and_list_response():
    user = UserRecord(user_id="s1", user_type="student", first_name="Ann", last_name="Lee",
                      email="a@x.edu", locations=["L1"], grade_level="7")
    wire = m.user_to_wire(user, {"L1": "North"})
    assert wire == {"id": "s1", "name": "Ann Lee", "type": "S", "email": "a@x.edu",
                    "managed_appleid": "", "locations": [{"name": "North", "grade_level": "7"}],
                    "serial_numbers": []}
    options = m.ListOptions(page=1, page_size=50, specific_columns=("id", "type"))
    body = m.list_response("users", [m.user_to_wire(user, {}, options.specific_columns)], 1, options)
    assert body == {"status": "OK", "response": {"users": [{"id": "s1", "type": "S"}],
                                                 "rows": 1, "page": 1, "page_size": 50}}
    cls = ClassRecord(class_id="c1", name="Maths 7A", location_id="L1", course_name="Maths",
                      teacher_ids=["t1", "t2"], student_ids=["s1"])
    assert m.class_to_wire(cls, {"L1": "North"}) == {
        "id": "c1", "course_name": "Maths", "class_name": "Maths 7A", "location": "North",
        "idteacher": "t1", "students": ["s1"], "room": "", "coordinators": ["t2"]}


def test_user_elements_both_location_shapes_and_per_element_errors():
    payload = {"accessToken": "t", "elements": [
        {"operation": "save", "id": "s1", "name": "Ann", "type": "S",
         "locations": [{"name": "North", "grade_level": "7"}], "welcome_email": 1},
        {"operation": "save", "id": "t1", "name": "Tom", "type": "T",
         "locations": [["Brand New", ""]], "assign_device": {"serial_number": "f9fxk0"}},
        {"operation": "save", "id": "x1", "name": "Bad", "type": "PARENT"},
        {"operation": "delete", "id": "old"},
        {"operation": "explode", "id": "y"},
    ]}
    request = m.user_write_request(payload, {"North": "L1"})
    users = {u.user_id: u for u in request.batch.users}
    assert users["s1"].locations == ["L1"] and users["s1"].grade_level == "7"
    assert users["s1"].welcome_email is True
    assert users["t1"].locations == ["Brand New"] and users["t1"].serial_numbers == ["F9FXK0"]
    assert [loc.location_id for loc in request.batch.locations] == ["Brand New"]
    assert request.delete_ids == ["old"]
    assert set(request.errors) == {3, 5}
    response = m.write_response(request, [])
    statuses = [r["status"] for r in response["response"]]
    assert statuses == ["OK", "OK", "ERROR", "OK", "ERROR"]
    assert "PARENT" in response["response"][2]["error"]


def test_planner_rejections_are_reported_on_their_element(hierarchy):
    payload = {"accessToken": "t", "elements": [
        {"id": "c1", "class_name": "Maths", "location": "North", "idteacher": "ghost",
         "students": "s1,s2"},
        {"id": "c2", "class_name": "Art", "location": "North"},
    ]}
    request = m.class_write_request(payload, {})
    plan = planning.build_plan(hierarchy, request.batch,
                               planning.PlanOptions(delete_missing=False),
                               row_numbers=request.row_numbers)
    response = m.write_response(request, plan.summary.rejected)
    assert [r["status"] for r in response["response"]] == ["ERROR", "OK"]
    assert "ghost" in response["response"][0]["error"]
    assert plan.summary.counts["class"]["add"] == 1
    assert plan.summary.counts["location"]["add"] == 1


def test_a_refused_write_marks_every_accepted_element():
    request = m.user_write_request({"accessToken": "t", "elements": [
        {"id": "s1", "name": "A", "type": "S"}, {"id": "s2", "type": "S"}]}, {})
    response = m.write_response(request, [], failed="the roster is busy")
    assert [r["error"] for r in response["response"]] == ["the roster is busy", "name is missing"]


def test_elements_must_be_a_list():
    with pytest.raises(m.WireError, match="non-empty list"):
        m.user_write_request({"accessToken": "t", "elements": {}}, {})


def test_openapi_document_is_plain_json_with_the_four_endpoints():
    document = json.loads(json.dumps(openapi_document("https://orchard.example")))
    assert document["openapi"] == "3.0.3"
    assert set(document["paths"]) == {"/v2/listusers", "/v2/users", "/v2/listclasses", "/v2/classes"}
    # every $ref resolves
    refs = []

    def walk(node):
        if isinstance(node, dict):
            refs.extend(v for k, v in node.items() if k == "$ref")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
    walk(document)
    schemas = document["components"]["schemas"]
    assert refs and all(r.rsplit("/", 1)[-1] in schemas for r in refs)


def test_openapi_document_is_a_valid_openapi_3_description():
    # what Postman and Insomnia need to import it: a document that validates as OpenAPI 3.0
    from openapi_spec_validator import validate

    validate(json.loads(json.dumps(openapi_document("https://orchard.example"))))


@pytest.mark.parametrize("body,match", [
    ('{"accessToken": "\\ud800"}', "lone surrogate"),
    (b'{"accessToken": "ok", "elements": [{"name": "\xed\xa0\x80"}]}', "lone surrogate"),
    ('{"accessToken": "ok", "options": ' + "[" * 100_000 + "]" * 100_000 + "}", "nests too deeply"),
])
def test_payloads_that_are_not_text_or_too_deep_are_wire_errors(body, match):
    with pytest.raises(m.WireError, match=match):
        m.decode_payload(body)


@pytest.mark.parametrize("page", ["²", 10**20, "9" * 5000, 1_000_001])
def test_page_numbers_beyond_reason_are_wire_errors(page):
    with pytest.raises(m.WireError, match="options.page must be a whole number from 1"):
        m.ListOptions.from_payload({"options": {"page": page}}, m.USER_COLUMNS)


def test_rejections_are_matched_to_elements_by_kind_and_row(hierarchy):
    request = m.user_write_request({"accessToken": "t", "elements": [
        {"id": "a1", "name": "Ann", "type": "S", "locations": [["Alpha"]]},
        {"id": "a2", "name": "Bob", "type": "S", "locations": [["Alpha"]]},
        {"id": "a3", "name": "Cy", "type": "S", "locations": [["X" * 200]]},
    ]}, {})
    plan = planning.build_plan(hierarchy, request.batch, planning.PlanOptions(delete_missing=False),
                               row_numbers=request.row_numbers)
    # the location "X"*200 is rejected as the batch's second location, not as element 2
    assert sorted((r.sheet, r.row) for r in plan.summary.rejected) == [("Locations", 2), ("Users", 3)]
    response = m.write_response(request, plan.summary.rejected)
    assert [r["status"] for r in response["response"]] == ["OK", "OK", "ERROR"]
    assert [c.natural_id for c in plan.changes if c.entity == "user"] == ["a1", "a2"]


def plan_for(hierarchy, request):
    return planning.build_plan(hierarchy, request.batch, request.plan_options(), row_numbers=request.row_numbers)


def test_only_the_accepted_elements_bring_their_new_locations(hierarchy):
    request = m.user_write_request({"accessToken": "t", "elements": [
        {"id": "u1", "name": "Ann", "type": "S", "locations": [["Typo Schoool"]], "welcome_email": "yes"},
        {"id": "u2", "name": "Bob", "type": "S", "locations": [["Other Typo"]], "email": "not-an-email"},
        {"id": "u3", "name": "Cy", "type": "S", "locations": [["North"], ["New Campus"]]},
    ]}, {"North": "L1"})
    plan = plan_for(hierarchy, request)
    assert [r["status"] for r in m.write_response(request, plan.summary.rejected)["response"]] == [
        "ERROR", "ERROR", "ERROR"]  # L1 is unknown to this roster, so u3 is refused too
    assert [c.natural_id for c in plan.changes] == []

    hierarchy.location_rows["L1"] = (LocationRecord(location_id="L1", name="North"), "api")
    plan = plan_for(hierarchy, request)
    assert [(c.entity, c.natural_id) for c in plan.changes] == [("location", "New Campus"), ("user", "u3")]
    assert plan.summary.counts["location"]["add"] == 1

    classes = m.class_write_request({"accessToken": "t", "elements": [
        {"id": "k1", "class_name": "Art", "location": "Brand New Campus", "idteacher": "ghost"}]}, {})
    plan = plan_for(hierarchy, classes)
    assert [r["status"] for r in m.write_response(classes, plan.summary.rejected)["response"]] == ["ERROR"]
    assert plan.changes == [] and plan.summary.counts["location"]["add"] == 0


def test_deleting_what_does_not_exist_is_an_error_of_that_element(hierarchy):
    saved = m.user_write_request({"accessToken": "t", "elements": [
        {"id": "u1", "name": "Ann", "type": "S"}, {"id": "u2", "name": "Bob", "type": "S"}]}, {})
    list(planning.apply_plan(plan_for(hierarchy, saved).changes, hierarchy, "api"))
    request = m.user_write_request({"accessToken": "t", "elements": [
        {"operation": "delete", "id": "u1"}, {"operation": "delete", "id": "x"},
        {"id": "u2", "name": "Bob", "type": "S"}, {"operation": "delete", "id": "u2"}]}, {})
    plan = plan_for(hierarchy, request)
    response = m.write_response(request, plan.summary.rejected)["response"]
    assert [(r["status"], r.get("error")) for r in response] == [
        ("OK", None), ("ERROR", "user 'x' does not exist; check the ID (nothing was deleted)"), ("OK", None),
        ("ERROR", "user 'u2' appears twice in this request")]
    assert [(c.action, c.natural_id) for c in plan.changes] == [("delete", "u1")]

    classes = m.class_write_request({"accessToken": "t", "elements": [{"operation": "delete", "id": "k9"}]}, {})
    response = m.write_response(classes, plan_for(hierarchy, classes).summary.rejected)["response"]
    assert response[0]["error"] == "class 'k9' does not exist; check the ID (nothing was deleted)"


def test_a_location_named_by_its_id_is_that_location_and_is_never_renamed(hierarchy):
    north = (LocationRecord(location_id="north", name="North Middle School"), "csv")  # the template's location
    hierarchy.location_rows["north"] = north
    names = {"North Middle School": "north"}
    refused = m.user_write_request({"accessToken": "t", "elements": [
        {"id": "s9", "type": "S", "name": "Sam", "email": "not-an-address", "locations": [{"name": "north"}]}]}, names)
    plan = plan_for(hierarchy, refused)
    assert [r["status"] for r in m.write_response(refused, plan.summary.rejected)["response"]] == ["ERROR"]
    assert plan.changes == [] and refused.batch.locations == []

    accepted = m.user_write_request({"accessToken": "t", "elements": [
        {"id": "s9", "type": "S", "name": "Sam", "locations": [{"name": "north"}]}]}, names)
    classes = m.class_write_request({"accessToken": "t", "elements": [
        {"id": "k1", "class_name": "Art", "location": "north"}]}, names)
    list(planning.apply_plan(plan_for(hierarchy, accepted).changes, hierarchy, "api"))
    list(planning.apply_plan(plan_for(hierarchy, classes).changes, hierarchy, "api"))
    assert hierarchy.location_rows == {"north": north}
    assert hierarchy.users()[0].record.locations == ["north"] and hierarchy.classes()[0].record.location_id == "north"


def test_assign_device_is_an_operation_of_its_own_and_its_refusals_name_their_elements():
    request = m.user_write_request({"accessToken": "t", "elements": [
        {"id": "user.staff.1", "operation": "assign_device", "serial_number": " aaaaaaaaaaaa "},
        {"id": "s1", "name": "Ann", "type": "S", "assign_device": {"serial_number": "b1"}},
        {"id": "s1", "operation": "assign_device", "serial_number": "C1"},  # a user the request saves
        {"id": "s2", "operation": "assign_device"},
        {"id": "s3", "operation": "assign_device", "serial_number": "X" * 65},
        {"id": "u" * 129, "operation": "assign_device", "serial_number": "D1"},
    ]}, {})
    assert request.device_assignments == {1: ("AAAAAAAAAAAA", "user.staff.1"), 3: ("C1", "s1")}
    assert [u.user_id for u in request.batch.users] == ["s1"] and request.delete_ids == []
    assert request.errors == {
        4: "serial_number is missing; assign_device names the device by its serial number",
        5: "serial_number is 65 characters long; at most 64 are allowed",
        6: "id is 129 characters long; at most 128 are allowed"}
    refused = [DeviceAssignmentFailure("user.staff.1", "AAAAAAAAAAAA", "enrollment knows no device AAAAAAAAAAAA"),
               DeviceAssignmentFailure("s1", "B1", "enrollment knows no device B1")]
    response = m.write_response(request, m.device_refusals(request, refused))["response"]
    assert [(r["operation"], r["status"], r.get("error")) for r in response[:3]] == [
        ("assign_device", "ERROR", "device AAAAAAAAAAAA was not assigned: enrollment knows no device AAAAAAAAAAAA"),
        ("save", "ERROR", "saved, but device B1 was not assigned: enrollment knows no device B1"),
        ("assign_device", "OK", None)]

    classes = m.class_write_request({"accessToken": "t", "elements": [
        {"id": "k1", "operation": "assign_device", "serial_number": "C1"}]}, {})
    assert classes.errors == {1: "operation 'assign_device' is not save or delete"}
    document = openapi_document()["components"]["schemas"]["User"]["properties"]
    assert "assign_device" in document["operation"]["enum"] and "serial_number" in document
