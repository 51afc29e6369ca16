"""What can go wrong talking to Apple's Device Assignment API, as the domain sees it.

The HTTP adapter raises these; the sync algorithm and the service decide what
each one means for the token (stop, refetch, switch to sync, set a status).
"""
from __future__ import annotations

from shared.errors import UpstreamError


class DepError(UpstreamError):
    """Apple's Device Assignment API refused or failed a request."""

    def __init__(self, message: str, *, status_code: int | None = None):
        super().__init__(message)
        self.status_code = status_code


class TermsNotAccepted(DepError):
    """403 T_C_NOT_SIGNED: the organisation must accept Apple's new terms first."""


class AccessDenied(DepError):
    """403 ACCESS_DENIED or a refused session: the token was revoked or its MDM server removed."""


class Throttled(DepError):
    """429 after our bounded attempts, or with a Retry-After longer than we wait within one request.

    ``retry_after``: the seconds Apple asked us to wait (None when it did not say); nothing calls again before then.
    """

    def __init__(self, message: str, *, retry_after: float | None = None, status_code: int | None = 429):
        super().__init__(message, status_code=status_code)
        self.retry_after = retry_after


class CursorError(DepError):
    """A cursor Apple will not continue from."""


class CursorExhausted(CursorError):
    """EXHAUSTED_CURSOR: a fetch cursor has returned everything; continue with sync."""


class CursorExpired(CursorError):
    """EXPIRED_CURSOR or INVALID_CURSOR: discard the cursor and fetch everything again."""


class CursorRequired(CursorError):
    """CURSOR_REQUIRED: a sync was attempted without a cursor."""


class TokenExpired(DepError):
    """The token's access_token_expiry has passed; Apple would refuse it, so we do not call."""
