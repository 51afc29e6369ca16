"""The roster service: Nameko entrypoints over the domain code in ``services.roster.domain``."""
from __future__ import annotations

import base64
import dataclasses
import binascii
import json
import logging
from typing import Any

from eventlet import tpool
from eventlet.semaphore import Semaphore
from werkzeug.wrappers import Request, Response

from services.roster import metrics
from services.roster.adapters import asm, spreadsheets, tables
from services.roster.adapters.api_tokens import ApiTokens, describe, parse_allowed_ips
from services.roster.adapters.hierarchy import SqlHierarchy
from services.roster.adapters.imports import ImportRunner
from services.roster.adapters.mosyle_http import MosyleApi, RefusalAudits
from services.roster.adapters.queries import RosterQueries
from services.roster.adapters.welcome_mails import WelcomeMails, send_due
from services.roster.domain import asm_mapping, planning
from services.roster.domain.device_preassignment import DeviceAssignmentFailure, assign_devices, device_assignments
from services.roster.domain.mosyle_api import MAX_PAGE, MAX_PAGE_SIZE
from services.roster.domain.mosyle_openapi import openapi_document
from shared.arguments import row_id
from shared.auth import Actor, require_locations, visible
from shared.contracts.roster import USER_TYPES, ImportBatch
from shared.entrypoints import ServiceRpc, http, periodic, rpc
from shared.errors import EXPECTED_ERRORS, NotFound, PermissionDenied, ValidationError
from shared.mail import Mailer
from shared.service import OrchardService
from shared.storage import Database, utc_now

log = logging.getLogger(__name__)

WELCOME_MAILS_PER_ROUND = 100
SPREADSHEET_READS = Semaphore(1)
MAX_USER_IDS_PER_CALL = 1_000  # users_in_scope(user_ids=...): enrollment asks for an import's users in batches


