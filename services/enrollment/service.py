"""The enrollment service: Nameko entrypoints over the domain code in ``services.enrollment.domain``."""
from __future__ import annotations

import json
import logging
import random
import time
import uuid
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from eventlet import tpool

from services.enrollment.adapters import tables
from services.enrollment.adapters.checkin_signature import SIGNATURE_HEADER, verify_checkin_signature
from services.enrollment.adapters.dep_client import ROSTER_KINDS, DepClient
from services.enrollment.adapters.dep_connection import DepConnection
from services.enrollment.adapters.dep_ports import ClientAssigner, ClientPages
from services.enrollment.adapters.device_ca import DeviceIdentityRepository
from services.enrollment.adapters.device_store import DeviceEventOutbox, DeviceRepository, TokenCursorStore
from services.enrollment.adapters.sync_lease import SYNC_LEASE_LOST, SyncLeaseDuration
from services.enrollment.adapters.token_crypto import decrypt_enveloped_data, generate_key_and_certificate
from services.enrollment.adapters.token_repository import (
    CheckinRepository,
    SyncRunRepository,
    TokenRepository,
    list_devices,
    token_summary,
)
from services.enrollment.assignment_entrypoints import DevicePeopleEntrypoints
from services.enrollment.device_profiles import CHECKIN_PATH
from services.enrollment.domain.checkin import (
    MAX_CHECKIN_BYTES,
    Authenticate,
    CheckOut,
    CommandPoll,
    MalformedCheckin,
    parse_checkin,
)
from services.enrollment.domain.device_identity import CheckinRejected, authorize_checkin
from services.enrollment.domain.device_sync import ASSIGN_QUEUED, DeviceSync, SyncCounts, assign_profile
from services.enrollment.domain.devices import PROFILE_STATUSES
from services.enrollment.domain.errors import AccessDenied, CursorError, DepError, TermsNotAccepted, Throttled
from services.enrollment.domain.locations import require_roster_locations
from services.enrollment.domain.profiles import validated_profile
from services.enrollment.domain.server_tokens import (
    STATUS_REVOKED_OR_INVALID,
    STATUS_TERMS_NOT_ACCEPTED,
    OAuthCredentials,
    check_same_mdm_server,
    cms_from_token_file,
    credentials_from_plaintext,
)
from services.enrollment.metrics import CHECKINS_REJECTED, COMMAND_POLLS, STATE, SYNC_DURATION
from services.enrollment.pairing import PairingPage
from shared import leases
from shared.auth import Actor, require_locations, visible
from shared.contracts.enrollment import DeviceEnrolled, DeviceUnenrolled, ServerTokenConnected
from shared.entrypoints import event_handler, http, periodic, rpc
from shared.errors import Conflict, NotFound, UpstreamError, ValidationError
from shared.metrics import GaugesFromDatabase
from shared.secrets import Secrets
from shared.service import OrchardService
from shared.storage import Database, database_now, utc_now

log = logging.getLogger(__name__)

SYNC_EVERY = (timedelta(hours=2), timedelta(hours=3))  # jittered so tokens spread over time
FIRST_SYNC_SAFETY_NET = timedelta(minutes=10)  # the scheduler's fallback if the upload's own sync never ran
MAX_LOCATIONS_PER_TOKEN = 1000
MAX_LOCATION_ID_LENGTH = 128  # the roster's longest id
ALREADY_CONNECTED = "This server token is already connected to an MDM server; renew it to replace its token."
PROGRESS_EVERY_SECONDS = 0.5  # how often a running sync's record shows its progress
# a sync that failed (Apple away, or an error of ours): try again soon from the saved cursor, not hours later;
# a few requests an hour during a long outage is no storm (and never before the time Apple gave with a 429)
FAILED_SYNC_RETRY = (timedelta(minutes=5), timedelta(minutes=10))
MAX_SERIALS_PER_CALL = 10_000
_UNCHANGED: Any = object()


