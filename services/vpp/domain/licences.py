"""Licence rules: what may be assigned or revoked, and how requests are cut to Apple's limits."""
from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from shared.errors import ValidationError

T = TypeVar("T")


class ProductType(str, enum.Enum):
    APP = "App"
    BOOK = "Book"


class NotEnoughLicences(ValidationError):
    """An assignment needs more licences than are available; ``shortage`` is how many are missing."""

    def __init__(self, message: str, shortage: int):
        super().__init__(message)
        self.shortage = shortage


@dataclass(frozen=True)
class Asset:
    adam_id: str
    pricing_param: str
    product_type: ProductType
    total_count: int
    assigned_count: int
    available_count: int
    device_assignable: bool
    revocable: bool
    hidden: bool = False
    name: str | None = None

    @property
    def label(self) -> str:
        kind = "book" if self.product_type is ProductType.BOOK else "app"
        return f"{kind} {self.name or self.adam_id} ({self.adam_id})"


@dataclass(frozen=True)
class Assignment:
    """One licence in use: an asset held by a device (serial number) or a user (user ID; Apple's clientUserId may
    differ, see ``apple_users``)."""

    adam_id: str
    pricing_param: str
    serial_number: str | None = None
    client_user_id: str | None = None


@dataclass(frozen=True)
class Limits:
    """Apple's request-size limits, read from ``service/config.limits`` (they change)."""

    max_assets: int = 25
    max_serial_numbers: int = 1000
    max_client_user_ids: int = 1000
    max_users: int = 100
    max_revoke_serial_numbers: int = 100
    max_revoke_client_user_ids: int = 100

    @classmethod
    def from_service_config(cls, limits: dict[str, Any]) -> "Limits":
        defaults = cls()
        def read(key: str, default: int) -> int:
            value = limits.get(key)
            return value if isinstance(value, int) and value > 0 else default
        return cls(
            max_assets=read("maxAssets", defaults.max_assets),
            max_serial_numbers=read("maxSerialNumbers", defaults.max_serial_numbers),
            max_client_user_ids=read("maxClientUserIds", defaults.max_client_user_ids),
            max_users=read("maxUsers", defaults.max_users),
            max_revoke_serial_numbers=read("maxRevokeSerialNumbers", defaults.max_revoke_serial_numbers),
            max_revoke_client_user_ids=read("maxRevokeClientUserIds", defaults.max_revoke_client_user_ids),
        )


@dataclass(frozen=True)
class LicenceBatch:
    """One Apple request: an asset and the serials or users it goes to (never both mixed past a limit); users by user
    ID until ``AppleUserIds.for_apple`` names them by clientUserId."""

    adam_id: str
    pricing_param: str
    serial_numbers: tuple[str, ...] = ()
    client_user_ids: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        return len(self.serial_numbers) + len(self.client_user_ids)


@dataclass(frozen=True)
class LicencePlan:
    """What a request will change and what it will skip (already so)."""

    asset: Asset
    serial_numbers: tuple[str, ...]
    client_user_ids: tuple[str, ...]
    already_done: tuple[str, ...]
    revoking: bool = False

    def batches(self, limits: Limits) -> tuple[LicenceBatch, ...]:
        """The Apple requests, cut to Apple's limits (read only once the plan is known to be allowed)."""
        serials, users = list(self.serial_numbers), list(self.client_user_ids)
        if self.revoking:
            return _batches(self.asset, serials, users, limits.max_revoke_serial_numbers,
                            limits.max_revoke_client_user_ids)
        return _batches(self.asset, serials, users, limits.max_serial_numbers, limits.max_client_user_ids)


def chunks(items: Sequence[T], size: int) -> list[list[T]]:
    if size <= 0:
        raise ValueError("chunk size must be positive")
    return [list(items[start:start + size]) for start in range(0, len(items), size)]


def _unique(values: Iterable[str] | None, what: str) -> list[str]:
    seen: dict[str, None] = {}
    for value in values or ():
        if not isinstance(value, str) or not value.strip():
            raise ValidationError(f"Every {what} must be non-empty text; remove the blank or non-text entries and try again.")
        seen.setdefault(value.strip(), None)
    return list(seen)


def _batches(asset: Asset, serials: list[str], users: list[str], max_serials: int, max_users: int) -> tuple[LicenceBatch, ...]:
    by_serial = [LicenceBatch(asset.adam_id, asset.pricing_param, serial_numbers=tuple(c)) for c in chunks(serials, max_serials)]
    by_user = [LicenceBatch(asset.adam_id, asset.pricing_param, client_user_ids=tuple(c)) for c in chunks(users, max_users)]
    return tuple(by_serial + by_user)


