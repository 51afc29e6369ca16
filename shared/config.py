"""Orchard's configuration: one Nameko YAML file for every service.

Values may reference the environment as ``${VAR:default}`` (services read it
through ``shared.run``); a value that is exactly one reference is typed after substitution:
``${MAX_WORKERS:10}`` is the integer 10, ``true``/``false`` are booleans and a
YAML list (``[1, 5, 30]``) is a list; anything else stays the text it is (a name
like ``Acme: North`` is not a mapping, ``0123`` is not octal). Per-service
settings live under ``SERVICES.<name>``.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

import yaml

from shared.errors import ValidationError

_REFERENCE = re.compile(r"\$\{([^}{:]+)(?::([^}{]*))?\}")

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "deploy" / "config.yaml"


def expand(value: Any, environ: Mapping[str, str] | None = None) -> Any:
    """Substitute ``${VAR:default}`` references throughout a parsed YAML tree."""
    env = os.environ if environ is None else environ
    if isinstance(value, dict):
        return {key: expand(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [expand(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is None:
            raise ValidationError(f"configuration needs the environment variable {name} (no default is given)")
        return default

    whole = _REFERENCE.fullmatch(value)
    substituted = _REFERENCE.sub(substitute, value)
    return _typed(substituted) if whole else substituted


def _typed(text: str) -> Any:
    """A value that was one whole reference: a number, a boolean, a list or nothing as such, else the text."""
    stripped = text.strip()
    if not stripped:
        return None
    if stripped.lower() in ("true", "false"):
        return stripped.lower() == "true"
    try:
        parsed = yaml.safe_load(stripped)
    except yaml.YAMLError:
        return text
    if isinstance(parsed, list):
        return parsed
    if isinstance(parsed, (int, float)) and not isinstance(parsed, bool) and _canonical_number(stripped):
        return parsed
    return text


def _canonical_number(text: str) -> bool:
    """Written as a plain decimal (``10``, ``-2.5``, ``1e3``): YAML would also read ``0123`` as octal, ``0x1F`` as hex."""
    return re.fullmatch(r"[-+]?(0|[1-9][0-9]*)(\.[0-9]*)?([eE][-+]?[0-9]+)?", text) is not None


def load_config(path: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None) -> dict:
    """Read and expand the YAML configuration (``deploy/config.yaml`` by default)."""
    config_path = Path(path or os.environ.get("ORCHARD_CONFIG") or DEFAULT_CONFIG_PATH)
    with open(config_path, encoding="utf-8") as handle:
        return expand(yaml.safe_load(handle) or {}, environ)


def service_settings(config: Mapping[str, Any], service_name: str) -> dict:
    """The ``SERVICES.<name>`` section of the configuration (empty if absent)."""
    return dict((config.get("SERVICES") or {}).get(service_name) or {})
