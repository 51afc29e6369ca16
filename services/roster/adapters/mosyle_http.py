"""The Mosyle-compatible HTTP API: access tokens, IP restriction, and the four endpoints.

Scripts written for the Mosyle Manager API v2 send their payload as a JSON body or as
a form field ``content``; every request names its access token in ``accessToken``.
An unknown or revoked token gets 401, a token used from an address outside its list
gets 403, and both are written to the audit log (within ``RefusalAuditBudget``'s limits).
Writes run the import pipeline and are applied at once.
"""
from __future__ import annotations

import json
from typing import Any, Callable

from nameko.extensions import DependencyProvider
from werkzeug.wrappers import Request, Response

from services.roster import metrics
from services.roster.adapters.api_tokens import ApiTokens, ip_allowed
from services.roster.adapters.imports import ImportRunner
from services.roster.adapters.queries import RosterQueries
from services.roster.domain import mosyle_api as wire
from services.roster.domain.device_preassignment import device_assignments
from services.roster.domain.planning import DEVICES
from services.roster.domain.refusal_audits import RefusalAuditBudget
from shared.auth import Actor
from shared.contracts.roster import RejectedRow
from shared.errors import Conflict, ValidationError

ANONYMOUS = Actor(id="api:unknown-token", role="system")
# a write previewed and applied again when another import lands between the two, before the client is told to retry
WRITE_ATTEMPTS = 3
ROSTER_BUSY = ("the roster was being changed by other imports and nothing of this request was saved; "
               "send the same request again")


def json_response(status: int, body: Any) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")


def request_payload(request: Request) -> dict[str, Any]:
    """The JSON object of a request, from its body or its form field ``content``."""
    if request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return wire.decode_payload(request.form.get("content"))
    return wire.decode_payload(request.get_data())


class RefusalAudits(DependencyProvider):
    """One ``RefusalAuditBudget`` per running service, shared by its workers."""

    def setup(self) -> None:
        self.budget = RefusalAuditBudget()

    def get_dependency(self, worker_ctx: Any) -> RefusalAuditBudget:
        return self.budget


class MosyleApi:
    def __init__(self, session: Any, publish: Any, audit: Any, assign_devices: Any,
                 refusal_audits: RefusalAuditBudget):
        self.session = session
        self.audit = audit
        self.refusal_audits = refusal_audits
        self.assign_devices = assign_devices  # [(serial, user ID)] -> (assigned, failures), after the apply
        self.tokens = ApiTokens(session)
        self.queries = RosterQueries(session)
        self.runner = ImportRunner(session, publish)

    def handle(self, request: Request, endpoint: str) -> Response:
        token_id = None
        try:
            payload = request_payload(request)
            allowed = self._authenticate(payload["accessToken"], request.remote_addr, endpoint)
            if isinstance(allowed, Response):
                response = allowed
            else:
                token_id = allowed
                actor = Actor(id=f"api_token:{token_id}", role="system")
                response = json_response(200, getattr(self, f"_{endpoint}")(payload, actor))
        except ValidationError as exc:
            response = json_response(400, wire.error_response(exc.message))
        if token_id is not None:  # once the work is done: a write whose plan went stale rolls back what came before
            self.tokens.touch(token_id)
        metrics.API_REQUESTS.labels(endpoint, str(response.status_code)).inc()
        return response

    def _authenticate(self, token: str, address: str | None, endpoint: str) -> int | Response:
        """The id of the access token, or the response refusing it."""
        row = self.tokens.find(token)
        if row is None or row.revoked_at is not None:
            reason = "unknown access token" if row is None else "revoked access token"
            self._refused(row, endpoint, address, reason)
            return json_response(401, wire.error_response(
                f"{reason}; ask an administrator for a valid one"))
        if not ip_allowed(row.allowed_ips, address):
            self._refused(row, endpoint, address, "address not allowed")
            return json_response(403, wire.error_response(
                f"this access token may not be used from {address}"))
        return row.id

    def _refused(self, row: Any, endpoint: str, address: str | None, reason: str) -> None:
        target = f"api_token:{row.id}" if row else None
        if self.refusal_audits.admit((reason, address, target)):
            self.audit(ANONYMOUS, "api.refused", target, {"endpoint": endpoint, "address": address, "reason": reason})
        else:
            metrics.API_REFUSALS_NOT_AUDITED.labels(reason).inc()

    def _listusers(self, payload: dict[str, Any], actor: Actor) -> dict[str, Any]:
        options = wire.ListOptions.from_payload(payload, wire.USER_COLUMNS)
        users, total = self.queries.users(locations=None, user_types=options.user_types,
                                          offset=options.offset, limit=options.page_size)
        names = self.queries.location_names()
        return wire.list_response(
            "users", [wire.user_to_wire(u, names, options.specific_columns) for u in users],
            total, options)

    def _listclasses(self, payload: dict[str, Any], actor: Actor) -> dict[str, Any]:
        options = wire.ListOptions.from_payload(payload, wire.CLASS_COLUMNS)
        classes, total = self.queries.classes(locations=None, offset=options.offset,
                                              limit=options.page_size)
        names = self.queries.location_names()
        return wire.list_response(
            "classes", [wire.class_to_wire(c, names, options.specific_columns) for c in classes],
            total, options)

    def _users(self, payload: dict[str, Any], actor: Actor) -> dict[str, Any]:
        return self._write(lambda: wire.user_write_request(payload, self._location_ids_by_name()), actor)

    def _classes(self, payload: dict[str, Any], actor: Actor) -> dict[str, Any]:
        return self._write(lambda: wire.class_write_request(payload, self._location_ids_by_name()), actor)

    def _write(self, parse: Callable[[], wire.WriteRequest], actor: Actor) -> dict[str, Any]:
        requests: list[wire.WriteRequest] = []

        def preview() -> dict[str, Any]:
            # parsed for each attempt: the elements' location names are resolved against the roster as it is now
            requests.append(request := parse())
            return self.runner.preview(request.batch, request.plan_options(), actor=actor, origin=actor.id,
                                       row_numbers=request.row_numbers)

        try:
            run = self.runner.preview_and_apply(preview, actor=actor, attempts=WRITE_ATTEMPTS)
        except Conflict:  # other imports landed before every attempt's apply: nothing of this one was written
            return wire.write_response(requests[-1], [], failed=ROSTER_BUSY)
        request, summary = requests[-1], run.summary
        if run.stopped is not None:
            return wire.write_response(request, [], failed=run.stopped.message)
        rejected = [RejectedRow.from_dict(r) for r in summary["rejected"]]
        # the devices the saved users list, then the assign_device operations' (their users may be new)
        pairs = device_assignments(self.runner.plans.changes(summary["plan_id"], entity=DEVICES))
        _, failures = self.assign_devices(pairs + list(request.device_assignments.values()))
        return wire.write_response(request, rejected + wire.device_refusals(request, failures))

    def _location_ids_by_name(self) -> dict[str, str]:
        return {name: location_id for location_id, name in self.queries.location_names().items()}
