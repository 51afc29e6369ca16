"""Client for Apple's Device Assignment API (``https://mdmenrollment.apple.com``).

One client per MDM server token. It owns the session: authenticates with OAuth 1.0a,
adopts a rotated ``X-ADM-Auth-Session``, re-authenticates once when the session
expires, waits out 429s within bounds and turns Apple's short error strings into
the typed errors of ``domain.errors`` (and its refusals of a profile's fields into
``ValidationError``); an answer that is not a JSON object is a ``DepError`` too.
Lists come back as page iterators so a 100,000-device account is never held in
memory at once.
"""
from __future__ import annotations

import email.utils
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx

from services.enrollment.adapters.oauth1 import authorization_header
from services.enrollment.domain.errors import (
    AccessDenied,
    CursorExhausted,
    CursorExpired,
    CursorRequired,
    DepError,
    TermsNotAccepted,
    Throttled,
    TokenExpired,
)
from services.enrollment.domain.server_tokens import OAuthCredentials
from shared import json_text
from shared.errors import OrchardError, ValidationError

APPLE_DEP_URL = "https://mdmenrollment.apple.com"
PROTOCOL_VERSION = 10  # per-serial THROTTLED needs 9+, retry_after_seconds 10+
USER_AGENT = "Orchard-Enrollment/1.0"
CONTENT_TYPE = "application/json;charset=UTF8"
DEFAULT_PAGE_SIZE = 1000
ASSIGN_BATCH = 1000

ROSTER_KINDS = ("class", "person", "location", "course")
_ROSTER_LIST_KEYS = {"class": "classes", "person": "persons", "location": "locations", "course": "courses"}
# Apple's documented paths first; /account may advertise older ones (e.g. /roster/course)
_ROSTER_PATHS = {
    "class": ("/roster/class",),
    "person": ("/roster/class/person",),
    "location": ("/roster/class/location",),
    "course": ("/roster/class/course", "/roster/course"),
}

# Apple's 400s on POST /profile that name a field of the profile: the profile is at fault, not Apple
_PROFILE_FIELDS = {
    "CONFIG_NAME_REQUIRED": "profile_name", "CONFIG_NAME_INVALID": "profile_name",
    "CONFIG_URL_REQUIRED": "url", "CONFIG_URL_INVALID": "url",
    "DEPARTMENT_INVALID": "department", "FLAGS_INVALID": "is_mdm_removable and is_supervised",
    "LOCALE_INVALID": "language and region", "MAGIC_INVALID": "org_magic",
    "SUPPORT_EMAIL_INVALID": "support_email_address", "SUPPORT_PHONE_INVALID": "support_phone_number",
}

CallObserver = Callable[[str, int], None]


@dataclass(frozen=True)
class Page:
    """One page of a cursor listing: its records and where to continue."""

    items: list[dict[str, Any]]
    cursor: str | None
    more_to_follow: bool
    fetched_until: str | None = None


@dataclass(frozen=True)
class AssignResult:
    """Apple's per-serial answer (SUCCESS, NOT_ACCESSIBLE, FAILED, THROTTLED)."""

    profile_uuid: str | None
    statuses: dict[str, str] = field(default_factory=dict)
    retry_after_seconds: int | None = None


