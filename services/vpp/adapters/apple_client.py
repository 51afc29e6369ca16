"""Apple's Apps and Books v2 API over httpx.

Apple reports many errors in HTTP 200 bodies (``errorNumber``), so every body is
inspected. Retries are bounded: 9622 once (after re-reading the token), 9646 with
exponential backoff, 5xx/429 after ``Retry-After``. Every response carrying an
``mdmInfo`` that is not ours raises ``ManagedByAnotherMdm``.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from services.vpp.domain.licences import LicenceBatch, Limits
from shared.errors import Conflict, UpstreamError

DEFAULT_BASE_URL = "https://vpp.itunes.apple.com/mdm/v2/"
SERVICE_CONFIG_TTL = 300.0
LOOKUP_IDS_PER_REQUEST = 50  # adamIds per content metadata lookup: keeps the URL short
INVALID_TOKEN, TOKEN_EXPIRED, TOKEN_REVOKED, TOO_MANY_REQUESTS = 9622, 9621, 9625, 9646

#: called once per Apple response: (endpoint, error number or HTTP status, or None when fine)
CallObserver = Callable[[str, "int | None"], None]


class AppleRequestError(UpstreamError):
    """Apple refused or failed a request; ``error_number`` is Apple's code (or the HTTP status)."""

    def __init__(self, message: str, *, endpoint: str, error_number: int | None = None, error_info: dict | None = None):
        super().__init__(message)
        self.endpoint, self.error_number, self.error_info = endpoint, error_number, error_info or {}


class ContentTokenExpired(AppleRequestError):
    pass


class ContentTokenRevoked(AppleRequestError):
    pass


class ContentTokenInvalid(AppleRequestError):
    pass


# how to claim back a location whose content token is here already (the caller names the token when it can)
RENEW_TO_CLAIM = ("renew the content token here with take_over to claim the location back "
                  "(`orchard vpp token renew TOKEN_ID FILE.vpptoken --take-over`, or the renew_content_token RPC)")


class ManagedByAnotherMdm(Conflict):
    """The location's ``mdmInfo`` names another MDM: licences would be managed twice."""

    def __init__(self, other: dict, claim: str = RENEW_TO_CLAIM):
        name = other.get("name") or other.get("id") or "unknown"
        super().__init__(
            f"This location is managed by another MDM ({name}); one location's licences cannot be managed "
            f"by two MDMs. Delete the content token from the other MDM, or {claim}."
        )
        self.other_mdm = dict(other)


@dataclass(frozen=True)
class MdmIdentity:
    id: str
    name: str
    metadata: str = ""

    def to_json(self) -> dict:
        return {"id": self.id, "name": self.name, "metadata": self.metadata}


@dataclass(frozen=True)
class Listing:
    """All pages of one listing, read at a single ``versionId``."""

    items: list[dict]
    version_id: str | None

    def __iter__(self) -> Iterator[dict]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True)
class AssetMetadata:
    """What the store says about an app or book (the asset list carries no names)."""

    adam_id: str
    name: str
    kind: str | None
    artwork_url: str | None


@dataclass(frozen=True)
class EventResult:
    event_id: str
    status: str  # PENDING | COMPLETE | FAILED
    event_type: str | None
    num_completed: int
    num_requested: int
    failures: list[dict] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.status != "PENDING"


