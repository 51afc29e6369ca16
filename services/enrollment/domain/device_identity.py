"""Device identities: what Orchard's device CA issues, and which signed check-ins it accepts.

Every enrollment profile carries a fresh identity (key and certificate) for the one
device it was made for. With ``SignMessage`` the device signs each check-in with it;
``Authenticate`` binds the certificate to the UDID, and the later messages of that
UDID must be signed by the same certificate, so knowing a UDID is no longer enough
to change a device's push token or unenroll it. Only a certificate issued for that
device may bind it: its serial number, and its UDID where the profile request named
one, must be the ones the ``Authenticate`` reports. An identity is retired when a newer
one is bound for its device (the device enrolled again) or its device checks out, and a
retired identity signs nothing more.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from services.enrollment.domain.checkin import Authenticate, CheckinMessage

CA_COMMON_NAME = "Orchard device CA"
CA_VALIDITY = timedelta(days=20 * 365)
# no renewal protocol yet: long enough that a device is retired or re-enrolled before it lapses
IDENTITY_VALIDITY = timedelta(days=3 * 365)
CLOCK_SKEW = timedelta(minutes=5)  # a device whose clock runs a little behind still accepts a new identity

# why a check-in is refused (HTTP 401); the label of orchard_enrollment_checkins_rejected_total
UNSIGNED = "unsigned"
MALFORMED_SIGNATURE = "malformed_signature"
DIGEST_MISMATCH = "digest_mismatch"
BAD_SIGNATURE = "bad_signature"
UNKNOWN_ISSUER = "unknown_issuer"
EXPIRED_CERTIFICATE = "expired_certificate"
OTHER_DEVICE = "other_device"
NOT_BOUND_IDENTITY = "not_bound_identity"
RETIRED_IDENTITY = "retired_identity"
REJECTION_REASONS = (UNSIGNED, MALFORMED_SIGNATURE, DIGEST_MISMATCH, BAD_SIGNATURE, UNKNOWN_ISSUER,
                     EXPIRED_CERTIFICATE, OTHER_DEVICE, NOT_BOUND_IDENTITY, RETIRED_IDENTITY)


class CheckinRejected(Exception):
    """The check-in is not signed by the identity Orchard gave this device; nothing is stored."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class IdentityTerms:
    """What a device identity certificate says: its device, validity and use (client authentication)."""

    common_name: str
    serial_number: str
    udid: str | None
    not_before: datetime
    not_after: datetime


def identity_terms(serial_number: str, udid: str | None, now: datetime) -> IdentityTerms:
    return IdentityTerms(common_name=f"Orchard device {serial_number}", serial_number=serial_number, udid=udid,
                         not_before=now - CLOCK_SKEW, not_after=now + IDENTITY_VALIDITY)


@dataclass(frozen=True)
class SignerIdentity:
    """The verified signer of a check-in: a certificate Orchard's device CA issued."""

    fingerprint: str  # SHA-256 of the certificate, hex
    udid: str | None  # the device the certificate was issued for, when Setup Assistant told us
    serial_number: str | None = None  # the serial number it was issued for (every Orchard identity names one)


def authorize_checkin(message: CheckinMessage, signer: SignerIdentity | None, bound_fingerprint: str | None,
                      *, require_signed: bool, signer_retired: bool) -> None:
    """Raise ``CheckinRejected`` unless ``signer`` may send ``message``.

    ``Authenticate`` (re)binds a certificate issued for this device, named by its serial
    number and UDID: a wiped device enrolls again with a new identity, while another
    device's identity (one taken from a downloaded profile, say) cannot take it over.
    Every other message must come from the bound certificate, and nothing from a retired one.
    Unsigned messages pass only where signing is switched off (labs).
    """
    if signer is None:
        if require_signed:
            raise CheckinRejected(UNSIGNED)
        return
    if signer_retired:
        raise CheckinRejected(RETIRED_IDENTITY)
    if signer.udid is not None and signer.udid != message.udid:
        raise CheckinRejected(OTHER_DEVICE)
    if isinstance(message, Authenticate):
        if signer.serial_number is not None and message.serial_number != signer.serial_number:
            raise CheckinRejected(OTHER_DEVICE)
        return
    if bound_fingerprint != signer.fingerprint:
        raise CheckinRejected(NOT_BOUND_IDENTITY)