class DepClient:
    def __init__(
        self,
        credentials: OAuthCredentials,
        *,
        base_url: str = APPLE_DEP_URL,
        http: httpx.Client | None = None,
        protocol_version: int = PROTOCOL_VERSION,
        user_agent: str = USER_AGENT,
        max_throttle_attempts: int = 5,
        max_retry_after_seconds: float = 300.0,
        sleep: Callable[[float], None] = time.sleep,
        observe_call: CallObserver | None = None,
        timeout: float = 60.0,
    ):
        self._credentials = credentials
        self._base_url = base_url.rstrip("/")
        self._http = http or httpx.Client(timeout=timeout)
        self._protocol_version = str(protocol_version)
        self._user_agent = user_agent
        self._max_throttle_attempts = max_throttle_attempts
        self._max_retry_after = max_retry_after_seconds
        self._sleep = sleep
        self._observe_call = observe_call
        self._session: str | None = None
        self._urls: dict[str, dict[str, Any]] | None = None

    def __repr__(self) -> str:
        return f"DepClient({self._base_url!r}, consumer_key={self._credentials.consumer_key!r})"

    def close(self) -> None:
        self._http.close()

    # --- account ---------------------------------------------------------------------------

    def account(self) -> dict[str, Any]:
        detail = self._answer("GET", "/account")
        self._urls = {u.get("uri"): u for u in detail.get("urls") or [] if isinstance(u, dict)}
        return detail

    def page_limit(self, path: str, default: int = DEFAULT_PAGE_SIZE) -> int:
        """The page size to ask for: ``default`` within what ``/account`` allows for ``path`` (asked once)."""
        if self._urls is None:
            self.account()
        limit = (self._urls.get(path) or {}).get("limit") or {}
        maximum = limit.get("maximum")
        return min(default, maximum) if isinstance(maximum, int) and maximum > 0 else default

    # --- devices ---------------------------------------------------------------------------

    def fetch_device_pages(self, cursor: str | None = None, limit: int = DEFAULT_PAGE_SIZE) -> Iterator[Page]:
        """All devices assigned to the MDM server, page by page (``POST /server/devices``)."""
        return self._pages("/server/devices", "devices", cursor, self.page_limit("/server/devices", limit))

    def sync_device_pages(self, cursor: str, limit: int = DEFAULT_PAGE_SIZE) -> Iterator[Page]:
        """Changes since ``cursor`` (``POST /devices/sync``); records carry op_type and op_date."""
        if not cursor:
            raise CursorRequired("A device sync needs the cursor of an earlier fetch; fetch all devices first.")
        return self._pages("/devices/sync", "devices", cursor, self.page_limit("/devices/sync", limit))

    def device_details(self, serial_numbers: list[str]) -> dict[str, dict[str, Any]]:
        return _devices(self._answer("POST", "/devices", {"devices": list(serial_numbers)}), "/devices")

    # --- profiles --------------------------------------------------------------------------

    def define_profile(self, profile: dict[str, Any]) -> dict[str, Any]:
        return self._answer("POST", "/profile", profile)

    def get_profile(self, profile_uuid: str) -> dict[str, Any]:
        return self._answer("GET", "/profile", params={"profile_uuid": profile_uuid})

    def assign_profile(self, profile_uuid: str, serial_numbers: list[str]) -> AssignResult:
        """One request of at most ``ASSIGN_BATCH`` serials (the caller batches, keeping each batch's results)."""
        if len(serial_numbers) > ASSIGN_BATCH:
            raise ValueError(f"assign at most {ASSIGN_BATCH} serial numbers per request")
        body = self._answer("PUT", "/profile/devices", {"profile_uuid": profile_uuid, "devices": serial_numbers})
        seconds = body.get("retry_after_seconds")
        retry_after = seconds if isinstance(seconds, int) else None
        return AssignResult(profile_uuid, _devices(body, "/profile/devices"), retry_after)

    def remove_profile(self, serial_numbers: list[str]) -> dict[str, str]:
        statuses: dict[str, str] = {}
        for start in range(0, len(serial_numbers), ASSIGN_BATCH):
            batch = serial_numbers[start:start + ASSIGN_BATCH]
            answer = self._answer("DELETE", "/profile/devices", {"devices": batch})
            statuses.update(_devices(answer, "/profile/devices"))
        return statuses

    # --- roster ----------------------------------------------------------------------------

    def roster_page(self, kind: str, cursor: str | None = None, *, sync: bool = False) -> Page:
        """One page of classes, persons, locations or courses (fetch, or sync from ``cursor``)."""
        path = self._roster_path(kind) + ("/sync" if sync else "")
        if sync and not cursor:
            raise CursorRequired(f"A {kind} roster sync needs the cursor of an earlier fetch.")
        body: dict[str, Any] = {"limit": self.page_limit(path)}
        if cursor:
            body["cursor"] = cursor
        return _page(self._answer("POST", path, body), _ROSTER_LIST_KEYS[kind], path)

    def roster_pages(self, kind: str, cursor: str | None = None, *, sync: bool = False) -> Iterator[Page]:
        while True:
            page = self.roster_page(kind, cursor, sync=sync)
            yield page
            if not page.more_to_follow or not page.cursor:
                return
            cursor = page.cursor

    def _roster_path(self, kind: str) -> str:
        if kind not in ROSTER_KINDS:
            raise ValueError(f"unknown roster kind {kind!r}")
        if self._urls is None:
            self.account()
        candidates = _ROSTER_PATHS[kind]
        return next((p for p in candidates if p in self._urls), candidates[0])

    # --- transport -------------------------------------------------------------------------

    def _pages(self, path: str, list_key: str, cursor: str | None, limit: int) -> Iterator[Page]:
        while True:
            body: dict[str, Any] = {"limit": limit}
            if cursor:
                body["cursor"] = cursor
            page = _page(self._answer("POST", path, body), list_key, path)
            yield page
            if not page.more_to_follow:
                return
            if not page.cursor:
                raise DepError(f"Apple announced more to follow on {path} but sent no cursor; run the sync again.")
            cursor = page.cursor

    def _answer(
        self, method: str, path: str, body: dict[str, Any] | None = None, params: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Apple's answer to a request, which every endpoint gives as a JSON object."""
        return _json_object(self._call(method, path, body, params), path)

    def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None, params: dict[str, str] | None = None
    ) -> httpx.Response:
        if self._session is None:
            self._authenticate()
        content = json.dumps(body).encode() if body is not None else None
        reauthenticated = False
        throttled, waited = 0, 0.0
        while True:
            response = self._send(method, path, content=content, params=params, session=self._session)
            rotated = response.headers.get("X-ADM-Auth-Session")
            if rotated:
                self._session = rotated
            if response.is_success:
                return response
            if _session_rejected(response) and not reauthenticated:
                reauthenticated = True
                self._authenticate()
                continue
            if response.status_code == 429:
                throttled += 1
                waited = self._wait_for_throttle(response, throttled, path, waited)
                continue
            raise _error(response, path)

    def _authenticate(self) -> None:
        credentials = self._credentials
        if credentials.access_token_expiry <= datetime.now(timezone.utc):
            raise TokenExpired(
                f"The server token expired on {credentials.access_token_expiry:%Y-%m-%d}. "
                "Download a new token from Apple School Manager and renew it in Orchard."
            )
        url = f"{self._base_url}/session"
        throttled, waited = 0, 0.0
        while True:
            header = authorization_header(
                "GET", url,
                consumer_key=credentials.consumer_key, consumer_secret=credentials.consumer_secret,
                token=credentials.access_token, token_secret=credentials.access_secret,
            )
            response = self._send("GET", "/session", authorization=header)
            if response.status_code == 429:
                throttled += 1
                waited = self._wait_for_throttle(response, throttled, "/session", waited)
                continue
            break
        if response.status_code == 401:
            raise AccessDenied(
                "Apple refused this server token (UNAUTHORIZED): it was revoked, replaced by a newer token or "
                "its MDM server was deleted. Download a new token from Apple School Manager and renew it.",
                status_code=401,
            )
        if not response.is_success:
            raise _error(response, "/session")
        token = _json_object(response, "/session").get("auth_session_token")
        if not isinstance(token, str) or not token:
            raise DepError("Apple's /session answer had no auth_session_token; try again later.")
        self._session = token

    def _send(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        params: dict[str, str] | None = None,
        session: str | None = None,
        authorization: str | None = None,
    ) -> httpx.Response:
        headers = {
            "User-Agent": self._user_agent,
            "X-Server-Protocol-Version": self._protocol_version,
            "Content-Type": CONTENT_TYPE,
            "Accept": "application/json",
        }
        if session:
            headers["X-ADM-Auth-Session"] = session
        if authorization:
            headers["Authorization"] = authorization
        try:
            response = self._http.request(method, self._base_url + path, headers=headers, content=content, params=params)
        except httpx.HTTPError as exc:
            if self._observe_call:
                self._observe_call(path, 0)
            raise DepError(f"Could not reach Apple's device enrollment service ({type(exc).__name__}); try again later.") from None
        if self._observe_call:
            self._observe_call(path, response.status_code)
        return response

    def _wait_for_throttle(self, response: httpx.Response, attempt: int, path: str, waited: float) -> float:
        """Wait as long as Apple asked; the seconds this request has waited so far.

        ``Throttled`` at once, without waiting, when the attempts are used up or the wait would take the
        request past ``max_retry_after_seconds`` in all: a worker asleep for an hour holds its caller (who
        gave up long before) and its sync lease, and calling before Apple's time only draws more 429s.
        """
        said = response.headers.get("Retry-After")
        delay = max(retry_after_seconds(said, default=2.0 ** attempt), 0.0)
        asked = delay if said else None  # without Apple's word, our own backoff is no time to book a retry at
        if attempt >= self._max_throttle_attempts:
            raise _throttled(f"Apple kept throttling {path} after {attempt} attempts", asked)
        if waited + delay > self._max_retry_after:
            asking = f" and asked Orchard to wait {math.ceil(delay)} s" if said else ""
            raise _throttled(f"Apple is throttling {path}{asking}", asked)
        self._sleep(delay)
        return waited + delay


