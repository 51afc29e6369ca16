"""Enrollment profiles carrying a device identity, and the ADE profile request that serves one.

Every profile Orchard serves holds a fresh identity issued by the installation's device CA
for the one device that asked (see ``domain/device_identity.py``). Automated Device
Enrollment devices whose profile has no ``configuration_web_url`` POST their signed
device information to the profile's ``url`` (``/mdm/enroll``); those with one go through
the pairing page, which answers with the same kind of profile once the user signed in.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from eventlet import tpool
from nameko.extensions import DependencyProvider
from werkzeug.wrappers import Request, Response

from services.enrollment.adapters.assignments import AssignmentRepository
from services.enrollment.adapters.device_ca import (
    DeviceCaRepository,
    generate_device_ca,
    issue_device_identity,
    load_ca_certificate,
)
from services.enrollment.adapters.device_info_header import MAX_HEADER_CHARS, device_info_from_bytes
from services.enrollment.domain.device_identity import identity_terms
from services.enrollment.domain.device_info import DeviceInfo
from services.enrollment.domain.mdm_payload import CONTENT_TYPE, current_push_topic, enrollment_mobileconfig
from shared.config import service_settings
from shared.entrypoints import ServiceRpc, http
from shared.errors import OrchardError, ValidationError
from shared.settings import ServiceSettings
from shared.storage import utc_now

log = logging.getLogger(__name__)

ADE_PROFILE_PATH = "/mdm/enroll"
CHECKIN_PATH = "/mdm/checkin"
IDENTITIES_PER_HOUR = 10
PUSH_TOPIC_TIMEOUT = 5.0  # Setup Assistant is waiting: a silent push service costs a Topic, not the enrollment


class SignedCheckins(DependencyProvider):
    """``SERVICES.enrollment.require_signed_checkins``: true unless a lab switches it off."""

    def setup(self) -> None:
        value = service_settings(self.container.config, self.container.service_name).get("require_signed_checkins", True)
        self.required = str(value).strip().lower() not in ("false", "no", "0", "off")

    def get_dependency(self, worker_ctx: Any) -> bool:
        return self.required


class DeviceProfiles:
    push = ServiceRpc("push", timeout=PUSH_TOPIC_TIMEOUT)
    require_signed_checkins = SignedCheckins()
    settings = ServiceSettings()

    @http("POST", ADE_PROFILE_PATH)
    def ade_profile(self, request: Request) -> Response:
        """Setup Assistant's profile request: the body is the device information plist, signed or not."""
        body = request.stream.read(MAX_HEADER_CHARS + 1)
        try:
            if len(body) > MAX_HEADER_CHARS:
                raise ValidationError(f"The device information is larger than {MAX_HEADER_CHARS} bytes.")
            device = device_info_from_bytes(body)
        except ValidationError as exc:
            return Response(str(exc), status=400, content_type="text/plain; charset=utf-8")
        # the device information is not checked against Apple's device CA, so only devices Apple
        # assigned to one of our MDM servers get an identity here
        if device.serial_number not in AssignmentRepository(self.db.session).device_token_locations([device.serial_number]):
            return Response(f"Device {device.serial_number} is not assigned to this MDM server in Apple School Manager.",
                            status=403, content_type="text/plain; charset=utf-8")
        return self._profile_response(request, device)

    def _profile_response(self, request: Request, device: DeviceInfo) -> Response:
        """The enrollment profile for ``device``, with a newly issued identity."""
        # a key pair costs the service real CPU, and the device information naming the serial is not verified as
        # Apple's: a device gets a handful of profiles an hour (enough for a few wipes), not one per request
        since = utc_now() - timedelta(hours=1)
        issued = self.db.audit_entries(f"device_identity:{device.serial_number}", limit=IDENTITIES_PER_HOUR)
        if sum(datetime.fromisoformat(entry["at"]) >= since for entry in issued) >= IDENTITIES_PER_HOUR:
            return Response(f"Device {device.serial_number} has had {IDENTITIES_PER_HOUR} enrollment profiles in the "
                            "last hour; try again later.", status=429, content_type="text/plain; charset=utf-8")
        topic = self._push_topic()  # first: the push service may take seconds, and no write should wait on it
        ca = self._device_ca()
        terms = identity_terms(device.serial_number, device.udid, utc_now())
        identity = tpool.execute(issue_device_identity, self.secrets.open_bytes(ca.sealed_private_key),
                                 ca.certificate_pem.encode(), terms)
        self.db.audit(self.auth.actor, "device_identity.issued", f"device_identity:{device.serial_number}",
                      {"udid": device.udid, "not_after": terms.not_after.isoformat()})
        # the configured address devices reach us at (behind a proxy the request's Host is not it), else the request's
        checkin_url = (self.settings.get("public_url") or request.host_url).rstrip("/") + CHECKIN_PATH
        return Response(enrollment_mobileconfig(checkin_url, identity, topic), status=200, content_type=CONTENT_TYPE)

    def _device_ca(self) -> Any:
        repository = DeviceCaRepository(self.db.session)
        row = repository.get()
        if row is None:
            key_pem, certificate_pem = tpool.execute(generate_device_ca, utc_now())
            row = repository.add_unless_present(certificate_pem.decode(), self.secrets.seal(key_pem), utc_now())
        return row

    def _device_ca_certificate(self) -> x509.Certificate | None:
        """The CA whose identities check-ins are signed with; None before the first profile was served."""
        row = DeviceCaRepository(self.db.session).get()
        return None if row is None else load_ca_certificate(row.certificate_pem.encode())

    def _push_topic(self) -> str | None:
        try:
            return current_push_topic(self.push.list_certificates())
        except OrchardError as exc:
            log.warning("the enrollment profile goes out without an APNs Topic: %s", exc)
            return None