class EnrollmentService(PairingPage, DevicePeopleEntrypoints, OrchardService):
    name = "enrollment"
    db = Database(tables.metadata, migrations="services.enrollment.migrations")
    secrets = Secrets()
    dep = DepConnection()
    sync_lease = SyncLeaseDuration()
    state_metrics = GaugesFromDatabase(STATE)

    # --- server tokens -----------------------------------------------------------------------

    @rpc
    def create_server_token(self, name: str) -> dict[str, Any]:
        """A new key pair; upload the returned certificate to Apple School Manager ("Add MDM server")."""
        actor = self.auth.require("enrollment:write")
        name = _checked_name(name)
        key_pem, certificate_pem = tpool.execute(generate_key_and_certificate, name)
        token_id = str(uuid.uuid4())
        TokenRepository(self.db.session).add(
            id=token_id, name=name, locations=list(actor.locations) if actor.is_location_bound else None,
            certificate_pem=certificate_pem.decode(), sealed_private_key=self.secrets.seal(key_pem),
            created_at=utc_now(), created_by=actor.id,
        )
        self.db.audit(actor, "server_token.created", f"server_token:{token_id}", {"name": name})
        return {"id": token_id, "public_key_pem": certificate_pem.decode()}

    @rpc(sensitive_arguments=("p7m",))
    def upload_server_token(self, token_id: str, p7m: str) -> dict[str, Any]:
        """Decrypt the ``.p7m`` from Apple School Manager, check it with Apple, then sync its devices."""
        actor = self.auth.require("enrollment:write")
        row = self._token_for_write(actor, token_id)
        if row.sealed_credentials is not None:
            raise Conflict(ALREADY_CONNECTED)
        credentials = self._decrypt(row, p7m)
        account = self._apple(lambda: self._client(credentials).account())
        self._refuse_duplicate(actor, row.id, credentials.consumer_key, account.get("server_uuid"))
        if TokenRepository(self.db.session).get(row.id, for_update=True).sealed_credentials is not None:
            raise Conflict(ALREADY_CONNECTED)  # another upload of this token finished while Apple was asked
        now = utc_now()
        TokenRepository(self.db.session).update(
            row.id, **_credential_values(self.secrets.seal(json.dumps(credentials.to_dict())), credentials, account),
            integrated_by=actor.id, integrated_at=now, next_sync_at=now + FIRST_SYNC_SAFETY_NET,
        )
        self.db.audit(actor, "server_token.uploaded", f"server_token:{row.id}",
                      {"server_name": account.get("server_name"), "org_name": account.get("org_name")})
        self.db.publish(ServerTokenConnected(token_id=row.id, server_name=account.get("server_name"),
                                             org_name=account.get("org_name")))
        return token_summary(TokenRepository(self.db.session).get(row.id))

    @rpc
    def list_server_tokens(self) -> list[dict[str, Any]]:
        actor = self.auth.require("enrollment:read")
        now = utc_now()
        return [token_summary(row, now) for row in TokenRepository(self.db.session).all() if visible(actor, row.locations)]

    @rpc
    def get_server_token(self, token_id: str) -> dict[str, Any]:
        actor = self.auth.require("enrollment:read")
        return token_summary(self._visible_token(actor, token_id))

    @rpc
    def update_server_token(self, token_id: str, name: str | None = None, locations: Any = _UNCHANGED) -> dict[str, Any]:
        """Rename, and/or restrict to ``locations`` (a list of location ids; None = every location)."""
        actor = self.auth.require("enrollment:write")
        row = self._token_for_write(actor, token_id)
        changes: dict[str, Any] = {}
        if name is not None:
            changes["name"] = _checked_name(name)
        if locations is not _UNCHANGED:
            changes["locations"] = _checked_locations(locations)
            require_locations(actor, changes["locations"])
            if changes["locations"] is not None:  # None: every location, whatever the roster holds
                require_roster_locations(changes["locations"], self.roster.list_locations())
        if not changes:
            raise ValidationError("Nothing to change: give a new name and/or the locations.")
        TokenRepository(self.db.session).update(row.id, **changes)
        self.db.audit(actor, "server_token.updated", f"server_token:{row.id}", changes)
        return token_summary(TokenRepository(self.db.session).get(row.id))

    @rpc(sensitive_arguments=("p7m",))
    def renew_server_token(self, token_id: str, p7m: str, force: bool = False) -> dict[str, Any]:
        """Replace the credentials with a newer token of the same MDM server (or another one, with force)."""
        actor = self.auth.require("enrollment:write")
        row = self._token_for_write(actor, token_id)
        if row.sealed_credentials is None:
            raise ValidationError("This server token has no token from Apple yet: upload one first.")
        if not isinstance(force, bool):
            raise ValidationError("force must be true or false")
        credentials = self._decrypt(row, p7m)
        check_same_mdm_server(current_consumer_key=row.consumer_key, new_consumer_key=credentials.consumer_key, force=force)
        client = self._client(credentials)
        account = self._apple(client.account)
        check_same_mdm_server(current_consumer_key=row.consumer_key, new_consumer_key=credentials.consumer_key,
                              current_server_uuid=row.server_uuid, new_server_uuid=account.get("server_uuid"), force=force)
        self._refuse_duplicate(actor, row.id, credentials.consumer_key, account.get("server_uuid"))
        values = _credential_values(self.secrets.seal(json.dumps(credentials.to_dict())), credentials, account)
        switched = row.server_uuid != account.get("server_uuid")
        if switched:  # another MDM server: start its device list from scratch
            values.update(cursor=None, cursor_phase=None, cursor_generation=None, next_sync_at=utc_now())
            if row.profile:  # the old server's profile uuid means nothing to the new one: define the profile there
                answer = self._apple(lambda: client.define_profile(row.profile))
                values["default_profile_uuid"] = answer.get("profile_uuid") or None
        TokenRepository(self.db.session).update(row.id, **values)
        self.db.audit(actor, "server_token.renewed", f"server_token:{row.id}",
                      {"server_name": account.get("server_name"), "forced": force, "switched_server": switched})
        return token_summary(TokenRepository(self.db.session).get(row.id))

    @rpc
    def delete_server_token(self, token_id: str) -> dict[str, Any]:
        actor = self.auth.require("enrollment:write")
        row = self._token_for_write(actor, token_id)
        TokenRepository(self.db.session).delete(row.id)
        self.db.audit(actor, "server_token.deleted", f"server_token:{row.id}", {"name": row.name})
        return {"id": row.id, "deleted": True}

    # --- devices -----------------------------------------------------------------------------

    @rpc
    def sync_devices(self, token_id: str, full: bool = False) -> dict[str, Any]:
        """The "Update" button: sync now (``full`` fetches every device again)."""
        actor = self.auth.require("enrollment:write")
        if not isinstance(full, bool):
            raise ValidationError("full must be true or false")
        row = self._token_for_write(actor, token_id)
        if row.sealed_credentials is None:
            raise ValidationError("Upload the token from Apple School Manager before syncing devices.")
        run = self._sync(row, full=full, trigger="manual")
        if run is None:
            raise Conflict("A sync of this server token is already running; follow it with "
                           f"`orchard enrollment token show {row.id}` (or the sync_runs RPC).")
        return run

    @rpc
    def sync_runs(self, token_id: str, limit: int = 20) -> list[dict[str, Any]]:
        actor = self.auth.require("enrollment:read")
        row = self._visible_token(actor, token_id)
        return SyncRunRepository(self.db.session).of_token(row.id, _checked_limit(limit, 500))

    @rpc
    def list_devices(self, token_id: str, profile_status: str | None = None, limit: int = 500,
                     after: str | None = None) -> dict[str, Any]:
        """A page of devices (by serial; continue with ``after=next_after``) and counts per profile status."""
        actor = self.auth.require("enrollment:read")
        row = self._visible_token(actor, token_id)
        if profile_status is not None and profile_status not in PROFILE_STATUSES:
            raise ValidationError(f"profile_status must be one of {', '.join(PROFILE_STATUSES)}")
        if after is not None and not isinstance(after, str):
            raise ValidationError("after must be a serial number")
        return list_devices(self.db.session, row.id, profile_status, _checked_limit(limit, 5000), after)

    @rpc
    def define_profile(self, token_id: str, profile: dict[str, Any]) -> dict[str, Any]:
        """Define the enrollment profile at Apple; it becomes the token's default for new devices."""
        actor = self.auth.require("enrollment:write")
        row = self._token_for_write(actor, token_id)
        profile = validated_profile(profile)
        answer = self._apple(lambda: self._client(self._credentials(row)).define_profile(profile), stored=row)
        profile_uuid = answer.get("profile_uuid")
        if not isinstance(profile_uuid, str) or not profile_uuid:
            raise UpstreamError("Apple accepted the profile but returned no profile_uuid; define it again.")
        TokenRepository(self.db.session).update(row.id, profile=profile, default_profile_uuid=profile_uuid)
        self.db.audit(actor, "profile.defined", f"server_token:{row.id}",
                      {"profile_uuid": profile_uuid, "profile_name": profile["profile_name"]})
        return {"profile_uuid": profile_uuid, "devices": answer.get("devices") or {}}

    @rpc
    def assign_profile(self, token_id: str, serial_numbers: list[str], profile_uuid: str | None = None) -> dict[str, Any]:
        actor = self.auth.require("enrollment:write")
        row = self._token_for_write(actor, token_id)
        serials = _checked_serials(serial_numbers)
        if profile_uuid is not None and not (isinstance(profile_uuid, str) and 0 < len(profile_uuid) <= 64):
            raise ValidationError("profile_uuid must be the profile_uuid Apple gave a defined profile (at most 64 "
                                  "characters), or left out for the token's profile.")
        profile_uuid = profile_uuid or row.default_profile_uuid
        if not isinstance(profile_uuid, str):
            raise ValidationError("No profile to assign: define the enrollment profile first, or name a profile_uuid.")
        devices = DeviceRepository(self.db.session, row.id, assigned_by=actor.id)
        assigner = ClientAssigner(self._client(self._credentials(row)))
        outcome = self._apple(lambda: assign_profile(assigner, devices, profile_uuid, serials, utc_now()), stored=row)
        self._sync_by_next_profile_retry(row, devices)
        self.db.audit(actor, "profile.assigned", f"server_token:{row.id}",
                      {"profile_uuid": profile_uuid, "devices": len(serials), "error": outcome.error})
        if outcome.apple_failed:
            # the caller learns that Apple failed; what Apple did answer is kept, and the rest wait for the sync
            self.db.commit()
            waiting = sum(1 for status in outcome.statuses.values() if status == ASSIGN_QUEUED)
            raise UpstreamError(f"{outcome.error} {waiting} of the {len(serials)} device(s) were not assigned: "
                                "the next sync asks Apple again for them within minutes (list_devices shows each "
                                "device's result).")
        return {"profile_uuid": profile_uuid, "devices": outcome.statuses,
                "retry_after_seconds": outcome.retry_after_seconds, "error": outcome.error}

    @rpc
    def fetch_roster(self, token_id: str, kind: str, cursor: str | None = None, sync: bool = False) -> dict[str, Any]:
        """One page of ASM classes, persons, locations or courses, through this token's session."""
        # the whole organisation's people: for the roster service's import (administrators and services),
        # which filters by location; a location leader or msp reading them here would bypass that
        actor = self.auth.require("enrollment:roster")
        row = self._visible_token(actor, token_id)
        if kind not in ROSTER_KINDS:
            raise ValidationError(f"kind must be one of {', '.join(ROSTER_KINDS)}")
        if cursor is not None and (not isinstance(cursor, str) or len(cursor) > 4096):
            raise ValidationError("cursor must be the string an earlier page returned")
        if not isinstance(sync, bool):
            raise ValidationError("sync must be true or false")
        page = self._apple(lambda: self._client(self._credentials(row)).roster_page(kind, cursor, sync=sync), stored=row)
        return {"kind": kind, "items": page.items, "cursor": page.cursor, "more_to_follow": page.more_to_follow}

    # --- scheduled and triggered syncs -------------------------------------------------------

    @periodic(interval=60)
    def sync_due_tokens(self) -> None:
        """Every 2–3 hours per token; the tick is short so another replica takes over quickly."""
        repository = TokenRepository(self.db.session)
        for token_id in repository.due_for_sync(utc_now()):
            try:
                self._sync(repository.get(token_id), full=False, trigger="scheduled")
            except Exception:  # recorded on the token and its run; the tokens after it still sync
                log.error("the scheduled device sync of server token %s failed", token_id, exc_info=True)

    @event_handler(ServerTokenConnected)
    def on_server_token_connected(self, event: ServerTokenConnected) -> None:
        try:
            row = TokenRepository(self.db.session).get(event.token_id)
        except NotFound:
            return  # deleted meanwhile
        if row.last_sync_at is None and row.sealed_credentials is not None:
            self._sync(row, full=True, trigger="upload")

    # --- MDM check-in ------------------------------------------------------------------------

    @http("PUT", CHECKIN_PATH)
    def checkin(self, request: Any) -> tuple[int, dict[str, str], str]:
        """Authenticate, TokenUpdate and CheckOut from devices, signed with the identity of their profile,
        and their polls of the server URL (the same URL), answered with no command.

        A missing or wrong ``Mdm-Signature`` gets 401, a malformed plist 400; either changes nothing.
        """
        if request.content_length is not None and request.content_length > MAX_CHECKIN_BYTES:
            raise MalformedCheckin(f"The check-in body is larger than {MAX_CHECKIN_BYTES} bytes.")
        body = request.stream.read(MAX_CHECKIN_BYTES + 1)
        identities = DeviceIdentityRepository(self.db.session)
        try:
            signer = verify_checkin_signature(request.headers.get(SIGNATURE_HEADER), body,
                                              self._device_ca_certificate(), utc_now())
            message = parse_checkin(body)
            authorize_checkin(message, signer, identities.fingerprint_of(message.udid),
                              require_signed=self.require_signed_checkins,
                              signer_retired=signer is not None and identities.is_retired(signer.fingerprint))
        except CheckinRejected as exc:
            CHECKINS_REJECTED.labels(exc.reason).inc()
            return 401, {"Content-Type": "text/plain"}, "The check-in is not signed with this device's Orchard identity."
        checkins = CheckinRepository(self.db.session)
        if isinstance(message, Authenticate):
            checkins.record(message.udid, "Authenticate", serial_number=message.serial_number, topic=message.topic,
                            enrolled=False)
            if signer is not None:
                identities.bind(message.udid, signer.fingerprint, utc_now())
        elif isinstance(message, CheckOut):
            serial = checkins.serial_of(message.udid)
            checkins.record(message.udid, "CheckOut", enrolled=False)
            identities.unbind(message.udid, utc_now())
            self.db.publish(DeviceUnenrolled(udid=message.udid, serial_number=serial, topic=message.topic))
        elif isinstance(message, CommandPoll):
            # Orchard queues no MDM commands: an empty answer tells the device there is nothing to do
            checkins.record(message.udid, f"Status {message.status}")
            COMMAND_POLLS.labels(message.status).inc()
        elif message.user_channel:
            checkins.record(message.udid, "TokenUpdate")
        else:
            serial = checkins.serial_of(message.udid)
            checkins.record(message.udid, "TokenUpdate", topic=message.topic, enrolled=True)
            self.db.publish(DeviceEnrolled(udid=message.udid, serial_number=serial, topic=message.topic,
                                           push_token=message.push_token, push_magic=message.push_magic))
        return 200, {"Content-Type": "text/plain"}, ""

    # --- helpers -----------------------------------------------------------------------------

    def _sync(self, row: Any, *, full: bool, trigger: str) -> dict[str, Any] | None:
        """Run one sync of ``row``'s devices unless one is running; the run's summary, or None."""
        session = self.db.session
        runs = SyncRunRepository(session)
        holder = uuid.uuid4().hex
        if not self._take_sync_lease(row.id, holder):
            return None
        kind = "fetch" if full or not row.cursor else "sync"
        run_id = runs.start(row.id, trigger, kind)
        self.db.commit()
        latest = SyncCounts(kind=kind)
        shown_at = 0.0

        def progress(counts: SyncCounts) -> None:
            nonlocal latest, shown_at
            heartbeat.check()  # the lease is lost: stop before this page's cursor is saved (it is rolled back)
            latest = replace(counts)  # what is committed with this page; ``counts`` goes on with the next one
            if time.monotonic() - shown_at >= PROGRESS_EVERY_SECONDS:  # not a statement per page: the end writes all
                shown_at = time.monotonic()
                runs.progress(run_id, counts)

        started, error, refusal = time.monotonic(), None, None
        apple_answered = False  # Apple served the device pages: the token and the terms are fine
        apple_wait = timedelta(0)  # how long Apple asked us not to call again
        devices = DeviceRepository(session, row.id, assigned_by=f"system:{self.name}")
        try:
            client = self._client(self._credentials(row))
            sync = DeviceSync(
                pages=ClientPages(client), store=devices,
                cursors=TokenCursorStore(session, row.id, self.db.commit), events=DeviceEventOutbox(self.db.publish, row.id),
                assigner=ClientAssigner(client), default_profile_uuid=row.default_profile_uuid, progress=progress,
                checkpoint=self.db.commit,
            )
            with leases.renewed(lambda: self._renew_sync_lease(row.id, holder),
                                self.sync_lease.total_seconds() / 3) as heartbeat:
                latest = sync.run(full=full)
            apple_answered = True
            if latest.assign_error:  # the pages are stored; the devices Apple failed to assign wait for the next sync
                error = (f"{latest.assign_error} The next sync, within minutes, asks Apple again for the enrollment "
                         "profile of the devices waiting for it.")
        except leases.LeaseLost:
            session.rollback()
            return self._lost_sync_lease(row.id, run_id, latest, started)
        except DepError as exc:
            session.rollback()  # the page in progress is redone next time: its cursor was not saved
            error, refusal = str(exc), _refusal_status(exc)
            if refusal and not self._holds_credentials_of(row):
                refusal, error = None, f"{error} The token was renewed meanwhile: the next sync uses its new credentials."
            if isinstance(exc, Throttled) and exc.retry_after:
                apple_wait = timedelta(seconds=exc.retry_after)
        except BaseException:
            session.rollback()
            self._release_sync_lease(row.id, holder, last_sync_at=utc_now(), last_sync_result="error",
                                     last_sync_error="internal error; see the enrollment service log",
                                     next_sync_at=_next_sync(FAILED_SYNC_RETRY))
            runs.finish(run_id, latest, "internal error; see the enrollment service log")
            self.db.commit()
            raise
        now = utc_now()
        outcome = "error" if error else "ok"
        next_sync_at = _next_sync(FAILED_SYNC_RETRY if error and refusal is None else SYNC_EVERY)
        retry = devices.next_profile_retry() if error is None else None  # a failed run is retried as such
        if retry is not None:  # throttled profile assignments are retried by the sync: run it when they are due
            next_sync_at = min(next_sync_at, retry)
        next_sync_at = max(next_sync_at, now + apple_wait)  # sooner would only be throttled again
        if apple_wait:
            error = f"{error} The next scheduled sync runs at {next_sync_at:%Y-%m-%d %H:%M:%S} UTC."
        values: dict[str, Any] = {
            "last_sync_at": now, "last_sync_result": outcome, "last_sync_error": error, "next_sync_at": next_sync_at,
        }
        # a refusal is recorded when Apple refuses, and cleared only by Apple answering (or a renewal): a run that
        # failed otherwise (Apple away a moment, a timeout) says nothing of the terms or the token
        if refusal or apple_answered:
            values["apple_refusal"] = refusal
        if error is None:
            values["last_successful_sync_at"] = now
        if not self._release_sync_lease(row.id, holder, **values):
            # taken between two renewals: the token's state is the new holder's to record
            return self._lost_sync_lease(row.id, run_id, latest, started)
        runs.finish(run_id, latest, error)
        self.db.commit()
        SYNC_DURATION.labels(latest.kind, outcome).observe(time.monotonic() - started)
        return runs.get(run_id)

    def _sync_by_next_profile_retry(self, row: Any, devices: DeviceRepository) -> None:
        """Bring the token's next scheduled sync forward to when its throttled assignments are due."""
        retry = devices.next_profile_retry()
        if retry is not None and (row.next_sync_at is None or retry < row.next_sync_at):
            TokenRepository(self.db.session).update(row.id, next_sync_at=retry)

    def _take_sync_lease(self, token_id: str, holder: str) -> bool:
        dialect = self.db.session.get_bind().dialect.name  # the lease's end is by the database's clock
        c = tables.server_tokens.c
        taken = self.db.session.execute(
            tables.server_tokens.update()
            .where(c.id == token_id, (c.sync_lease_until.is_(None)) | (c.sync_lease_until < database_now(dialect)))
            .values(sync_holder=holder, sync_lease_until=database_now(dialect, self.sync_lease))
        ).rowcount
        self.db.commit()
        return bool(taken)

    def _renew_sync_lease(self, token_id: str, holder: str) -> bool:
        """The running sync's heartbeat, on a connection of its own: the worker's transaction may be mid-page.

        False when the token no longer names ``holder``: our lease ran out and another replica took it.
        """
        c = tables.server_tokens.c
        with self.db.session.get_bind().begin() as connection:
            return bool(connection.execute(
                tables.server_tokens.update().where(c.id == token_id, c.sync_holder == holder)
                .values(sync_lease_until=database_now(connection.dialect.name, self.sync_lease))).rowcount)

    def _release_sync_lease(self, token_id: str, holder: str, **values: Any) -> bool:
        """End our hold on the token and record the run's outcome on it; False if the lease is no longer ours."""
        c = tables.server_tokens.c
        return bool(self.db.session.execute(
            tables.server_tokens.update().where(c.id == token_id, c.sync_holder == holder)
            .values(sync_holder=None, sync_lease_until=None, **values)).rowcount)

    def _lost_sync_lease(self, token_id: str, run_id: int, counts: SyncCounts, started: float) -> dict[str, Any]:
        """Record a run that stopped because another replica took its lease; the token row is the new holder's."""
        TokenRepository(self.db.session).get(token_id)  # NotFound if the lease went with a deleted token
        log.warning("the device sync of server token %s %s", token_id, SYNC_LEASE_LOST)
        runs = SyncRunRepository(self.db.session)
        runs.finish(run_id, counts, SYNC_LEASE_LOST)
        self.db.commit()
        SYNC_DURATION.labels(counts.kind, "lease_lost").observe(time.monotonic() - started)
        return runs.get(run_id)

    def _visible_token(self, actor: Actor, token_id: Any) -> Any:
        row = TokenRepository(self.db.session).get(token_id)
        if not visible(actor, row.locations):
            raise NotFound(f"there is no server token {token_id}; list the tokens to find the id")
        return row

    def _token_for_write(self, actor: Actor, token_id: Any) -> Any:
        row = self._visible_token(actor, token_id)
        require_locations(actor, row.locations)
        return row

    def _decrypt(self, row: Any, p7m: Any) -> OAuthCredentials:
        if not isinstance(p7m, str):
            raise ValidationError("The token must be the text of the .p7m file downloaded from Apple School Manager.")
        cms = cms_from_token_file(p7m)
        key_pem = self.secrets.open_bytes(row.sealed_private_key)
        plaintext = tpool.execute(decrypt_enveloped_data, cms, key_pem)
        return credentials_from_plaintext(plaintext, now=utc_now())

    def _credentials(self, row: Any) -> OAuthCredentials:
        if row.sealed_credentials is None:
            raise ValidationError("Upload the token from Apple School Manager first.")
        return OAuthCredentials.from_dict(json.loads(self.secrets.open(row.sealed_credentials)))

    def _client(self, credentials: OAuthCredentials) -> DepClient:
        return self.dep.client(credentials)

    def _refuse_duplicate(self, actor: Actor, token_id: str, consumer_key: str, server_uuid: str | None) -> None:
        for other in TokenRepository(self.db.session).all():
            if other.id != token_id and (other.consumer_key == consumer_key or (server_uuid and other.server_uuid == server_uuid)):
                if not visible(actor, other.locations):  # the caller may not know that token exists: name nothing
                    raise Conflict("This MDM server is already connected to Orchard by another server token; "
                                   "ask an administrator to renew that one instead.")
                raise Conflict(f"This MDM server is already connected as server token '{other.name}'; renew that one instead.")

    def _apple(self, call: Any, *, stored: Any = None) -> Any:
        """Run an Apple call for an RPC caller: Apple's refusals become errors the caller can type-check.

        When the call used the token's stored credentials (``stored``, the token's row) and Apple refuses the
        token itself, the token's status says so at once, as a sync would, not only after its next sync; unless
        the token was renewed meanwhile: Apple refused the credentials it replaced.
        """
        self.db.commit()  # read only so far: no database connection held while Apple answers (SQLite has one)
        try:
            return call()
        except CursorError as exc:
            raise Conflict(f"{exc} Start again without a cursor.") from None
        except DepError as exc:
            refusal = _refusal_status(exc)
            if stored is not None and refusal:
                # kept with the status: what the call recorded before Apple refused (earlier batches' results)
                if self._holds_credentials_of(stored):
                    TokenRepository(self.db.session).update(stored.id, apple_refusal=refusal)
                self.db.commit()
            raise UpstreamError(str(exc)) from None

    def _holds_credentials_of(self, row: Any) -> bool:
        return TokenRepository(self.db.session).holds_credentials(row.id, row.sealed_credentials)


