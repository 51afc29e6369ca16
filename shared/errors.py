"""The errors Orchard raises across RPC, each keeping its type on the caller's side.

Plain Python, so domain code can raise them without importing Nameko;
``shared.entrypoints`` registers them with Nameko so that a ``ClusterRpcProxy`` caller
gets the same class back and can ``except NotFound``. Every message is meant
for a person: say what is wrong and what to do next.
"""
from __future__ import annotations


class OrchardError(Exception):
    """Base of the errors a caller is meant to see and handle."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ValidationError(OrchardError):
    """The request is malformed or names something impossible; nothing was changed."""


class NotFound(OrchardError):
    """The thing named does not exist, or the actor may not know that it does."""


class PermissionDenied(OrchardError):
    """The actor's role or locations do not allow this."""


class Conflict(OrchardError):
    """The request contradicts the current state (a different topic, another MDM, ...)."""


class NeedsApproval(Conflict):
    """A change large enough that a person must approve it (the roster's deletion guard): trying again
    unchanged will not pass."""


class UpstreamError(OrchardError):
    """Apple, the directory or another system outside Orchard failed or refused."""


class InternalError(OrchardError):
    """Something failed inside Orchard; the details are in the service's log under the reference."""


#: the errors that are the caller's business; anything else is logged as a fault
EXPECTED_ERRORS = (ValidationError, NotFound, PermissionDenied, Conflict, UpstreamError)
ALL_ERRORS = EXPECTED_ERRORS + (NeedsApproval, InternalError)
