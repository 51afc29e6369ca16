"""Decoding contracts: what is accepted, converted and refused, and where the error says it was."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import pytest

from shared.contracts.base import Contract, Event
from shared.contracts.enrollment import AssignedDevice, DevicesAssigned
from shared.contracts.roster import UserImported
from shared.errors import ValidationError


@dataclass(frozen=True, kw_only=True)
class Reading(Contract):
    count: int
    level: float = 0.0
    ok: bool | None = None


@dataclass(frozen=True, kw_only=True)
class Folder(Contract):
    name: str
    folders: list[Folder] = field(default_factory=list)  # a contract may contain itself


@dataclass(frozen=True, kw_only=True)
class Survey(Event):
    SOURCE = "tests"
    answer: int | str
    score: float | int = 0
    readings: Optional[list[Reading]] = None
    maybe_readings: list[Reading | None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    anything: Any = None
    codes: tuple[int, ...] = ()
    tags: set[str] | None = None  # not a JSON type: refused only when a payload carries it


def test_nested_contracts_in_lists_inside_optionals_decode_with_their_defaults():
    survey = Survey.from_payload({"answer": 1, "readings": [{"count": 2}, {"count": 3, "level": 4, "ok": True}],
                                  "maybe_readings": [None, {"count": 5}], "codes": (1, 2), "unknown": [1]})
    assert survey.readings == [Reading(count=2), Reading(count=3, level=4.0, ok=True)]
    assert type(survey.readings[1].level) is float
    assert survey.maybe_readings == [None, Reading(count=5)]
    assert survey.codes == [1, 2] and survey.extra == {} and survey.tags is None
    assert Survey.from_payload({"answer": "x", "readings": None}).readings is None
    tree = Folder.from_dict({"name": "a", "folders": [{"name": "b", "folders": [{"name": "c"}]}]})
    assert tree.folders[0].folders[0] == Folder(name="c")


@pytest.mark.parametrize("payload, message", [
    ({"answer": 1, "readings": [{"count": 1}, {"count": 2, "level": "high"}]},
     r"^Survey\.readings\[1\]\.level must be a number$"),
    ({"answer": 1, "maybe_readings": [None, {"count": True}]},
     r"^Survey\.maybe_readings\[1\]\.count must be a whole number$"),
    ({"answer": 1, "readings": [{"level": 1}]}, r"^Survey\.readings\[0\] is missing the required field 'count'$"),
    ({"answer": 1, "readings": ["x"]}, r"^Survey\.readings\[0\] must be an object, not str$"),
    ({"answer": 1, "readings": {"count": 1}}, r"^Survey\.readings must be a list$"),
    ({"answer": 1, "readings": [{"count": 1, "ok": 1}]}, r"^Survey\.readings\[0\]\.ok must be true or false$"),
    ({"answer": 1, "extra": []}, r"^Survey\.extra must be an object$"),
    ({"answer": 1, "score": True}, r"^Survey\.score must be a number$"),
    ({"answer": 1, "codes": [1, 2.0]}, r"^Survey\.codes\[1\] must be a whole number$"),
    ({"answer": None}, r"^Survey\.answer must be a whole number$"),  # a union reports its first option's error
    ({"answer": 1, "event_id": 7}, r"^Survey\.event_id must be a string$"),
    ({}, r"^Survey is missing the required field 'answer'$"),
    ([], r"^Survey must be an object, not list$"),
])
def test_wrong_payloads_are_refused_saying_where(payload, message):
    with pytest.raises(ValidationError, match=message):
        Survey.from_payload(payload)


def test_unions_take_the_first_option_that_accepts_the_value():
    assert Survey.from_payload({"answer": "7"}).answer == "7"
    assert type(Survey.from_payload({"answer": 1, "score": 3}).score) is float  # float comes first
    assert Survey.from_payload({"answer": 1, "anything": {"a": [1]}}).anything == {"a": [1]}


def test_an_error_inside_a_nested_contract_names_the_callers_path():
    with pytest.raises(ValidationError, match=r"^batch\.folders\[0\]\.folders\[1\]\.name must be a string$"):
        Folder.from_dict({"name": "a", "folders": [{"name": "b", "folders": [{"name": "c"}, {"name": 3}]}]},
                         what="batch")


def test_an_unsupported_field_type_fails_only_when_the_payload_has_that_field():
    assert Survey.from_payload({"answer": 1}).tags is None
    with pytest.raises(TypeError, match=r"unsupported contract field type .* at Survey\.tags"):
        Survey.from_payload({"answer": 1, "tags": ["a"]})


def test_the_event_payloads_round_trip():
    page = DevicesAssigned(token_id="t", devices=[AssignedDevice(serial_number=f"S{i}", model=None) for i in range(3)])
    assert DevicesAssigned.from_payload(page.to_payload()) == page
    user = UserImported(user_id="u", user_type="student", locations=["L1"], welcome_email=True, source="csv")
    assert UserImported.from_payload(user.to_payload()) == user
    with pytest.raises(ValidationError, match=r"^DevicesAssigned\.devices\[2\]\.serial_number must be a string$"):
        DevicesAssigned.from_payload({**page.to_payload(), "devices": [{"serial_number": "a"}] * 2
                                      + [{"serial_number": None}]})


@pytest.mark.parametrize("event_id", ["", "x" * 37])
def test_an_event_id_no_inbox_can_hold_is_refused(event_id):
    payload = {**UserImported(user_id="u1", user_type="student", name="U", source="csv").to_payload(), "event_id": event_id}
    with pytest.raises(ValidationError, match="event_id must be 1 to 36 characters"):
        UserImported.from_payload(payload)
