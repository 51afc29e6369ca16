"""Orchard's configuration: one Nameko YAML file for every service.

Values may reference the environment as ``${VAR:default}``, as ``nameko run``
does; a value that is exactly one reference is parsed as YAML after
substitution, so ``${MAX_WORKERS:10}`` is the integer 10. Per-service settings
live under ``SERVICES.<name>``.
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
    if whole:
        return yaml.safe_load(substituted) if substituted.strip() else None
    return substituted


def load_config(path: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None) -> dict:
    """Read and expand the YAML configuration (``deploy/config.yaml`` by default)."""
    config_path = Path(path or os.environ.get("ORCHARD_CONFIG") or DEFAULT_CONFIG_PATH)
    with open(config_path, encoding="utf-8") as handle:
        return expand(yaml.safe_load(handle) or {}, environ)


def service_settings(config: Mapping[str, Any], service_name: str) -> dict:
    """The ``SERVICES.<name>`` section of the configuration (empty if absent)."""
    return dict((config.get("SERVICES") or {}).get(service_name) or {})
