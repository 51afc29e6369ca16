"""An Apps and Books (VPP) v2 server that behaves like Apple's, for tests and benchmarks.

API under ``/mdm/v2/``; state is set up and faults are scripted over HTTP admin routes
under ``/_sandbox/``. Like Apple it checks the Bearer sToken, returns errors in HTTP 200
bodies, stamps ``mdmInfo``/``uId``/``tokenExpirationDate`` on responses, pages by index
with a ``versionId`` that changes on writes, and completes writes asynchronously.
"""
from __future__ import annotations

import base64
import itertools
import json
import secrets
import threading
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
from werkzeug.wrappers import Request, Response

API_PREFIX = "/mdm/v2/"
# Apple's store lookup lives on another host (uclient-api.itunes.apple.com); here it shares the server
LOOKUP_PATH = "/WebObjects/MZStorePlatform.woa/wa/lookup"
LOOKUP_MAX_IDS = 100  # a longer id list is refused, like an over-long URL
ARTWORK_URL = "https://is1-ssl.mzstatic.com/image/thumb/sandbox/{adam_id}/{{w}}x{{h}}bb.{{f}}"
INVITATION_URL = "https://buy.itunes.apple.com/WebObjects/MZFinance.woa/wa/associateVPPUserWithITSAccount?inviteCode=%25inviteCode%25&mt=8"
DEFAULT_LIMITS = {
    "maxAssets": 25, "maxSerialNumbers": 1000, "maxClientUserIds": 1000, "maxUsers": 100,
    "maxRevokeSerialNumbers": 100, "maxRevokeClientUserIds": 100, "maxNotificationLength": 512,
    "maxMdmIdLength": 100, "maxMdmNameLength": 100, "maxMdmMetadataLength": 255,
}
ERROR_MESSAGES = {
    9601: "Login required", 9602: "Invalid argument", 9603: "Internal error", 9609: "Registered user not found",
    9621: "Token has expired", 9622: "Invalid authentication token", 9625: "The server has revoked the sToken",
    9646: "There are too many recent requests", 9650: "Invalid pageIndex", 9700: "Too many assets",
    9701: "Too many serial numbers", 9702: "Too many clientUserIds", 9703: "Duplicate assets",
    9704: "Duplicate serial numbers", 9705: "Duplicate clientUserIds", 9706: "Asset is not revocable",
    9707: "Asset is not device assignable", 9708: "EventId not found", 9709: "Not enough licenses",
    9714: "Too many users", 9715: "Duplicate users", 9716: "clientUserId already registered",
    9718: "Asset missing", 9719: "clientUserIds or serialNumbers required", 9720: "Users required",
    9722: "Authorization header must be Bearer {sToken}", 9723: "mdmInfo id invalid", 9724: "mdmInfo name invalid",
    9725: "mdmInfo metadata invalid", 9726: "Method not allowed", 9727: "Content-Type must be application/json",
}
NOTIFICATION_TYPES = ["ASSET_MANAGEMENT", "ASSET_COUNT", "USER_MANAGEMENT", "USER_ASSOCIATED", "TEST_NOTIFICATION"]


