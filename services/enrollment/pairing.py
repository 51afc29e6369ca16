"""Fully automated pairing: the enrollment profile's ``configuration_web_url`` page.

Setup Assistant opens it with the ``x-apple-aspen-deviceinfo`` header; the user signs in
with their school account (checked by ``directory.authenticate``); on success the device
is assigned to that user and the page answers with the enrollment profile, holding the
device's own identity. The device information travels in a hidden field, since the form's
POST may come without the header.
"""
from __future__ import annotations

import html

from werkzeug.wrappers import Request, Response

from services.enrollment.adapters.device_info_header import HEADER, device_info_from_header
from services.enrollment.device_profiles import DeviceProfiles
from services.enrollment.metrics import AUTOMATED_PAIRINGS
from shared.entrypoints import ServiceRpc, http
from shared.errors import Conflict, NotFound, OrchardError, PermissionDenied, ValidationError

PAGE = "/enroll"


class PairingPage(DeviceProfiles):
    directory = ServiceRpc("directory")

    @http("GET", PAGE)
    def pairing_form(self, request: Request) -> Response:
        raw = request.headers.get(HEADER)
        try:
            device_info_from_header(raw)
        except ValidationError as exc:
            AUTOMATED_PAIRINGS.labels("bad_device_info").inc()
            return _page(400, str(exc), None)
        return _page(200, None, raw)

    @http("POST", PAGE)
    def pairing_sign_in(self, request: Request) -> Response:
        raw = request.headers.get(HEADER) or request.form.get("deviceinfo")
        try:
            device = device_info_from_header(raw)
        except ValidationError as exc:
            AUTOMATED_PAIRINGS.labels("bad_device_info").inc()
            return _page(400, str(exc), None)
        username, password = request.form.get("username", ""), request.form.get("password", "")
        if not username.strip() or not password:
            AUTOMATED_PAIRINGS.labels("wrong_credentials").inc()
            return _page(401, "Enter your school username and password.", raw, username)
        try:
            answer = self.directory.authenticate(username.strip(), password)
        except PermissionDenied:
            AUTOMATED_PAIRINGS.labels("rate_limited").inc()
            return _page(429, "Too many sign-in attempts; wait a minute and try again.", raw, username)
        except ValidationError as exc:
            AUTOMATED_PAIRINGS.labels("wrong_credentials").inc()
            return _page(401, str(exc), raw, username)
        except OrchardError:  # the directory failed, or is not running
            AUTOMATED_PAIRINGS.labels("error").inc()
            return _page(503, "Sign-in is not available right now; try again in a few minutes.", raw, username)
        if not answer.get("authenticated"):
            AUTOMATED_PAIRINGS.labels("wrong_credentials").inc()
            return _page(401, "The username or password is not right; try again.", raw, username)
        try:
            self._assign_to_user(self.auth.actor, device.serial_number, answer["user_id"], "pairing", self_service=True)
        except (NotFound, Conflict) as exc:
            AUTOMATED_PAIRINGS.labels("refused").inc()
            return _page(409 if isinstance(exc, Conflict) else 404,
                         f"This device cannot be set up for you: {exc}. Ask your school's IT team.", raw, username)
        AUTOMATED_PAIRINGS.labels("paired").inc()
        self.db.commit()  # before the identity's key is generated: no write lock held for that long
        return self._profile_response(request, device)


def _page(status: int, error: str | None, device_info: str | None, username: str = "") -> Response:
    message = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
    form = "" if device_info is None else f"""
<form method="post" action="{PAGE}">
  <input type="hidden" name="deviceinfo" value="{html.escape(device_info)}">
  <label>Username <input name="username" autocomplete="username" value="{html.escape(username)}"></label>
  <label>Password <input name="password" type="password" autocomplete="current-password"></label>
  <button type="submit">Sign in</button>
</form>"""
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>Sign in to set up this device</title></head>
<body><h1>Sign in to set up this device</h1>{message}{form}</body></html>"""
    return Response(body, status=status, content_type="text/html; charset=utf-8")
