"""What the domain needs from the directory server (the LDAP adapter implements these)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol, Sequence

from services.directory.domain.entries import DirectoryEntry
from shared.errors import UpstreamError


class BindRefused(UpstreamError):
    """The directory refused the service account's bind DN or password: only an administrator can fix it."""


@dataclass(frozen=True)
class CertificateInfo:
    subject: str
    issuer: str
    not_after: str  # ISO 8601, UTC
    days_left: int


@dataclass(frozen=True)
class FoundUser:
    dn: str
    user_id: str | None


class DirectoryReader(Protocol):
    def search(self, ldap_filter: str, attributes: Sequence[str]) -> Iterator[DirectoryEntry]:
        """All entries under the base DN matching ``ldap_filter``, page by page, as a stream."""


class PasswordDirectory(Protocol):
    def find_user(self, users_filter: str, login_attribute: str, username: str,
                  user_id_attribute: str) -> FoundUser | None:
        """The one user entry whose ``login_attribute`` is ``username`` (escaped), or None."""

    def password_matches(self, dn: str, password: str) -> bool:
        """Whether a simple bind as ``dn`` with ``password`` succeeds."""


class ConnectionProbe(DirectoryReader, PasswordDirectory, Protocol):
    """The steps of a connection test; each raises ``UpstreamError`` with the reason it failed."""

    def connect(self) -> None: ...

    def secure(self) -> CertificateInfo: ...

    def bind(self) -> None: ...

    def close(self) -> None: ...