def retry_after_seconds(value: str | None, *, default: float, now: datetime | None = None) -> float:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date; ``default`` if absent or unreadable."""
    if not value:
        return default
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


def _throttled(what: str, seconds: float | None) -> Throttled:
    if seconds is None:
        return Throttled(f"{what}; try again in a few minutes.")
    until = datetime.now(timezone.utc) + timedelta(seconds=math.ceil(seconds))
    return Throttled(f"{what}; try again after {until:%Y-%m-%d %H:%M:%S} UTC.", retry_after=seconds)


def _json_object(response: httpx.Response, path: str) -> dict[str, Any]:
    """The body as a JSON object; a proxy's HTML page or any other JSON value is Apple failing, not a crash of ours."""
    try:
        answer = json_text.loads(response.content)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise DepError(f"Apple's answer on {path} was not a JSON object; try again later.",
                       status_code=response.status_code)
    return answer


def _devices(body: dict[str, Any], path: str) -> dict[str, Any]:
    """An answer's ``devices``: results by serial number."""
    devices = body.get("devices") or {}
    if not isinstance(devices, dict):
        raise DepError(f"Apple's answer on {path} did not give its devices by serial number; try again later.")
    return devices


def _page(body: dict[str, Any], list_key: str, path: str) -> Page:
    items = body.get(list_key) or []
    cursor = body.get("cursor")
    if not isinstance(items, list) or not (cursor is None or isinstance(cursor, str)):
        raise DepError(f"Apple's page on {path} did not list its {list_key} with a cursor; try again later.")
    return Page(
        items=items,
        cursor=cursor,
        more_to_follow=bool(body.get("more_to_follow")),
        fetched_until=body.get("fetched_until"),
    )


