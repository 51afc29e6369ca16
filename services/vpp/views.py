"""What the vpp RPCs return: JSON-ready shapes of the stored rows."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from services.vpp.domain.invites import invite_url
from services.vpp.domain.tokens import days_left, token_status


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def token_view(row: Any, now: datetime) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "organization": row.org_name,
        # Apple's v2 API does not name the administrator who downloaded the token
        "admin_apple_id": None,
        "admin_email": None,
        "integrated_by": row.added_by,
        "location_name": row.location_name,
        "location_uid": row.location_uid,
        "locations": list(row.locations or []),
        "allow_teacher_study_apps": row.allow_teacher_study_apps,
        "auto_invite_method": row.auto_invite_method,
        "expires_at": _iso(row.expires_at),
        "days_left": days_left(row.expires_at, now),
        "status": token_status(row.expires_at, now, revoked=row.revoked, conflict=row.conflict_with is not None).value,
        "managed_by_other_mdm": row.conflict_with,
        "fingerprint": row.fingerprint,
        "last_sync_at": _iso(row.last_sync_at),
        "last_sync_error": row.last_sync_error,
    }


def asset_view(row: Any) -> dict[str, Any]:
    return {
        "adam_id": row.adam_id, "pricing_param": row.pricing_param, "product_type": row.product_type, "name": row.name,
        "kind": row.kind, "artwork_url": row.artwork_url,
        "total": row.total_count, "assigned": row.assigned_count, "available": row.available_count,
        "device_assignable": row.device_assignable, "revocable": row.revocable, "hidden": row.hidden,
    }


def invite_view(row: Any, url_template: str | None, unavailable: str | None = None) -> dict[str, Any]:
    """``unavailable``: why Apple could not be asked for invite codes or links just now; told on the pending,
    registered invites left without their link."""
    url = invite_url(url_template, row.invite_code) if url_template and row.invite_code and row.status == "pending" else None
    linkless = url is None and row.status == "pending" and row.apple_state == "registered"
    return {
        "user_id": row.user_id, "name": row.name, "email": row.email, "managed_apple_id": row.managed_apple_id,
        "method": row.method, "status": row.status, "registration": row.apple_state, "error": row.apple_error,
        "invite_url": url, "invite_url_error": unavailable if linkless else None,
        "invited_at": _iso(row.invited_at), "emailed_at": _iso(row.emailed_at),
        "accepted_at": _iso(row.accepted_at), "mail": _mail_state(row), "mail_error": row.mail_error,
        "mail_retry_at": _iso(row.mail_retry_at),
    }


def _mail_state(row: Any) -> str | None:
    """Where an e-mail invite's message stands: waiting (to be sent), sent, refused (the address, for good: not
    tried again until the invite is resent or invited again) or retrying (the relay failed; at mail_retry_at)."""
    if row.method != "email":
        return None
    if row.mail_refused_at is not None:
        return "refused"
    if row.emailed_at is not None:
        return "sent"
    return "retrying" if row.mail_retry_at is not None else "waiting"