def plan_assignment(
    asset: Asset,
    serial_numbers: Iterable[str] | None,
    client_user_ids: Iterable[str] | None,
    holders: Iterable[Assignment],
) -> LicencePlan:
    """Check an assignment against the rules before anything is sent to Apple."""
    serials = _unique(serial_numbers, "serial number")
    users = _unique(client_user_ids, "user id")
    if not serials and not users:
        raise ValidationError("Name at least one serial number or user to assign the licence to.")
    if asset.hidden:
        raise ValidationError(f"The {asset.label} is hidden, so it cannot be assigned; show it again first.")
    if serials and asset.product_type is ProductType.BOOK:
        raise ValidationError(f"Books are assigned to users only; assign the {asset.label} to user ids instead of serial numbers.")
    if serials and not asset.device_assignable:
        raise ValidationError(f"The {asset.label} cannot be assigned to devices; assign it to users instead.")
    held_serials = {h.serial_number for h in holders if h.serial_number}
    held_users = {h.client_user_id for h in holders if h.client_user_id}
    new_serials = [s for s in serials if s not in held_serials]
    new_users = [u for u in users if u not in held_users]
    already = tuple([s for s in serials if s in held_serials] + [u for u in users if u in held_users])
    needed = len(new_serials) + len(new_users)
    if needed > asset.available_count:
        raise NotEnoughLicences(
            f"Not enough licences for the {asset.label}: {needed} needed, {asset.available_count} available "
            f"({asset.assigned_count} of {asset.total_count} in use). Buy more licences or revoke some, then try again.",
            needed - asset.available_count,
        )
    return LicencePlan(asset, tuple(new_serials), tuple(new_users), already)


def check_revocable(asset: Asset) -> None:
    if asset.product_type is ProductType.BOOK:
        raise ValidationError(f"Book licences can never be revoked: the {asset.label} stays with the user it was assigned to.")
    if not asset.revocable:
        raise ValidationError(f"Apple marks the {asset.label} as not revocable; its licences stay assigned.")


def plan_revocation(
    asset: Asset,
    serial_numbers: Iterable[str] | None,
    client_user_ids: Iterable[str] | None,
    holders: Iterable[Assignment],
) -> LicencePlan:
    """Check a revocation; holders that have no licence are reported, not sent to Apple."""
    serials = _unique(serial_numbers, "serial number")
    users = _unique(client_user_ids, "user id")
    if not serials and not users:
        raise ValidationError("Name at least one serial number or user to revoke the licence from.")
    check_revocable(asset)
    held_serials = {h.serial_number for h in holders if h.serial_number}
    held_users = {h.client_user_id for h in holders if h.client_user_id}
    revoke_serials = [s for s in serials if s in held_serials]
    revoke_users = [u for u in users if u in held_users]
    not_held = tuple([s for s in serials if s not in held_serials] + [u for u in users if u not in held_users])
    return LicencePlan(asset, tuple(revoke_serials), tuple(revoke_users), not_held, revoking=True)


def _revocable_assignments(assignments: Iterable[Assignment], assets: dict[tuple[str, str], Asset]) -> list[Assignment]:
    keep = []
    for a in assignments:
        asset = assets.get((a.adam_id, a.pricing_param))
        # an assignment of an asset we have not synced yet may be a book: never guess
        if asset and asset.revocable and asset.product_type is ProductType.APP:
            keep.append(a)
    return sorted(keep, key=lambda a: (a.adam_id, a.pricing_param, a.serial_number or "", a.client_user_id or ""))


def revoke_all_selection(assignments: Iterable[Assignment], assets: dict[tuple[str, str], Asset]) -> list[Assignment]:
    """Every revocable assignment of the token (books are never revoked)."""
    return _revocable_assignments(assignments, assets)


def revoke_unknown_selection(
    assignments: Iterable[Assignment],
    assets: dict[tuple[str, str], Asset],
    known_serial_numbers: set[str],
    known_user_ids: set[str],
) -> list[Assignment]:
    """Revocable assignments held by serial numbers or users this system does not know."""
    unknown = [
        a for a in assignments
        if (a.serial_number and a.serial_number not in known_serial_numbers)
        or (a.client_user_id and a.client_user_id not in known_user_ids)
    ]
    return _revocable_assignments(unknown, assets)


def revocation_batches(selection: Iterable[Assignment], limits: Limits) -> list[LicenceBatch]:
    """Cut a revoke-all/unknown selection into per-asset Apple requests within the revoke limits."""
    serials: dict[tuple[str, str], list[str]] = defaultdict(list)
    users: dict[tuple[str, str], list[str]] = defaultdict(list)
    for a in selection:
        key = (a.adam_id, a.pricing_param)
        if a.serial_number:
            serials[key].append(a.serial_number)
        if a.client_user_id:
            users[key].append(a.client_user_id)
    batches: list[LicenceBatch] = []
    for key in sorted(set(serials) | set(users)):
        batches += [LicenceBatch(*key, serial_numbers=tuple(c)) for c in chunks(serials.get(key, []), limits.max_revoke_serial_numbers)]
        batches += [LicenceBatch(*key, client_user_ids=tuple(c)) for c in chunks(users.get(key, []), limits.max_revoke_client_user_ids)]
    return batches
