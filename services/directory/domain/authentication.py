"""Checking a user's password against the directory, with failed attempts rate limited."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol

from services.directory.domain.ports import PasswordDirectory
from services.directory.domain.profile import LdapProfile
from shared.errors import PermissionDenied, ValidationError


@dataclass(frozen=True)
class AuthenticationResult:
    authenticated: bool
    user_id: str | None = None

    def to_dict(self) -> dict:
        return {"authenticated": self.authenticated, "user_id": self.user_id}


class FailureLog(Protocol):
    """Where failed sign-ins are remembered: shared by every replica, so the limit holds for all."""

    def failures_since(self, key: str, since: float) -> list[float]: ...  # times, oldest first

    def add(self, key: str, at: float, forget_before: float) -> None: ...

    def clear(self, key: str) -> None: ...


class FailedSignInLimiter:
    """At most ``max_failures`` failed sign-ins per username within ``window`` seconds.

    Counted per username whether or not it exists, so the limit reveals nothing.
    """

    def __init__(self, failures: FailureLog, clock: Callable[[], float], max_failures: int = 5,
                 window: float = 900.0):
        self._failures = failures
        self._clock = clock
        self.max_failures = max_failures
        self.window = window

    def check(self, username: str) -> None:
        recent = self._failures.failures_since(_key(username), self._clock() - self.window)
        if len(recent) >= self.max_failures:
            wait = math.ceil((recent[0] + self.window - self._clock()) / 60)
            raise PermissionDenied(f"too many failed sign-ins for this username; try again in {wait} minute(s)")

    def record_failure(self, username: str) -> None:
        now = self._clock()
        self._failures.add(_key(username), now, forget_before=now - self.window)

    def reset(self, username: str) -> None:
        self._failures.clear(_key(username))


def _key(username: str) -> str:
    return username.strip().casefold()


def authenticate(candidates: Iterable[tuple[PasswordDirectory, LdapProfile]], limiter: FailedSignInLimiter,
                 username: str, password: str) -> AuthenticationResult:
    """Find the user by each profile's login attribute with the service account, then bind as them.

    ``candidates`` are the directories that validate passwords, tried in order (opened
    lazily, after the input is checked). An empty password is refused before any bind:
    LDAP treats a simple bind with a DN and no password as an unauthenticated bind,
    which "succeeds".
    """
    if not isinstance(username, str) or not username.strip():
        raise ValidationError("a username is required")
    if not isinstance(password, str) or not password:
        raise ValidationError("a password is required")
    limiter.check(username)
    for directory, profile in candidates:
        found = directory.find_user(profile.sync.users.filter, profile.authentication.login_attribute,
                                    username.strip(), profile.sync.users.user_id)
        if found is not None and directory.password_matches(found.dn, password):
            limiter.reset(username)
            return AuthenticationResult(True, found.user_id)
    limiter.record_failure(username)
    return AuthenticationResult(False)
