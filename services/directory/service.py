"""The directory service: Nameko entrypoints over the domain code in ``services.directory.domain``."""
from __future__ import annotations

import dataclasses
import logging
import time
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Iterator

from eventlet import tpool
from nameko.extensions import DependencyProvider

from services.directory import metrics
from services.directory.adapters import tables
from services.directory.adapters.ldap_directory import LdapDirectory
from services.directory.adapters.profiles import ProfileRepository, StoredProfile, no_such_profile
from services.directory.adapters.sign_in_failures import sign_in_failure_log
from services.directory.adapters.sync_lease import sync_lease
from services.directory.domain.authentication import FailedSignInLimiter, authenticate
from services.directory.domain.connection_test import run_connection_test
from services.directory.domain.egress import egress_addresses
from services.directory.domain.mapping import CLASSES, GRADE_LEVELS, USERS
from services.directory.domain.profile import LdapProfile, apply_changes, parse_profile
from services.directory.domain.schedule import daily_sync_due, worth_retrying
from services.directory.domain.sync import profile_source, read_import_batch
from shared.arguments import row_id
from shared.config import service_settings
from shared.entrypoints import ServiceRpc, periodic, rpc
from shared.errors import NotFound, OrchardError, PermissionDenied, ValidationError
from shared.leases import Heartbeat
from shared.metrics import GaugesFromDatabase
from shared.secrets import Secrets
from shared.service import OrchardService
from shared.storage import Database, utc_now

log = logging.getLogger(__name__)

#: seconds the roster may take to preview or apply a whole district's directory
ROSTER_TIMEOUT = 600


class EgressAddresses(DependencyProvider):
    def setup(self) -> None:
        # a wrong entry stops the service at start rather than be shown to schools for their firewalls
        self.addresses = egress_addresses(service_settings(self.container.config, self.container.service_name)
                                          .get("egress_ips"))

    def get_dependency(self, worker_ctx: Any) -> list[str]:
        return list(self.addresses)


