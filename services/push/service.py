"""The push service: Apple push certificates, the devices under them, and MDM wake-ups."""
from __future__ import annotations

import base64
import logging
from collections import Counter
from typing import Any

from eventlet import tpool

from services.push import metrics
from services.push.adapters import device_export, tables
from services.push.adapters.apns_client import Push, PushResult
from services.push.adapters.repository import PushRepository
from services.push.domain.certificates import (
    PushCertificate,
    certificate_status,
    check_renewal,
    days_left,
    private_key_id,
    read_pem_certificate,
    read_pkcs12,
)
from services.push.domain.pushes import DELIVERED, connection_failure, outcome, plan_pushes, requested_udids
from services.push.domain.signing_request import create_signing_request as new_signing_request
from services.push.metrics import CERTIFICATES
from services.push.providers import Apns
from shared.arguments import row_id
from shared.auth import Actor
from shared.contracts.enrollment import DeviceEnrolled, DeviceUnenrolled
from shared.entrypoints import event_handler, rpc
from shared.errors import Conflict, ValidationError
from shared.green import spawn
from shared.metrics import GaugesFromDatabase
from shared.secrets import Secrets
from shared.service import OrchardService
from shared.storage import Database, utc_now

log = logging.getLogger(__name__)

REQUEST_FILENAME = "PushCertificateRequest.b64"