def _session_rejected(response: httpx.Response) -> bool:
    return response.status_code == 401 or (response.status_code == 403 and "FORBIDDEN" in response.text)


def _error(response: httpx.Response, path: str) -> OrchardError:
    """Apple's error bodies are short strings, sometimes quoted or in JSON: match by substring."""
    text = response.text[:500]
    status = response.status_code
    if "T_C_NOT_SIGNED" in text:
        return TermsNotAccepted(
            "Apple School Manager has new terms and conditions: an administrator must accept them in "
            "Apple School Manager before Orchard can sync again.",
            status_code=status,
        )
    if "ACCESS_DENIED" in text:
        return AccessDenied(
            "Apple denied access for this server token (ACCESS_DENIED): it was revoked or its MDM server was "
            "removed. Download a new token from Apple School Manager and renew it.",
            status_code=status,
        )
    for code, kind in (("EXHAUSTED_CURSOR", CursorExhausted), ("EXPIRED_CURSOR", CursorExpired),
                       ("INVALID_CURSOR", CursorExpired), ("CURSOR_REQUIRED", CursorRequired)):
        if code in text:
            return kind(f"Apple answered {code} on {path}.", status_code=status)
    code = _error_code(text)
    defining = path == "/profile" and response.request.method == "POST"
    if status == 400 and defining and (code in _PROFILE_FIELDS or code.startswith("CONFIG_")):
        fix = f"correct its {_PROFILE_FIELDS[code]}" if code in _PROFILE_FIELDS else "correct it"
        return ValidationError(f"Apple refused the enrollment profile ({code}): {fix} and define it again.")
    return DepError(f"Apple answered {status}{' ' + code if code else ''} on {path}.", status_code=status)


def _error_code(text: str) -> str:
    """A short upper-case code from a body like ``"CONFIG_URL_REQUIRED"`` or ``{"code": ...}``."""
    stripped = text.strip().strip('"')
    if stripped.startswith("{"):
        try:
            data = json.loads(stripped)
            stripped = str(data.get("code") or data.get("error") or "") if isinstance(data, dict) else ""
        except ValueError:
            return ""
    return stripped if stripped.replace("_", "").isalnum() and len(stripped) <= 64 else ""
