import base64
import json
from datetime import datetime, timedelta, timezone

import pytest

from services.vpp.domain.tokens import (
    TokenStatus, check_renewal, days_left, decode_content_token, parse_content_token, token_status,
)
from shared.errors import ValidationError

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)
SECRET = "s3cr3t-token-value"


def vpptoken(**overrides) -> str:
    payload = {"token": SECRET, "expDate": "2027-11-08T22:33:22+0000", "orgName": "ORG12345", **overrides}
    return base64.b64encode(json.dumps(payload).encode()).decode()


def test_decodes_a_vpptoken_file():
    stoken = vpptoken()
    token = decode_content_token(stoken + "\n", now=NOW)
    assert token.stoken == stoken
    assert token.org_name == "ORG12345"
    assert token.expires_at == datetime(2027, 11, 8, 22, 33, 22, tzinfo=timezone.utc)


def test_token_secret_stays_out_of_repr():
    token = decode_content_token(vpptoken(), now=NOW)
    assert SECRET not in repr(token) and token.stoken not in repr(token)
    assert len(token.fingerprint) == 12 and token.fingerprint not in token.stoken


@pytest.mark.parametrize("raw, hint", [
    ("", "empty"),
    ("not base64 at all!", "base64"),
    (base64.b64encode(b"[1, 2]").decode(), "JSON object"),
    (vpptoken(token=""), "token"),
    (vpptoken(expDate="next year"), "expiry date"),
    (vpptoken(expDate="9999-12-31T23:59:59-0100"), "out of range"),  # past datetime's range once in UTC
    (vpptoken(expDate="0001-01-01T00:00:00+0100"), "out of range"),
    (b"\xff\xfe", "base64 text"),
])
def test_malformed_tokens_are_refused_with_advice(raw, hint):
    with pytest.raises(ValidationError) as caught:
        decode_content_token(raw, now=NOW)
    assert hint in str(caught.value)
    assert "Apple School Manager" in str(caught.value)


def test_expired_token_is_refused_without_leaking_it():
    stoken = vpptoken(expDate="2026-01-01T00:00:00+0000")
    with pytest.raises(ValidationError) as caught:
        decode_content_token(stoken, now=NOW)
    assert "expired on 2026-01-01" in str(caught.value)
    assert SECRET not in str(caught.value) and stoken not in str(caught.value)
    assert parse_content_token(stoken).org_name == "ORG12345"  # stored tokens may be read later


def test_status_and_days_left():
    soon = NOW + timedelta(days=30)
    later = NOW + timedelta(days=31)
    assert token_status(later, NOW) is TokenStatus.OK
    assert token_status(soon, NOW) is TokenStatus.EXPIRING
    assert token_status(NOW, NOW) is TokenStatus.EXPIRED
    assert token_status(later, NOW, conflict=True) is TokenStatus.CONFLICT
    assert token_status(NOW - timedelta(days=1), NOW, conflict=True) is TokenStatus.EXPIRED
    assert token_status(later, NOW, revoked=True, conflict=True) is TokenStatus.REVOKED
    assert days_left(later + timedelta(hours=5), NOW) == 31
    assert days_left(NOW - timedelta(days=3), NOW) == 0


def test_renewal_must_keep_the_location_whatever_its_name():
    check_renewal("1001", "1001")
    with pytest.raises(ValidationError, match="different location"):
        check_renewal("1001", "1002")
