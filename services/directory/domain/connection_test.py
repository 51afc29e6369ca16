"""The "test the integration" report: one result per step, each ok or the reason it failed."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from services.directory.domain.authentication import FailedSignInLimiter, authenticate
from services.directory.domain.mapping import CLASSES, GRADE_LEVELS, USERS, BatchBuilder
from services.directory.domain.ports import ConnectionProbe
from services.directory.domain.profile import LdapProfile
from shared.errors import OrchardError

SAMPLES = 3


@dataclass
class StepResult:
    step: str
    ok: bool
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "ok": self.ok, "detail": self.detail, **self.data}


def run_connection_test(probe: ConnectionProbe, profile: LdapProfile, clock: Callable[[], float],
                        test_user: tuple[str, str] | None = None) -> list[StepResult]:
    """Connect, TLS, bind, each search, then the optional test user; stops at the first failure."""
    results: list[StepResult] = []

    def step(name: str, action: Callable[[], StepResult]) -> bool:
        try:
            results.append(action())
            return True
        except OrchardError as exc:
            results.append(StepResult(name, False, exc.message))
            return False

    try:
        if not (step("connect", lambda: _connect(probe, profile)) and step("tls", lambda: _tls(probe))
                and step("bind", lambda: _bind(probe, profile))):
            return results
        _searches_and_sign_in(probe, profile, clock, test_user, step)
    finally:
        probe.close()
    return results


def _searches_and_sign_in(probe: ConnectionProbe, profile: LdapProfile, clock: Callable[[], float],
                          test_user: tuple[str, str] | None, step: Callable[[str, Callable[[], StepResult]], bool]) -> None:
    builder = BatchBuilder(profile.sync, profile.connection.base_dn)
    searches = [(GRADE_LEVELS, profile.sync.grade_levels.filter, builder.grade_level_attributes, builder.add_grade_level),
                (USERS, profile.sync.users.filter, builder.user_attributes, builder.add_user),
                (CLASSES, profile.sync.classes.filter, builder.class_attributes, builder.add_class)]
    for what, ldap_filter, attributes, add in searches:
        if ldap_filter:
            step(f"search {what}", lambda: _search(probe, what, ldap_filter, attributes(), add, builder))
    if test_user is not None:
        username, password = test_user
        limiter = FailedSignInLimiter(_NothingRemembered(), clock)
        step("authenticate", lambda: _authenticate(probe, profile, limiter, username, password))


def _connect(probe: ConnectionProbe, profile: LdapProfile) -> StepResult:
    probe.connect()
    return StepResult("connect", True, f"reached {profile.connection.host}:{profile.connection.port}")


def _bind(probe: ConnectionProbe, profile: LdapProfile) -> StepResult:
    probe.bind()
    return StepResult("bind", True, f"bound as {profile.connection.bind_dn}")


def _tls(probe: ConnectionProbe) -> StepResult:
    cert = probe.secure()
    return StepResult("tls", True, f"certificate {cert.subject} issued by {cert.issuer}, valid until "
                                   f"{cert.not_after} ({cert.days_left} days left)",
                      {"subject": cert.subject, "issuer": cert.issuer, "not_after": cert.not_after,
                       "days_left": cert.days_left})


def _search(probe, what, ldap_filter, attributes, add, builder: BatchBuilder) -> StepResult:
    samples = []
    for entry in probe.search(ldap_filter, attributes):
        record = add(entry)
        if record is not None and len(samples) < SAMPLES:
            samples.append(record.to_dict())
    count = builder.entries_seen(what)
    rejected = [row.reason for row in builder.rejected if row.sheet == what]
    data = {"count": count, "samples": samples, "rejected": len(rejected)}
    if count == 0:
        return StepResult(f"search {what}", False, f"the filter {ldap_filter} matched nothing", data)
    detail = f"{count} entries matched" + (f"; {len(rejected)} cannot be mapped, e.g. {rejected[0]}" if rejected else "")
    return StepResult(f"search {what}", True, detail, data)


def _authenticate(probe, profile, limiter, username, password) -> StepResult:
    result = authenticate([(probe, profile)], limiter, username, password)
    if result.authenticated:
        return StepResult("authenticate", True, f"signed in as {result.user_id}", {"user_id": result.user_id})
    return StepResult("authenticate", False, "the username or password is wrong (or the user is outside the user "
                                             f"filter, or has no {profile.sync.users.user_id} to sign in as)")


class _NothingRemembered:
    """The connection test's one sign-in is an administrator's check: it neither counts nor is limited."""

    def hold(self, key: str) -> None:
        pass

    def failures_since(self, key: str, since: float) -> list[float]:
        return []

    def add(self, key: str, at: float, forget_before: float) -> None:
        pass

    def clear(self, key: str) -> None:
        pass
