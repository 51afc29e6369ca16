"""The vpp service: Nameko entrypoints over the domain code in ``services.vpp.domain``."""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets as token_generator
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from services.vpp.adapters import tables
from services.vpp.adapters.apple_client import ManagedByAnotherMdm
from services.vpp.adapters.apple_connection import AppleConnection
from services.vpp.adapters.batched_events import batched_event_handler
from services.vpp.adapters.repository import VppRepository, asset_from_row
from services.vpp.domain.invites import InviteMethod, InviteStatus, invites_csv, plan_auto_invites
from services.vpp.domain.licence_reach import LicenceTarget, require_within_token
from services.vpp.domain.licences import (
    Asset, LicencePlan, NotEnoughLicences, ProductType, chunks, plan_assignment, plan_revocation, revocation_batches,
    revoke_all_selection, revoke_unknown_selection,
)
from services.vpp.domain.tokens import ContentToken, check_renewal, decode_content_token
from services.vpp.metrics import STATE
from services.vpp.operations import VppOperations
from services.vpp.views import asset_view, invite_view, token_view
from shared.auth import Actor, require_locations, visible
from shared.contracts.enrollment import DeviceEnrolled, DevicesAssigned, DevicesRemoved
from shared.contracts.roster import UserChanged, UserDeleted, UserImported, UserUpdated
from shared.entrypoints import ServiceRpc, event_handler, http, periodic, rpc
from shared.errors import NotFound, OrchardError, PermissionDenied, UpstreamError, ValidationError
from shared.leases import Heartbeat
from shared.mail import Mailer
from shared.metrics import GaugesFromDatabase
from shared.roster_lookups import classes_taught_by
from shared.secrets import Secrets
from shared.service import OrchardService
from shared.settings import ServiceSettings
from shared.storage import Database, utc_now

log = logging.getLogger(__name__)
T = TypeVar("T")

NOTIFICATION_TYPES = ["ASSET_MANAGEMENT", "ASSET_COUNT", "USER_MANAGEMENT", "USER_ASSOCIATED"]
MAX_IDS_PER_CALL = 20_000
SCOPE_DEVICES_PER_CALL = 10_000  # the devices one enrollment.device_locations call may name
REGISTRATION_ROUND = 1_600  # invites per round: 16 users/create calls in flight together
REGISTRATION_TICK_SECONDS = 5.0  # a tick that still finds work goes on this long (the lease holds 12 s)
RETIREMENT_ROUND = 1_000  # deleted users retired per run of retire_deleted_users
DEFAULT_SYNC_HOURS = 2.5
# a sync that failed (Apple away) is tried again soon, not hours later; a dozen requests an hour is no storm
FAILED_SYNC_RETRY = timedelta(minutes=5)
NOTIFICATIONS_KEPT = timedelta(days=14)  # how long a notification Apple sends again is known as handled
MAX_COUNT_DELTA = 1_000_000_000  # licences one ASSET_COUNT may add or take: well within the 32-bit counts
NAME_LENGTH = tables.content_tokens.c.location_name.type.length  # org and location names as stored
REGISTERED_MEANWHILE = "Apple registered this invite while the others were revoked; revoke it again to retire the user."


def _text(value: Any, what: str, limit: int = 200) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise ValidationError(f"{what} must be non-empty text of at most {limit} characters.")
    return value.strip()


def _ids(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, (list, tuple)) or len(value) > MAX_IDS_PER_CALL:
        raise ValidationError(f"{what} must be a list of at most {MAX_IDS_PER_CALL} entries.")
    return [_text(item, f"each of {what}") for item in value]


def _flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise ValidationError(f"{what} must be true or false.")
    return value


def _locations(value: Any) -> list[str]:
    return sorted(set(_ids(value, "locations")))


def _auto_invite_method(value: Any) -> str | None:
    if value is None:
        return None
    if InviteMethod.parse(value) is not InviteMethod.MANAGED_APPLE_ID:
        raise ValidationError("Automatic invites register users with their Managed Apple ID; choose 'managed_apple_id', "
                              "or invite by e-mail with the invite_users RPC.")
    return value


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _apple_location(config: dict[str, Any], token: ContentToken) -> tuple[str, str]:
    """Apple's ``(uId, locationName)``, the name cut to what is stored: PostgreSQL would refuse a longer one
    only after ``claim_location`` had moved the location here (adding and renewing cut it alike). The ``uId`` is
    what tells locations apart, so an answer without one is Apple's fault, not a location."""
    uid = str(config.get("uId") or "").strip()
    if not uid:
        raise UpstreamError("Apple's client configuration for this content token names no location (uId); "
                            "try again later, and if it persists download a new token in Apple School Manager.")
    return uid, str(config.get("locationName") or token.org_name)[:NAME_LENGTH]


def _other_mdm(config: dict[str, Any], ours: str) -> dict[str, Any] | None:
    """The ``mdmInfo`` of another MDM managing the location, if one does."""
    other = config.get("mdmInfo") or {}
    return other if other.get("id") and other["id"] != ours else None


