"""Text that no store, file or Apple API can hold: lone surrogates and NUL characters.

JSON can carry a lone surrogate as an escape ("\\ud800" without its pair), and Python decodes it into a
string that fails the first time it is encoded; it can carry NUL as "\\u0000", which PostgreSQL refuses in
any text (SQLite would store it, and every later reader would stumble on it). A request whose raw text
holds neither, escaped or as bytes, is not walked at all; a surrogate pair (an emoji, escaped by
ASCII-only encoders) is valid text.
"""
from __future__ import annotations

import re
from typing import Any

from shared.errors import ValidationError

# the escapes, or the characters' own bytes (Python's JSON decoder lets a surrogate's through from bytes)
_SUSPECT = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]|\\u0000|\x00")


def may_hold_unstorable_text(raw: bytes | str) -> bool:
    """Whether JSON text ``raw`` may hold a surrogate or NUL: only then is the decoded value walked."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    return _SUSPECT.search(raw) is not None


def refuse_unstorable_text(value: Any, where: str) -> None:
    """``ValidationError`` naming where in ``value`` (strings, lists, dicts) a lone surrogate or NUL sits."""
    if value.__class__ is str:
        try:
            value.encode()
        except UnicodeEncodeError:
            raise ValidationError(f"{where} is not valid Unicode text (it holds a lone surrogate)") from None
        if "\x00" in value:
            raise ValidationError(f"{where} holds a NUL character, which no text can be stored with")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            refuse_unstorable_text(item, f"{where}[{index}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            refuse_unstorable_text(key, f"a key of {where}")
            refuse_unstorable_text(item, f"{where}.{key}")