class PushService(OrchardService):
    name = "push"
    db = Database(tables.metadata, migrations="services.push.migrations")
    secrets = Secrets()
    apns = Apns()
    certificate_gauges = GaugesFromDatabase(CERTIFICATES)

    # -- certificates --

    @rpc(sensitive_arguments=("private_key_pem",))
    def upload_certificate(self, certificate_pem: str, private_key_pem: str | None = None) -> dict[str, Any]:
        """Store a new topic's certificate. Expired ones are refused (APNs would refuse them too):
        renew at Apple Push Certificates Portal first. Without a key, the key Orchard kept from
        its own signing request is used."""
        actor = self.auth.require("push:write")
        parsed = tpool.execute(read_pem_certificate, _text(certificate_pem, "certificate_pem"),
                               _optional_text(private_key_pem, "private_key_pem"))
        return self._add(actor, parsed)

    @rpc(sensitive_arguments=("p12_b64", "password"))
    def upload_certificate_pkcs12(self, p12_b64: str, password: str | None = None) -> dict[str, Any]:
        actor = self.auth.require("push:write")
        parsed = tpool.execute(read_pkcs12, _text(p12_b64, "p12_b64"), _optional_text(password, "password"))
        return self._add(actor, parsed)

    @rpc(sensitive_arguments=("private_key_pem",))
    def renew_certificate(self, certificate_id: int, certificate_pem: str,
                          private_key_pem: str | None = None) -> dict[str, Any]:
        actor = self.auth.require("push:write")
        stored = self._repository().certificate(row_id(certificate_id, "certificate_id"))
        parsed = tpool.execute(read_pem_certificate, _text(certificate_pem, "certificate_pem"),
                               _optional_text(private_key_pem, "private_key_pem"))
        return self._renew(actor, stored, parsed)

    @rpc(sensitive_arguments=("p12_b64", "password"))
    def renew_certificate_pkcs12(self, certificate_id: int, p12_b64: str, password: str | None = None) -> dict[str, Any]:
        actor = self.auth.require("push:write")
        stored = self._repository().certificate(row_id(certificate_id, "certificate_id"))
        parsed = tpool.execute(read_pkcs12, _text(p12_b64, "p12_b64"), _optional_text(password, "password"))
        return self._renew(actor, stored, parsed)

    @rpc
    def list_certificates(self) -> list[dict[str, Any]]:
        self.auth.require("push:read")
        repository = self._repository()
        counts = repository.device_counts()
        return [_summary(row, counts.get(row.topic, 0)) for row in repository.certificates()]

    @rpc
    def get_certificate(self, certificate_id: int) -> dict[str, Any]:
        self.auth.require("push:read")
        repository = self._repository()
        row = repository.certificate(row_id(certificate_id, "certificate_id"))
        return _details(row, repository.device_count(row.topic))

    @rpc
    def export_devices(self, certificate_id: int, format: str = "csv") -> dict[str, Any]:
        """The devices enrolled under the certificate, as a file: ``{filename, devices, content_b64, ...}``."""
        self.auth.require("push:read")
        if format not in device_export.FORMATS:
            raise ValidationError(f"format must be one of {', '.join(device_export.FORMATS)}, not {format!r}")
        repository = self._repository()
        row = repository.certificate(row_id(certificate_id, "certificate_id"))
        devices = list(repository.devices_of_topic(row.topic))
        content = tpool.execute(device_export.export_devices, devices, format)
        return {
            "certificate_id": row.id, "topic": row.topic, "format": format, "devices": len(devices),
            "filename": f"push-certificate-{row.id}-devices.{format}",
            "content_b64": base64.b64encode(content).decode(),
        }

    @rpc
    def certificate_history(self, certificate_id: int) -> list[dict[str, Any]]:
        """Who uploaded and renewed the certificate, when, and what changed (newest first)."""
        self.auth.require("push:read")
        row = self._repository().certificate(row_id(certificate_id, "certificate_id"))
        return [_history_entry(entry) for entry in self.db.audit_entries(_target(row.id), 1000)]

    @rpc
    def create_signing_request(self) -> dict[str, Any]:
        """A vendor-signed request to upload to Apple Push Certificates Portal; Orchard keeps its key."""
        actor = self.auth.require("push:write")
        vendor = self.apns.settings.vendor_credentials()
        request = tpool.execute(new_signing_request, vendor.certificate_pem, vendor.private_key_pem,
                                vendor_chain_pem=vendor.chain_pem)
        now = utc_now()
        key_id = request.public_key_sha256
        request_id = self._repository().add_signing_key(key_id, self.secrets.seal(request.private_key_pem), actor.id, now)
        self.db.audit(actor, "signing_request.created", f"push_signing_request:{request_id}", {"key_sha256": key_id})
        return {"id": request_id, "created_at": now.isoformat(), "filename": REQUEST_FILENAME,
                "signing_request_b64": request.request_b64}

    # -- pushes --

    @rpc
    def send_push(self, device_udids: list[str]) -> dict[str, Any]:
        """Wake the devices; ``results`` says per device what APNs answered, or why it was skipped.

        The database is not held during the fan-out (on SQLite it is the process's one connection):
        the targets are read and that transaction ends, APNs is asked, then the results are written.
        """
        self.auth.require("push:write")
        udids = requested_udids(device_udids)
        repository = self._repository()
        targets = repository.push_targets(udids)
        certificates = repository.certificates_for_topics({target.topic for target in targets.values()})
        self.db.commit()
        plan = plan_pushes(udids, targets, {topic: row.not_after for topic, row in certificates.items()}, utc_now())
        results = {udid: {"udid": udid, "result": reason, "status": None, "sent": False, "detail": None}
                   for udid, reason in plan.skipped.items()}
        records = []
        # every topic at once: the call ends within one batch's time however many certificates it spans
        clients = {topic: self.apns.client_for(certificates[topic], self.secrets) for topic in plan.by_topic}
        sending = {topic: spawn(clients[topic].send, [Push(d.push_token, d.push_magic) for d in devices])
                   for topic, devices in plan.by_topic.items()}
        for topic, devices in plan.by_topic.items():
            answers = sending[topic].wait()
            for device, result in zip(devices, answers):
                label = outcome(result.status, result.reason)
                metrics.PUSH_RESULTS.labels(label).inc()
                metrics.PUSH_LATENCY.observe(result.seconds)
                results[device.udid] = {"udid": device.udid, "result": label, "status": result.status, "sent": True,
                                        "detail": connection_failure(result.status, result.reason)}
                records.append({"udid": device.udid, "push_token": device.push_token, "outcome": label,
                                "disable_reason": label if result.permanent else None})
            log.info("pushed %d device(s) of topic %s: %s", len(devices), topic,
                     _tally(r["outcome"] for r in records[-len(devices):]))
            _warn_unreached(topic, answers)
        repository.record_push_results(records, utc_now())
        delivered = sum(1 for record in records if record["outcome"] == DELIVERED)
        return {
            "requested": len(udids), "sent": len(records), "delivered": delivered,
            "failed": len(records) - delivered, "skipped": len(plan.skipped),
            "disabled": sum(1 for record in records if record["disable_reason"]),
            "results": [results[udid] for udid in udids],
        }

    # -- devices, from the enrollment service --

    @event_handler(DeviceEnrolled)
    def on_device_enrolled(self, event: DeviceEnrolled) -> None:
        self._repository().enroll_device({
            "udid": event.udid, "topic": event.topic, "serial_number": event.serial_number,
            "push_token": event.push_token, "push_magic": event.push_magic,
            "enrolled_at": event.occurred(),
        })

    @event_handler(DeviceUnenrolled)
    def on_device_unenrolled(self, event: DeviceUnenrolled) -> None:
        self._repository().remove_device(event.udid, event.occurred())

    # -- helpers --

    def _repository(self) -> PushRepository:
        return PushRepository(self.db.session)

    def _add(self, actor: Actor, parsed: PushCertificate) -> dict[str, Any]:
        repository = self._repository()
        existing = repository.certificate_by_topic(parsed.topic)
        if existing is not None:
            raise Conflict(
                f"A certificate for topic '{parsed.topic}' is already stored (id {existing.id}). To replace it with "
                f"a newer one, renew it: `orchard push renew {existing.id} ...`."
            )
        private_key_pem, signing_key = self._private_key(repository, parsed)
        now = utc_now()
        certificate_id = repository.add_certificate(parsed, self.secrets.seal(private_key_pem), now)
        if signing_key is not None:
            repository.mark_signing_key_used(signing_key.id, now)
        self.db.audit(actor, "certificate.uploaded", _target(certificate_id),
                      {"before": None, "after": _facts(parsed), "paired_with_signing_request": signing_key is not None})
        return _summary(repository.certificate(certificate_id), repository.device_count(parsed.topic))

    def _renew(self, actor: Actor, stored: Any, parsed: PushCertificate) -> dict[str, Any]:
        repository = self._repository()
        # locked until the commit: of two renewals at once, the second is checked against the first's certificate
        stored = repository.certificate(stored.id, for_update=True)
        check_renewal(stored.topic, stored.not_after, parsed)
        private_key_pem, signing_key = self._private_key(repository, parsed, stored)
        now = utc_now()
        repository.replace_certificate(stored.id, parsed, self.secrets.seal(private_key_pem), now)
        if signing_key is not None:
            repository.mark_signing_key_used(signing_key.id, now)
        self.db.audit(actor, "certificate.renewed", _target(stored.id), {
            "before": {"topic": stored.topic, "serial_number": stored.serial_number,
                       "not_after": stored.not_after.isoformat()},
            "after": _facts(parsed), "paired_with_signing_request": signing_key is not None,
        })
        return _summary(repository.certificate(stored.id), repository.device_count(stored.topic))

    def _private_key(self, repository: PushRepository, parsed: PushCertificate, stored: Any = None) -> tuple[str, Any]:
        """The uploaded key, else the one kept from Orchard's signing request, else the stored one (renewal)."""
        if parsed.private_key_pem is not None:
            return parsed.private_key_pem, None
        signing_key = repository.signing_key(parsed.public_key_sha256)
        if signing_key is not None:
            return self.secrets.open(signing_key.sealed_private_key), signing_key
        if stored is not None:
            stored_key = self.secrets.open(stored.sealed_private_key)
            # loading an RSA key checks it, tens of milliseconds of CPU: not on the hub
            if tpool.execute(private_key_id, stored_key) == parsed.public_key_sha256:
                return stored_key, None
        raise ValidationError(
            "The certificate came without its private key, and Orchard holds no key for it. Upload the key with "
            "the certificate, or create the request with Orchard (`orchard push csr`) so that Orchard keeps the key."
        )


