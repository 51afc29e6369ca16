"""Which serial numbers an applied plan hands to enrollment, and how refusals are reported."""
from __future__ import annotations

from services.roster.domain.device_preassignment import DeviceAssignmentFailure, assign_devices, new_device_assignments
from services.roster.domain.planning import Change
from shared.errors import NotFound, UpstreamError


def test_only_serials_a_user_gained_are_assigned():
    changes = [
        Change("user", "add", "u1", after={"serial_numbers": ["A1", "A2"]}),
        Change("user", "update", "u2", after={"serial_numbers": ["B1", "B2"]}, before={"serial_numbers": ["B1"]}),
        Change("user", "update", "u3", after={"serial_numbers": ["C1"], "name": "x"}, before={"name": "y"}),
        Change("user", "delete", "u4", before={"serial_numbers": ["D1"]}),
        Change("class", "add", "k1", after={"serial_numbers": ["E1"]}),
    ]
    assert new_device_assignments(changes) == [("A1", "u1"), ("A2", "u1"), ("B2", "u2")]


def test_refusals_are_reported_per_device_and_an_absent_enrollment_is_not_waited_for_again():
    calls = []

    def assign(serial, user_id):
        calls.append(serial)
        if serial == "X":
            raise NotFound("no device X")
        if serial == "DOWN":
            raise UpstreamError("enrollment did not answer")

    done, failures = assign_devices([("A", "u1"), ("X", "u1"), ("DOWN", "u2"), ("B", "u3")], assign)
    assert done == 1 and calls == ["A", "X", "DOWN"]
    assert failures == [DeviceAssignmentFailure("u1", "X", "no device X"),
                        DeviceAssignmentFailure("u2", "DOWN", "enrollment did not answer"),
                        DeviceAssignmentFailure("u3", "B", "enrollment did not answer")]
