"""OAuth 1.0a HMAC-SHA1 request signing (RFC 5849), as Apple's ``GET /session`` expects it."""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit


def percent_encode(value: str) -> str:
    """RFC 3986 encoding: everything but unreserved characters."""
    return quote(value, safe="~")


def signature_base_string(method: str, url: str, params: list[tuple[str, str]]) -> str:
    """Method, base URL and the sorted, encoded parameters (oauth ones and the query's)."""
    parts = urlsplit(url)
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    netloc = host if parts.port in (None, 80 if scheme == "http" else 443) else f"{host}:{parts.port}"
    base_url = urlunsplit((scheme, netloc, parts.path or "/", "", ""))
    all_params = list(params) + parse_qsl(parts.query, keep_blank_values=True)
    encoded = sorted((percent_encode(k), percent_encode(v)) for k, v in all_params)
    normalized = "&".join(f"{k}={v}" for k, v in encoded)
    return "&".join(percent_encode(p) for p in (method.upper(), base_url, normalized))


def hmac_sha1_signature(base_string: str, consumer_secret: str, token_secret: str) -> str:
    key = f"{percent_encode(consumer_secret)}&{percent_encode(token_secret)}"
    digest = hmac.new(key.encode(), base_string.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def authorization_header(
    method: str,
    url: str,
    *,
    consumer_key: str,
    consumer_secret: str,
    token: str,
    token_secret: str,
    realm: str | None = "ADM",
    timestamp: str | None = None,
    nonce: str | None = None,
) -> str:
    """The ``Authorization: OAuth ...`` value for one request."""
    oauth_params = [
        ("oauth_consumer_key", consumer_key),
        ("oauth_token", token),
        ("oauth_signature_method", "HMAC-SHA1"),
        ("oauth_timestamp", timestamp or str(int(time.time()))),
        ("oauth_nonce", nonce or secrets.token_hex(16)),
        ("oauth_version", "1.0"),
    ]
    signature = hmac_sha1_signature(signature_base_string(method, url, oauth_params), consumer_secret, token_secret)
    fields = ([("realm", realm)] if realm else []) + oauth_params + [("oauth_signature", signature)]
    return "OAuth " + ", ".join(f'{k}="{percent_encode(v)}"' for k, v in fields)