class VppService(OrchardService):
    name = "vpp"
    db = Database(tables.metadata, migrations="services.vpp.migrations")
    secrets = Secrets()
    apple = AppleConnection()
    mailer = Mailer()
    settings = ServiceSettings()
    state_metrics = GaugesFromDatabase(STATE)
    enrollment = ServiceRpc("enrollment")  # resolves scopes and where devices are
    roster = ServiceRpc("roster")  # which classes a teacher teaches

    # --- helpers ----------------------------------------------------------------------------
    @property
    def repo(self) -> VppRepository:
        return VppRepository(self.db.session)

    @property
    def ops(self) -> VppOperations:
        return VppOperations(self.db, self.apple, self.secrets, self.mailer)

    def _token(self, actor: Actor, token_id: Any) -> Any:
        row = self.repo.token(token_id)
        if not visible(actor, row.locations or None):
            raise NotFound(f"There is no content token {token_id!r}; `orchard vpp token list` shows the ones there are.")
        return row

    def _writable_token(self, actor: Actor, token_id: Any) -> Any:
        row = self._token(actor, token_id)
        require_locations(actor, row.locations or None)
        return row

    def _notification_subscription(self, token_id: str) -> tuple[dict[str, Any], str | None]:
        public_url = self.settings.get("public_url")
        if not public_url:
            return {}, None
        secret = token_generator.token_urlsafe(32)
        return {"notification_url": f"{public_url.rstrip('/')}/vpp/notifications/{token_id}",
                "notification_auth_token": secret, "notification_types": NOTIFICATION_TYPES}, _hash(secret)

    # --- content tokens ---------------------------------------------------------------------
    @rpc(sensitive_arguments=("stoken",))
    def add_content_token(self, stoken: Any, name: Any = None, locations: Any = None, allow_teacher_study_apps: bool = False,
                          take_over: bool = False, auto_invite_method: Any = None) -> dict[str, Any]:
        actor = self.auth.require("vpp:write")
        if not isinstance(stoken, (str, bytes)):
            raise ValidationError("Pass the content of the .vpptoken file as text.")
        chosen_name = _text(name, "name") if name is not None else None
        access = _locations(locations)
        require_locations(actor, access or None)
        allow, take_over = _flag(allow_teacher_study_apps, "allow_teacher_study_apps"), _flag(take_over, "take_over")
        auto_invite = _auto_invite_method(auto_invite_method)
        now = utc_now()
        token = decode_content_token(stoken, now=now)
        client = self.apple.client(token.stoken)
        config = client.client_config(check_mdm=False)
        taken_from = _other_mdm(config, self.apple.mdm.id)
        if taken_from and not take_over:
            raise ManagedByAnotherMdm(taken_from, claim="add it here with take_over to claim it "
                                                        "(`orchard vpp token add FILE.vpptoken --take-over`)")
        uid, location_name = _apple_location(config, token)
        existing = self.repo.token_for_location(uid)
        if existing:
            raise ValidationError(f"The location {location_name!r} is already here as content token {existing.name!r} "
                                  f"({existing.id}); replace its token with `orchard vpp token renew {existing.id} "
                                  "FILE.vpptoken` (or the renew_content_token RPC).")
        token_id = str(uuid.uuid4())
        subscription, auth_hash = self._notification_subscription(token_id)
        self.db.commit()  # read only so far: no database connection held while Apple answers
        client.claim_location(**subscription)
        self.repo.add_token({
            "id": token_id, "name": chosen_name or location_name,
            "sealed_stoken": self.secrets.seal(token.stoken), "fingerprint": token.fingerprint,
            "org_name": token.org_name[:NAME_LENGTH],
            "location_uid": uid, "location_name": location_name, "country": config.get("countryISO2ACode"),
            "default_platform": config.get("defaultPlatform"),
            "expires_at": token.expires_at, "locations": access, "allow_teacher_study_apps": allow,
            "auto_invite_method": auto_invite, "notification_auth_hash": auth_hash, "revoked": False,
            "conflict_with": None, "added_by": actor.id, "added_at": now,
        })
        target = f"content_token:{token_id}"
        self.db.audit(actor, "content_token.added", target, {"fingerprint": token.fingerprint, "location": location_name})
        self._audit_take_over(actor, target, taken_from, location_name)
        return token_view(self.repo.token(token_id), now)

    def _audit_take_over(self, actor: Actor, target: str, taken_from: dict[str, Any] | None, location: str) -> None:
        if taken_from:
            self.db.audit(actor, "content_token.taken_over", target,
                          {"from_mdm": taken_from.get("name") or taken_from.get("id"), "location": location})

    @rpc
    def list_content_tokens(self) -> list[dict[str, Any]]:
        actor = self.auth.require("vpp:read")
        now = utc_now()
        return [token_view(row, now) for row in self.repo.tokens() if visible(actor, row.locations or None)]

    @rpc
    def get_content_token(self, token_id: Any) -> dict[str, Any]:
        actor = self.auth.require("vpp:read")
        return token_view(self._token(actor, token_id), utc_now())

    @rpc
    def update_content_token(self, token_id: Any, name: Any = None, locations: Any = None,
                             allow_teacher_study_apps: Any = None, auto_invite_method: Any = "unchanged") -> dict[str, Any]:
        """Change what is given; ``auto_invite_method=None`` turns automatic invites off."""
        actor = self.auth.require("vpp:write")
        row = self._writable_token(actor, token_id)
        changes: dict[str, Any] = {}
        if name is not None:
            changes["name"] = _text(name, "name")
        if locations is not None:
            changes["locations"] = _locations(locations)
            require_locations(actor, changes["locations"] or None)
        if allow_teacher_study_apps is not None:
            changes["allow_teacher_study_apps"] = _flag(allow_teacher_study_apps, "allow_teacher_study_apps")
        if auto_invite_method != "unchanged":
            changes["auto_invite_method"] = _auto_invite_method(auto_invite_method)
        if changes:
            self.repo.update_token(row.id, **changes)
            self.db.audit(actor, "content_token.updated", f"content_token:{row.id}", {"changed": sorted(changes)})
        return token_view(self.repo.token(row.id), utc_now())

    @rpc(sensitive_arguments=("stoken",))
    def renew_content_token(self, token_id: Any, stoken: Any, take_over: Any = False) -> dict[str, Any]:
        """Replace the token with a new one of the same location; ``take_over`` claims the location back from
        another MDM (audited). Invites Apple failed to register are queued again."""
        actor = self.auth.require("vpp:write")
        row = self._writable_token(actor, token_id)
        if not isinstance(stoken, (str, bytes)):
            raise ValidationError("Pass the content of the new .vpptoken file as text.")
        take_over = _flag(take_over, "take_over")
        now = utc_now()
        token = decode_content_token(stoken, now=now)
        client = self.apple.client(token.stoken)
        self.db.commit()  # read only so far: no database connection held while Apple answers
        config = client.client_config(check_mdm=False)
        uid, location_name = _apple_location(config, token)
        check_renewal(row.location_uid, uid)
        taken_from = _other_mdm(config, self.apple.mdm.id)
        if taken_from and not take_over:
            raise ManagedByAnotherMdm(taken_from, claim=(
                f"renew it here with take_over to claim the location back "
                f"(`orchard vpp token renew {row.id} FILE.vpptoken --take-over`)"))
        subscription, auth_hash = self._notification_subscription(row.id)
        client.claim_location(**subscription)
        self.repo.update_token(
            row.id, sealed_stoken=self.secrets.seal(token.stoken), fingerprint=token.fingerprint, expires_at=token.expires_at,
            org_name=token.org_name[:NAME_LENGTH], location_name=location_name, revoked=False, conflict_with=None,
            notification_auth_hash=auth_hash, country=config.get("countryISO2ACode") or row.country,
            default_platform=config.get("defaultPlatform") or row.default_platform,
            registration_attempts=0, registration_retry_at=None)  # its queued invites go to Apple at the next round
        requeued = self.repo.requeue_failed_invites(row.id, now)
        target = f"content_token:{row.id}"
        self.db.audit(actor, "content_token.renewed", target,
                      {"fingerprint": token.fingerprint, "invites_queued": requeued})
        self._audit_take_over(actor, target, taken_from, location_name)
        return token_view(self.repo.token(row.id), now)

    @rpc
    def delete_content_token(self, token_id: Any) -> dict[str, Any]:
        actor = self.auth.require("vpp:write")
        row = self._writable_token(actor, token_id)
        self.repo.delete_token(row.id)
        self.db.audit(actor, "content_token.deleted", f"content_token:{row.id}", {"location": row.location_name})
        return {"deleted": row.id}

    # --- assets -----------------------------------------------------------------------------
    @rpc
    def sync_assets(self, token_id: Any) -> dict[str, Any]:
        actor = self.auth.require("vpp:write")
        row = self._writable_token(actor, token_id)
        counts = self.ops.sync(row)
        return {**counts, "token": token_view(self.repo.token(row.id), utc_now())}

    @periodic(interval=60)
    def sync_due_tokens(self) -> None:
        """Re-read every token's assets, assignments and users every few hours."""
        hours = float(self.settings.get("sync_interval_hours") or DEFAULT_SYNC_HOURS)
        now = utc_now()
        for token_id in self.repo.tokens_due_for_sync(now - timedelta(hours=hours), now - FAILED_SYNC_RETRY):
            try:
                self.ops.sync(self.repo.token(token_id))
            except Exception as exc:  # recorded on the token (last_sync_error / status); tried again after
                # FAILED_SYNC_RETRY, and the tokens after it still sync
                if not isinstance(exc, OrchardError):
                    log.error("the scheduled sync of content token %s failed", token_id, exc_info=True)
            self.db.commit()

    @rpc
    def list_assets(self, token_id: Any, product_type: Any = None, include_hidden: Any = False) -> list[dict[str, Any]]:
        actor = self.auth.require("vpp:read")
        row = self._token(actor, token_id)
        kind = None
        if product_type is not None:
            kind = {"app": ProductType.APP.value, "book": ProductType.BOOK.value}.get(str(product_type).lower())
            if kind is None:
                raise ValidationError("product_type must be 'App' or 'Book' (or left out for both).")
        return [asset_view(a) for a in self.repo.assets(row.id, kind, _flag(include_hidden, "include_hidden"))]

    @rpc
    def get_asset(self, token_id: Any, adam_id: Any) -> dict[str, Any]:
        actor = self.auth.require("vpp:read")
        row = self._token(actor, token_id)
        asset = self.repo.asset(row.id, adam_id)
        holders = self.repo.holders(row.id, asset_from_row(asset))
        serials = sorted(h.serial_number for h in holders if h.serial_number)
        user_ids = sorted(h.client_user_id for h in holders if h.client_user_id)
        if actor.is_location_bound:
            serials, user_ids = self._holders_visible_to(actor, serials, user_ids)
        return {**asset_view(asset), "serial_numbers": serials, "user_ids": user_ids}

    def _holders_visible_to(self, actor: Actor, serials: list[str], user_ids: list[str]) -> tuple[list[str], list[str]]:
        """The holders in a location leader's locations (as ``list_invites`` shows only their users' invites):
        users where the roster puts them, devices where enrollment does."""
        where = self.repo.user_locations(user_ids)
        users = [user_id for user_id in user_ids if visible(actor, where.get(user_id, []))]
        self.db.commit()  # read only so far: no database connection held while enrollment answers
        shown: set[str] = set()
        for batch in chunks(serials, SCOPE_DEVICES_PER_CALL):
            shown.update(device["serial_number"] for device in self.enrollment.device_locations(batch)
                         if visible(actor, device["locations"]))
        return [serial for serial in serials if serial in shown], users

    @rpc
    def set_asset_hidden(self, token_id: Any, adam_id: Any, hidden: Any) -> dict[str, Any]:
        actor = self.auth.require("vpp:write")
        row = self._writable_token(actor, token_id)
        asset = self.repo.asset(row.id, adam_id)
        self.repo.set_hidden(row.id, asset.adam_id, _flag(hidden, "hidden"))
        self.db.audit(actor, "asset.hidden" if hidden else "asset.shown", f"content_token:{row.id}", {"adam_id": asset.adam_id})
        return asset_view(self.repo.asset(row.id, asset.adam_id))

    # --- licences ---------------------------------------------------------------------------
    @rpc
    def assign_licenses(self, token_id: Any, adam_id: Any, serial_numbers: Any = None, user_ids: Any = None,
                        scope: Any = None) -> dict[str, Any]:
        """Licences for devices and users, and for the devices a ``scope`` reaches today (``enrollment.resolve_scope``)."""
        actor = self.auth.require("vpp:write")
        row = self._writable_token(actor, token_id)
        serials, users = _ids(serial_numbers, "serial_numbers"), _ids(user_ids, "user_ids")
        self.db.commit()  # read only so far: no database connection held while enrollment answers
        reached = self.enrollment.resolve_scope(scope) if scope is not None else []
        self._require_within_token(row, serials, users, reached)
        serials = list(dict.fromkeys([*serials, *(device["serial_number"] for device in reached)]))
        with self.ops.licence_turn(row, [self.repo.asset(row.id, adam_id).adam_id]) as turn:
            return self._assign(actor, row, *self._plan_assignment(row, adam_id, serials, users), turn=turn)

    def _require_within_token(self, row: Any, serials: list[str], users: list[str], reached: list[dict]) -> None:
        """A token restricted to locations serves only devices and users there (checked before any Apple call)."""
        if not row.locations:
            return
        located = {device["serial_number"]: device["locations"] for device in reached}
        named = [serial for serial in serials if serial not in located]
        if named:
            located.update((device["serial_number"], device["locations"])
                           for device in self.enrollment.resolve_scope({"devices": named}))
        user_locations = self.repo.user_locations(users)
        require_within_token(row.name, row.locations, [
            *(LicenceTarget("device", serial, tuple(located[serial])) for serial in sorted(located)),
            *(LicenceTarget("user", user, tuple(user_locations.get(user, ()))) for user in users)])

    def _plan_assignment(self, row: Any, adam_id: Any, serials: list[str],
                         users: list[str]) -> tuple[Asset, LicencePlan]:
        """Check an assignment (holding the asset's turn, ``licence_turn``) before anything is asked of Apple."""
        asset = asset_from_row(self.repo.asset(row.id, adam_id))
        try:
            return asset, plan_assignment(asset, serials, users, self.repo.holders(row.id, asset))
        except NotEnoughLicences as short:  # only a shortage: a request refused for another reason waits for nothing
            self.repo.count_refusal(row.id, asset, short.shortage)
            self.db.commit()  # the alert on assets without licences needs to see the refusal
            raise

    def _assign(self, actor: Actor, row: Any, asset: Asset, plan: LicencePlan, *, turn: Heartbeat) -> dict[str, Any]:
        outcome = self.ops.run_licence_batches(row, asset, plan.batches(self.ops.limits(row)), assign=True, turn=turn)
        self.db.audit(actor, "licences.assigned", f"content_token:{row.id}", {
            "adam_id": asset.adam_id, "serial_numbers": len(outcome.serial_numbers), "users": len(outcome.user_ids),
            "failures": len(outcome.failures)})
        return {"adam_id": asset.adam_id, "assigned": outcome.to_json(), "already_assigned": list(plan.already_done)}

    @rpc
    def revoke_licenses(self, token_id: Any, adam_id: Any, serial_numbers: Any = None, user_ids: Any = None) -> dict[str, Any]:
        actor = self.auth.require("vpp:write")
        row = self._writable_token(actor, token_id)
        serials, users = _ids(serial_numbers, "serial_numbers"), _ids(user_ids, "user_ids")
        with self.ops.licence_turn(row, [self.repo.asset(row.id, adam_id).adam_id]) as turn:
            asset = asset_from_row(self.repo.asset(row.id, adam_id))
            plan = plan_revocation(asset, serials, users, self.repo.holders(row.id, asset))
            limits = self.ops.limits(row)  # asked of Apple only for a revocation the rules allow
            outcome = self.ops.run_licence_batches(row, asset, plan.batches(limits), assign=False, turn=turn)
            self.db.audit(actor, "licences.revoked", f"content_token:{row.id}", {
                "adam_id": asset.adam_id, "serial_numbers": len(outcome.serial_numbers), "users": len(outcome.user_ids),
                "failures": len(outcome.failures)})
        return {"adam_id": asset.adam_id, "revoked": outcome.to_json(), "not_assigned": list(plan.already_done)}

    @rpc
    def revoke_all(self, token_id: Any, dry_run: Any = True) -> dict[str, Any]:
        actor = self.auth.require("vpp:write")
        row = self._writable_token(actor, token_id)
        selection = revoke_all_selection(self.repo.all_assignments(row.id), self.repo.assets_by_key(row.id))
        return self._revoke_selection(actor, row, selection, _flag(dry_run, "dry_run"), "revoke_all")

    @rpc
    def revoke_unknown(self, token_id: Any, dry_run: Any = True) -> dict[str, Any]:
        actor = self.auth.require("vpp:write")
        row = self._writable_token(actor, token_id)
        serials, users = self.repo.known_holders()
        selection = revoke_unknown_selection(self.repo.all_assignments(row.id), self.repo.assets_by_key(row.id), serials, users)
        return self._revoke_selection(actor, row, selection, _flag(dry_run, "dry_run"), "revoke_unknown")

    def _revoke_selection(self, actor: Actor, row: Any, selection: list, dry_run: bool, action: str) -> dict[str, Any]:
        listed = [{"adam_id": a.adam_id, "pricing_param": a.pricing_param, "serial_number": a.serial_number,
                   "user_id": a.client_user_id} for a in selection]
        result: dict[str, Any] = {"dry_run": dry_run, "count": len(listed), "assignments": listed}
        if dry_run:
            return result
        assets = self.repo.assets_by_key(row.id)
        failures, events, revoked = [], [], 0
        batches = revocation_batches(selection, self.ops.limits(row))
        for number, batch in enumerate(batches, 1):
            done = f"{revoked} licence(s) were revoked ({number - 1} of {len(batches)} requests)"
            # each completed batch stays recorded (the turn commits it) even if a later one fails
            with self.ops.step(row, number, done), self.ops.licence_turn(row, [batch.adam_id]) as turn:
                outcome = self.ops.run_licence_batches(row, assets[(batch.adam_id, batch.pricing_param)], [batch],
                                                       assign=False, turn=turn)
            failures += [{"adam_id": batch.adam_id, **f} for f in outcome.failures]
            events += outcome.events
            revoked += len(outcome.serial_numbers) + len(outcome.user_ids)
        result.update(failures=failures, events=events)
        self.db.audit(actor, f"licences.{action}", f"content_token:{row.id}", {"count": len(listed), "failures": len(failures)})
        return result

    # --- invites ----------------------------------------------------------------------------
    @rpc
    def invite_users(self, token_id: Any, user_ids: Any, method: Any = "managed_apple_id") -> dict[str, Any]:
        actor = self.auth.require("vpp:write")
        row = self._writable_token(actor, token_id)
        how = InviteMethod.parse(method)
        wanted = list(dict.fromkeys(_ids(user_ids, "user_ids")))
        if not wanted:
            raise ValidationError("Name at least one user to invite.")
        known = self.repo.known_users(wanted)
        unknown = [u for u in wanted if u not in known]
        if unknown:
            raise ValidationError(f"{len(unknown)} user(s) are not in the roster ({', '.join(unknown[:10])}); import them first.")
        field = "email" if how is InviteMethod.EMAIL else "managed_apple_id"
        lacking = [u for u in wanted if not getattr(known[u], field)]
        if lacking:
            raise ValidationError(f"{len(lacking)} user(s) have no {field.replace('_', ' ')} in the roster "
                                  f"({', '.join(lacking[:10])}); add it there or use the other invite method.")
        self._require_within_token(row, [], wanted, [])  # as for licences: a token of some locations serves theirs
        now = utc_now()
        # new invites, and revoked or failed ones invited again; what this call queued, not what it read: a
        # concurrent call for the same users queues each once. Written once Apple registered them, so an error
        # means nothing was changed (README, "Guarantees"); a repeat is safe, as Apple answers 9716 for users it
        # already registered
        invited, totals = self.ops.invite(row, [_invite_row(row.id, known[u], how, now) for u in wanted])
        already = [u for u in wanted if u not in invited]
        if invited:
            self.db.audit(actor, "invites.sent", f"content_token:{row.id}",
                          {"method": how.value, "users": len(invited)})
        mail_failures, mail_error = [], None
        if how is InviteMethod.EMAIL:
            try:  # this call's invites (the mail job mails the others), once they are committed
                mailed = self.ops.email_invites(self.repo.invites_to_email(utc_now(), row.id, wanted))
                mail_failures, mail_error = mailed.failures, mailed.error
            except OrchardError as exc:
                mail_error = str(exc)
        invites = self.repo.invites(row.id, user_ids=wanted)
        return {"invited": len(invited), "already_invited": already, **totals,
                "failures": [{"user_id": r.user_id, "message": r.apple_error} for r in invites if r.apple_state == "failed"],
                "mail_failures": mail_failures, "mail_error": mail_error}

    @rpc
    def list_invites(self, token_id: Any, status: Any = None) -> list[dict[str, Any]]:
        """The token's invites (a location leader's: those of users in their locations), with their links. When Apple
        cannot be asked (the token revoked or expired, Apple away), the stored invites are listed all the same, and
        those whose link is missing say why (``invite_url_error``)."""
        actor = self.auth.require("vpp:read")
        row = self._token(actor, token_id)
        wanted = InviteStatus.parse(status).value if status is not None else None
        unavailable = None
        if self.repo.invites_missing_codes(row.id):
            _, unavailable = self._from_apple(row, lambda: self.ops.refresh_invites(row))
        rows = self.repo.invites(row.id, wanted)
        if actor.is_location_bound:
            where = self.repo.invited_user_locations(row.id)
            rows = [r for r in rows if visible(actor, where.get(r.user_id, []))]
        self.db.commit()  # read only: no database connection held while Apple answers
        template = None
        if any(r.invite_code for r in rows):
            template, failed = self._from_apple(row, lambda: self.ops.invite_url_template(row))
            unavailable = unavailable or failed
        return [invite_view(r, template, unavailable) for r in rows]

    @staticmethod
    def _from_apple(row: Any, read: Callable[[], T]) -> tuple[T | None, str | None]:
        """What ``read`` got from Apple, or None and why Apple could not be asked (logged): a read answers from what
        is stored."""
        try:
            return read(), None
        except OrchardError as exc:
            log.warning("the invites of content token %s are listed as stored: %s", row.id, exc)
            return None, exc.message

    @rpc
    def export_invites(self, token_id: Any) -> str:
        return invites_csv(self.list_invites(token_id))

    @rpc
    def resend_invites(self, token_id: Any, user_ids: Any = None) -> dict[str, Any]:
        actor = self.auth.require("vpp:write")
        row = self._writable_token(actor, token_id)
        ids = _ids(user_ids, "user_ids") if user_ids is not None else None
        pending = [r for r in self.repo.invites(row.id, InviteStatus.PENDING.value, ids)
                   if r.method == InviteMethod.EMAIL.value and r.invite_code and r.email]
        mailed = self.ops.email_invites(pending, resend=True)
        if mailed.error:
            self.db.commit()  # when the others are tried again (what the relay answered for is committed)
            done = (f"Before that, {mailed.sent} of {len(pending)} invite e-mail(s) were sent; resend the others"
                    if mailed.sent else "Resend them")
            raise UpstreamError(f"{mailed.error} {done} once the relay works again.")
        self.db.audit(actor, "invites.resent", f"content_token:{row.id}", {"count": mailed.sent})
        return {"resent": mailed.sent, "failures": mailed.failures}

    @rpc
    def revoke_invites(self, token_id: Any, user_ids: Any) -> dict[str, Any]:
        """Revoke invites: those Apple never registered are withdrawn here; registered users are retired at Apple,
        and only the invites of those Apple retired are revoked (the others are in ``failures``)."""
        actor = self.auth.require("vpp:write")
        row = self._writable_token(actor, token_id)
        rows = [r for r in self.repo.invites(row.id, user_ids=_ids(user_ids, "user_ids")) if r.status != InviteStatus.REVOKED.value]
        at_apple = [r.user_id for r in rows if r.apple_state in ("registered", "retiring")]
        retired, failures = self.ops.retire_invited(row, at_apple) if at_apple else ([], [])
        # withdrawn once Apple has answered, so that an Apple failure changes nothing
        unregistered = [r.user_id for r in rows if r.apple_state in ("queued", "failed")]
        withdrawn = self.repo.withdraw_invites(row.id, unregistered)
        failures += [{"user_id": user_id, "message": REGISTERED_MEANWHILE} for user_id in unregistered
                     if user_id not in withdrawn]
        revoked = len(withdrawn) + len(retired)
        self.db.audit(actor, "invites.revoked", f"content_token:{row.id}",
                      {"count": revoked, "failures": len(failures)})
        return {"revoked": revoked, "failures": failures}

    @periodic(interval=1)
    def register_invites(self) -> None:
        """Register queued invites (from imports and retried ones) with Apple, then mail e-mail invites.

        Rounds of bounded size, for at most ``REGISTRATION_TICK_SECONDS``, so a tick ends well within its
        lease and another replica never registers the same users at the same time.
        """
        deadline = time.monotonic() + REGISTRATION_TICK_SECONDS
        while True:
            outcome = self.ops.register_queued(limit=REGISTRATION_ROUND)
            self.db.commit()
            if outcome["registered"] + outcome["failed"] < REGISTRATION_ROUND or time.monotonic() > deadline:
                break
        try:
            error = self.ops.email_invites(self.repo.invites_to_email(utc_now())).error
        except OrchardError as exc:  # Apple's invitation link could not be read
            error = str(exc)
        if error:
            log.warning("invite e-mails wait for a later run: %s", error)

    @batched_event_handler(UserImported)
    def on_user_imported(self, events: list[UserImported]) -> None:
        """Remember imported users; tokens with auto-invite register them with Apple (see ``register_invites``)."""
        repo = self.repo
        latest = {event.user_id: event for event in _latest_per_user(events)}
        repo.remember_users([_known_user(event) for event in latest.values()])
        policies = repo.auto_invite_policies()
        if not policies:
            return
        # invites follow the stored details: an import older than them (a later import or a deletion won) plans none
        for user_id in repo.superseded_users({user_id: event.occurred() for user_id, event in latest.items()}):
            del latest[user_id]
        invited = repo.invited_pairs(list(latest))
        now = utc_now()
        rows = []
        for event in latest.values():
            for planned in plan_auto_invites(user_id=event.user_id, user_locations=event.locations,
                                             managed_apple_id=event.managed_apple_id, policies=policies,
                                             already_invited=lambda token_id, user_id: (token_id, user_id) in invited):
                rows.append({"token_id": planned.token_id, "user_id": planned.user_id,
                             "method": InviteMethod.MANAGED_APPLE_ID.value, "name": event.name, "email": event.email,
                             "managed_apple_id": planned.managed_apple_id, "status": InviteStatus.PENDING.value,
                             "apple_state": "queued", "invited_at": now})
        repo.queue_invites(rows)

    @batched_event_handler(UserUpdated)
    def on_user_updated(self, events: list[UserUpdated]) -> None:
        """Keep users' details current (the address an invite is mailed to when the user is invited again), and follow
        a new user ID (``previous_user_id``): the user's invites, licences and retirements move to it, while Apple
        keeps knowing the user by the clientUserId it registered, which cannot change. A late event follows what the
        roster did since: a later rename or deletion of the new ID (``VppRepository.follow_new_user_id``)."""
        stale = _follow_new_user_ids(self.repo, events)
        self.repo.remember_users([_known_user(e) for e in _latest_per_user([e for e in events if e.event_id not in stale])])

    @event_handler(UserDeleted)
    def on_user_deleted(self, event: UserDeleted) -> None:
        """Forget the user (revoke_unknown no longer counts them as ours); ``retire_deleted_users`` revokes their
        revocable licences and retires them at Apple. Their books stay: Apple never takes a book back."""
        repo = self.repo
        if repo.forget_user(event.user_id, event.occurred()):
            repo.request_retirements(event.user_id, utc_now())

    @periodic(interval=2)
    def retire_deleted_users(self) -> None:
        """Retire users the roster deleted, token by token; a failure is retried later with a growing delay."""
        for token_id, user_ids in self.repo.due_retirements(utc_now(), RETIREMENT_ROUND).items():
            try:
                self.ops.retire_users(self.repo.token(token_id), user_ids)
            except OrchardError as exc:  # nothing was written: Apple's answers are applied only at the end
                self.repo.retirements_failed(token_id, user_ids, str(exc), utc_now())
                log.warning("retiring %d deleted user(s) of content token %s waits for a retry: %s", len(user_ids), token_id, exc)
            self.db.commit()

    @event_handler(DeviceEnrolled)
    def on_device_enrolled(self, event: DeviceEnrolled) -> None:
        self.repo.remember_devices([event.serial_number] if event.serial_number else [], event.occurred())

    @event_handler(DevicesAssigned)
    def on_devices_assigned(self, event: DevicesAssigned) -> None:
        self.repo.remember_devices((device.serial_number for device in event.devices), event.occurred())

    @event_handler(DevicesRemoved)
    def on_devices_removed(self, event: DevicesRemoved) -> None:
        """Devices gone from our MDM servers are strangers again to ``revoke_unknown``."""
        self.repo.forget_devices(event.serial_numbers, event.occurred())

    # --- teachers ---------------------------------------------------------------------------
    def _study_token(self, token_id: Any) -> tuple[Actor, Any]:
        actor = self.auth.require("vpp:study_apps")
        row = self._token(actor, token_id)
        if not row.allow_teacher_study_apps:
            raise PermissionDenied("This content token does not let teachers choose study apps; "
                                   "an administrator can allow it with the update_content_token RPC "
                                   "(allow_teacher_study_apps).")
        return actor, row

    @rpc
    def list_study_apps(self, token_id: Any) -> list[dict[str, Any]]:
        _, row = self._study_token(token_id)
        return [asset_view(a) for a in self.repo.assets(row.id, ProductType.APP.value) if a.device_assignable]

    @rpc
    def install_study_apps(self, token_id: Any, adam_ids: Any, serial_numbers: Any = None,
                           class_id: Any = None) -> list[dict[str, Any]]:
        """Install apps device-based on a class's student devices (``class_id``) or on given devices (a teacher's:
        devices of their own students)."""
        actor, row = self._study_token(token_id)
        study = {a.adam_id for a in self.repo.assets(row.id, ProductType.APP.value) if a.device_assignable}
        apps = _ids(adam_ids, "adam_ids")
        outside = [a for a in apps if a not in study]
        if outside:
            raise ValidationError(f"{', '.join(outside)} are not study apps of this token; pick from those the "
                                  "list_study_apps RPC lists.")
        if (serial_numbers is None) == (class_id is None):
            raise ValidationError("Name either a class (class_id) or the devices (serial_numbers).")
        self.db.commit()  # read only so far: no database connection held while the roster and enrollment answer
        if class_id is not None:
            devices = self._class_devices(actor, _text(class_id, "class_id"))
            serials = [device["serial_number"] for device in devices]
        else:
            serials = _ids(serial_numbers, "serial_numbers")
            devices = self._devices_of_teacher(actor, serials) if actor.role == "teacher" else []
        self._require_within_token(row, serials, [], devices)
        installed: list[dict[str, Any]] = []
        with self.ops.licence_turn(row, apps) as turn:
            # every app is checked (licences left, hidden, books) before Apple assigns any
            plans = [self._plan_assignment(row, adam_id, serials, []) for adam_id in apps]
            for number, (asset, plan) in enumerate(plans, 1):
                done = "; ".join(f"app {i['adam_id']} was installed on {len(i['assigned']['serial_numbers'])} device(s)"
                                 for i in installed)
                with self.ops.step(row, number, done):
                    installed.append(self._assign(actor, row, asset, plan, turn=turn))
        return installed

    def _students_devices(self, class_ids: list[str]) -> list[dict[str, Any]]:
        """The devices of the classes' students, as the roster and device assignments say today."""
        return self.enrollment.resolve_scope({"classes": class_ids, "user_types": ["student"]})

    def _class_devices(self, actor: Actor, class_id: str) -> list[dict[str, Any]]:
        if actor.role == "teacher" and class_id not in classes_taught_by(self.roster, actor.id):
            raise PermissionDenied(f"You do not teach class {class_id}; a teacher installs study apps for their own classes.")
        devices = self._students_devices([class_id])
        if not devices:
            raise ValidationError(f"No devices are assigned to the students of class {class_id}.")
        return devices

    def _devices_of_teacher(self, actor: Actor, serials: list[str]) -> list[dict[str, Any]]:
        """A teacher naming devices reaches the same devices as through their classes: those of their students
        (a student's own iPad, say), never a device elsewhere in the school."""
        taught = sorted(classes_taught_by(self.roster, actor.id))
        theirs = {device["serial_number"]: device for device in (self._students_devices(taught) if taught else [])}
        others = [serial for serial in serials if serial not in theirs]
        if others:
            raise PermissionDenied(f"{len(others)} device(s) are not those of your students at your locations "
                                   f"({', '.join(others[:10])}); a teacher installs study apps on the devices of students "
                                   "in the classes they teach.")
        return [theirs[serial] for serial in serials]

    # --- Apple's notifications --------------------------------------------------------------
    @http("POST", "/vpp/notifications/<token_id>")
    def apple_notification(self, request: Any, token_id: str) -> tuple[int, str]:
        row = self.repo.token(token_id)
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if (scheme.lower() != "bearer" or not row.notification_auth_hash
                or not hmac.compare_digest(_hash(presented), row.notification_auth_hash)):
            raise PermissionDenied("The notification's bearer token is not the one Orchard gave Apple for this content token.")
        try:
            body = json.loads(request.get_data() or b"{}")
        except ValueError:
            raise ValidationError("The notification body is not JSON.") from None
        body = body if isinstance(body, dict) else {}
        if self._first_delivery(row, body):
            self._apply_notification(row, body)
        return 200, ""

    def _first_delivery(self, row: Any, body: dict[str, Any]) -> bool:
        """False for a notification handled before: Apple sends one again when our answer did not reach it, and an
        ASSET_COUNT applied twice would count its licences twice. Its ``notificationId`` is recorded in the same
        transaction as its effects, and kept two weeks."""
        notification_id = _note_text(body, "notificationId", 200)
        now = utc_now()
        return notification_id is None or self.repo.first_notification(row.id, notification_id, now,
                                                                       now - NOTIFICATIONS_KEPT)

    def _apply_notification(self, row: Any, body: dict[str, Any]) -> None:
        kind, note, now = body.get("notificationType"), body.get("notification") or {}, utc_now()
        if not isinstance(note, dict):
            raise ValidationError("The notification's 'notification' is not a JSON object.")
        repo = self.repo
        if kind in ("ASSET_MANAGEMENT", "USER_MANAGEMENT") and note.get("eventId"):
            status = "COMPLETE" if note.get("result") == "SUCCESS" else "FAILED"
            if note.get("error") is not None and not isinstance(note["error"], dict):
                raise ValidationError("The notification's error is not a JSON object.")
            failures = [note["error"]] if note.get("error") else []
            event_type = _note_text(note, "type", 20) or kind
            repo.record_event(row.id, _note_text(note, "eventId", 64), event_type, status, failures, now)
        elif kind == "ASSET_COUNT" and note.get("adamId"):
            repo.adjust_asset_count(row.id, _note_text(note, "adamId", 40), _note_text(note, "pricingParam", 10) or "STDQ",
                                    _count_delta(note.get("countDelta")))
            # a sync running now read Apple's counts before this change and would write them back: the token is due
            # again, so the next scheduled sync reads the new count (this waits for a running sync's commit)
            repo.update_token(row.id, sync_attempted_at=None)
        elif kind == "USER_ASSOCIATED":
            associated = note.get("associatedUsers") or []
            if not isinstance(associated, list) or not all(isinstance(u, dict) for u in associated):
                raise ValidationError("The notification's associatedUsers is not a list of JSON objects.")
            users = [{"clientUserId": _note_text(u, "clientUserId", 200), "status": "Associated"} for u in associated]
            repo.apply_apple_users(row.id, users, now)


