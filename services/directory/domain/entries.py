"""Directory entries as the domain sees them, and distinguished-name handling."""
from __future__ import annotations

import re
from dataclasses import dataclass

_HEX = re.compile(r"[0-9A-Fa-f]{2}")


@dataclass(frozen=True, slots=True)
class DirectoryEntry:
    """One entry: its DN and its attribute values (attribute names lower-cased)."""

    dn: str
    attributes: dict[str, list[str]]

    def first(self, attribute: str | None) -> str | None:
        """The first non-blank value of ``attribute``, stripped, or None."""
        if not attribute:
            return None
        for value in self.attributes.get(attribute.lower(), ()):
            value = value.strip()
            if value:
                return value
        return None

    def values(self, attribute: str) -> list[str]:
        return self.attributes.get(attribute.lower(), [])


def split_dn(dn: str) -> list[str]:
    """The RDNs of ``dn``, leftmost first, split on unescaped commas."""
    if "\\" not in dn:  # the common case, kept fast for large syncs
        return [part.strip() for part in dn.split(",")] if dn else []
    parts, current, escaped = [], [], False
    for char in dn:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char == ",":
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    if current or parts:
        parts.append("".join(current).strip())
    return parts


def normalize_dn(dn: str) -> str:
    """A comparable form: RDNs trimmed, spaces around '=' removed, case folded.

    Directories compare the attribute types and (for the naming attributes schools
    use: CN, OU, DC) the values of a DN without regard to case.
    """
    rdns = []
    for rdn in split_dn(dn):
        name, _, value = rdn.partition("=")
        rdns.append(f"{name.strip()}={value.strip()}".casefold())
    return ",".join(rdns)


def rdn_value(rdn: str) -> str:
    """The unescaped value of a single-valued RDN such as ``OU=Lincoln High`` (RFC 4514 escapes)."""
    value = rdn.partition("=")[2].strip()
    out, i = bytearray(), 0
    while i < len(value):
        char = value[i]
        if char == "\\" and _HEX.fullmatch(value[i + 1:i + 3]):
            out.append(int(value[i + 1:i + 3], 16))
            i += 3
        elif char == "\\" and i + 1 < len(value):
            out += value[i + 1].encode()
            i += 2
        else:
            out += char.encode()
            i += 1
    return out.decode("utf-8", errors="replace")
