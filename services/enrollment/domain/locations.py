"""Location ids named by callers, checked against the roster, the one place locations are defined."""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from shared.errors import NotFound


def require_roster_locations(location_ids: Iterable[str], roster_locations: Iterable[Mapping[str, Any]]) -> None:
    """Refuse ids the roster does not list: a misspelt one would restrict to a location nobody leads."""
    known = {location["location_id"] for location in roster_locations}
    unknown = sorted(set(location_ids) - known)
    if unknown:
        names = ", ".join(f"'{location_id}'" for location_id in unknown)
        raise NotFound(f"the roster has no location{'s' if len(unknown) > 1 else ''} {names}; "
                       "`orchard roster locations` lists them")