def _note_text(note: dict[str, Any], key: str, limit: int) -> str | None:
    """A notification's identifier as text within what is stored (Apple sends adamIds as numbers at times)."""
    value = note.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if value is not None and (not isinstance(value, str) or len(value) > limit):
        raise ValidationError(f"The notification's {key} is not text of at most {limit} characters.")
    return value


def _count_delta(value: Any) -> int:
    """ASSET_COUNT's change in licences: a whole number (booleans and text are not) that the counts can hold."""
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or abs(value) > MAX_COUNT_DELTA:
        raise ValidationError("The notification's countDelta is not a whole number of licences.")
    return value


def _invite_row(token_id: str, user: Any, method: InviteMethod, now: Any) -> dict[str, Any]:
    return {"token_id": token_id, "user_id": user.user_id, "method": method.value, "name": user.name, "email": user.email,
            "managed_apple_id": user.managed_apple_id, "status": InviteStatus.PENDING.value, "apple_state": "queued",
            "invited_at": now}


def _latest_per_user(events: list[UserChanged]) -> list[UserChanged]:
    """Each user's newest event of a batch: a late, older one must not win over a newer one."""
    latest: dict[str, UserChanged] = {}
    for event in events:
        if event.user_id not in latest or latest[event.user_id].occurred() <= event.occurred():
            latest[event.user_id] = event
    return list(latest.values())


