"""Checks of the options and preferences that arrive as JSON objects over RPC.

Each raises ``ValidationError`` naming the option and what it must be, so that a wrong
type is refused before it is used rather than failing inside, or silently meaning
something else (the string "no" is truthy, a string is a sequence of letters).
"""
from __future__ import annotations

from typing import Any, Collection, Mapping

from shared.errors import ValidationError


def known_options(data: Any, noun: str, known: Collection[str]) -> dict[str, Any]:
    """``data`` (a JSON object; None for none) as a dict, refusing names not in ``known``."""
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ValidationError(f"the {noun}s must be an object of name: value pairs, "
                              f"not {type(data).__name__}")
    unknown = sorted(str(name) for name in data if name not in known)
    if unknown:
        raise ValidationError(f"unknown {noun}(s) {', '.join(unknown)}; "
                              f"known {noun}s are {', '.join(sorted(known))}")
    return dict(data)


def check_flags(data: Mapping[str, Any], names: Collection[str]) -> None:
    for name in names:
        if name in data and not isinstance(data[name], bool):
            raise ValidationError(f"{name} must be true or false")


def string_tuple(value: Any, name: str) -> tuple[str, ...]:
    """A list of non-empty strings, as a tuple."""
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(item, str) and item.strip() for item in value):
        raise ValidationError(f"{name} must be a list of non-empty strings")
    return tuple(value)
