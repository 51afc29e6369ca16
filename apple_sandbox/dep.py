"""A Device Assignment API server that behaves like Apple's (and like depsim where Apple is silent).

``DepSandbox`` is a WSGI app: serve it with ``apple_sandbox.server.serve_wsgi``.
Apple's side: OAuth 1.0a on ``GET /session``, expiring and rotating sessions,
cursor pages for devices and rosters (fetch, sync, the cursor errors, 7-day expiry),
``/account`` with ``urls`` limits, profiles and per-serial assignment results,
quoted error bodies. Test side, over HTTP under ``/_sandbox/``: create MDM servers
and issue their ``.p7m`` tokens, add/modify/delete devices (100,000 generated ones
cost nothing until read), load roster data, script the next responses of an
endpoint, expire sessions, move the clock and read request counts.
"""
from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable
from urllib.parse import quote, unquote

from werkzeug.wrappers import Request, Response

from apple_sandbox.dep_tokens import issue_token_file

CONTENT_TYPE = "application/json;charset=UTF8"
CURSOR_LIFETIME_SECONDS = 7 * 24 * 3600
PROFILE_DEVICE_STATUSES = ("SUCCESS", "NOT_ACCESSIBLE", "FAILED", "THROTTLED")
ROSTER_KINDS = {"class": "classes", "person": "persons", "location": "locations", "course": "courses"}

# depsim's named failures (commandment simulators/depsim/config_failures.json)
NAMED_FAILURES: dict[str, tuple[int, str]] = {
    "bad_request": (400, ""),
    "unauthorized": (401, "UNAUTHORIZED"),
    "forbidden": (403, "FORBIDDEN"),
    "forbidden_access_denied": (403, "ACCESS_DENIED"),
    "forbidden_t_c_not_signed": (403, "T_C_NOT_SIGNED"),
    "method_not_allowed": (405, ""),
    "too_many_requests": (429, "TOO_MANY_REQUESTS"),
    "bad_request_exhausted_cursor": (400, "EXHAUSTED_CURSOR"),
    "bad_request_expired_cursor": (400, "EXPIRED_CURSOR"),
    "bad_request_invalid_cursor": (400, "INVALID_CURSOR"),
    "internal_server_error": (500, "INTERNAL_SERVER_ERROR"),
}

_MODELS = (
    ("iPad (9th generation)", "iPad", "iPadOS", "SPACE GRAY"),
    ("iPad Air (5th generation)", "iPad", "iPadOS", "BLUE"),
    ("MacBook Air (M2, 2022)", "Mac", "OSX", "MIDNIGHT"),
    ("iPhone 14", "iPhone", "iOS", "STARLIGHT"),
    ("Apple TV 4K", "AppleTV", "tvOS", "BLACK"),
)


class SandboxError(Exception):
    """An Apple-style error answer: HTTP status and the short body string (sent as it is with a ``content_type``,
    as a proxy's HTML page would be; quoted as JSON otherwise)."""

    def __init__(self, status: int, code: str = "", headers: dict[str, str] | None = None,
                 content_type: str | None = None):
        self.status, self.code, self.headers, self.content_type = status, code, headers or {}, content_type