def _follow_new_user_ids(repo: VppRepository, events: list[UserUpdated]) -> set[str]:
    """Follow the events' new user IDs; the ids of the events too old to (a late, older event changes nothing)."""
    stale = set()
    # in the order they happened, each against what the ones before left: a batch may rename a user twice
    for event in sorted((e for e in events if e.previous_user_id not in (None, e.user_id)), key=UserUpdated.occurred):
        followed = repo.follow_new_user_id(event.previous_user_id, event.user_id, event.occurred(), utc_now())
        if followed is None:
            stale.add(event.event_id)
        elif followed.user_id is None:
            log.info("user %s became %s, whom the roster has deleted since: %s is retired as they would have been",
                     event.previous_user_id, event.user_id, event.previous_user_id)
        elif followed.kept:
            log.warning("user %s is now %s, but content token(s) %s already know %s as another Apple user: the rows "
                        "of %s stay there as they are", event.previous_user_id, followed.user_id,
                        ", ".join(followed.kept), followed.user_id, event.previous_user_id)
    return stale


def _known_user(event: UserChanged) -> dict[str, Any]:
    return {"user_id": event.user_id, "name": event.name, "email": event.email,
            "managed_apple_id": event.managed_apple_id, "locations": list(event.locations),
            "changed_at": event.occurred()}