class RosterService(OrchardService):
    name = "roster"
    db = Database(tables.metadata, migrations="services.roster.migrations")
    enrollment = ServiceRpc("enrollment")
    refusal_audits = RefusalAudits()
    mailer = Mailer()

    # ------------------------------------------------------------ imports

    @rpc
    def preview_records(self, batch: dict, options: dict | None = None) -> dict[str, Any]:
        """Preview an ``ImportBatch`` from any source; returns the plan summary and ``plan_id``."""
        actor = self.auth.require("roster:write")
        records = ImportBatch.from_dict(batch, what="batch")
        return self._runner().preview(records, self._options(actor, options), actor=actor,
                                      origin=records.source)

    @rpc
    def apply_plan(self, plan_id: str, allow_mass_delete: bool = False) -> dict[str, Any]:
        actor = self.auth.require("roster:write")
        _require_str(plan_id, "plan_id")
        if not isinstance(allow_mass_delete, bool):
            raise ValidationError("allow_mass_delete must be true or false")
        if allow_mass_delete and actor.is_location_bound:  # as with max_user_delete_share: the guard is the district's
            raise PermissionDenied(f"a {actor.role} cannot approve a mass deletion; ask an administrator to apply "
                                   f"plan {plan_id} with allow_mass_delete")
        result = self._runner().apply(plan_id, actor=actor, allow_mass_delete=allow_mass_delete)
        if not result["already_applied"]:
            self.db.audit(actor, "import.applied", f"plan:{plan_id}",
                          {"applied": result["applied"], "allow_mass_delete": allow_mass_delete})
            assigned, failures = self._preassign_devices(plan_id)
            result["device_assignments"] = {"assigned": assigned, "failed": [f.to_dict() for f in failures]}
        return result

    @rpc
    def spreadsheet_template(self, fmt: str = "xlsx") -> dict[str, str]:
        """The import template: ``{"filename", "content_b64"}`` (XLSX, or a zip of CSV files)."""
        self.auth.require("roster:read")
        content = tpool.execute(spreadsheets.spreadsheet_template, fmt)  # openpyxl: ~0.6 s of CPU, off the hub
        extension = "xlsx" if fmt == "xlsx" else "zip"
        return {"filename": f"orchard-roster-template.{extension}",
                "content_b64": base64.b64encode(content).decode()}

    @rpc
    def preview_spreadsheet(self, filename: str, content_b64: str,
                            options: dict | None = None) -> dict[str, Any]:
        actor = self.auth.require("roster:write")
        _require_str(filename, "filename")
        _require_str(content_b64, "content_b64")
        try:
            content = base64.b64decode(content_b64, validate=True)
        except (binascii.Error, ValueError):
            raise ValidationError("content_b64 is not valid base64") from None
        with SPREADSHEET_READS:  # one at a time: a large workbook takes hundreds of MB while it is read
            read = tpool.execute(spreadsheets.read_spreadsheet, filename, content)
        return self._runner().preview(read.batch, self._options(actor, options), actor=actor,
                                      origin=filename, row_numbers=read.row_numbers)

    # ------------------------------------------------------------ Apple School Manager

    @rpc
    def get_asm_preferences(self, token_id: str) -> dict[str, Any]:
        self.auth.require("roster:read")
        self._require_server_token(token_id)
        store = asm.AsmPreferenceStore(self.db.session)
        return {"token_id": token_id, "preferences": store.get(token_id).to_dict(),
                **store.status(token_id)}

    @rpc
    def set_asm_preferences(self, token_id: str, prefs: dict) -> dict[str, Any]:
        actor = self.auth.require("roster:asm")
        self._require_server_token(token_id)
        preferences = asm_mapping.AsmPreferences.from_dict(prefs)
        asm.AsmPreferenceStore(self.db.session).set(token_id, preferences)
        self.db.audit(actor, "asm.preferences_set", f"server_token:{token_id}", preferences.to_dict())
        return {"token_id": token_id, "preferences": preferences.to_dict()}

    def _require_server_token(self, token_id: Any) -> None:
        """Refuse a malformed id, and (NotFound) a server token that is not there or not the caller's: preferences
        of a token enrollment does not know would be defaults nobody can use."""
        _require_token_id(token_id)
        self.enrollment.get_server_token(token_id)

    @rpc
    def preview_asm(self, token_id: str) -> dict[str, Any]:
        actor = self.auth.require("roster:asm")
        _require_token_id(token_id)
        return self._preview_asm(token_id, actor)

    @periodic(interval=2)
    def send_welcome_mails(self) -> None:
        """Send the welcome e-mails applies asked for (see ``adapters.welcome_mails``)."""
        counts = send_due(WelcomeMails(self.db.session), self.mailer, self.db.commit, utc_now(),
                          WELCOME_MAILS_PER_ROUND)
        for outcome, count in counts.items():
            if count:
                metrics.WELCOME_EMAILS.labels(outcome).inc(count)

    @periodic(interval=60)
    def daily_asm_sync(self) -> None:
        """Sync one server token that is due (see ``AsmPreferenceStore.due``); the next tick takes the next."""
        store = asm.AsmPreferenceStore(self.db.session)
        due = store.due(utc_now())
        if not due:
            return
        token_id = due[0]
        actor = Actor(id="system:roster.daily_asm_sync", role="system")
        try:
            outcome = self._sync_asm(token_id, actor)
        except Exception as failed:  # whatever it was, recorded and retried later: the other tokens go first
            self.db.session.rollback()  # nothing of the failed run is kept
            if isinstance(failed, EXPECTED_ERRORS):
                reason = failed.message
            else:  # the details are for the log, not for the people reading the outcome
                log.error("the daily Apple School Manager sync of server token %s failed", token_id, exc_info=True)
                reason = "internal error, see the roster service's log"
            retry_at = store.record_failure(token_id, f"failed: {reason}")
            self.db.audit(actor, "asm.sync_failed", f"server_token:{token_id}",
                          {"reason": reason, "retry_at": retry_at.isoformat()})
            return
        store.record_sync(token_id, outcome)

    def _sync_asm(self, token_id: str, actor: Actor) -> str:
        """Preview and apply a token's roster; returns the outcome to record."""
        # one attempt: a plan another apply made stale (a Conflict) fails the run, which is tried again minutes
        # later, rather than fetching the whole roster from Apple again at once
        run = self._runner().preview_and_apply(lambda: self._preview_asm(token_id, actor), actor=actor, attempts=1)
        plan_id = run.summary["plan_id"]
        if run.stopped is not None:  # the deletion guard: a person must look at this plan
            self.db.audit(actor, "asm.sync_stopped", f"server_token:{token_id}",
                          {"plan_id": plan_id, "reason": run.stopped.message})
            return f"stopped before applying plan {plan_id}: {run.stopped.message}"
        self.db.audit(actor, "import.applied", f"plan:{plan_id}", {"applied": run.applied["applied"]})
        return f"applied plan {plan_id}: {run.summary['total_changes']} change(s)"

    def _preview_asm(self, token_id: str, actor: Actor) -> dict[str, Any]:
        prefs = asm.AsmPreferenceStore(self.db.session).get(token_id)
        self.db.commit()  # nothing written yet: no database connection held while enrollment pages Apple
        roster = asm.fetch_roster(self.enrollment, token_id)
        # the users the roster holds for Apple's persons: a person Apple no longer gives an ID keeps theirs
        known_users = SqlHierarchy(self.db.session).users_by_source_identifier()
        mapping = tpool.execute(asm_mapping.map_roster, roster, prefs, known_users)
        options = planning.PlanOptions(only_add_new=prefs.only_add_new, locations=prefs.locations)
        return self._runner().preview(mapping.batch, options, actor=actor,
                                      origin=f"server_token:{token_id}", warnings=mapping.warnings,
                                      source_identifiers=mapping.source_identifiers)

    # ------------------------------------------------------------ queries

    @rpc
    def list_users(self, location_id: str | None = None, user_type: str | None = None,
                   page: int = 1, page_size: int = 100) -> dict[str, Any]:
        actor = self.auth.require("roster:read")
        if user_type is not None and user_type not in USER_TYPES:
            raise ValidationError(f"user_type must be one of {', '.join(USER_TYPES)}")
        locations = self._location_filter(actor, location_id)
        page, page_size = _page(page, page_size)
        users, total = RosterQueries(self.db.session).users(
            locations=locations, user_types=[user_type] if user_type else None,
            offset=(page - 1) * page_size, limit=page_size)
        return {"users": [u.to_dict() for u in users], "total": total, "page": page,
                "page_size": page_size}

    @rpc
    def get_user(self, user_id: str) -> dict[str, Any]:
        actor = self.auth.require("roster:read")
        _require_str(user_id, "user_id")
        queries = RosterQueries(self.db.session)
        user = queries.user(user_id)
        if user is None or not visible(actor, user.locations):
            raise NotFound(f"there is no user '{user_id}' in your locations")
        return {**user.to_dict(), "classes": queries.classes_of_user(user_id),
                "welcome_mail": WelcomeMails(self.db.session).of_user(user_id)}

    @rpc
    def users_in_scope(self, locations: list[str] | None = None, grade_levels: list[str] | None = None,
                       classes: list[str] | None = None, user_types: list[str] | None = None,
                       user_ids: list[str] | None = None) -> list[dict[str, Any]]:
        """``[{user_id, locations}]``: an AND across the given dimensions, an OR within one, from today's roster."""
        actor = self.auth.require("roster:read")
        for values, name in ((locations, "locations"), (grade_levels, "grade_levels"), (classes, "classes"),
                             (user_types, "user_types"), (user_ids, "user_ids")):
            if values is not None and (not isinstance(values, list)
                                       or not all(isinstance(v, str) and v.strip() for v in values)):
                raise ValidationError(f"{name} must be a list of non-empty strings, or null")
        if user_ids is not None and len(user_ids) > MAX_USER_IDS_PER_CALL:
            raise ValidationError(f"name at most {MAX_USER_IDS_PER_CALL} user_ids per call")
        if user_types is not None and set(user_types) - set(USER_TYPES):
            raise ValidationError(f"user_types must be among {', '.join(USER_TYPES)}")
        if actor.is_location_bound:
            if locations is None:
                locations = list(actor.locations or ())
            require_locations(actor, locations)
        return RosterQueries(self.db.session).users_in_scope(
            locations=locations, grade_levels=grade_levels, classes=classes, user_types=user_types, user_ids=user_ids)

    @rpc
    def list_classes(self, location_id: str | None = None, page: int = 1,
                     page_size: int = 100) -> dict[str, Any]:
        actor = self.auth.require("roster:read")
        locations = self._location_filter(actor, location_id)
        page, page_size = _page(page, page_size)
        classes, total = RosterQueries(self.db.session).classes(
            locations=locations, offset=(page - 1) * page_size, limit=page_size)
        return {"classes": [c.to_dict() for c in classes], "total": total, "page": page,
                "page_size": page_size}

    @rpc
    def list_locations(self) -> list[dict[str, Any]]:
        actor = self.auth.require("roster:read")
        return [loc for loc in RosterQueries(self.db.session).locations()
                if visible(actor, [loc["location_id"]])]

    @rpc
    def list_grade_levels(self) -> list[dict[str, Any]]:
        actor = self.auth.require("roster:read")
        return [grade for grade in RosterQueries(self.db.session).grade_levels()
                if grade["location_id"] is None or visible(actor, [grade["location_id"]])]

    @rpc
    def plan(self, plan_id: str, page: int = 1, page_size: int = 200) -> dict[str, Any]:
        """A stored plan: its summary, status and one page of its changes."""
        actor = self.auth.require("roster:read")
        _require_str(plan_id, "plan_id")
        page, page_size = _page(page, page_size)
        store = ImportRunner(self.db.session, self.db.publish).plans
        row = store.get(plan_id)
        if not _plan_visible(actor, row.summary.get("locations")):
            raise NotFound(f"there is no import plan {plan_id} in your locations")
        changes = store.changes(plan_id, after_seq=(page - 1) * page_size - 1, limit=page_size)
        return {"plan_id": plan_id, "status": row.status, "origin": row.origin,
                "created_at": row.created_at.isoformat(),
                "applied_at": row.applied_at.isoformat() if row.applied_at else None,
                **row.summary, "page": page, "page_size": page_size,
                "changes": [_change_view(c) for c in changes]}

    @rpc
    def import_runs(self, limit: int = 50) -> list[dict[str, Any]]:
        actor = self.auth.require("roster:read")
        _, limit = _page(1, limit)
        store = ImportRunner(self.db.session, self.db.publish).plans
        return [{"plan_id": r.plan_id, "source": r.source, "status": r.status, "origin": r.origin,
                 "actor_id": r.actor_id, "created_at": r.created_at.isoformat(),
                 "applied_at": r.applied_at.isoformat() if r.applied_at else None,
                 "counts": r.summary["counts"], "rejected": len(r.summary["rejected"])}
                for r in store.runs(limit) if _plan_visible(actor, r.summary.get("locations"))]

    # ------------------------------------------------------------ API tokens

    @rpc
    def create_api_token(self, name: str, allowed_ips: list[str] | None = None) -> dict[str, Any]:
        """A new access token for the HTTP API; the token itself is shown only this once."""
        actor = self.auth.require("roster:api_tokens")
        _require_str(name, "name", max_length=tables.api_tokens.c.name.type.length)
        row, token = ApiTokens(self.db.session).create(name.strip(), parse_allowed_ips(allowed_ips),
                                                       actor.id)
        self.db.audit(actor, "api_token.created", f"api_token:{row.id}",
                      {"name": row.name, "allowed_ips": row.allowed_ips})
        return {**describe(row), "token": token}

    @rpc
    def list_api_tokens(self) -> list[dict[str, Any]]:
        self.auth.require("roster:api_tokens")
        return [describe(row) for row in ApiTokens(self.db.session).all()]

    @rpc
    def revoke_api_token(self, token_id: int) -> dict[str, Any]:
        actor = self.auth.require("roster:api_tokens")
        row = ApiTokens(self.db.session).revoke(row_id(token_id, "token_id"))
        self.db.audit(actor, "api_token.revoked", f"api_token:{token_id}", {"name": row.name})
        return describe(row)

    # ------------------------------------------------------------ Mosyle-compatible HTTP API

    @http("POST", "/v2/listusers")
    def api_list_users(self, request: Request) -> Response:
        return self._api().handle(request, "listusers")

    @http("POST", "/v2/users")
    def api_users(self, request: Request) -> Response:
        return self._api().handle(request, "users")

    @http("POST", "/v2/listclasses")
    def api_list_classes(self, request: Request) -> Response:
        return self._api().handle(request, "listclasses")

    @http("POST", "/v2/classes")
    def api_classes(self, request: Request) -> Response:
        return self._api().handle(request, "classes")

    @http("GET", "/v2/openapi.json")
    def api_openapi(self, request: Request) -> Response:
        server = request.host_url.rstrip("/")
        return Response(json.dumps(openapi_document(server), indent=2),
                        mimetype="application/json")

    # ------------------------------------------------------------ helpers

    def _runner(self) -> ImportRunner:
        return ImportRunner(self.db.session, self.db.publish)

    def _api(self) -> MosyleApi:
        return MosyleApi(self.db.session, self.db.publish, self.db.audit, self._assign_devices, self.refusal_audits)

    def _preassign_devices(self, plan_id: str) -> tuple[int, list[DeviceAssignmentFailure]]:
        """Hand the serial numbers listed for the plan's users to enrollment."""
        return self._assign_devices(device_assignments(self._runner().plans.changes(plan_id, entity=planning.DEVICES)))

    def _assign_devices(self, pairs: list[tuple[str, str]]) -> tuple[int, list[DeviceAssignmentFailure]]:
        """Hand ``(serial number, user ID)`` pairs to enrollment, once the users are committed (enrollment looks
        each user up in this roster)."""
        if not pairs:
            return 0, []
        self.db.commit()
        return assign_devices(pairs, self.enrollment.assign_devices)

    @staticmethod
    def _options(actor: Actor, options: dict | None) -> planning.PlanOptions:
        parsed = planning.PlanOptions.from_dict(options)
        if actor.is_location_bound:  # a location leader's import stays within their locations
            if parsed.max_user_delete_share > planning.DEFAULT_MAX_USER_DELETE_SHARE:
                raise PermissionDenied(
                    f"a {actor.role} cannot raise max_user_delete_share above "
                    f"{planning.DEFAULT_MAX_USER_DELETE_SHARE:.0%}; ask an administrator")
            parsed = dataclasses.replace(parsed, locations=actor.locations)
        return parsed

    @staticmethod
    def _location_filter(actor: Actor, location_id: str | None) -> list[str] | None:
        if location_id is not None:
            _require_str(location_id, "location_id")
            if not visible(actor, [location_id]):
                raise NotFound(f"there is no location '{location_id}' among yours")
            return [location_id]
        return list(actor.locations or ()) if actor.is_location_bound else None