class DirectoryService(OrchardService):
    name = "directory"
    db = Database(tables.metadata, migrations="services.directory.migrations")
    secrets = Secrets()
    roster = ServiceRpc("roster", timeout=ROSTER_TIMEOUT)
    egress = EgressAddresses()
    certificate_gauges = GaugesFromDatabase(metrics.CERTIFICATE_EXPIRY)

    # -- profiles --

    @rpc(sensitive_arguments=("profile",))
    def add_ldap_profile(self, profile: Any) -> dict[str, Any]:
        actor = self.auth.require("directory:write")
        stored = self._profiles().add(parse_profile(profile), actor.id)
        self.db.audit(actor, "ldap_profile.added", f"ldap_profile:{stored.id}", {"name": stored.profile.name})
        return stored.view()

    @rpc(sensitive_arguments=("changes",))
    def update_ldap_profile(self, profile_id: int, changes: Any) -> dict[str, Any]:
        actor = self.auth.require("directory:write")
        stored = self._profiles().update(row_id(profile_id, "profile_id"), lambda profile: apply_changes(profile, changes))
        fields = sorted(changes) if isinstance(changes, dict) else []
        self.db.audit(actor, "ldap_profile.updated", f"ldap_profile:{stored.id}", {"fields": fields})
        return stored.view()

    @rpc
    def list_ldap_profiles(self) -> list[dict[str, Any]]:
        self.auth.require("directory:read")
        return [stored.view() for stored in self._profiles().list()]

    @rpc
    def get_ldap_profile(self, profile_id: int) -> dict[str, Any]:
        self.auth.require("directory:read")
        return self._profiles().get(row_id(profile_id, "profile_id")).view()

    @rpc
    def delete_ldap_profile(self, profile_id: int) -> dict[str, Any]:
        actor = self.auth.require("directory:write")
        profiles = self._profiles()
        stored = profiles.get(row_id(profile_id, "profile_id"))
        profiles.delete(stored.id)
        self.db.audit(actor, "ldap_profile.deleted", f"ldap_profile:{stored.id}", {"name": stored.profile.name})
        return {"deleted": stored.id}

    @rpc
    def egress_ips(self) -> list[str]:
        """The addresses Orchard connects from: the school's firewall must let them reach the directory."""
        self.auth.require("directory:read")
        return self.egress

    # -- test, sync, sign-in --

    @rpc(sensitive_arguments=("test_password",))
    def test_ldap_profile(self, profile_id: int, test_username: str | None = None,
                          test_password: str | None = None) -> list[dict[str, Any]]:
        self.auth.require("directory:write")
        stored = self._profiles().get(row_id(profile_id, "profile_id"))
        test_user = None
        if test_username is not None or test_password is not None:
            if not isinstance(test_username, str) or not isinstance(test_password, str):
                raise ValidationError("give both test_username and test_password, or neither")
            test_user = (test_username, test_password)
        self.db.commit()  # nothing held while the directory answers: a test searches every filter
        directory = LdapDirectory(stored.profile.connection, profile=str(stored.id))
        steps = run_connection_test(directory, stored.profile, time.monotonic, test_user)
        self._remember_certificate(stored, directory)
        return [step.to_dict() for step in steps]

    @rpc
    def sync_ldap_profile(self, profile_id: int, apply: bool = False) -> dict[str, Any]:
        """Read the directory and hand it to the roster: a preview, or applied when ``apply``."""
        self.auth.require("directory:write")
        if not isinstance(apply, bool):
            raise ValidationError("apply must be true or false")
        profile_id = row_id(profile_id, "profile_id")
        with self._sync_lease(profile_id) as (stored, heartbeat):
            if stored is None:
                raise no_such_profile(profile_id)
            return self._sync(stored, heartbeat, apply, trigger="manual")

    @rpc(sensitive_arguments=("password",))
    def authenticate(self, username: str, password: str, profile_id: int | None = None) -> dict[str, Any]:
        """``{authenticated, user_id}``: the same answer whether the user is unknown or the password wrong."""
        self.auth.require("directory:authenticate")
        profiles = self._sign_in_profiles(profile_id)
        self.db.commit()  # read: no database connection is held while the directories answer
        try:
            with sign_in_failure_log(self.db.session, self.db.commit) as failure_log:
                limiter = FailedSignInLimiter(failure_log, time.time)
                result = authenticate(self._bound_directories(profiles), limiter, username, password)
        except PermissionDenied:
            metrics.AUTH_ATTEMPTS.labels("rate_limited").inc()
            raise
        except ValidationError:
            metrics.AUTH_ATTEMPTS.labels("refused").inc()
            raise
        except OrchardError:
            metrics.AUTH_ATTEMPTS.labels("error").inc()
            self.db.commit()  # the failures recorded before a directory failed count: the error must not undo them
            raise
        metrics.AUTH_ATTEMPTS.labels("success" if result.authenticated else "failure").inc()
        return result.to_dict()

    @periodic(interval=60)
    def run_daily_syncs(self) -> None:
        """Apply each profile's sync once a day, at or after its daily sync time (UTC); a failed one is tried again."""
        now = utc_now()
        for profile_id in [stored.id for stored in self._profiles().list() if _daily_sync_due(stored, now)]:
            try:
                with self._sync_lease(profile_id) as (stored, heartbeat):
                    # as it is now, not as listed: an administrator may have changed or deleted it during the
                    # syncs before it, which can take minutes each
                    if stored is not None and _daily_sync_due(stored, now):
                        self._sync(stored, heartbeat, apply=True, trigger="scheduled",
                                   scheduled_on=now.date().isoformat())
            except OrchardError as exc:  # recorded on the profile; the next profile still runs
                log.warning("scheduled sync of LDAP profile %s failed (%s): %s", profile_id,
                            "tried again later today" if worth_retrying(exc) else "not tried again today", exc)

    # -- internals --

    def _profiles(self) -> ProfileRepository:
        return ProfileRepository(self.db.session, self.secrets)

    @contextmanager
    def _sync_lease(self, profile_id: int) -> Iterator[tuple[StoredProfile | None, Heartbeat]]:
        """Hold the profile's sync lease (``Conflict`` at once while another sync holds it: not a wait, a sync can
        take minutes) and yield the profile as stored once it is held, or None if it is gone.

        No database connection is held meanwhile, only while something is read or written: on SQLite the process
        has one, which sign-ins and every other request need while the directory and the roster work.
        """
        self.db.commit()  # the lease is taken and given up on connections of its own
        with sync_lease(self.db.session.get_bind(), profile_id) as heartbeat:
            try:
                stored = self._profiles().find(profile_id)
                self.db.commit()
                yield stored, heartbeat
                self.db.commit()
            except BaseException:
                self.db.session.rollback()  # a failed sync has committed its record already
                raise

    def _sync(self, stored: StoredProfile, heartbeat: Heartbeat, apply: bool, trigger: str,
              scheduled_on: str | None = None) -> dict[str, Any]:
        """``scheduled_on`` marks that day's scheduled sync done, unless it failed in a way worth retrying."""
        mode = "apply" if apply else "preview"
        started = time.perf_counter()
        directory = LdapDirectory(stored.profile.connection, profile=str(stored.id))
        try:
            with directory.bound():
                batch = dataclasses.replace(read_import_batch(directory, stored.profile),
                                            source=profile_source(stored.id))
            for kind, count in ((USERS, len(batch.users)), (GRADE_LEVELS, len(batch.grade_levels)),
                                (CLASSES, len(batch.classes))):
                metrics.ENTRIES_READ.labels(kind).inc(count)
            options = {"only_add_new": stored.profile.sync.only_add_new}
            payload = tpool.execute(batch.to_dict)  # tens of thousands of records: off the event loop
            plan = self.roster.preview_records(payload, options)
            heartbeat.check()  # the lease ran out meanwhile and another sync of the profile took it: that one applies
            applied = self.roster.apply_plan(plan["plan_id"]) if apply else None
        except OrchardError as exc:
            metrics.SYNC_RUNS.labels(str(stored.id), trigger, mode, "error").inc()
            self._record_sync(stored, directory, "failed", exc.message, None if worth_retrying(exc) else scheduled_on)
            self.db.commit()  # the failure is recorded even though the caller gets the error
            raise
        metrics.SYNC_RUNS.labels(str(stored.id), trigger, mode, "success").inc()
        metrics.SYNC_DURATION.labels(mode).observe(time.perf_counter() - started)
        read = {"users": len(batch.users), "grade_levels": len(batch.grade_levels), "classes": len(batch.classes),
                "locations": len(batch.locations), "rejected": len(batch.rejected)}
        message = f"read {read['users']} users, {read['classes']} classes; {read['rejected']} entries rejected"
        self._record_sync(stored, directory, "applied" if apply else "previewed", message, scheduled_on)
        return {"profile_id": stored.id, "read": read, "plan": plan, "applied": applied}

    def _record_sync(self, stored: StoredProfile, directory: LdapDirectory, outcome: str, message: str,
                     scheduled_on: str | None) -> None:
        self._remember_certificate(stored, directory)
        self._profiles().record_sync(stored.id, outcome, message, scheduled_on)

    def _remember_certificate(self, stored: StoredProfile, directory: LdapDirectory) -> None:
        """Store the expiry of the certificate the server showed, only when it changed: sign-ins come here too."""
        if directory.certificate is None:
            return
        not_after = datetime.fromisoformat(directory.certificate.not_after)
        if not_after != stored.certificate_not_after:
            self._profiles().record_certificate(stored.id, not_after)

    def _bound_directories(self, stored_profiles: list[StoredProfile]) -> Iterator[tuple[LdapDirectory, LdapProfile]]:
        """Each profile's directory, bound as its service account only when the sign-in reaches it."""
        for stored in stored_profiles:
            with LdapDirectory(stored.profile.connection, profile=str(stored.id)).bound() as directory:
                self._remember_certificate(stored, directory)
                yield directory, stored.profile

    def _sign_in_profiles(self, profile_id: int | None) -> list[StoredProfile]:
        profiles = self._profiles()
        if profile_id is not None:
            stored = profiles.get(row_id(profile_id, "profile_id"))
            if not stored.profile.authentication.enabled:
                raise ValidationError(f"LDAP profile {stored.id} does not validate passwords; enable "
                                      "authentication.enabled on it first")
            return [stored]
        enabled = [stored for stored in profiles.list() if stored.profile.authentication.enabled]
        if not enabled:
            raise NotFound("no LDAP profile validates passwords; enable authentication on one first")
        return enabled


def _daily_sync_due(stored: StoredProfile, now: datetime) -> bool:
    failed_at = stored.last_sync_at if stored.last_sync_outcome == "failed" else None
    return daily_sync_due(stored.profile.sync.daily_sync_time, stored.last_scheduled_on, now, failed_at)