class _ServiceConfigCache:
    """``service/config`` is the same for every token: one cached copy per base URL."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, dict]] = {}

    def get(self, base_url: str, fetch: Callable[[], dict], ttl: float) -> dict:
        with self._lock:
            entry = self._entries.get(base_url)
        if entry and time.monotonic() - entry[0] < ttl:
            return entry[1]
        config = fetch()
        with self._lock:
            self._entries[base_url] = (time.monotonic(), config)
        return config


SERVICE_CONFIG_CACHE = _ServiceConfigCache()


class AppsAndBooksClient:
    """One content token's view of the Apps and Books API."""

    def __init__(
        self,
        stoken: str,
        mdm: MdmIdentity,
        *,
        base_url: str = DEFAULT_BASE_URL,
        http: httpx.Client | None = None,
        reload_stoken: Callable[[], str] | None = None,
        observer: CallObserver | None = None,
        busy_retries: int = 3,
        busy_backoff: float = 5.0,
        server_retries: int = 3,
        max_retry_after: float = 60.0,
        poll_interval: float = 1.0,
        poll_timeout: float = 300.0,
        page_restarts: int = 5,
    ):
        self._stoken = stoken
        self.mdm = mdm
        self.base_url = base_url.rstrip("/") + "/"
        self._http = http or httpx.Client(timeout=30.0)
        self._owns_http = http is None
        self._reload_stoken = reload_stoken
        self._observer = observer
        self.busy_retries, self.busy_backoff = busy_retries, busy_backoff
        self.server_retries, self.max_retry_after = server_retries, max_retry_after
        self.poll_interval, self.poll_timeout, self.page_restarts = poll_interval, poll_timeout, page_restarts
        self.token_expiration_date: str | None = None
        self.location_uid: str | None = None

    def __repr__(self) -> str:
        return f"<AppsAndBooksClient {self.base_url} uId={self.location_uid}>"

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    # --- configuration ----------------------------------------------------------------------
    def service_config(self) -> dict:
        return SERVICE_CONFIG_CACHE.get(
            self.base_url, lambda: self._call("GET", "service/config", auth=False), SERVICE_CONFIG_TTL)

    def limits(self) -> Limits:
        return Limits.from_service_config(self.service_config().get("limits") or {})

    def invitation_url_template(self) -> str:
        return (self.service_config().get("urls") or {}).get("invitationEmail", "")

    def client_config(self, *, check_mdm: bool = True) -> dict:
        """Read the location's configuration; ``check_mdm=False`` to look before claiming."""
        return self._call("GET", "client/config", check_mdm=check_mdm)

    def claim_location(
        self,
        *,
        notification_url: str | None = None,
        notification_auth_token: str | None = None,
        notification_types: list[str] | None = None,
    ) -> dict:
        """Write our ``mdmInfo`` (and the notification subscription) into the location."""
        body: dict[str, Any] = {"mdmInfo": self.mdm.to_json()}
        if notification_url:
            body.update(notificationUrl=notification_url, notificationAuthToken=notification_auth_token,
                        notificationTypes=notification_types or [])
        return self._call("POST", "client/config", json=body)

    # --- content metadata -------------------------------------------------------------------
    def content_metadata(self, adam_ids: Sequence[str], *, platform: str, country: str) -> dict[str, AssetMetadata]:
        """Names (kind, artwork) of these assets from the store lookup advertised in ``service/config``,
        ``LOOKUP_IDS_PER_REQUEST`` at a time; ids the store does not know are left out."""
        url = (self.service_config().get("urls") or {}).get("contentMetadataLookup")
        if not url:
            raise AppleRequestError("Apple's service configuration names no content metadata lookup.", endpoint="lookup")
        found: dict[str, AssetMetadata] = {}
        ids = list(dict.fromkeys(adam_ids))
        for start in range(0, len(ids), LOOKUP_IDS_PER_REQUEST):
            params = {"version": 2, "p": "mdm-lockup", "caller": "MDM", "platform": platform, "cc": country.lower(),
                      "id": ",".join(ids[start:start + LOOKUP_IDS_PER_REQUEST])}
            try:
                response = self._http.get(url, params=params, headers={"Cookie": f"itvt={self._stoken}"})
            except httpx.TransportError:
                self._observe("lookup", 0)
                raise AppleRequestError("Apple's content metadata lookup could not be reached.", endpoint="lookup") from None
            if response.status_code != 200:
                self._observe("lookup", response.status_code)
                raise AppleRequestError(f"Apple's content metadata lookup failed (HTTP {response.status_code}).",
                                        endpoint="lookup", error_number=response.status_code)
            results = self._json(response, "lookup").get("results")
            self._observe("lookup", None)
            for adam_id, item in (results.items() if isinstance(results, dict) else ()):
                if isinstance(item, dict) and item.get("name"):
                    artwork = item.get("artwork") if isinstance(item.get("artwork"), dict) else {}
                    found[str(adam_id)] = AssetMetadata(str(adam_id), str(item["name"])[:300], _text_or_none(item.get("kind"), 40),
                                                        _text_or_none(artwork.get("url"), 500))
        return found

    # --- listings ---------------------------------------------------------------------------
    def assets(self, **filters: Any) -> Listing:
        return self._collect("assets", "assets", filters)

    def assignments(self, *, since_version_id: str | None = None, **filters: Any) -> Listing:
        if since_version_id:
            filters["sinceVersionId"] = since_version_id
        return self._collect("assignments", "assignments", filters)

    def users(self, *, include_retired: bool = False, since_version_id: str | None = None, **filters: Any) -> Listing:
        filters["includeRetired"] = 1 if include_retired else 0
        if since_version_id:
            filters["sinceVersionId"] = since_version_id
        return self._collect("users", "users", filters)

    def _collect(self, path: str, key: str, params: dict) -> Listing:
        for _ in range(self.page_restarts + 1):
            items: list[dict] = []
            version: str | None = None
            index: int | None = 0
            while index is not None:
                body = self._call("GET", path, params={**params, "pageIndex": index})
                if index == 0:
                    version = body.get("versionId")
                elif body.get("versionId") != version:
                    break  # the data changed under us: pages would mix two versions
                items.extend(body.get(key) or [])
                index = body.get("nextPageIndex")
            else:
                return Listing(items, version)
        raise AppleRequestError(
            f"Apple's {path} kept changing while Orchard read it; run the sync again in a few minutes.", endpoint=path)

    # --- writes -----------------------------------------------------------------------------
    def associate(self, batch: LicenceBatch) -> str:
        return self._event("assets/associate", _licence_body(batch))

    def disassociate(self, batch: LicenceBatch) -> str:
        return self._event("assets/disassociate", _licence_body(batch))

    def revoke(self, *, serial_numbers: Sequence[str] = (), client_user_ids: Sequence[str] = ()) -> str:
        """Revoke every revocable licence held by these serial numbers and users."""
        body: dict[str, Any] = {}
        if serial_numbers:
            body["serialNumbers"] = list(serial_numbers)
        if client_user_ids:
            body["clientUserIds"] = list(client_user_ids)
        return self._event("assets/revoke", body)

    def create_users(self, users: list[dict]) -> str:
        """``users``: ``{clientUserId, email?, managedAppleId?}`` each, at most ``limits().max_users``."""
        return self._event("users/create", {"users": users})

    def update_users(self, users: list[dict]) -> str:
        return self._event("users/update", {"users": users})

    def retire_users(self, client_user_ids: list[str]) -> str:
        return self._event("users/retire", {"users": [{"clientUserId": u} for u in client_user_ids]})

    def _event(self, path: str, body: dict) -> str:
        return self._call("POST", path, json=body)["eventId"]

    def event_status(self, event_id: str) -> EventResult:
        body = self._call("GET", "status", params={"eventId": event_id})
        return EventResult(
            event_id, body.get("eventStatus", "PENDING"), body.get("eventType"),
            int(body.get("numCompleted") or 0), int(body.get("numRequested") or 0), list(body.get("failures") or []))

    def wait_for_event(self, event_id: str) -> EventResult:
        """Poll ``status`` until Apple reports COMPLETE or FAILED."""
        deadline = time.monotonic() + self.poll_timeout
        while True:
            result = self.event_status(event_id)
            if result.done:
                return result
            if time.monotonic() >= deadline:
                raise AppleRequestError(
                    f"Apple has not finished request {event_id} yet; its result will show after the next sync.",
                    endpoint="status")
            time.sleep(self.poll_interval)

    # --- transport --------------------------------------------------------------------------
    def _call(self, method: str, path: str, *, params: dict | None = None, json: dict | None = None,
              auth: bool = True, check_mdm: bool = True) -> dict:
        token_reread = False
        busy_attempts = server_attempts = 0
        while True:
            headers = {"Authorization": f"Bearer {self._stoken}"} if auth else {}
            try:
                response = self._http.request(method, self.base_url + path, params=params, json=json, headers=headers)
            except httpx.TransportError:
                self._observe(path, 0)
                server_attempts += 1
                if server_attempts > self.server_retries:
                    raise AppleRequestError(
                        f"Apple's Apps and Books service could not be reached ({path}); try again later.", endpoint=path) from None
                time.sleep(min(2.0 ** server_attempts, self.max_retry_after))
                continue
            if response.status_code >= 500 or response.status_code == 429:
                self._observe(path, response.status_code)
                server_attempts += 1
                if server_attempts > self.server_retries:
                    raise AppleRequestError(
                        f"Apple's Apps and Books service is failing ({path}: HTTP {response.status_code}); try again later.",
                        endpoint=path, error_number=response.status_code)
                time.sleep(self._retry_after(response, server_attempts))
                continue
            body = self._json(response, path)
            error = body.get("errorNumber")
            if error:
                self._observe(path, error)
                if error == INVALID_TOKEN and not token_reread:
                    token_reread = True
                    if self._reload_stoken:
                        self._stoken = self._reload_stoken()
                    continue
                if error == TOO_MANY_REQUESTS and busy_attempts < self.busy_retries:
                    time.sleep(self.busy_backoff * 2 ** busy_attempts)
                    busy_attempts += 1
                    continue
                raise _apple_error(path, error, body)
            if response.status_code >= 400:
                self._observe(path, response.status_code)
                raise AppleRequestError(f"Apple refused {path} with HTTP {response.status_code}.",
                                        endpoint=path, error_number=response.status_code)
            self._observe(path, None)
            self._remember(body)
            if check_mdm:
                self._check_mdm(body)
            return body

    def _retry_after(self, response: httpx.Response, attempt: int) -> float:
        try:
            delay = float(response.headers.get("Retry-After", ""))
        except ValueError:
            delay = 2.0 ** attempt
        return max(0.0, min(delay, self.max_retry_after))

    @staticmethod
    def _json(response: httpx.Response, path: str) -> dict:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise AppleRequestError(f"Apple answered {path} with something that is not JSON (HTTP {response.status_code}); try again later.",
                                    endpoint=path, error_number=response.status_code)
        return body

    def _remember(self, body: dict) -> None:
        self.token_expiration_date = body.get("tokenExpirationDate", self.token_expiration_date)
        self.location_uid = body.get("uId", self.location_uid)

    def _check_mdm(self, body: dict) -> None:
        info = body.get("mdmInfo")
        if isinstance(info, dict) and info.get("id") and info["id"] != self.mdm.id:
            raise ManagedByAnotherMdm(info)

    def _observe(self, path: str, outcome: int | None) -> None:
        if self._observer:
            self._observer(path, outcome)