def _refusal_status(error: DepError) -> str | None:
    """The token status an Apple error sets: the token itself refused, or None for anything passing."""
    if isinstance(error, TermsNotAccepted):
        return STATUS_TERMS_NOT_ACCEPTED
    if isinstance(error, AccessDenied):
        return STATUS_REVOKED_OR_INVALID
    return None


def _credential_values(sealed: str, credentials: OAuthCredentials, account: dict[str, Any]) -> dict[str, Any]:
    return {
        "sealed_credentials": sealed, "consumer_key": credentials.consumer_key,
        "access_token_expiry": credentials.access_token_expiry, "server_uuid": account.get("server_uuid"),
        "server_name": account.get("server_name"), "org_name": account.get("org_name"),
        "apple_admin_id": account.get("admin_id") or account.get("facilitator_id"), "apple_refusal": None,
    }


def _next_sync(window: tuple[timedelta, timedelta]) -> datetime:
    """When the scheduled sync next runs: jittered within ``window`` so tokens spread over time."""
    return utc_now() + timedelta(seconds=random.uniform(*(d.total_seconds() for d in window)))


def _checked_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise ValidationError("The server token needs a name of 1 to 200 characters.")
    return name.strip()


def _checked_locations(locations: Any) -> list[str] | None:
    if locations is None:
        return None
    if (not isinstance(locations, list) or not 0 < len(locations) <= MAX_LOCATIONS_PER_TOKEN
            or not all(isinstance(i, str) and i.strip() and len(i) <= MAX_LOCATION_ID_LENGTH for i in locations)):
        raise ValidationError(f"locations must be a list of 1 to {MAX_LOCATIONS_PER_TOKEN} location ids (each at most "
                              f"{MAX_LOCATION_ID_LENGTH} characters), or null for every location.")
    return sorted(set(locations))


def _checked_limit(limit: Any, maximum: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= maximum:
        raise ValidationError(f"limit must be a whole number from 1 to {maximum}")
    return limit


def _checked_serials(serials: Any) -> list[str]:
    if not isinstance(serials, list) or not serials or len(serials) > MAX_SERIALS_PER_CALL:
        raise ValidationError(f"serial_numbers must be a list of 1 to {MAX_SERIALS_PER_CALL} serial numbers.")
    if not all(isinstance(s, str) and 0 < len(s.strip()) <= 64 for s in serials):
        raise ValidationError("Every serial number must be a non-empty string of at most 64 characters.")
    return list(dict.fromkeys(s.strip() for s in serials))
