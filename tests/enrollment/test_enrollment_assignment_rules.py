"""The assignment and scope rules in plain Python, with an in-memory store."""
from __future__ import annotations

import pytest

from services.enrollment.domain.assignments import (
    Assignment,
    SharedGroup,
    checked_serials,
    devices_for_group,
    require_self_pairing_allowed,
    user_assignment,
)
from services.enrollment.domain.scopes import Scope, parse_scope, resolved_devices
from shared.errors import Conflict, NotFound, ValidationError


class MemoryStore:
    def __init__(self, known: set[str], assignments: list[Assignment] = ()):
        self.known = known
        self.current = {a.serial_number: a for a in assignments}

    def unknown_serials(self, serials):
        return [s for s in serials if s not in self.known]

    def assignments(self, serials):
        return {s: self.current[s] for s in serials if s in self.current}


CART = SharedGroup("g1", "Cart", "A", ("C1",))


def test_assigning_a_free_device():
    change = user_assignment(MemoryStore({"D1"}), "D1", "u1", ["B", "A"], "admin")
    assert change.new == Assignment("D1", user_id="u1", locations=("A", "B"))
    assert (change.previous, change.unchanged) == (None, False)


def test_the_same_user_again_is_unchanged_and_another_user_is_a_move():
    store = MemoryStore({"D1"}, [Assignment("D1", user_id="u1")])
    assert user_assignment(store, "D1", "u1", [], "admin").unchanged
    move = user_assignment(store, "D1", "u2", [], "pairing")
    assert (move.previous.user_id, move.new.user_id, move.new.source, move.unchanged) == ("u1", "u2", "pairing", False)


def test_pairing_oneself_takes_only_a_free_device_of_ones_own_locations():
    store = MemoryStore({"D1", "D2"}, [Assignment("D1", user_id="u1")])
    require_self_pairing_allowed(user_assignment(store, "D1", "u1", ["A"], "pairing"), ["A"])  # one's own again
    require_self_pairing_allowed(user_assignment(store, "D2", "u2", ["A"], "pairing"), None)  # a token for all
    with pytest.raises(Conflict, match="assigned to someone else"):
        require_self_pairing_allowed(user_assignment(store, "D1", "u2", ["A"], "pairing"), ["A"])
    with pytest.raises(Conflict, match="another location"):
        require_self_pairing_allowed(user_assignment(store, "D2", "u2", ["B"], "pairing"), ["A"])


def test_a_shared_device_or_an_unknown_device_is_refused():
    store = MemoryStore({"C1"}, [Assignment("C1", group_id="g1")])
    with pytest.raises(Conflict, match="remove it from the group first"):
        user_assignment(store, "C1", "u1", [], "admin")
    with pytest.raises(NotFound, match="knows no device X9"):
        user_assignment(store, "X9", "u1", [], "admin")


def test_group_additions_skip_members_and_refuse_devices_owned_elsewhere():
    store = MemoryStore({"C1", "C2", "D1"}, [Assignment("C1", group_id="g1"), Assignment("D1", user_id="u1")])
    assert devices_for_group(store, CART, ["C1", "C2"]) == ["C2"]
    with pytest.raises(Conflict, match=r"D1 \(user u1\)"):
        devices_for_group(store, CART, ["C2", "D1"])


def test_serial_lists_are_normalised_and_bounded():
    assert checked_serials([" ab1 ", "AB1", "c2"]) == ["AB1", "C2"]
    for bad in ([], "AB1", [""], ["x" * 65], [3]):
        with pytest.raises(ValidationError):
            checked_serials(bad)


def test_scopes_are_parsed_strictly():
    scope = parse_scope({"locations": ["A"], "grade_levels": ["7"], "user_types": ["student"], "devices": ["d1"]})
    assert scope == Scope(locations=("A",), grade_levels=("7",), user_types=("student",), devices=("D1",))
    assert scope.selects_users
    assert scope.roster_filter() == {"locations": ["A"], "grade_levels": ["7"], "classes": None,
                                     "user_types": ["student"]}
    assert not parse_scope({"groups": ["g1"]}).selects_users
    for bad, message in (({}, "empty"), ({"grade": ["7"]}, "has no grade"), ({"user_types": ["parent"]}, "parent"),
                         ({"locations": "A"}, "must be a list"), ({"classes": [""]}, "non-empty"), ([], "object")):
        with pytest.raises(ValidationError, match=message):
            parse_scope(bad)


def test_resolution_unions_users_groups_and_devices_sorted_by_serial():
    rows = resolved_devices(
        {"u1": ["A"]},
        [Assignment("D2", user_id="u1", locations=("old",))],
        [CART],
        {"D2": Assignment("D2", user_id="u1"), "D0": None},
    )
    assert rows == [
        {"serial_number": "C1", "user_id": None, "group_id": "g1", "locations": ["A"]},
        {"serial_number": "D0", "user_id": None, "group_id": None, "locations": []},
        {"serial_number": "D2", "user_id": "u1", "group_id": None, "locations": ["A"]},  # today's roster locations
    ]