def apple_date(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S+0000")


class AppleError(Exception):
    def __init__(self, number: int, http_status: int = 200, info: dict | None = None, headers: dict | None = None):
        super().__init__(number)
        self.number, self.http_status, self.info, self.headers = number, http_status, info, headers or {}


@dataclass
class SandboxAsset:
    adam_id: str
    pricing_param: str
    product_type: str
    total_count: int
    device_assignable: bool
    revocable: bool
    assigned_count: int = 0
    name: str = ""  # only the content metadata lookup tells it, never the asset list

    def metadata(self) -> dict:
        return {"id": self.adam_id, "name": self.name or f"{self.product_type} {self.adam_id}",
                "kind": "ebook" if self.product_type == "Book" else "iosSoftware",
                "artwork": {"url": ARTWORK_URL.format(adam_id=self.adam_id), "width": 512, "height": 512}}

    def to_json(self) -> dict:
        return {
            "adamId": self.adam_id, "pricingParam": self.pricing_param, "productType": self.product_type,
            "assignedCount": self.assigned_count, "availableCount": self.total_count - self.assigned_count,
            "retiredCount": 0, "totalCount": self.total_count, "deviceAssignable": self.device_assignable,
            "revocable": self.revocable, "supportedPlatforms": ["iOS", "macOS"] if self.product_type == "App" else ["iOS"],
        }


@dataclass
class SandboxUser:
    client_user_id: str
    email: str | None
    managed_apple_id: str | None
    invite_code: str
    version: int
    status: str = "Registered"
    id_hash: str | None = None

    def to_json(self) -> dict:
        data: dict[str, Any] = {"clientUserId": self.client_user_id, "status": self.status}
        if self.email:
            data["email"] = self.email
        if self.managed_apple_id:
            data["managedAppleId"] = self.managed_apple_id
        if self.status == "Registered":
            data["inviteCode"] = self.invite_code
        if self.id_hash:
            data["idHash"] = self.id_hash
        return data


@dataclass
class SandboxEvent:
    event_id: str
    event_type: str
    num_requested: int
    failures: list[dict]
    polls_left: int
    num_failed: int

    def to_json(self) -> dict:
        if self.polls_left > 0:
            self.polls_left -= 1
            return {"eventStatus": "PENDING", "eventType": self.event_type, "numCompleted": 0, "numRequested": self.num_requested}
        status = "FAILED" if self.num_requested and self.num_failed >= self.num_requested else "COMPLETE"
        data = {"eventStatus": status, "eventType": self.event_type,
                "numCompleted": self.num_requested - self.num_failed, "numRequested": self.num_requested}
        if self.failures:
            data["failures"] = self.failures
        return data


@dataclass
class Location:
    uid: str
    name: str
    org_name: str
    version: int = 1
    mdm_info: dict | None = None
    notification_url: str | None = None
    notification_auth_token: str | None = None
    notification_types: list[str] = field(default_factory=list)
    assets: dict[tuple[str, str], SandboxAsset] = field(default_factory=dict)
    # (adamId, pricingParam, "serialNumber"|"clientUserId", holder) -> version written
    assignments: dict[tuple[str, str, str, str], int] = field(default_factory=dict)
    users: dict[str, SandboxUser] = field(default_factory=dict)
    events: dict[str, SandboxEvent] = field(default_factory=dict)

    def bump(self) -> int:
        self.version += 1
        return self.version


@dataclass
class IssuedToken:
    location: Location
    expires_at: datetime
    revoked: bool = False


@dataclass
class Fault:
    path: str
    # "http" (status + Retry-After), "error" (errorNumber in a 200 body), "version_change", or "users" (the request
    # is taken, but its event fails ``client_user_ids`` with ``error_number`` and leaves them as they were)
    kind: str
    status: int = 503
    retry_after: int | None = None
    error_number: int | None = None
    skip: int = 0
    times: int = 1
    client_user_ids: list[str] = field(default_factory=list)


class VppSandbox:
    """The WSGI application; all state lives in memory behind one lock."""

    def __init__(self, *, page_size: int = 1000, event_polls: int = 1):
        self.page_size = page_size
        self.event_polls = event_polls  # status polls answered PENDING before an event completes
        self.limits = dict(DEFAULT_LIMITS)
        self._lock = threading.RLock()
        self._locations: dict[str, Location] = {}
        self._tokens: dict[str, IssuedToken] = {}
        self._faults: list[Fault] = []
        self._requests: Counter[str] = Counter()
        self._uids = itertools.count(1_000_000_001)

    # --- WSGI -------------------------------------------------------------------------------
    def __call__(self, environ, start_response):
        request = Request(environ)
        path = request.path
        if path.startswith("/_sandbox/"):
            response = self._admin(request, path[len("/_sandbox/"):])
        elif path.startswith(API_PREFIX):
            response = self._api(request, path[len(API_PREFIX):])
        elif path == LOOKUP_PATH:
            response = self._lookup(request)
        else:
            response = _json({"errorNumber": 9602, "errorMessage": "Unknown path"}, 404)
        return response(environ, start_response)

    def _api(self, request: Request, path: str) -> Response:
        with self._lock:
            self._requests[path] += 1
            try:
                location = None
                fault = self._take_fault(path)
                if fault and fault.kind == "http":
                    headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
                    raise AppleError(9603, fault.status, headers=headers)
                if path == "service/config":
                    return _json(self._service_config(request))
                location, token = self._authenticate(request)
                if fault and fault.kind == "error":
                    raise AppleError(fault.error_number or 9603)
                if fault and fault.kind == "version_change":
                    location.bump()
                handler = self._routes().get((request.method, path))
                if handler is None:
                    raise AppleError(9726, 405 if any(p == path for _, p in self._routes()) else 404)
                body = self._body(request) if request.method == "POST" else None
                if fault and fault.kind == "users":
                    body, failing = _without_users(body or {}, fault.client_user_ids)
                data = handler(location, request, body)
                if fault and fault.kind == "users" and failing:
                    event = location.events[data["eventId"]]
                    event.failures.append(_failure(fault.error_number or 9603, clientUserIds=failing))
                    event.num_requested += len(failing)
                    event.num_failed += len(failing)
                return _json(self._stamp(data, location, token))
            except AppleError as exc:
                data = {"errorNumber": exc.number, "errorMessage": ERROR_MESSAGES.get(exc.number, "Error")}
                if exc.info:
                    data["errorInfo"] = exc.info
                return _json(data, exc.http_status, exc.headers)

    def _routes(self):
        return {
            ("GET", "client/config"): self._get_client_config,
            ("POST", "client/config"): self._post_client_config,
            ("GET", "assets"): self._get_assets,
            ("GET", "assignments"): self._get_assignments,
            ("GET", "users"): self._get_users,
            ("POST", "assets/associate"): self._associate,
            ("POST", "assets/disassociate"): self._disassociate,
            ("POST", "assets/revoke"): self._revoke,
            ("POST", "users/create"): self._create_users,
            ("POST", "users/update"): self._update_users,
            ("POST", "users/retire"): self._retire_users,
            ("GET", "status"): self._status,
        }

    def _take_fault(self, path: str) -> Fault | None:
        for fault in self._faults:
            if fault.path != path:
                continue
            if fault.skip > 0:
                fault.skip -= 1
                return None
            fault.times -= 1
            if fault.times <= 0:
                self._faults.remove(fault)
            return fault
        return None

    def _authenticate(self, request: Request) -> tuple[Location, IssuedToken]:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer ") or not header[7:].strip():
            raise AppleError(9722, 401)
        token = self._tokens.get(header[7:].strip())
        if token is None:
            raise AppleError(9622)
        if token.revoked:
            raise AppleError(9625)
        if token.expires_at <= datetime.now(timezone.utc):
            raise AppleError(9621)
        return token.location, token

    @staticmethod
    def _body(request: Request) -> dict:
        if request.mimetype != "application/json":
            raise AppleError(9727, 400)
        try:
            body = json.loads(request.get_data() or b"{}")
        except ValueError:
            raise AppleError(9602, 400) from None
        if not isinstance(body, dict):
            raise AppleError(9602, 400)
        return body

    @staticmethod
    def _stamp(data: dict, location: Location, token: IssuedToken) -> dict:
        data["tokenExpirationDate"] = apple_date(token.expires_at)
        data["uId"] = location.uid
        if location.mdm_info:
            data["mdmInfo"] = dict(location.mdm_info)
        return data

    # --- configuration ----------------------------------------------------------------------
    def _service_config(self, request: Request) -> dict:
        base = request.host_url.rstrip("/") + API_PREFIX
        names = ["assets", "assignments", "users", "status", "client/config", "assets/associate",
                 "assets/disassociate", "assets/revoke", "users/create", "users/update", "users/retire"]
        urls = {name.replace("/", "_"): base + name for name in names}
        urls["invitationEmail"] = INVITATION_URL
        urls["contentMetadataLookup"] = request.host_url.rstrip("/") + LOOKUP_PATH
        return {
            "errorCodes": [{"errorNumber": n, "errorMessage": m} for n, m in sorted(ERROR_MESSAGES.items())],
            "limits": dict(self.limits), "notificationTypes": NOTIFICATION_TYPES, "urls": urls,
        }

    def _client_config(self, location: Location) -> dict:
        data = {
            "countryISO2ACode": "US", "defaultPlatform": "volumestore", "locationName": location.name,
            "subscribedNotificationTypes": list(location.notification_types), "websiteURL": "https://school.apple.com",
        }
        if location.notification_url:
            data["notificationUrl"] = location.notification_url
            data["notificationAuthToken"] = location.notification_auth_token
        return data

    def _get_client_config(self, location: Location, request: Request, body: None) -> dict:
        return self._client_config(location)

    def _post_client_config(self, location: Location, request: Request, body: dict) -> dict:
        if "mdmInfo" in body:
            info = body["mdmInfo"]
            if not isinstance(info, dict) or not isinstance(info.get("id"), str) or not 0 < len(info["id"]) <= self.limits["maxMdmIdLength"]:
                raise AppleError(9723)
            if len(str(info.get("name", ""))) > self.limits["maxMdmNameLength"]:
                raise AppleError(9724)
            if len(str(info.get("metadata", ""))) > self.limits["maxMdmMetadataLength"]:
                raise AppleError(9725)
            location.mdm_info = {k: info[k] for k in ("id", "name", "metadata") if k in info}
        if "notificationUrl" in body:
            location.notification_url = body["notificationUrl"] or None
            location.notification_auth_token = body.get("notificationAuthToken")
            location.notification_types = list(body.get("notificationTypes") or [])
        return self._client_config(location)

    # --- content metadata lookup ------------------------------------------------------------
    def _lookup(self, request: Request) -> Response:
        """``?version=2&p=mdm-lockup&caller=MDM&platform=…&cc=…&id=<adamIds>`` with the cookie ``itvt=<sToken>``."""
        with self._lock:
            self._requests["lookup"] += 1
            fault = self._take_fault("lookup")
            if fault:
                return _json({"errorMessage": "lookup failed"}, fault.status, {"Retry-After": str(fault.retry_after)}
                             if fault.retry_after is not None else {})
            args = request.args
            if (args.get("version"), args.get("p"), args.get("caller")) != ("2", "mdm-lockup", "MDM") or not args.get("platform"):
                return _json({"errorMessage": "version=2, p=mdm-lockup, caller=MDM and platform are required"}, 400)
            token = self._tokens.get(request.cookies.get("itvt", ""))
            if token is None or token.revoked:
                return _json({"errorMessage": "the itvt cookie must carry a valid sToken"}, 401)
            ids = [i for i in args.get("id", "").split(",") if i]
            if not ids or len(ids) > LOOKUP_MAX_IDS:
                return _json({"errorMessage": f"name between 1 and {LOOKUP_MAX_IDS} ids"}, 400)
            catalogue = {a.adam_id: a for a in token.location.assets.values()}
            return _json({"results": {i: catalogue[i].metadata() for i in ids if i in catalogue}})

    # --- listings ---------------------------------------------------------------------------
    def _page(self, location: Location, request: Request, key: str, items: list[Any]) -> dict:
        """One page of ``items``; objects with ``to_json`` are serialised only when on the page (a listing of
        20,000 users must not cost 20,000 serialisations per page while every other request waits)."""
        try:
            index = int(request.args.get("pageIndex", "0"))
        except ValueError:
            raise AppleError(9650) from None
        total_pages = max(1, -(-len(items) // self.page_size))
        if index < 0 or index >= total_pages:
            raise AppleError(9650)
        page = [item.to_json() if hasattr(item, "to_json") else item for item in items[index * self.page_size:(index + 1) * self.page_size]]
        data = {key: page, "currentPageIndex": index,
                "size": len(items), "totalPages": total_pages, "versionId": str(location.version)}
        if index + 1 < total_pages:
            data["nextPageIndex"] = index + 1
        return data

    @staticmethod
    def _since(request: Request) -> int:
        since = request.args.get("sinceVersionId")
        if since is None:
            return 0
        try:
            return int(since)
        except ValueError:
            raise AppleError(9721) from None

    def _get_assets(self, location: Location, request: Request, body: None) -> dict:
        args = request.args
        assets = [a for _, a in sorted(location.assets.items())
                  if args.get("adamId", a.adam_id) == a.adam_id
                  and args.get("productType", a.product_type) == a.product_type
                  and args.get("pricingParam", a.pricing_param) == a.pricing_param]
        return self._page(location, request, "assets", [a.to_json() for a in assets])

    def _get_assignments(self, location: Location, request: Request, body: None) -> dict:
        args, since = request.args, self._since(request)
        wanted = {"serialNumber": args.get("serialNumber"), "clientUserId": args.get("clientUserId")}
        rows = []
        for (adam_id, pricing, kind, holder), version in sorted(location.assignments.items()):
            if version <= since or args.get("adamId", adam_id) != adam_id:
                continue
            if any(value is not None and (kind != name or holder != value) for name, value in wanted.items()):
                continue
            rows.append({"adamId": adam_id, "pricingParam": pricing, kind: holder})
        return self._page(location, request, "assignments", rows)

    def _get_users(self, location: Location, request: Request, body: None) -> dict:
        args, since = request.args, self._since(request)
        include_retired = args.get("includeRetired") in ("1", "true")
        users = [u for _, u in sorted(location.users.items())
                 if u.version > since and (include_retired or u.status != "Retired")
                 and args.get("clientUserId", u.client_user_id) == u.client_user_id]
        return self._page(location, request, "users", users)

    # --- licence writes ---------------------------------------------------------------------
    def _licence_request(self, location: Location, body: dict, *, revoke: bool) -> tuple[list[SandboxAsset], list[str], list[str]]:
        assets_json = body.get("assets") or []
        serials = list(body.get("serialNumbers") or [])
        users = list(body.get("clientUserIds") or [])
        max_serials = self.limits["maxRevokeSerialNumbers" if revoke else "maxSerialNumbers"]
        max_users = self.limits["maxRevokeClientUserIds" if revoke else "maxClientUserIds"]
        if len(assets_json) > self.limits["maxAssets"]:
            raise AppleError(9700)
        if len(serials) > max_serials:
            raise AppleError(9701)
        if len(users) > max_users:
            raise AppleError(9702)
        if len(set(serials)) != len(serials):
            raise AppleError(9704)
        if len(set(users)) != len(users):
            raise AppleError(9705)
        if not serials and not users:
            raise AppleError(9719)
        assets = []
        for item in assets_json:
            asset = location.assets.get((str(item.get("adamId")), item.get("pricingParam", "STDQ")))
            if asset is None:
                raise AppleError(9718, info={"assets": [item]})
            assets.append(asset)
        return assets, serials, users

    def _new_event(self, location: Location, event_type: str, requested: int, failures: list[dict], failed: int) -> dict:
        event = SandboxEvent(str(uuid.uuid4()), event_type, requested, failures, self.event_polls, failed)
        location.events[event.event_id] = event
        if not self.event_polls:
            self._notify_event(location, event)
        return {"eventId": event.event_id}

    def _associate(self, location: Location, request: Request, body: dict) -> dict:
        assets, serials, users = self._licence_request(location, body, revoke=False)
        if not assets:
            raise AppleError(9718)
        failures, failed = [], 0
        version = location.bump()
        for asset in assets:
            key_json = [{"adamId": asset.adam_id, "pricingParam": asset.pricing_param}]
            if serials and not asset.device_assignable:
                failures.append(_failure(9707, assets=key_json, serialNumbers=serials))
                failed += len(serials)
                holders = [("clientUserId", u) for u in users]
            else:
                holders = [("serialNumber", s) for s in serials] + [("clientUserId", u) for u in users]
            unknown = [h for kind, h in holders if kind == "clientUserId" and h not in location.users]
            if unknown:
                failures.append(_failure(9609, assets=key_json, clientUserIds=unknown))
                failed += len(unknown)
            short: dict[str, list[str]] = {"serialNumbers": [], "clientUserIds": []}
            for kind, holder in holders:
                key = (asset.adam_id, asset.pricing_param, kind, holder)
                if holder in unknown or key in location.assignments:
                    continue
                if asset.assigned_count >= asset.total_count:
                    short["serialNumbers" if kind == "serialNumber" else "clientUserIds"].append(holder)
                    failed += 1
                    continue
                location.assignments[key] = version
                asset.assigned_count += 1
            if short["serialNumbers"] or short["clientUserIds"]:
                failures.append(_failure(9709, assets=key_json, **{k: v for k, v in short.items() if v}))
        requested = len(assets) * (len(serials) + len(users))
        return self._new_event(location, "ASSOCIATE", requested, failures, failed)

    def _remove(self, location: Location, asset: SandboxAsset, kind: str, holder: str) -> None:
        if location.assignments.pop((asset.adam_id, asset.pricing_param, kind, holder), None) is not None:
            asset.assigned_count -= 1

    def _disassociate(self, location: Location, request: Request, body: dict) -> dict:
        assets, serials, users = self._licence_request(location, body, revoke=False)
        if not assets:
            raise AppleError(9718)
        failures, failed = [], 0
        location.bump()
        for asset in assets:
            if not asset.revocable:
                failures.append(_failure(9706, assets=[{"adamId": asset.adam_id, "pricingParam": asset.pricing_param}]))
                failed += len(serials) + len(users)
                continue
            for kind, holders in (("serialNumber", serials), ("clientUserId", users)):
                for holder in holders:
                    self._remove(location, asset, kind, holder)
        requested = len(assets) * (len(serials) + len(users))
        return self._new_event(location, "DISASSOCIATE", requested, failures, failed)

    def _revoke(self, location: Location, request: Request, body: dict) -> dict:
        assets, serials, users = self._licence_request(location, body, revoke=True)
        location.bump()
        targets = assets or [a for a in location.assets.values() if a.revocable]
        for asset in targets:
            if asset.revocable:
                for kind, holders in (("serialNumber", serials), ("clientUserId", users)):
                    for holder in holders:
                        self._remove(location, asset, kind, holder)
        return self._new_event(location, "REVOKE", len(serials) + len(users), [], 0)

    # --- users ------------------------------------------------------------------------------
    def _users_request(self, body: dict) -> list[dict]:
        users = body.get("users")
        if not users or not isinstance(users, list):
            raise AppleError(9720)
        if len(users) > self.limits["maxUsers"]:
            raise AppleError(9714)
        ids = [u.get("clientUserId") if isinstance(u, dict) else None for u in users]
        if not all(isinstance(i, str) and i for i in ids):
            raise AppleError(9602)
        if len(set(ids)) != len(ids):
            raise AppleError(9715)
        return users

    def _create_users(self, location: Location, request: Request, body: dict) -> dict:
        users = self._users_request(body)
        version = location.bump()
        duplicates = []
        for item in users:
            current = location.users.get(item["clientUserId"])
            if current is not None and current.status != "Retired":
                duplicates.append(item["clientUserId"])
                continue
            location.users[item["clientUserId"]] = SandboxUser(
                item["clientUserId"], item.get("email"), item.get("managedAppleId"), secrets.token_hex(16), version)
        failures = [_failure(9716, clientUserIds=duplicates)] if duplicates else []
        return self._new_event(location, "CREATE", len(users), failures, len(duplicates))

    def _update_users(self, location: Location, request: Request, body: dict) -> dict:
        users = self._users_request(body)
        version = location.bump()
        missing = []
        for item in users:
            user = location.users.get(item["clientUserId"])
            if user is None or user.status == "Retired":
                missing.append(item["clientUserId"])
                continue
            user.email = item.get("email", user.email)
            user.managed_apple_id = item.get("managedAppleId", user.managed_apple_id)
            user.version = version
        failures = [_failure(9609, clientUserIds=missing)] if missing else []
        return self._new_event(location, "UPDATE", len(users), failures, len(missing))

    def _retire_users(self, location: Location, request: Request, body: dict) -> dict:
        users = self._users_request(body)
        version = location.bump()
        missing = []
        for item in users:
            user = location.users.get(item["clientUserId"])
            if user is None:
                missing.append(item["clientUserId"])
                continue
            user.status, user.version, user.id_hash = "Retired", version, None
            for asset in location.assets.values():
                if asset.revocable:
                    self._remove(location, asset, "clientUserId", user.client_user_id)
        failures = [_failure(9609, clientUserIds=missing)] if missing else []
        return self._new_event(location, "RETIRE", len(users), failures, len(missing))

    def _status(self, location: Location, request: Request, body: None) -> dict:
        event = location.events.get(request.args.get("eventId", ""))
        if event is None:
            raise AppleError(9708)
        was_pending = event.polls_left > 0
        data = event.to_json()
        if was_pending and event.polls_left == 0:
            self._notify_event(location, event)
        return data

    # --- notifications ----------------------------------------------------------------------
    def _notify_event(self, location: Location, event: SandboxEvent) -> None:
        kind = "USER_MANAGEMENT" if event.event_type in ("CREATE", "UPDATE", "RETIRE") else "ASSET_MANAGEMENT"
        notification = {"type": event.event_type, "eventId": event.event_id,
                        "result": "FAILURE" if event.failures else "SUCCESS"}
        if event.failures:
            notification["error"] = event.failures[0]
        self._notify(location, kind, notification)

    def _notify(self, location: Location, kind: str, notification: dict) -> None:
        if not location.notification_url or kind not in location.notification_types and kind != "TEST_NOTIFICATION":
            return
        body = {"notification": notification, "notificationId": str(uuid.uuid4()), "notificationType": kind, "uId": location.uid}
        url, auth = location.notification_url, location.notification_auth_token
        threading.Thread(target=_post_notification, args=(url, auth, body), daemon=True).start()

    # --- admin routes -----------------------------------------------------------------------
    def _admin(self, request: Request, route: str) -> Response:
        with self._lock:
            try:
                body = json.loads(request.get_data() or b"{}") if request.method == "POST" else {}
                handler = getattr(self, "_admin_" + route.replace("/", "_").replace("-", "_"), None)
                if handler is None:
                    return _json({"error": f"unknown admin route {route}"}, 404)
                return _json(handler(request, body))
            except (KeyError, ValueError, TypeError) as exc:
                return _json({"error": f"bad admin request: {exc!r}"}, 400)

    def _location_of(self, stoken: str) -> Location:
        return self._tokens[stoken].location

    def _admin_tokens(self, request: Request, body: dict) -> dict:
        """Issue a ``.vpptoken`` for a location (an existing location name gets a renewed token)."""
        name = body.get("locationName", "Main Campus")
        location = next((l for l in self._locations.values() if l.name == name), None)
        if location is None:
            location = Location(str(next(self._uids)), name, body.get("orgName", "Orchard School District"))
            self._locations[location.uid] = location
        if "expDate" in body:
            expires = datetime.strptime(body["expDate"], "%Y-%m-%dT%H:%M:%S%z")
        else:
            expires = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=body.get("daysValid", 365))
        payload = {"token": secrets.token_urlsafe(48), "expDate": apple_date(expires), "orgName": location.org_name}
        stoken = base64.b64encode(json.dumps(payload).encode()).decode()
        self._tokens[stoken] = IssuedToken(location, expires)
        return {"sToken": stoken, "uId": location.uid, "locationName": location.name}

    def _admin_tokens_revoke(self, request: Request, body: dict) -> dict:
        self._tokens[body["sToken"]].revoked = True
        return {"revoked": True}

    def _admin_assets(self, request: Request, body: dict) -> dict:
        location = self._location_of(body["sToken"])
        book = body.get("productType", "App") == "Book"
        asset = SandboxAsset(
            str(body["adamId"]), body.get("pricingParam", "STDQ"), "Book" if book else "App", int(body["totalCount"]),
            bool(body.get("deviceAssignable", not book)), bool(body.get("revocable", not book)), name=str(body.get("name", "")))
        previous = location.assets.get((asset.adam_id, asset.pricing_param))
        if previous:
            asset.assigned_count = previous.assigned_count
            delta = asset.total_count - previous.total_count
        else:
            delta = asset.total_count
        location.assets[(asset.adam_id, asset.pricing_param)] = asset
        location.bump()
        self._notify(location, "ASSET_COUNT", {"adamId": asset.adam_id, "pricingParam": asset.pricing_param, "countDelta": delta})
        return asset.to_json()

    def _admin_assignments(self, request: Request, body: dict) -> dict:
        """Seed licences assigned outside Orchard (e.g. by a previous MDM)."""
        location = self._location_of(body["sToken"])
        asset = location.assets[(str(body["adamId"]), body.get("pricingParam", "STDQ"))]
        version = location.bump()
        for kind, holders in (("serialNumber", body.get("serialNumbers", [])), ("clientUserId", body.get("clientUserIds", []))):
            for holder in holders:
                key = (asset.adam_id, asset.pricing_param, kind, holder)
                if key not in location.assignments:
                    location.assignments[key] = version
                    asset.assigned_count += 1
        return asset.to_json()

    def _admin_mdm_info(self, request: Request, body: dict) -> dict:
        """Another MDM claims the location."""
        location = self._location_of(body["sToken"])
        location.mdm_info = dict(body["mdmInfo"])
        location.bump()
        return {"mdmInfo": location.mdm_info}

    def _admin_faults(self, request: Request, body: dict) -> dict:
        self._faults.append(Fault(
            path=body["path"], kind=body.get("kind", "http"), status=int(body.get("status", 503)),
            retry_after=body.get("retryAfter"), error_number=body.get("errorNumber"),
            skip=int(body.get("skip", 0)), times=int(body.get("times", 1)),
            client_user_ids=list(body.get("clientUserIds", []))))
        return {"faults": len(self._faults)}

    def _admin_faults_clear(self, request: Request, body: dict) -> dict:
        """Apple works again: the faults not used up yet are dropped."""
        self._faults.clear()
        return {"faults": 0}

    def _admin_locations_rename(self, request: Request, body: dict) -> dict:
        """The location is renamed in Apple School Manager: its uId stays."""
        location = self._location_of(body["sToken"])
        location.name = body["locationName"]
        location.bump()
        return {"uId": location.uid, "locationName": location.name}

    def _admin_users_accept(self, request: Request, body: dict) -> dict:
        """The user opened the invite link and signed in with an Apple ID."""
        location = self._location_of(body["sToken"])
        user = location.users[body["clientUserId"]]
        user.status, user.id_hash, user.version = "Associated", secrets.token_hex(8), location.bump()
        self._notify(location, "USER_ASSOCIATED", {"associatedUsers": [{"clientUserId": user.client_user_id, "idHash": user.id_hash}]})
        return user.to_json()

    def _admin_settings(self, request: Request, body: dict) -> dict:
        self.page_size = int(body.get("pageSize", self.page_size))
        self.event_polls = int(body.get("eventPolls", self.event_polls))
        self.limits.update(body.get("limits", {}))
        return {"pageSize": self.page_size, "eventPolls": self.event_polls, "limits": self.limits}

    def _admin_notify_test(self, request: Request, body: dict) -> dict:
        self._notify(self._location_of(body["sToken"]), "TEST_NOTIFICATION", {})
        return {"sent": True}

    def _admin_state(self, request: Request, body: dict) -> dict:
        location = self._location_of(request.args["sToken"]) if "sToken" in request.args else None
        data: dict[str, Any] = {"requests": dict(self._requests)}
        if location:
            data.update(
                versionId=str(location.version), mdmInfo=location.mdm_info, users=len(location.users),
                registered=sum(1 for u in location.users.values() if u.status == "Registered"),
                assignments=len(location.assignments), notificationUrl=location.notification_url,
                retired=sum(1 for u in location.users.values() if u.status == "Retired"))
            if "clientUserId" in request.args:
                user = location.users.get(request.args["clientUserId"])
                data["user"] = user.to_json() if user else None
                data["userAssignments"] = sorted(
                    adam_id for adam_id, _, kind, holder in location.assignments
                    if kind == "clientUserId" and holder == request.args["clientUserId"])
        return data


def _without_users(body: dict, client_user_ids: list[str]) -> tuple[dict, list[str]]:
    """The request without these users (``users`` or ``clientUserIds``), and those of them it named."""
    named = {u.get("clientUserId") for u in body.get("users") or [] if isinstance(u, dict)}
    named |= set(body.get("clientUserIds") or [])
    failing = [u for u in client_user_ids if u in named]
    kept = dict(body)
    if "users" in kept:
        kept["users"] = [u for u in kept["users"] if not isinstance(u, dict) or u.get("clientUserId") not in failing]
    if "clientUserIds" in kept:
        kept["clientUserIds"] = [u for u in kept["clientUserIds"] if u not in failing]
    return kept, failing


def _failure(number: int, **info: list) -> dict:
    return {"errorNumber": number, "errorMessage": ERROR_MESSAGES.get(number, "Error"), "errorInfo": info}


def _json(data: Any, status: int = 200, headers: dict | None = None) -> Response:
    return Response(json.dumps(data), status=status, headers=headers or {}, mimetype="application/json")


def _post_notification(url: str, auth_token: str | None, body: dict) -> None:
    try:
        httpx.post(url, json=body, headers={"Authorization": f"Bearer {auth_token}"}, timeout=5)
    except httpx.HTTPError:
        pass  # like Apple: a notification that cannot be delivered is dropped
