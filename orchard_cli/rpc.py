"""Calling the services as the configured operator."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import click
import yaml
from amqp.exceptions import AMQPError
from kombu.exceptions import OperationalError
from kombu.utils.url import maybe_sanitize_url
from nameko.exceptions import RemoteError, RpcTimeout, UnknownService
from nameko.rpc import ServiceProxy
from nameko.standalone.rpc import StandaloneProxyBase

import shared.entrypoints  # noqa: F401  registers Orchard's error types for deserialisation
from orchard_cli.files import problem
from shared.auth import Actor
from shared.call_deadlines import deadline_after
from shared.config import DEFAULT_CONFIG_PATH, load_config
from shared.errors import OrchardError, ValidationError


def current_actor() -> Actor:
    """The operator: ``ORCHARD_ACTOR_ID`` / ``_ROLE`` / ``_LOCATIONS`` (comma-separated)."""
    locations = os.environ.get("ORCHARD_ACTOR_LOCATIONS")
    return Actor(
        id=os.environ.get("ORCHARD_ACTOR_ID") or os.environ.get("USER") or "operator",
        role=os.environ.get("ORCHARD_ACTOR_ROLE", "administrator"),
        locations=tuple(item.strip() for item in locations.split(",") if item.strip()) if locations else None,
    )


def configuration() -> dict:
    """The configuration file (``ORCHARD_CONFIG``, else the default); one that cannot be read is one line."""
    path = Path(os.environ.get("ORCHARD_CONFIG") or DEFAULT_CONFIG_PATH)
    try:
        return load_config(path)
    except (OSError, yaml.YAMLError, ValidationError) as exc:  # ValidationError: a ${VAR} the environment lacks
        raise click.ClickException(
            f"cannot read the configuration at {path} (ORCHARD_CONFIG): {problem(exc)}") from None


@contextmanager
def broker() -> Iterator[dict]:
    """The configuration, with a broker that is down or refuses us reported in one line (without its password)."""
    config = configuration()
    where = maybe_sanitize_url(config.get("AMQP_URI"))
    try:
        yield config
    except AMQPError as exc:  # a wrong password (AccessRefused), an unknown vhost (NotAllowed), ...
        raise click.ClickException(f"RabbitMQ at {where} refused: {exc.reply_text}") from None
    except (OSError, OperationalError) as exc:  # OperationalError: kombu's wrapping when publishing gives up
        raise click.ClickException(f"cannot reach RabbitMQ at {where}: {exc}. Is the broker running?") from None


class _ExpiringRpcProxy(StandaloneProxyBase):
    """A proxy to one service whose requests expire unread after ``timeout``: the request queue is durable, so a
    request the caller gave up on would otherwise run whenever the service comes back. (Nameko's standalone
    proxies take no publish options.) The context's deadline covers a request a replica took but had no free
    worker for in time."""

    def __init__(self, config: dict, service: str, context_data: dict, timeout: float):
        super().__init__(config, context_data=context_data, timeout=timeout)
        self._proxy = ServiceProxy(self._worker_ctx, service, self._reply_listener, expiration=timeout)


def call(service: str, method: str, *args: Any, timeout: float = 60, **kwargs: Any) -> Any:
    """Call ``service.method``; a failure prints one readable line and exits non-zero."""
    with broker() as config:
        context = {"actor": current_actor().to_context(), **deadline_after(timeout)}  # the deadline: see the proxy
        try:
            with _ExpiringRpcProxy(config, service, context, timeout) as proxy:
                return getattr(proxy, method)(*args, **kwargs)
        except OrchardError as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
        except UnknownService:
            raise click.ClickException(f"the {service} service is not running (start it with `make run`)") from None
        except RpcTimeout:
            raise click.ClickException(
                f"the {service} service did not answer within {timeout:g} s: a request not started by then is not "
                f"run, but one already running may still complete, so check (e.g. list again) before retrying"
            ) from None
        except RemoteError as exc:
            raise click.ClickException(f"{service}.{method} failed: {exc.value}") from None
