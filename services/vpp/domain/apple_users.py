"""Which ``clientUserId`` Apple knows a user by.

Apple registers a user under a ``clientUserId`` that can never change. Orchard names users by the roster's user ID,
which can (a Managed Apple ID domain renamed, say). A user the roster renamed after Apple registered them keeps
Apple's ``clientUserId``; every other user is known to Apple by their user ID. Everything sent to Apple names users
by their ``clientUserId``, everything read from Apple is turned back into user IDs.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from services.vpp.domain.licences import LicenceBatch


@dataclass(frozen=True)
class AppleUserIds:
    """One content token's renamed users: user ID -> the ``clientUserId`` Apple registered them with."""

    renamed: Mapping[str, str] = field(default_factory=dict)

    @cached_property
    def _owners(self) -> dict[str, str]:
        return {client_user_id: user_id for user_id, client_user_id in self.renamed.items()}

    def client_user_id(self, user_id: str) -> str | None:
        """The ``clientUserId`` of the user; None when Apple knows a renamed user by this user ID, so that this
        user has no Apple user of their own in the token (and must never be given the other one's licences)."""
        if user_id in self.renamed:
            return self.renamed[user_id]
        return None if user_id in self._owners else user_id

    def user_id(self, client_user_id: str) -> str:
        """The user Apple names by this ``clientUserId``."""
        return self._owners.get(client_user_id, client_user_id)

    def for_apple(self, batch: LicenceBatch) -> tuple[LicenceBatch, list[str]]:
        """The batch naming its users by ``clientUserId``, and the users it leaves out: Apple has none of theirs."""
        known = {user_id: self.client_user_id(user_id) for user_id in batch.client_user_ids}
        at_apple = tuple(client_user_id for client_user_id in known.values() if client_user_id)
        return replace(batch, client_user_ids=at_apple), [user_id for user_id, found in known.items() if not found]

    def failures_by_user_id(self, failures: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """Apple's failures of an event with the ``clientUserIds`` they name turned into user IDs."""
        translated = []
        for failure in failures:
            info = failure.get("errorInfo")
            if isinstance(info, dict) and isinstance(info.get("clientUserIds"), list):
                failure = {**failure, "errorInfo": {**info, "clientUserIds": [
                    self.user_id(c) if isinstance(c, str) else c for c in info["clientUserIds"]]}}
            translated.append(failure)
        return translated
