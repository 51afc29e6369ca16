"""Who is acting, and what they may do: the one policy every service asks.

Every RPC carries the actor in Nameko's context data as
``{"id": ..., "role": ..., "locations": [...] | None}``. ``locations`` is the
list of location ids the actor works in; ``None`` means every location and is
only meaningful for roles that are not location-bound.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from shared.errors import PermissionDenied

ROLES = ("administrator", "location_leader", "msp", "teacher", "system")

#: What each role may do, as ``<service>:<verb>`` permissions; "*" is everything.
#: Location-bound roles are further limited to their locations by ``visible``/``require_locations``.
ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "administrator": frozenset({"*"}),
    "system": frozenset({"*"}),
    "location_leader": frozenset({
        "push:read",
        "enrollment:read", "enrollment:write", "enrollment:resolve_scope",
        "vpp:read", "vpp:write",
        "roster:read", "roster:write",
        "directory:read",
    }),
    # managed service providers operate schools' devices but never hold Apple push identities
    "msp": frozenset({"enrollment:read", "enrollment:resolve_scope", "vpp:read", "roster:read", "directory:read"}),
    # a teacher's scopes are their classes: study apps go to their students' devices
    "teacher": frozenset({"roster:read", "vpp:study_apps", "enrollment:resolve_scope"}),
}

LOCATION_BOUND_ROLES = frozenset({"location_leader", "teacher"})
MAX_ACTOR_ID_LENGTH = 200  # the audit log's and the services' actor columns


@dataclass(frozen=True)
class Actor:
    id: str
    role: str
    locations: tuple[str, ...] | None = None

    def to_context(self) -> dict[str, Any]:
        return {"id": self.id, "role": self.role,
                "locations": list(self.locations) if self.locations is not None else None}

    @property
    def is_location_bound(self) -> bool:
        return self.role in LOCATION_BOUND_ROLES


def system_actor(service_name: str) -> Actor:
    return Actor(id=f"system:{service_name}", role="system")


def actor_from_context(data: Any) -> Actor:
    """Parse the ``actor`` context entry; anything missing or malformed is refused."""
    if not isinstance(data, dict):
        raise PermissionDenied("the request carries no actor: say who is acting (id, role, locations)")
    actor_id, role, locations = data.get("id"), data.get("role"), data.get("locations")
    if not isinstance(actor_id, str) or not actor_id.strip():
        raise PermissionDenied("the actor has no id")
    if len(actor_id) > MAX_ACTOR_ID_LENGTH or not actor_id.isprintable():  # it is written to every audit entry
        raise PermissionDenied(f"the actor's id must be printable text of at most {MAX_ACTOR_ID_LENGTH} characters")
    if role not in ROLES:
        raise PermissionDenied(f"the actor's role {role!r} is not one of {', '.join(ROLES)}")
    if locations is not None:
        if not isinstance(locations, list) or not all(isinstance(item, str) for item in locations):
            raise PermissionDenied("the actor's locations must be a list of location ids")
        locations = tuple(locations)
    if role in LOCATION_BOUND_ROLES and locations is None:
        raise PermissionDenied(f"a {role} must name the locations they work in")
    return Actor(actor_id, role, locations)


def allowed(actor: Actor, permission: str) -> bool:
    granted = ROLE_PERMISSIONS.get(actor.role, frozenset())
    return "*" in granted or permission in granted


def require(actor: Actor, permission: str) -> Actor:
    if not allowed(actor, permission):
        service, _, verb = permission.partition(":")
        raise PermissionDenied(f"a {actor.role} may not {verb.replace('_', ' ')} in {service}")
    return actor


def visible(actor: Actor, resource_locations: Iterable[str] | None) -> bool:
    """May the actor see a resource scoped to these locations (``None`` = every location)?"""
    if not actor.is_location_bound:
        return True
    if resource_locations is None:
        return True
    return bool(set(resource_locations) & set(actor.locations or ()))


def require_locations(actor: Actor, locations: Iterable[str] | None) -> None:
    """Refuse unless the actor works in every one of ``locations`` (``None`` = all of them)."""
    if not actor.is_location_bound:
        return
    if locations is None:
        raise PermissionDenied(f"a {actor.role} can only act on their own locations, not on every location")
    outside = sorted(set(locations) - set(actor.locations or ()))
    if outside:
        raise PermissionDenied(f"a {actor.role} cannot act on location(s) {', '.join(outside)}")
