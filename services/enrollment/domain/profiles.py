"""The enrollment profile an MDM server hands to devices during Setup Assistant."""
from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from shared.errors import ValidationError


def validated_profile(profile: Any) -> dict[str, Any]:
    """The profile to send to Apple, or a ValidationError naming what to fix (nothing is sent)."""
    if not isinstance(profile, dict):
        raise ValidationError("The enrollment profile must be an object with at least profile_name and url.")
    name = profile.get("profile_name")
    if not isinstance(name, str) or not name.strip():
        raise ValidationError("The enrollment profile needs a profile_name, shown to users in Setup Assistant.")
    url = profile.get("url")
    if not isinstance(url, str) or not url.strip():
        raise ValidationError("The enrollment profile needs a url: the MDM enrollment URL devices fetch their profile from.")
    _require_https("url", url)
    web_url = profile.get("configuration_web_url")
    if web_url is not None:
        if not isinstance(web_url, str):
            raise ValidationError("configuration_web_url must be the https:// address of the sign-in page "
                                  "(Orchard's is https://<enrollment address>/enroll), or left out.")
        _require_https("configuration_web_url", web_url)
    if profile.get("is_mdm_removable") is False and profile.get("is_supervised") is False:
        raise ValidationError("A profile that cannot be removed (is_mdm_removable false) must also be supervised.")
    return {key: value for key, value in profile.items() if key != "devices"}


def _require_https(key: str, url: str) -> None:
    try:
        parts = urlsplit(url)
        reachable = parts.scheme == "https" and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a malformed host or port: "https://[::1", "https://mdm.example:99999"
        reachable = False
    if not reachable:
        raise ValidationError(f"The enrollment profile {key} '{url}' must be an https:// address devices can reach.")