class RangeLog:
    """An append-only sequence whose entries stand for runs of items (cheap for generated devices)."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._entries: list[tuple[Any, int]] = []
        self.length = 0

    def append(self, entry: Any, size: int = 1) -> None:
        self._starts.append(self.length)
        self._entries.append((entry, size))
        self.length += size

    def slice(self, start: int, stop: int):
        """Yield ``(entry, offset_in_entry)`` for positions ``start <= p < stop``."""
        index = bisect.bisect_right(self._starts, start) - 1
        position = start
        while position < stop and 0 <= index < len(self._entries):
            entry, size = self._entries[index]
            offset = position - self._starts[index]
            while offset < size and position < stop:
                yield entry, offset
                offset += 1
                position += 1
            index += 1


@dataclass
class CursorListing:
    """Fetch pages over a snapshot of ``listing``; sync pages over ``changes`` since a cursor."""

    listing: RangeLog = field(default_factory=RangeLog)
    changes: RangeLog = field(default_factory=RangeLog)


@dataclass
class MdmServer:
    server_uuid: str
    server_name: str
    org_name: str
    admin_id: str
    serial_prefix: str
    consumer_key: str
    consumer_secret: str
    access_token: str = ""
    access_secret: str = ""
    access_token_expiry: float = 0.0
    terms_signed: bool = True
    revoked: bool = False
    session_ttl: float | None = None
    rotate_session_every: int | None = None
    page_maximum: int = 1000
    reverse_sync_pages: bool = False
    legacy_course_path: bool = False
    generated: int = 0
    devices: CursorListing = field(default_factory=CursorListing)
    explicit: dict[str, dict[str, Any]] = field(default_factory=dict)  # added or changed devices
    deleted: set[str] = field(default_factory=set)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    assign_outcomes: dict[str, str] = field(default_factory=dict)  # one-shot per serial
    retry_after_seconds: int | None = None
    roster: dict[str, CursorListing] = field(default_factory=dict)
    roster_items: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)


@dataclass
class Session:
    server_uuid: str
    created: float
    expired: bool = False
    requests: int = 0


class DepSandbox:
    """The WSGI application; all state sits behind one lock (requests are short)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._servers: dict[str, MdmServer] = {}
        self._by_consumer_key: dict[str, str] = {}
        self._sessions: dict[str, Session] = {}
        self._nonces: set[str] = set()
        self._clock_offset = 0.0
        self._scripted: dict[str, deque[tuple[int, str, dict[str, str], str | None]]] = {}
        self._counts: Counter[str] = Counter()

    def now(self) -> float:
        return time.time() + self._clock_offset

    # --- WSGI ------------------------------------------------------------------------------

    def __call__(self, environ, start_response):
        request = Request(environ)
        with self._lock:
            response = self._dispatch(request)
        return response(environ, start_response)

    def _dispatch(self, request: Request) -> Response:
        path = request.path.rstrip("/") or "/"
        if path.startswith("/_sandbox/"):
            try:
                return self._admin(request, path)
            except SandboxError as exc:
                return _json({"error": exc.code}, exc.status)
        endpoint = f"{request.method} {path}"
        try:
            response = self._apple(request, path, endpoint)
        except SandboxError as exc:
            body = exc.code if exc.content_type else json.dumps(exc.code) if exc.code else ""
            response = Response(body, exc.status, headers=exc.headers, content_type=exc.content_type or CONTENT_TYPE)
        self._counts[endpoint] += 1
        self._counts[f"{endpoint} {response.status_code}"] += 1
        return response

    # --- Apple's side ----------------------------------------------------------------------

    def _apple(self, request: Request, path: str, endpoint: str) -> Response:
        scripted = self._scripted.get(endpoint)
        if scripted:
            raise SandboxError(*scripted.popleft())
        if not request.headers.get("User-Agent"):
            raise SandboxError(400, "USER_AGENT_MISSING")
        if path == "/session":
            if request.method != "GET":
                raise SandboxError(405)
            return self._session(request)
        server, session_header = self._authorised_server(request)
        if server.terms_signed is False:
            raise SandboxError(403, "T_C_NOT_SIGNED")
        if server.revoked:
            raise SandboxError(403, "ACCESS_DENIED")
        version = _int(request.headers.get("X-Server-Protocol-Version"), 1)
        route = self._routes().get(path)
        if route is None:
            route = self._roster_route(server, path)
        if route is None:
            raise SandboxError(404, "NOT_FOUND")
        methods, handler = route
        if request.method not in methods:
            raise SandboxError(405)
        body = _request_json(request) if request.method in ("POST", "PUT", "DELETE") else {}
        result = handler(server, request, body, version)
        response = _json(result, 200)
        if session_header:
            response.headers["X-ADM-Auth-Session"] = session_header
        return response

    def _routes(self) -> dict[str, tuple[tuple[str, ...], Callable]]:
        return {
            "/account": (("GET",), self._account),
            "/server/devices": (("POST",), self._fetch_devices),
            "/devices/sync": (("POST",), self._sync_devices),
            "/devices": (("POST",), self._device_details),
            "/profile": (("POST", "GET"), self._profile),
            "/profile/devices": (("PUT", "POST", "DELETE"), self._profile_devices),
        }

    def _session(self, request: Request) -> Response:
        if request.headers.get("Content-Type") != CONTENT_TYPE:
            raise SandboxError(400)
        params = _oauth_params(request.headers.get("Authorization", ""))
        required = ("oauth_consumer_key", "oauth_token", "oauth_signature_method", "oauth_signature",
                    "oauth_timestamp", "oauth_nonce")
        if params is None or any(name not in params for name in required):
            raise SandboxError(400)
        if params["oauth_signature_method"] != "HMAC-SHA1" or params.get("oauth_version", "1.0") != "1.0":
            raise SandboxError(400)
        server_uuid = self._by_consumer_key.get(params["oauth_consumer_key"])
        server = self._servers.get(server_uuid or "")
        if server is None or not hmac.compare_digest(params["oauth_token"], server.access_token):
            raise SandboxError(401, "UNAUTHORIZED")
        signed = [(k, v) for k, v in params.items() if k not in ("oauth_signature", "realm")]
        signed += list(request.args.items(multi=True))
        expected = _hmac_sha1(_base_string("GET", request.base_url, signed), server.consumer_secret, server.access_secret)
        if not hmac.compare_digest(expected, params["oauth_signature"]):
            raise SandboxError(401, "UNAUTHORIZED")
        if params["oauth_nonce"] in self._nonces or server.access_token_expiry <= self.now():
            raise SandboxError(401, "UNAUTHORIZED")
        self._nonces.add(params["oauth_nonce"])
        if server.revoked:
            raise SandboxError(403, "ACCESS_DENIED")
        if not server.terms_signed:
            raise SandboxError(403, "T_C_NOT_SIGNED")
        token = secrets.token_hex(24)
        self._sessions[token] = Session(server.server_uuid, self.now())
        return _json({"auth_session_token": token}, 200)

    def _authorised_server(self, request: Request) -> tuple[MdmServer, str | None]:
        """The session's server, and a rotated session token to announce (if it is time)."""
        token = request.headers.get("X-ADM-Auth-Session", "")
        session = self._sessions.get(token)
        if session is None:
            raise SandboxError(403, "FORBIDDEN")  # depsim's answer to a session it does not know
        server = self._servers[session.server_uuid]
        if session.expired or (server.session_ttl is not None and self.now() - session.created > server.session_ttl):
            raise SandboxError(401, "UNAUTHORIZED")
        session.requests += 1
        if server.rotate_session_every and session.requests % server.rotate_session_every == 0:
            rotated = secrets.token_hex(24)
            self._sessions[rotated] = Session(server.server_uuid, self.now())
            del self._sessions[token]
            return server, rotated
        return server, None

    def _account(self, server: MdmServer, request: Request, body: dict, version: int) -> dict:
        limit = {"default": min(1000, server.page_maximum), "maximum": server.page_maximum}
        course = "/roster/course" if server.legacy_course_path else "/roster/class/course"
        urls = [
            {"uri": "/server/devices", "http_method": ["POST"], "limit": limit},
            {"uri": "/devices/sync", "http_method": ["POST"], "limit": limit},
            {"uri": "/devices", "http_method": ["POST"]},
            {"uri": "/profile", "http_method": ["GET", "POST"]},
            {"uri": "/profile/devices", "http_method": ["DELETE", "POST", "PUT"]},
        ]
        for roster_path in ("/roster/class", "/roster/class/person", "/roster/class/location", course):
            for suffix in ("", "/sync"):
                urls.append({"uri": roster_path + suffix, "http_method": ["POST"], "limit": {"default": 1000, "maximum": 1000}})
        return {
            "server_name": server.server_name,
            "server_uuid": server.server_uuid,
            "admin_id": server.admin_id,
            "facilitator_id": server.admin_id,
            "org_name": server.org_name,
            "org_email": "it@school.example",
            "org_phone": "+1 555 0100",
            "org_address": "1 School Road",
            "org_id": hashlib.sha1(server.org_name.encode()).hexdigest()[:10].upper(),
            "org_id_hash": hashlib.sha256(server.org_name.encode()).hexdigest(),
            "org_type": "edu",
            "org_version": "v2",
            "urls": urls,
        }

    # devices

    def _device_page_limit(self, server: MdmServer, body: dict) -> int:
        """The page size: what was asked, within the maximum ``/account`` advertises. Apple does not say what
        it does with more; this stand-in serves the maximum and counts the request under "limit above maximum"."""
        asked = body.get("limit")
        if isinstance(asked, int) and asked > server.page_maximum:
            self._counts["limit above maximum"] += 1
        return _limit(body, server.page_maximum)

    def _fetch_devices(self, server: MdmServer, request: Request, body: dict, version: int) -> dict:
        limit = self._device_page_limit(server, body)
        items, cursor, more = self._fetch_page(server, server.devices, body.get("cursor"), limit,
                                               lambda entry, offset: self._listed_device(server, entry, offset))
        return {"devices": items, "cursor": cursor, "more_to_follow": more, "fetched_until": self._iso(self.now())}

    def _sync_devices(self, server: MdmServer, request: Request, body: dict, version: int) -> dict:
        limit = self._device_page_limit(server, body)
        items, cursor, more = self._sync_page(server, server.devices, body.get("cursor"), limit,
                                              lambda entry, offset: self._changed_device(server, entry, offset))
        if server.reverse_sync_pages:
            items.reverse()
        return {"devices": items, "cursor": cursor, "more_to_follow": more, "fetched_until": self._iso(self.now())}

    def _device_details(self, server: MdmServer, request: Request, body: dict, version: int) -> dict:
        serials = body.get("devices")
        if not isinstance(serials, list) or not serials:
            raise SandboxError(400, "DEVICE_ID_REQUIRED")
        answer = {}
        for serial in serials:
            device = self.device(server, str(serial))
            answer[serial] = {**device, "response_status": "SUCCESS"} if device else {"response_status": "NOT_ACCESSIBLE"}
        return {"devices": answer}

    def _fetch_page(self, server, listing: CursorListing, cursor: str | None, limit: int, resolve) -> tuple[list, str, bool]:
        if cursor:
            state = self._read_cursor(server, cursor)
            if state.get("f") is None or state["f"] >= state["e"]:
                raise SandboxError(400, "EXHAUSTED_CURSOR")
        else:
            state = {"f": 0, "e": listing.listing.length, "q": listing.changes.length}
        stop = min(state["f"] + limit, state["e"])
        items = [item for item in (resolve(entry, offset) for entry, offset in listing.listing.slice(state["f"], stop)) if item]
        next_state = {**state, "f": stop}
        return items, self._write_cursor(server, next_state), stop < state["e"]

    def _sync_page(self, server, listing: CursorListing, cursor: str | None, limit: int, resolve) -> tuple[list, str, bool]:
        if not cursor:
            raise SandboxError(400, "CURSOR_REQUIRED")
        state = self._read_cursor(server, cursor)
        stop = min(state["q"] + limit, listing.changes.length)
        items = [resolve(entry, offset) for entry, offset in listing.changes.slice(state["q"], stop)]
        return items, self._write_cursor(server, {"f": None, "e": 0, "q": stop}), stop < listing.changes.length

    def _read_cursor(self, server: MdmServer, cursor: str) -> dict:
        try:
            state = json.loads(base64.urlsafe_b64decode(cursor.encode()))
            assert state["s"] == server.server_uuid and isinstance(state["q"], int)
        except (ValueError, KeyError, TypeError, AssertionError, binascii.Error):
            raise SandboxError(400, "INVALID_CURSOR") from None
        if self.now() - state["t"] > CURSOR_LIFETIME_SECONDS:
            raise SandboxError(400, "EXPIRED_CURSOR")
        return state

    def _write_cursor(self, server: MdmServer, state: dict) -> str:
        payload = {**state, "s": server.server_uuid, "t": self.now()}
        return base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode()

    def _listed_device(self, server: MdmServer, entry: Any, offset: int) -> dict | None:
        serial = _generated_serial(server, entry[1] + offset) if entry[0] == "generated" else entry[1]
        return self.device(server, serial)

    def _changed_device(self, server: MdmServer, entry: Any, offset: int) -> dict:
        kind, first, op_type, op_date = entry
        serial = _generated_serial(server, first + offset) if kind == "generated" else first
        device = self.device(server, serial, include_deleted=True) or {"serial_number": serial}
        return {**device, "op_type": op_type, "op_date": self._iso(op_date)}

    def device(self, server: MdmServer, serial: str, *, include_deleted: bool = False) -> dict | None:
        if serial in server.deleted and not include_deleted:
            return None
        if serial in server.explicit:
            return server.explicit[serial]
        index = _generated_index(server, serial)
        return self._generated_device(server, index) if index is not None else None

    def _generated_device(self, server: MdmServer, index: int) -> dict:
        model, family, os_name, color = _MODELS[index % len(_MODELS)]
        return {
            "serial_number": _generated_serial(server, index),
            "model": model,
            "description": f"{model.upper()} {index % 3 + 1}TB {color}",
            "color": color,
            "asset_tag": f"A{index:06d}",
            "os": os_name,
            "device_family": family,
            "profile_status": "empty",
            "device_assigned_by": server.admin_id,
            "device_assigned_date": "2026-01-05T09:00:00Z",
        }

    # profiles

    def _profile(self, server: MdmServer, request: Request, body: dict, version: int) -> dict:
        if request.method == "GET":
            profile_uuid = request.args.get("profile_uuid")
            if not profile_uuid:
                raise SandboxError(400, "PROFILE_UUID_REQUIRED")
            if profile_uuid not in server.profiles:
                raise SandboxError(400, "PROFILE_NOT_FOUND")
            return server.profiles[profile_uuid]
        if not body.get("profile_name"):
            raise SandboxError(400, "CONFIG_NAME_REQUIRED")
        url = body.get("url")
        if not url:
            raise SandboxError(400, "CONFIG_URL_REQUIRED")
        if not isinstance(url, str) or not re.match(r"^https?://[^\s/]+", url):
            raise SandboxError(400, "CONFIG_URL_INVALID")
        if body.get("is_mdm_removable") is False and not body.get("is_supervised", True):
            raise SandboxError(400, "FLAGS_INVALID")
        profile_uuid = uuid.uuid4().hex.upper()
        serials = body.get("devices") or []
        server.profiles[profile_uuid] = {k: v for k, v in body.items() if k != "devices"}
        statuses, _ = self._assign(server, profile_uuid, serials, version)
        return {"profile_uuid": profile_uuid, "devices": statuses}

    def _profile_devices(self, server: MdmServer, request: Request, body: dict, version: int) -> dict:
        serials = body.get("devices")
        if request.method == "DELETE":
            if not isinstance(serials, list) or not serials:
                raise SandboxError(400, "DEVICE_ID_REQUIRED")
            statuses = {}
            for serial in serials:
                device = self.device(server, serial)
                if device is None:
                    statuses[serial] = "NOT_ACCESSIBLE"
                    continue
                server.explicit[serial] = {**device, "profile_status": "removed", "profile_uuid": None}
                statuses[serial] = "SUCCESS"
            return {"devices": statuses}
        profile_uuid = body.get("profile_uuid")
        if not profile_uuid:
            raise SandboxError(400, "PROFILE_UUID_REQUIRED")
        if profile_uuid not in server.profiles:
            raise SandboxError(400, "PROFILE_NOT_FOUND")
        if not isinstance(serials, list) or not serials:
            raise SandboxError(400, "DEVICE_ID_REQUIRED")
        statuses, throttled = self._assign(server, profile_uuid, serials, version)
        answer: dict[str, Any] = {"profile_uuid": profile_uuid, "devices": statuses}
        if throttled and version >= 10 and server.retry_after_seconds is not None:
            answer["retry_after_seconds"] = server.retry_after_seconds
        return answer

    def _assign(self, server: MdmServer, profile_uuid: str, serials: list, version: int) -> tuple[dict, bool]:
        statuses, throttled = {}, False
        for serial in serials:
            outcome = server.assign_outcomes.pop(serial, None)
            device = self.device(server, serial)
            if outcome == "THROTTLED" and version < 9:
                outcome = "FAILED"  # per-serial throttling exists from protocol version 9
            if outcome is None:
                outcome = "SUCCESS" if device else "NOT_ACCESSIBLE"
            if outcome == "SUCCESS" and device:
                server.explicit[serial] = {
                    **device, "profile_status": "assigned", "profile_uuid": profile_uuid,
                    "profile_assign_time": self._iso(self.now()),
                }
            throttled = throttled or outcome == "THROTTLED"
            statuses[serial] = outcome
        return statuses, throttled

    # roster

    def _roster_route(self, server: MdmServer, path: str):
        course = "/roster/course" if server.legacy_course_path else "/roster/class/course"
        bases = {"/roster/class": "class", "/roster/class/person": "person", "/roster/class/location": "location", course: "course"}
        sync = path.endswith("/sync")
        kind = bases.get(path[: -len("/sync")] if sync else path)
        if kind is None:
            return None

        def handler(server: MdmServer, request: Request, body: dict, version: int) -> dict:
            limit = _limit(body, 1000)
            listing = server.roster.setdefault(kind, CursorListing())
            items_by_id = server.roster_items.setdefault(kind, {})
            if sync:
                items, cursor, more = self._sync_page(server, listing, body.get("cursor"), limit,
                                                      lambda uid, _: items_by_id[uid])
            else:
                items, cursor, more = self._fetch_page(server, listing, body.get("cursor"), limit,
                                                       lambda uid, _: items_by_id[uid])
            answer = {ROSTER_KINDS[kind]: items, "cursor": cursor, "more_to_follow": more}
            if sync:
                answer["fetched_until"] = self._iso(self.now())
            return answer

        return ("POST",), handler

    # --- the test side ---------------------------------------------------------------------

    def _admin(self, request: Request, path: str) -> Response:
        body = _request_json(request) if request.method == "POST" else {}
        parts = path.split("/")[2:]
        if parts == ["servers"] and request.method == "POST":
            return _json(self.create_server(**body), 201)
        if parts == ["failures"] and request.method == "POST":
            self.script(body["endpoint"], body["responses"])
            return _json({"scripted": len(self._scripted[body["endpoint"]])}, 200)
        if parts == ["sessions", "expire"]:
            for session in self._sessions.values():
                session.expired = True
            return _json({"expired": len(self._sessions)}, 200)
        if parts == ["clock"]:
            self._clock_offset += float(body.get("advance_seconds", 0))
            return _json({"now": self._iso(self.now())}, 200)
        if parts == ["requests"]:
            if request.method == "DELETE":
                self._counts.clear()
            return _json({"counts": dict(self._counts)}, 200)
        if len(parts) >= 3 and parts[0] == "servers":
            server = self._servers.get(parts[1])
            if server is None:
                raise SandboxError(404, "unknown server")
            return self._server_admin(server, parts[2:], request, body)
        raise SandboxError(404, "unknown admin route")

    def _server_admin(self, server: MdmServer, parts: list[str], request: Request, body: dict) -> Response:
        now = self.now()
        if parts == ["token"]:
            return _json(self.issue_token(server, **body), 201)
        if parts == ["settings"]:
            for name in ("terms_signed", "revoked", "session_ttl", "rotate_session_every", "page_maximum",
                         "reverse_sync_pages", "legacy_course_path", "retry_after_seconds"):
                if name in body:
                    setattr(server, name, body[name])
            return _json({"ok": True}, 200)
        if parts == ["devices", "generate"]:
            count = int(body["count"])
            first = server.generated
            server.generated += count
            server.devices.listing.append(("generated", first), count)
            server.devices.changes.append(("generated", first, "added", now), count)
            return _json({"first": _generated_serial(server, first), "count": count}, 200)
        if parts == ["devices"] and request.method == "POST":
            for device in body["devices"]:
                serial = device["serial_number"]
                known = self.device(server, serial)
                server.deleted.discard(serial)
                server.explicit[serial] = {"profile_status": "empty", **(known or {}), **device}
                if known is None:
                    server.devices.listing.append(("serial", serial))
                op_type = body.get("op_type") or ("modified" if known else "added")
                server.devices.changes.append(("serial", serial, op_type, now))
            return _json({"count": len(body["devices"])}, 200)
        if parts == ["devices", "delete"]:
            for serial in body["serial_numbers"]:
                server.deleted.add(serial)
                server.devices.changes.append(("serial", serial, "deleted", now))
            return _json({"count": len(body["serial_numbers"])}, 200)
        if len(parts) == 2 and parts[0] == "devices" and request.method == "GET":
            device = self.device(server, parts[1])
            return _json(device, 200) if device else _json({"error": "not found"}, 404)
        if parts == ["assign_outcomes"]:
            server.assign_outcomes.update(body.get("statuses") or {})
            if "retry_after_seconds" in body:
                server.retry_after_seconds = body["retry_after_seconds"]
            return _json({"ok": True}, 200)
        if parts == ["roster"]:
            for kind, list_key in ROSTER_KINDS.items():
                listing = server.roster.setdefault(kind, CursorListing())
                items = server.roster_items.setdefault(kind, {})
                for item in body.get(list_key) or []:
                    uid = item["unique_identifier"]
                    if uid not in items:
                        listing.listing.append(uid)
                    items[uid] = {**item, "op_date": self._iso(now)}
                    listing.changes.append(uid)
            return _json({"ok": True}, 200)
        raise SandboxError(404, "unknown admin route")

    def create_server(
        self, *, certificate_pem: str, server_name: str = "Orchard MDM", org_name: str = "Springfield Schools",
        admin_id: str = "asm.admin@springfield.example", **token_options: Any,
    ) -> dict:
        server_uuid = str(uuid.uuid4()).upper()
        server = MdmServer(
            server_uuid=server_uuid, server_name=server_name, org_name=org_name, admin_id=admin_id,
            serial_prefix="C" + secrets.token_hex(2).upper(),
            consumer_key="CK_" + secrets.token_hex(32), consumer_secret="CS_" + secrets.token_hex(20),
        )
        self._servers[server_uuid] = server
        self._by_consumer_key[server.consumer_key] = server_uuid
        return {"server_uuid": server_uuid, "consumer_key": server.consumer_key,
                **self.issue_token(server, certificate_pem=certificate_pem, **token_options)}

    def issue_token(
        self, server: MdmServer, *, certificate_pem: str, expiry_days: float = 365, encoding: str = "ber",
        message_lines: bool = True, cipher: str = "aes128_cbc",
    ) -> dict:
        """A new access token for the server (the old one stops working), as a ``.p7m``."""
        server.access_token = "AT_O" + secrets.token_hex(40)
        server.access_secret = "AS_" + secrets.token_hex(20)
        server.access_token_expiry = self.now() + expiry_days * 86400
        credentials = {
            "consumer_key": server.consumer_key, "consumer_secret": server.consumer_secret,
            "access_token": server.access_token, "access_secret": server.access_secret,
            "access_token_expiry": self._iso(server.access_token_expiry),
        }
        p7m = issue_token_file(credentials, certificate_pem.encode(), ber=encoding == "ber",
                               message_lines=message_lines, cipher=cipher)
        return {"p7m": p7m.decode(), "access_token_expiry": credentials["access_token_expiry"]}

    def script(self, endpoint: str, responses: list) -> None:
        """The next answers of ``endpoint`` ("METHOD /path"): depsim names or {status, body, headers, content_type}
        (the body is quoted as JSON, as Apple's short strings are, unless a content_type is given)."""
        queue = self._scripted.setdefault(endpoint, deque())
        for item in responses:
            if isinstance(item, str):
                status, code = NAMED_FAILURES[item]
                queue.append((status, code, {}, None))
            else:
                queue.append((int(item["status"]), item.get("body", ""), dict(item.get("headers") or {}),
                              item.get("content_type")))

    @staticmethod
    def _iso(moment: float) -> str:
        return datetime.fromtimestamp(moment, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _generated_serial(server: MdmServer, index: int) -> str:
    return f"{server.serial_prefix}{index:07d}"


def _generated_index(server: MdmServer, serial: str) -> int | None:
    digits = serial[len(server.serial_prefix):]
    if not serial.startswith(server.serial_prefix) or len(digits) != 7 or not digits.isdigit():
        return None
    index = int(digits)
    return index if index < server.generated else None


def _limit(body: dict, maximum: int) -> int:
    limit = body.get("limit")
    return min(limit, maximum) if isinstance(limit, int) and limit > 0 else min(1000, maximum)


def _int(value: str | None, default: int) -> int:
    return int(value) if value and value.isdigit() else default


def _request_json(request: Request) -> dict:
    try:
        body = json.loads(request.get_data() or b"{}")
    except ValueError:
        raise SandboxError(400, "MALFORMED_REQUEST_BODY") from None
    if not isinstance(body, dict):
        raise SandboxError(400, "MALFORMED_REQUEST_BODY")
    return body


def _json(data: Any, status: int) -> Response:
    return Response(json.dumps(data), status, content_type=CONTENT_TYPE)


def _oauth_params(header: str) -> dict[str, str] | None:
    if not header.startswith("OAuth "):
        return None
    params = {}
    for match in re.finditer(r'([A-Za-z_]+)="([^"]*)"', header[6:]):
        if match.group(1) in params:
            return None  # duplicated parameter
        params[match.group(1)] = unquote(match.group(2))
    return params


def _encode(value: str) -> str:
    return quote(value, safe="~")


def _base_string(method: str, url: str, params: list[tuple[str, str]]) -> str:
    pairs = "&".join(f"{k}={v}" for k, v in sorted((_encode(k), _encode(v)) for k, v in params))
    return f"{method}&{_encode(url)}&{_encode(pairs)}"


def _hmac_sha1(base_string: str, consumer_secret: str, token_secret: str) -> str:
    key = f"{_encode(consumer_secret)}&{_encode(token_secret)}".encode()
    return base64.b64encode(hmac.new(key, base_string.encode(), hashlib.sha1).digest()).decode()
