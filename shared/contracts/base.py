"""Typed, versioned payloads that travel as plain JSON."""
from __future__ import annotations

import dataclasses
import functools
import types
import typing
import uuid
from datetime import datetime, timezone
from typing import Any, Callable, ClassVar, TypeVar

from shared.errors import ValidationError

T = TypeVar("T", bound="Contract")


#: the outbox and every inbox store event ids in columns of this width (a UUID's text)
MAX_EVENT_ID_LENGTH = 36


def new_event_id() -> str:
    return str(uuid.uuid4())


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Contract:
    """A frozen dataclass that converts to and from a JSON-ready dict, checking types."""

    @classmethod
    def from_dict(cls: type[T], data: Any, *, what: str | None = None) -> T:
        return _contract_decoder(cls)(data, what or cls.__name__)

    def to_dict(self) -> dict[str, Any]:
        # not dataclasses.asdict: it deep-copies every value, which made publishing
        # 100,000 events cost seconds; JSON-ready values need only containers copied
        return {name: _plain(getattr(self, name)) for name in _field_names(type(self))}


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _plain(value: Any) -> Any:
    if value.__class__ in _SCALARS:
        return value
    if isinstance(value, Contract):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [item if item.__class__ in _SCALARS else _plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


# Decoding: every contract class gets, once, one checking function per field built from its type
# hint; walking ``typing`` on every payload made a page of 1,000 devices cost milliseconds.
# A decoder takes the value and where it is (``what.field[3].sub``, for the error message).
_Decoder = Callable[[Any, str], Any]
_NONE = type(None)
_PLAIN = (str, bool, int, float, dict)
_compiling: set[type] = set()


@functools.cache
def _contract_decoder(cls: type[T]) -> Callable[[Any, str], T]:
    hints = typing.get_type_hints(cls)  # slow (it evaluates annotations): once per class
    _compiling.add(cls)
    try:
        fields = tuple(
            (f.name, _kept(hints[f.name]), _decoder(hints[f.name]),
             f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
            for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        )
    finally:
        _compiling.discard(cls)

    def decode(data: Any, what: str) -> T:
        if not isinstance(data, dict):
            raise ValidationError(f"{what} must be an object, not {type(data).__name__}")
        values = {}
        for name, kept, decode_field, required in fields:
            if name in data:
                value = data[name]
                values[name] = value if value.__class__ in kept else decode_field(value, f"{what}.{name}")
            elif required:
                raise ValidationError(f"{what} is missing the required field '{name}'")
        return cls(**values)  # unknown fields are ignored: newer publishers may add some

    return decode


def _kept(hint: Any) -> frozenset[type]:
    """The classes a hint's decoder returns unchanged: a value of exactly one of these skips the call."""
    if hint in _PLAIN:
        return frozenset({hint})
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = set(typing.get_args(hint))
        if len(options) == 2 and _NONE in options:  # X | None
            (other,) = options - {_NONE}
            return _kept(other) | {_NONE}
    return frozenset()


def _decoder(hint: Any) -> _Decoder:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return _union_decoder(typing.get_args(hint))
    if origin in (list, tuple):
        (item_hint, *_) = typing.get_args(hint) or (Any,)
        return _list_decoder(_kept(item_hint), _decoder(item_hint))
    if origin is dict or hint is dict:
        return _check(dict, "must be an object")
    if isinstance(hint, type) and issubclass(hint, Contract):
        if hint in _compiling:  # a contract that contains itself: find its decoder when decoding
            return lambda value, where: _contract_decoder(hint)(value, where)
        return _contract_decoder(hint)
    if hint is Any:
        return lambda value, where: value
    if hint is bool:
        return _check(bool, "must be true or false")
    if hint is int:
        return _whole_number
    if hint is float:
        return _number
    if hint is str:
        return _check(str, "must be a string")

    def unsupported(value: Any, where: str) -> Any:  # refused when a payload has the field, as before
        raise TypeError(f"unsupported contract field type {hint!r} at {where}")
    return unsupported


def _check(kind: type, problem: str) -> _Decoder:
    def decode(value: Any, where: str) -> Any:
        if isinstance(value, kind):
            return value
        raise ValidationError(f"{where} {problem}")
    return decode


def _whole_number(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):  # bool is an int to Python, not to JSON
        raise ValidationError(f"{where} must be a whole number")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError(f"{where} must be a number")
    return float(value)


def _list_decoder(kept: frozenset[type], decode_item: _Decoder) -> _Decoder:
    def decode(value: Any, where: str) -> list[Any]:
        if not isinstance(value, (list, tuple)):
            raise ValidationError(f"{where} must be a list")
        return [item if item.__class__ in kept else decode_item(item, f"{where}[{i}]")
                for i, item in enumerate(value)]
    return decode


def _union_decoder(options: tuple[Any, ...]) -> _Decoder:
    optional = _NONE in options
    decoders = tuple(_decoder(option) for option in options if option is not _NONE)

    def decode(value: Any, where: str) -> Any:
        if value is None and optional:
            return None
        errors = []
        for decode_option in decoders:  # the first option that accepts the value wins
            try:
                return decode_option(value, where)
            except ValidationError as exc:
                errors.append(exc)
        raise errors[0]
    return decode


@dataclasses.dataclass(frozen=True, kw_only=True)
class Event(Contract):
    """An event: something that happened in one service, in the past tense.

    ``SOURCE`` is the publishing service (the Nameko exchange ``<source>.events``),
    ``TYPE`` the routing key; every payload carries its id (the idempotency key
    subscribers deduplicate on), when it happened and the contract version.
    """

    SOURCE: ClassVar[str]
    TYPE: ClassVar[str]
    VERSION: ClassVar[int] = 1

    event_id: str = dataclasses.field(default_factory=new_event_id)
    occurred_at: str = dataclasses.field(default_factory=utc_now_iso)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.TYPE = cls.__name__

    def to_payload(self) -> dict[str, Any]:
        return {**self.to_dict(), "v": self.VERSION}

    def occurred(self) -> datetime:
        """``occurred_at`` as an aware datetime, for handlers that order events by it."""
        try:
            moment = datetime.fromisoformat(self.occurred_at)
        except ValueError:
            raise ValidationError(f"occurred_at {self.occurred_at!r} is not an ISO-8601 timestamp") from None
        return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)

    @classmethod
    def from_payload(cls: type[T], payload: Any) -> T:
        event = cls.from_dict(payload, what=cls.__name__)
        if not 0 < len(event.event_id) <= MAX_EVENT_ID_LENGTH:  # subscribers' inboxes key on it
            raise ValidationError(f"{cls.__name__}.event_id must be 1 to {MAX_EVENT_ID_LENGTH} characters (a UUID)")
        return event
