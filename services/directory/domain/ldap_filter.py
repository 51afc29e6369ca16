r"""The grammar of LDAP search filters (RFC 4515), checked when a profile is saved.

A filter the directory cannot take would otherwise be found out only when a sync or a sign-in
sends it, as a failure of the directory's. Whitespace between the parts of a filter is allowed, so
a filter may be written over several lines: the LDAP client sends a filter encoded part by part,
and the spaces never reach the server.

In a value, a ``\`` starts an escape of two hex digits (RFC 4515: ``\2c``) or one of a DN's (RFC 4514:
``\,`` ``\+`` ``\"`` ``\#`` ``\\`` ``\<`` ``\>`` ``\;`` ``\=``), as in a ``memberOf`` filter copied from
Active Directory. ldap3 sends a value holding a DN's escape as it is written, and the directory reads
it as a DN. Any other ``\`` (at a value's end, ``\4g``, ``\*``) is refused: ldap3 would send it as a
``\`` of the value's own, never as the escape meant.
"""
from __future__ import annotations

import re

#: an attribute type or matching rule: a name (``sAMAccountName``) or a numeric OID (RFC 4512)
OID = r"(?:[A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)+)"
#: nesting deeper than this is refused rather than followed (no school's filter comes near it)
MAX_DEPTH = 50

_ATTRIBUTE_DESCRIPTION = re.compile(rf"{OID}(?:;[A-Za-z0-9-]+)*")  # with options, e.g. userCertificate;binary
_MATCHING_RULE = re.compile(OID)
# what a DN escapes with '\' (RFC 4514), as in memberOf=CN=Smith\, John,OU=Staff,...
_DN_ESCAPED = ',+"#\\<>;='
_ESCAPE = re.compile(r"\\(?:[0-9A-Fa-f]{2}|[" + re.escape(_DN_ESCAPED) + r"])|(\\)")  # group 1: one that is neither
_WHITESPACE = " \t\r\n"
_ESCAPES = r"write '\' as \5c, '*' as \2a, '(' as \28 and ')' as \29"


class _Invalid(Exception):
    def __init__(self, reason: str, at: int):
        super().__init__(reason)
        self.reason = reason
        self.at = at


def filter_problem(text: str) -> str | None:
    """What is wrong with ``text`` as an LDAP filter, or None when it is one."""
    try:
        end = _skip(text, _filter(text, _skip(text, 0), 1))
        if end != len(text):
            raise _Invalid("there is more after the filter's last ')'; combine filters with (&...) or (|...)", end)
    except _Invalid as invalid:
        return f"{invalid.reason} (at character {invalid.at + 1})"
    return None


def _filter(text: str, at: int, depth: int) -> int:
    """Where the filter starting at ``at`` ends (just after its ')')."""
    if depth > MAX_DEPTH:
        raise _Invalid(f"filters are nested more than {MAX_DEPTH} deep", at)
    if not text.startswith("(", at):
        raise _Invalid("a filter must be enclosed in parentheses, e.g. (objectClass=user)", at)
    at = _skip(text, at + 1)
    operator = text[at:at + 1]
    if operator in ("&", "|"):
        at = first = _skip(text, at + 1)
        while text.startswith("(", at):
            at = _skip(text, _filter(text, at, depth + 1))
        if at == first:
            raise _Invalid(f"'{operator}' needs at least one filter after it, e.g. ({operator}(cn=a)(cn=b))", at)
    elif operator == "!":
        at = _skip(text, _filter(text, _skip(text, at + 1), depth + 1))
        if text.startswith("(", at):
            raise _Invalid("'!' takes exactly one filter; combine several with (!(|...))", at)
    elif operator == "(":
        raise _Invalid("a filter inside another needs '&', '|' or '!' before it, e.g. (&(cn=a)(sn=b))", at)
    else:
        at = _item(text, at)
    if at >= len(text):
        raise _Invalid("a '(' is not closed", at)
    if text[at] != ")":
        raise _Invalid(f"'{text[at]}' where a '(' or ')' should be", at)
    return at + 1


def _item(text: str, at: int) -> int:
    """Check the assertion starting at ``at`` (``attribute=value`` and the like); where it ends."""
    end = at
    while end < len(text) and text[end] not in "()":
        end += 1
    if text.startswith("(", end):
        raise _Invalid(f"a '(' inside a value must be escaped: {_ESCAPES}", end)
    attribute, equals, value = text[at:end].partition("=")
    if not equals:
        raise _Invalid(f"'({text[at:end].strip()})' is not an assertion such as (cn=value), (cn=*) or (cn>=value)", at)
    value_at = text.index("=", at) + 1
    if attribute.endswith(":"):
        _extensible(attribute[:-1].strip(), at)
        _no_wildcard(value, value_at)
    elif attribute.endswith(("~", ">", "<")):
        _attribute(attribute[:-1].strip(), at)
        _no_wildcard(value, value_at)
    else:
        _attribute(attribute.strip(), at)
        if value.strip("*") == "" and len(value) > 1:
            raise _Invalid(f"'{value}' has no text between its '*'", at)
    _escapes(value, value_at)
    return end


def _attribute(description: str, at: int) -> None:
    if not _ATTRIBUTE_DESCRIPTION.fullmatch(description):
        named = f"'{description}'" if description else "nothing"
        raise _Invalid(f"an assertion must start with an attribute name such as sAMAccountName, not {named}", at)


def _extensible(left: str, at: int) -> None:
    """``attr[:dn][:rule]`` or ``[:dn]:rule`` before ``:=``, e.g. memberOf:1.2.840.113556.1.4.1941:"""
    attribute, *parts = left.split(":")
    if attribute:
        _attribute(attribute.strip(), at)
    if parts and parts[0].strip().lower() == "dn":
        parts = parts[1:]
    rule_needed = not attribute
    if len(parts) > 1 or (rule_needed and not parts) or (parts and not _MATCHING_RULE.fullmatch(parts[0].strip())):
        raise _Invalid(f"'{left}:=' is not an extensible match such as memberOf:1.2.840.113556.1.4.1941:=", at)


def _no_wildcard(value: str, at: int) -> None:
    if "*" in value:
        raise _Invalid(f"'*' matches anything only after '='; in this value it must be escaped: {_ESCAPES}",
                       at + value.index("*"))


def _escapes(value: str, at: int) -> None:
    bad = next((escape for escape in _ESCAPE.finditer(value) if escape.group(1)), None)
    if bad:
        dn = " ".join("\\" + character for character in _DN_ESCAPED)
        raise _Invalid(f"a '\\' in a value must start an escape of two hex digits, or a DN's escape ({dn}): "
                       f"{_ESCAPES}", at + bad.start())
    if "\x00" in value:
        raise _Invalid("a value cannot hold a NUL character; write it as \\00", at + value.index("\x00"))


def _skip(text: str, at: int) -> int:
    while at < len(text) and text[at] in _WHITESPACE:
        at += 1
    return at
