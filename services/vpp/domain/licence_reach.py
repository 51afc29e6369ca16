"""Which devices and users a content token's licences may reach.

A token restricted to some locations (``locations`` non-empty) serves only devices and
users in at least one of them; anything else is refused before any Apple call, naming
where the device or user is.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from shared.errors import PermissionDenied


@dataclass(frozen=True)
class LicenceTarget:
    kind: str  # "device" | "user"
    id: str
    locations: tuple[str, ...]


def require_within_token(token_name: str, token_locations: Iterable[str], targets: Iterable[LicenceTarget]) -> None:
    allowed = set(token_locations)
    if not allowed:  # every location
        return
    for target in targets:
        if not allowed & set(target.locations):
            where = f"location(s) {', '.join(sorted(target.locations))}" if target.locations else "no known location"
            raise PermissionDenied(
                f"content token '{token_name}' serves only location(s) {', '.join(sorted(allowed))}; "
                f"{target.kind} {target.id} is at {where}: use a token of that location")
