"""What the push service's workers get besides the database: APNs clients and settings."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nameko.extensions import DependencyProvider

from services.push.adapters.apns_client import PRODUCTION_URL, ApnsClient, ApnsClients
from shared.config import service_settings
from shared.errors import ValidationError
from shared.secrets import SecretBox


@dataclass(frozen=True)
class VendorCredentials:
    certificate_pem: str
    private_key_pem: str = field(repr=False)
    chain_pem: str


@dataclass(frozen=True)
class PushSettings:
    apns_url: str
    apns_ca_file: str | None  # trust for the APNs host (the sandbox's CA in tests); None: the system's
    vendor_certificate_file: str | None
    vendor_private_key_file: str | None
    vendor_chain_file: str | None

    @classmethod
    def from_config(cls, settings: dict[str, Any]) -> "PushSettings":
        return cls(
            apns_url=settings.get("apns_url") or PRODUCTION_URL,
            apns_ca_file=settings.get("apns_ca_file") or None,
            vendor_certificate_file=settings.get("vendor_certificate_file") or None,
            vendor_private_key_file=settings.get("vendor_private_key_file") or None,
            vendor_chain_file=settings.get("vendor_chain_file") or None,
        )

    def vendor_credentials(self) -> VendorCredentials:
        if not self.vendor_certificate_file or not self.vendor_private_key_file:
            raise ValidationError(
                "No MDM vendor signing certificate is configured, so Orchard cannot sign push certificate requests. "
                "Set SERVICES.push.vendor_certificate_file and vendor_private_key_file (PUSH_VENDOR_CERTIFICATE, "
                "PUSH_VENDOR_KEY), or create the request with your vendor's tools."
            )
        try:
            return VendorCredentials(
                Path(self.vendor_certificate_file).read_text(),
                Path(self.vendor_private_key_file).read_text(),
                Path(self.vendor_chain_file).read_text() if self.vendor_chain_file else "",
            )
        except OSError as exc:
            raise ValidationError(f"The configured MDM vendor signing files cannot be read: {exc.strerror} "
                                  f"({exc.filename}).") from None


class Apns(DependencyProvider):
    """The process's APNs clients (one per topic, kept open) and the push settings."""

    def setup(self) -> None:
        self.settings = PushSettings.from_config(service_settings(self.container.config, self.container.service_name))
        self.clients = ApnsClients(base_url=self.settings.apns_url, ca_file=self.settings.apns_ca_file)

    def stop(self) -> None:
        self.clients.close()

    kill = stop

    def get_dependency(self, worker_ctx: Any) -> "Apns":
        return self

    def client_for(self, certificate: Any, secrets: SecretBox) -> ApnsClient:
        return self.clients.for_certificate(
            topic=certificate.topic, serial_number=certificate.serial_number,
            certificate_pem=certificate.certificate_pem,
            private_key_pem=secrets.open(certificate.sealed_private_key),
        )
