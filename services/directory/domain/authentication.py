"""Checking a user's password against the directory, with failed attempts rate limited."""
from __future__ import annotations

import hashlib
import math
import unicodedata
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol

from services.directory.domain.entries import normalize_dn
from services.directory.domain.ports import PasswordDirectory
from services.directory.domain.profile import LdapProfile
from shared.errors import PermissionDenied, ValidationError
from shared.unicode_text import refuse_unstorable_text

#: the longest e-mail address (64 + "@" + 255), which is what a userPrincipalName or mail login
#: looks like; a sAMAccountName has at most 20 characters
MAX_USERNAME_LENGTH = 320


@dataclass(frozen=True)
class AuthenticationResult:
    authenticated: bool
    user_id: str | None = None

    def to_dict(self) -> dict:
        return {"authenticated": self.authenticated, "user_id": self.user_id}


class FailureLog(Protocol):
    """Where failed sign-ins are remembered: shared by every replica, so the limit holds for all."""

    def hold(self, key: str) -> None: ...  # other sign-ins of ``key`` wait until this one is recorded

    def failures_since(self, key: str, since: float) -> list[float]: ...  # times, oldest first

    def add(self, key: str, at: float, forget_before: float) -> None: ...

    def clear(self, key: str) -> None: ...


class FailedSignInLimiter:
    """At most ``max_failures`` failed sign-ins per key within ``window`` seconds.

    ``authenticate`` counts each failure against the username as typed (folded) and against
    every directory account it reached, so no spelling of a name gets a budget of its own.
    """

    def __init__(self, failures: FailureLog, clock: Callable[[], float], max_failures: int = 5,
                 window: float = 900.0):
        self._failures = failures
        self._clock = clock
        self.max_failures = max_failures
        self.window = window

    def check(self, key: str) -> None:
        self._failures.hold(key)  # sign-ins of one name at once are counted one after the other, not all as the first
        recent = self._recent(key)
        if len(recent) >= self.max_failures:
            wait = math.ceil((recent[0] + self.window - self._clock()) / 60)
            raise PermissionDenied(f"too many failed sign-ins for this username; try again in {wait} minute(s)")

    def exhausted(self, key: str) -> bool:
        return len(self._recent(key)) >= self.max_failures

    def record_failure(self, *keys: str) -> None:
        now = self._clock()
        for key in keys:
            self._failures.add(key, now, forget_before=now - self.window)

    def reset(self, *keys: str) -> None:
        for key in keys:
            self._failures.clear(key)

    def _recent(self, key: str) -> list[float]:
        return self._failures.failures_since(key, self._clock() - self.window)


def authenticate(candidates: Iterable[tuple[PasswordDirectory, LdapProfile]], limiter: FailedSignInLimiter,
                 username: str, password: str) -> AuthenticationResult:
    """Find the user by each profile's login attribute with the service account, then bind as them.

    ``candidates`` are the directories that validate passwords, tried in order (opened
    lazily, after the input is checked). An empty password is refused before any bind:
    LDAP treats a simple bind with a DN and no password as an unauthenticated bind,
    which "succeeds". An unknown user, an entry without the user-ID attribute, and an account
    whose budget another spelling of its name used up, cost the same bind as a wrong password
    and get the same answer. When a directory fails after an earlier one checked the password,
    the failures are recorded before the error is raised: the caller must keep them (commit).
    """
    username = _checked_username(username)
    _check_password(password)
    typed = _username_key(username)
    limiter.check(typed)  # keyed by what was typed, known user or not: this refusal reveals nothing
    failed = [typed]
    tried = False  # whether a directory has checked this password yet
    try:
        for directory, profile in candidates:
            found = directory.find_user(profile.sync.users.filter, profile.authentication.login_attribute,
                                        username, profile.sync.users.user_id)
            # an entry without a user ID signs in as nobody: it is treated as an unknown user, never as a success
            account = _account_key(found.dn) if found is not None and found.user_id else None
            if account is None or limiter.exhausted(account):
                directory.password_matches(_absent_dn(profile), password)  # a bind all the same: timing tells nothing
            elif directory.password_matches(found.dn, password):
                limiter.reset(typed, account)
                return AuthenticationResult(True, found.user_id)
            else:
                failed.append(account)
            tried = True
    except Exception:
        if tried:  # a later directory failing must not make the guesses an earlier one answered free
            limiter.record_failure(*failed)
        raise
    limiter.record_failure(*failed)
    return AuthenticationResult(False)


def _checked_username(username: Any) -> str:
    if not isinstance(username, str) or not username.strip():
        raise ValidationError("a username is required")
    if len(username) > MAX_USERNAME_LENGTH:
        raise ValidationError(f"the username is {len(username)} characters long; at most "
                              f"{MAX_USERNAME_LENGTH} are allowed")
    refuse_unstorable_text(username, "the username")  # it cannot be sent to a directory or stored
    return username.strip()


def _check_password(password: Any) -> None:
    if not isinstance(password, str) or not password:
        raise ValidationError("a password is required")
    refuse_unstorable_text(password, "the password")


def _username_key(username: str) -> str:
    # directories match names after NFKC, case folding and squeezing spaces (RFC 4518): 'ｔ00001' is 't00001'
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", username).casefold())
    return _hashed("username", " ".join(folded.split()))


def _account_key(dn: str) -> str:
    return _hashed("account", normalize_dn(dn))


def _hashed(kind: str, name: str) -> str:
    # a fixed length however long the name or DN, and no typed name kept in the clear
    return f"{kind}:{hashlib.sha256(name.encode()).hexdigest()}"


def _absent_dn(profile: LdapProfile) -> str:
    # directories answer a bind as a DN that does not exist with invalidCredentials, as for a wrong password
    return f"CN=orchard-no-such-user,{profile.connection.base_dn}"