def _tally(labels: Any) -> str:
    return ", ".join(f"{count} {label}" for label, count in sorted(Counter(labels).items()))


def _warn_unreached(topic: str, answers: list[PushResult]) -> None:
    """Once per topic and call, why APNs gave no answer (the reasons name no device)."""
    failures = Counter(connection_failure(r.status, r.reason) for r in answers if r.status is None)
    if failures:
        log.warning("APNs was not reached for %d device(s) of topic %s: %s", sum(failures.values()), topic,
                    "; ".join(f"{reason} ({count})" for reason, count in failures.most_common()))


def _target(certificate_id: int) -> str:
    return f"push_certificate:{certificate_id}"


def _facts(parsed: PushCertificate) -> dict[str, Any]:
    return {"topic": parsed.topic, "serial_number": parsed.serial_number, "not_after": parsed.not_after.isoformat()}


def _summary(row: Any, devices_enrolled: int) -> dict[str, Any]:
    now = utc_now()
    return {
        "id": row.id, "topic": row.topic, "serial_number": row.serial_number, "not_after": row.not_after.isoformat(),
        "days_left": days_left(row.not_after, now), "devices_enrolled": devices_enrolled,
        "status": certificate_status(row.not_after, now),
    }


def _details(row: Any, devices_enrolled: int) -> dict[str, Any]:
    return {
        **_summary(row, devices_enrolled),
        "not_before": row.not_before.isoformat(), "issuer": row.issuer, "common_name": row.common_name,
        "apple_id": row.apple_id, "uploaded_at": row.uploaded_at.isoformat(),
        "renewed_at": row.renewed_at.isoformat() if row.renewed_at else None,
    }


def _history_entry(entry: dict[str, Any]) -> dict[str, Any]:
    before = entry["details"].get("before") or {}
    after = entry["details"].get("after") or {}
    return {
        "at": entry["at"], "user": entry["actor_id"], "action": entry["action"],
        "before_topic": before.get("topic"), "after_topic": after.get("topic"),
        "before_serial_number": before.get("serial_number"), "after_serial_number": after.get("serial_number"),
        "before_not_after": before.get("not_after"), "after_not_after": after.get("not_after"),
    }


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ValidationError(f"{name} must be text, not {type(value).__name__}")
    return value


def _optional_text(value: Any, name: str) -> str | None:
    return None if value is None else _text(value, name)
