"""The welcome e-mail a new user gets when their import asked for one ("welcome e-mail").

It tells the user their account exists and what to sign in with on a school device; it
carries no password (Orchard holds none).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.contracts.roster import UserImported


@dataclass(frozen=True)
class WelcomeEmail:
    user_id: str
    to: str
    subject: str
    body: str


def welcome_emails(events: list[Any], location_names: dict[str, str]) -> list[WelcomeEmail]:
    """The welcome e-mails an apply's events call for: new users whose import asked for one and who have an
    e-mail address."""
    return [_welcome(event, location_names) for event in events
            if isinstance(event, UserImported) and event.welcome_email and event.email]


def _welcome(user: UserImported, location_names: dict[str, str]) -> WelcomeEmail:
    places = ", ".join(location_names.get(location, location) for location in user.locations)
    lines = [f"Hello {user.name}," if user.name else "Hello,", "",
             f"your school account is ready. Your user ID is {user.user_id}" + (f" ({places})." if places else ".")]
    if user.managed_apple_id:
        lines += ["", f"Your Managed Apple ID is {user.managed_apple_id}. Sign in with it on your school iPad or "
                      "Mac; your school gives you its first password."]
    lines += ["", "Your school's device management sent this message because your school asked for it when "
                  "adding you. If you did not expect it, tell your school's IT staff."]
    return WelcomeEmail(user_id=user.user_id, to=user.email, subject="Your school account is ready",
                        body="\n".join(lines) + "\n")
