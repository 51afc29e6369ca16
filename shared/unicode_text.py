"""Text that no store, file or Apple API can hold: lone surrogates.

JSON can carry one as an escape ("\\ud800" without its pair), and Python decodes it into a string that
fails the first time it is encoded. A request whose raw text holds no surrogate, escaped or as bytes, is
not walked at all; a pair (an emoji, escaped by ASCII-only encoders) is valid text.
"""
from __future__ import annotations

import re
from typing import Any

from shared.errors import ValidationError

# the escape, or a surrogate's own UTF-8-style bytes (Python's JSON decoder lets those through from bytes)
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")


def may_hold_lone_surrogates(raw: bytes | str) -> bool:
    """Whether JSON text ``raw`` holds a surrogate, lone or paired: only then is the decoded value walked."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    return _SURROGATE.search(raw) is not None


def refuse_lone_surrogates(value: Any, where: str) -> None:
    """``ValidationError`` naming where in ``value`` (strings, lists, dicts) a lone surrogate sits."""
    if value.__class__ is str:
        try:
            value.encode()
        except UnicodeEncodeError:
            raise ValidationError(f"{where} is not valid Unicode text (it holds a lone surrogate)") from None
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            refuse_lone_surrogates(item, f"{where}[{index}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            refuse_lone_surrogates(key, f"a key of {where}")
            refuse_lone_surrogates(item, f"{where}.{key}")
