"""The addresses Orchard reaches school directories from (``egress_ips``), shown to schools for their firewalls."""
from __future__ import annotations

import ipaddress
import re
from typing import Any

from shared.errors import ValidationError

_SEPARATORS = re.compile(r"[\s,]+")


def egress_addresses(value: Any) -> list[str]:
    """The configured addresses and networks, as written: a YAML list, or text separated by commas or whitespace.

    The environment gives plain text (``203.0.113.5,2001:db8::1``); each entry must be an IP address or
    network, since a school copies them into its firewall.
    """
    if value is None:
        return []
    if isinstance(value, list):
        entries = [str(entry).strip() for entry in value]
    else:
        entries = [entry for entry in _SEPARATORS.split(str(value)) if entry]
    for entry in entries:
        try:
            ipaddress.ip_network(entry)  # a plain address is a network of one
        except ValueError:
            raise ValidationError(
                f"egress_ips (ORCHARD_EGRESS_IPS): {entry!r} is not an IP address or network; give addresses "
                "such as 203.0.113.5 or 2001:db8::1, or networks such as 203.0.113.0/28, separated by commas "
                "or spaces") from None
    return entries
