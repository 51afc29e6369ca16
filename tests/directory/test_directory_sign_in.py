"""Sign-in rules that need no directory server: directories that fail, entries without a user ID."""
from __future__ import annotations

import time
from typing import Iterator

import pytest

from services.directory.domain.authentication import FailedSignInLimiter, authenticate
from services.directory.domain.ports import FoundUser
from services.directory.domain.profile import LdapProfile, parse_profile
from shared.errors import PermissionDenied, UpstreamError
from tests.directory.memory_failure_log import MemoryFailureLog

PROFILE = parse_profile({"name": "District AD", "host": "dc1.school.example", "security": "ldaps",
                         "bind_dn": "CN=orchard,DC=school,DC=example", "bind_password": "s3cret!",
                         "base_dn": "DC=school,DC=example", "authentication": {"enabled": True}})
VICTIM_DN = "CN=victim,OU=Staff,DC=school,DC=example"


class OneUser:
    """A directory holding one user, ``victim``, whose password is ``right``."""

    def __init__(self, user_id: str | None = "victim"):
        self.user_id = user_id
        self.binds: list[str] = []

    def find_user(self, users_filter: str, login_attribute: str, username: str,
                  user_id_attribute: str) -> FoundUser | None:
        return FoundUser(dn=VICTIM_DN, user_id=self.user_id) if username == "victim" else None

    def password_matches(self, dn: str, password: str) -> bool:
        self.binds.append(dn)
        return dn == VICTIM_DN and password == "right"


def then_a_failing_directory(first: OneUser) -> Iterator[tuple[OneUser, LdapProfile]]:
    """Two profiles validating passwords, the second one's domain controller down."""
    yield first, PROFILE
    raise UpstreamError("cannot connect to dc2.school.example:636: Connection refused")


def test_guesses_count_when_a_later_directory_fails():
    """Each wrong guess is answered by the first directory before the second fails: it must count all the same,
    or an attacker guesses without limit while one of a school's domain controllers is down."""
    limiter = FailedSignInLimiter(MemoryFailureLog(), time.monotonic)
    for guess in range(5):
        with pytest.raises(UpstreamError, match="cannot connect"):
            authenticate(then_a_failing_directory(OneUser()), limiter, "victim", f"guess {guess}")
    with pytest.raises(PermissionDenied, match="too many failed sign-ins"):
        authenticate(then_a_failing_directory(OneUser()), limiter, "victim", "right")


def test_an_unknown_user_counts_the_same_when_a_later_directory_fails():
    """Else the limit would tell who exists: only a known user's failures would add up."""
    limiter = FailedSignInLimiter(MemoryFailureLog(), time.monotonic)
    for _ in range(5):
        with pytest.raises(UpstreamError):
            authenticate(then_a_failing_directory(OneUser()), limiter, "nobody", "a guess")
    with pytest.raises(PermissionDenied, match="too many failed sign-ins"):
        authenticate(then_a_failing_directory(OneUser()), limiter, "nobody", "a guess")


def test_a_directory_failing_before_any_password_check_counts_nothing():
    """Nothing was guessed: a user kept out by a domain controller that is down is not locked out as well."""
    limiter = FailedSignInLimiter(MemoryFailureLog(), time.monotonic)

    def failing_at_once() -> Iterator[tuple[OneUser, LdapProfile]]:
        raise UpstreamError("cannot connect to dc1.school.example:636: Connection refused")
        yield  # a generator, like the service's lazily opened directories

    for _ in range(6):
        with pytest.raises(UpstreamError):
            authenticate(failing_at_once(), limiter, "victim", "right")
    assert authenticate([(OneUser(), PROFILE)], limiter, "victim", "right").to_dict() == {
        "authenticated": True, "user_id": "victim"}


def test_an_entry_without_a_user_id_never_signs_in():
    """The right password for an entry lacking the user-ID attribute answers as an unknown user does, and counts."""
    limiter = FailedSignInLimiter(MemoryFailureLog(), time.monotonic)
    directory = OneUser(user_id=None)
    assert authenticate([(directory, PROFILE)], limiter, "victim", "right").to_dict() == {
        "authenticated": False, "user_id": None}
    assert directory.binds == [f"CN=orchard-no-such-user,{PROFILE.connection.base_dn}"]  # a bind all the same
    for _ in range(4):
        authenticate([(directory, PROFILE)], limiter, "victim", "right")
    with pytest.raises(PermissionDenied, match="too many failed sign-ins"):
        authenticate([(directory, PROFILE)], limiter, "victim", "right")