def _plan_visible(actor: Actor, plan_locations: list[str] | None) -> bool:
    """A location-bound actor sees only plans limited to their own locations."""
    if not actor.is_location_bound:
        return True
    return plan_locations is not None and set(plan_locations) <= set(actor.locations or ())


def _require_str(value: Any, name: str, max_length: int | None = None) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(f"{name} must be a non-empty string")
    if max_length is not None and len(value) > max_length:
        raise ValidationError(f"{name} is {len(value)} characters long; "
                              f"at most {max_length} are allowed")


def _require_token_id(token_id: Any) -> None:
    _require_str(token_id, "token_id", max_length=tables.asm_preferences.c.token_id.type.length)


def _page(page: Any, page_size: Any) -> tuple[int, int]:
    for value, name in ((page, "page"), (page_size, "page_size")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValidationError(f"{name} must be a whole number from 1")
    if page > MAX_PAGE:
        raise ValidationError(f"page must be a whole number from 1 to {MAX_PAGE}")
    return page, min(page_size, MAX_PAGE_SIZE)


def _change_view(change: planning.Change) -> dict[str, Any]:
    view: dict[str, Any] = {"entity": change.entity, "action": change.action,
                            "id": change.natural_id}
    if change.action == planning.UPDATE:
        view["fields"] = {name: {"before": old, "after": new}
                          for name, (old, new) in change.field_changes().items()}
    elif change.action == planning.DELETE:
        view["record"] = change.before
    else:
        view["record"] = change.after
    return view
