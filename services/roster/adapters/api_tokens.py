"""Access tokens of the HTTP API: stored as SHA-256 hashes, optionally bound to IPs."""
from __future__ import annotations

import hashlib
import ipaddress
import secrets
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from services.roster.adapters import tables as t
from shared.errors import NotFound, ValidationError
from shared.storage import utc_now

TOKEN_PREFIX = "orch_"
MAX_TOKEN_ID = 2**31 - 1  # ids are 32-bit integers (the column's type)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_allowed_ips(allowed_ips: Any) -> list[str] | None:
    """Normalise a list of IP addresses and CIDR networks; None means open to all."""
    if allowed_ips is None:
        return None
    if not isinstance(allowed_ips, list) or not all(isinstance(i, str) for i in allowed_ips):
        raise ValidationError("allowed_ips must be a list of IP addresses or CIDR networks")
    if not allowed_ips:
        raise ValidationError("allowed_ips is empty, so no one could use the token; "
                              "leave it out for open access or name the addresses")
    networks = []
    for item in allowed_ips:
        try:
            networks.append(str(ipaddress.ip_network(item.strip(), strict=False)))
        except ValueError:
            raise ValidationError(f"'{item}' is not an IP address or CIDR network "
                                  f"(for example 203.0.113.7 or 203.0.113.0/24)") from None
    return networks


def ip_allowed(allowed: list[str] | None, address: str | None) -> bool:
    if allowed is None:
        return True
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(network) for network in allowed)


def describe(row: Any) -> dict[str, Any]:
    return {"token_id": row.id, "name": row.name, "allowed_ips": row.allowed_ips,
            "access": "open" if row.allowed_ips is None else "restricted",
            "created_by": row.created_by, "created_at": row.created_at.isoformat(),
            "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
            "last_used_at": row.last_used_at.isoformat() if row.last_used_at else None}


class ApiTokens:
    def __init__(self, session: Session):
        self.session = session

    def create(self, name: str, allowed_ips: list[str] | None, created_by: str) -> tuple[Any, str]:
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token_id = self.session.execute(t.api_tokens.insert().values(
            name=name, token_hash=hash_token(token), allowed_ips=allowed_ips,
            created_by=created_by, created_at=utc_now()).returning(t.api_tokens.c.id)).scalar_one()
        return self.get(token_id), token

    def get(self, token_id: int) -> Any:
        row = None
        # an id that cannot exist is not looked up: SQLite's driver cannot even send 10**30
        if 0 < token_id <= MAX_TOKEN_ID:
            row = self.session.execute(
                sa.select(t.api_tokens).where(t.api_tokens.c.id == token_id)).first()
        if row is None:
            raise NotFound(f"there is no API token {token_id}; list them with `orchard roster api-token list` "
                           "(or the list_api_tokens RPC)")
        return row

    def all(self) -> list[Any]:
        return self.session.execute(sa.select(t.api_tokens).order_by(t.api_tokens.c.id)).all()

    def revoke(self, token_id: int) -> Any:
        row = self.get(token_id)
        if row.revoked_at is None:
            self.session.execute(t.api_tokens.update().where(t.api_tokens.c.id == token_id)
                                 .values(revoked_at=utc_now()))
        return self.get(token_id)

    def find(self, token: str) -> Any:
        return self.session.execute(
            sa.select(t.api_tokens).where(t.api_tokens.c.token_hash == hash_token(token))).first()

    def touch(self, token_id: int) -> None:
        self.session.execute(t.api_tokens.update().where(t.api_tokens.c.id == token_id)
                             .values(last_used_at=utc_now()))
