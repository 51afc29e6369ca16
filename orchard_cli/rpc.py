"""Calling the services as the configured operator."""
from __future__ import annotations

import os
from typing import Any

import click
from kombu.utils.url import maybe_sanitize_url
from nameko.exceptions import RemoteError, RpcTimeout, UnknownService

import shared.entrypoints  # noqa: F401  registers Orchard's error types for deserialisation
from shared.auth import Actor
from shared.config import load_config
from shared.errors import OrchardError


def current_actor() -> Actor:
    """The operator: ``ORCHARD_ACTOR_ID`` / ``_ROLE`` / ``_LOCATIONS`` (comma-separated)."""
    locations = os.environ.get("ORCHARD_ACTOR_LOCATIONS")
    return Actor(
        id=os.environ.get("ORCHARD_ACTOR_ID") or os.environ.get("USER") or "operator",
        role=os.environ.get("ORCHARD_ACTOR_ROLE", "administrator"),
        locations=tuple(item.strip() for item in locations.split(",") if item.strip()) if locations else None,
    )


def call(service: str, method: str, *args: Any, timeout: float = 60, **kwargs: Any) -> Any:
    """Call ``service.method``; a failure prints one readable line and exits non-zero."""
    from nameko.standalone.rpc import ClusterRpcProxy

    config = load_config()
    try:
        with ClusterRpcProxy(config, context_data={"actor": current_actor().to_context()}, timeout=timeout) as proxy:
            return getattr(getattr(proxy, service), method)(*args, **kwargs)
    except OrchardError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
    except UnknownService:
        raise click.ClickException(f"the {service} service is not running (start it with `make run`)") from None
    except RpcTimeout:
        raise click.ClickException(f"the {service} service did not answer within {timeout:g} s") from None
    except RemoteError as exc:
        raise click.ClickException(f"{service}.{method} failed: {exc.value}") from None
    except (ConnectionError, OSError) as exc:
        raise click.ClickException(
            f"cannot reach RabbitMQ at {maybe_sanitize_url(config.get('AMQP_URI'))}: {exc}. Is the broker running?"
        ) from None
