"""Text for X.509 name attributes, which hold at most 64 bytes of UTF-8."""
from __future__ import annotations

UPPER_BOUND_BYTES = 64


def fitted(value: str) -> str:
    """``value`` cut to fit a name attribute, never in the middle of a character.

    Cutting characters is not enough: "Collège Saint-Étienne …" is under 64 characters and over 64 bytes.
    """
    return value.encode()[:UPPER_BOUND_BYTES].decode(errors="ignore")