def _text_or_none(value: Any, limit: int) -> str | None:
    return str(value)[:limit] if value else None


def _licence_body(batch: LicenceBatch) -> dict:
    body: dict[str, Any] = {"assets": [{"adamId": batch.adam_id, "pricingParam": batch.pricing_param}]}
    if batch.serial_numbers:
        body["serialNumbers"] = list(batch.serial_numbers)
    if batch.client_user_ids:
        body["clientUserIds"] = list(batch.client_user_ids)
    return body


def _apple_error(path: str, number: int, body: dict) -> AppleRequestError:
    info = body.get("errorInfo") if isinstance(body.get("errorInfo"), dict) else None
    if number == TOKEN_EXPIRED:
        return ContentTokenExpired(
            "Apple says this content token has expired; download a new one in Apple School Manager and renew the token here.",
            endpoint=path, error_number=number)
    if number == TOKEN_REVOKED:
        return ContentTokenRevoked(
            "Apple has revoked this content token (a newer one was downloaded, or it was revoked in Apple School Manager); "
            "renew it here with the current token.", endpoint=path, error_number=number)
    if number == INVALID_TOKEN:
        return ContentTokenInvalid(
            "Apple does not accept this content token; upload the current .vpptoken file again.", endpoint=path, error_number=number)
    if number == TOO_MANY_REQUESTS:
        return AppleRequestError("Apple is limiting requests from this MDM right now; try again in a few minutes.",
                                 endpoint=path, error_number=number)
    message = str(body.get("errorMessage") or "no reason given")[:200]
    return AppleRequestError(f"Apple refused {path}: {message} (error {number}).",
                             endpoint=path, error_number=number, error_info=info)
