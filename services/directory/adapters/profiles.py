"""LDAP profiles in the directory service's database; the bind password sealed at rest."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from services.directory.adapters.tables import ldap_profiles
from services.directory.domain.profile import LdapProfile, parse_profile, profile_view
from shared.errors import Conflict, NotFound
from shared.secrets import SecretBox
from shared.storage import utc_now


@dataclass(frozen=True)
class StoredProfile:
    id: int
    profile: LdapProfile
    last_sync_at: datetime | None
    last_sync_outcome: str | None
    last_sync_message: str | None
    last_scheduled_on: str | None
    certificate_not_after: datetime | None

    def view(self) -> dict[str, Any]:
        """What callers see: the settings, the last sync, never the password."""
        return {
            "id": self.id,
            **profile_view(self.profile),
            "last_sync": {
                "at": self.last_sync_at.isoformat() if self.last_sync_at else None,
                "outcome": self.last_sync_outcome,
                "message": self.last_sync_message,
            },
            "certificate_not_after": self.certificate_not_after.isoformat() if self.certificate_not_after else None,
        }


class ProfileRepository:
    def __init__(self, session: Session, secrets: SecretBox):
        self.session = session
        self.secrets = secrets

    def add(self, profile: LdapProfile, created_by: str) -> StoredProfile:
        self._require_unique_name(profile.name)
        now = utc_now()
        result = self.session.execute(ldap_profiles.insert().values(
            created_by=created_by, created_at=now, updated_at=now, **self._columns(profile)))
        return self.get(result.inserted_primary_key[0])

    def get(self, profile_id: int, for_update: bool = False) -> StoredProfile:
        stored = self.find(profile_id, for_update)
        if stored is None:
            raise no_such_profile(profile_id)
        return stored

    def find(self, profile_id: int, for_update: bool = False) -> StoredProfile | None:
        query = sa.select(ldap_profiles).where(ldap_profiles.c.id == profile_id)
        row = self.session.execute(query.with_for_update() if for_update else query).first()
        return None if row is None else self._stored(row)

    def list(self) -> list[StoredProfile]:
        rows = self.session.execute(sa.select(ldap_profiles).order_by(ldap_profiles.c.id))
        return [self._stored(row) for row in rows]

    def update(self, profile_id: int, change: Callable[[LdapProfile], LdapProfile]) -> StoredProfile:
        """The stored profile changed by ``change``; locked meanwhile, since each change writes back the whole
        profile: two at once would otherwise each undo the other."""
        current = self.get(profile_id, for_update=True)
        return self.replace(current.id, change(current.profile))

    def replace(self, profile_id: int, profile: LdapProfile) -> StoredProfile:
        self._require_unique_name(profile.name, except_id=profile_id)
        self.session.execute(ldap_profiles.update().where(ldap_profiles.c.id == profile_id).values(
            updated_at=utc_now(), **self._columns(profile)))
        return self.get(profile_id)

    def delete(self, profile_id: int) -> None:
        self.get(profile_id)
        self.session.execute(ldap_profiles.delete().where(ldap_profiles.c.id == profile_id))

    def record_sync(self, profile_id: int, outcome: str, message: str, scheduled_on: str | None = None) -> None:
        values: dict[str, Any] = {"last_sync_at": utc_now(), "last_sync_outcome": outcome,
                                  "last_sync_message": message[:2000]}
        if scheduled_on is not None:
            values["last_scheduled_on"] = scheduled_on
        self.session.execute(ldap_profiles.update().where(ldap_profiles.c.id == profile_id).values(**values))

    def record_certificate(self, profile_id: int, not_after: datetime) -> None:
        self.session.execute(ldap_profiles.update().where(ldap_profiles.c.id == profile_id)
                             .values(certificate_not_after=not_after))

    def _columns(self, profile: LdapProfile) -> dict[str, Any]:
        settings = profile_view(profile)
        return {"name": profile.name, "settings": settings,
                "sealed_bind_password": self.secrets.seal(profile.connection.bind_password.reveal())}

    def _require_unique_name(self, name: str, except_id: int | None = None) -> None:
        query = sa.select(ldap_profiles.c.id).where(ldap_profiles.c.name == name)
        if except_id is not None:
            query = query.where(ldap_profiles.c.id != except_id)
        if self.session.execute(query).first():
            raise Conflict(f"an LDAP profile named '{name}' already exists; choose another name or update that one")

    def _stored(self, row: Any) -> StoredProfile:
        profile = parse_profile({**row.settings, "bind_password": self.secrets.open(row.sealed_bind_password)},
                                saved=True)
        return StoredProfile(row.id, profile, row.last_sync_at, row.last_sync_outcome, row.last_sync_message,
                             row.last_scheduled_on, row.certificate_not_after)


def no_such_profile(profile_id: int) -> NotFound:
    return NotFound(f"there is no LDAP profile {profile_id}; `orchard directory profile list` shows them")


def certificate_expiries(engine: Engine) -> dict[str, float]:
    """Profile id -> the Unix time its server's certificate expires, for profiles that connected."""
    query = sa.select(ldap_profiles.c.id, ldap_profiles.c.certificate_not_after).where(
        ldap_profiles.c.certificate_not_after.is_not(None))
    with engine.connect() as connection:
        return {str(row.id): row.certificate_not_after.timestamp() for row in connection.execute(query)}
