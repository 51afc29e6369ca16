"""A value that must never be shown: bind and user passwords."""
from __future__ import annotations


class Secret:
    """Holds a secret string; ``repr``/``str`` never show it, only ``reveal()`` does."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)
