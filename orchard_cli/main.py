"""``orchard``: operate Orchard from a terminal."""
from __future__ import annotations

import warnings

warnings.filterwarnings("ignore", message=r"(?s).*Eventlet is deprecated")

import eventlet  # noqa: E402

eventlet.monkey_patch()  # noqa: E402  the RPC client is Nameko's, which expects a cooperative process

import click

from orchard_cli.devices import devices, groups, scope
from orchard_cli.directory import directory
from orchard_cli.enrollment import enrollment
from orchard_cli.events import events
from orchard_cli.output import print_table
from orchard_cli.push import push
from orchard_cli.roster import roster
from orchard_cli.rpc import call
from orchard_cli.vpp import vpp

SERVICES = ("push", "enrollment", "vpp", "roster", "directory")

# \b keeps click from rewrapping the list
ENVIRONMENT = """\b
Environment:
  ORCHARD_CONFIG           the configuration file (default: deploy/config.yaml)
  AMQP_URI                 the RabbitMQ broker, where the configuration refers to it
                           (as the default one does)
  ORCHARD_ACTOR_ID         who you act as (default: your login name)
  ORCHARD_ACTOR_ROLE       your role (default: administrator)
  ORCHARD_ACTOR_LOCATIONS  the locations a location-bound role acts in (comma-separated)
"""


@click.group(epilog=ENVIRONMENT)
def cli() -> None:
    """Orchard: Apple push certificates, enrollment, Apps and Books, rosters and directories."""


@cli.command()
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait for each service.")
def health(timeout: float) -> None:
    """Show whether each service answers, and its version and database."""
    rows, failed = [], False
    for service in SERVICES:
        try:
            answer = call(service, "health", timeout=timeout)
            rows.append({"service": service, "status": "healthy", "version": answer["version"],
                         "database": answer["database"]})
        except click.ClickException as exc:
            failed = True
            rows.append({"service": service, "status": "error", "version": None, "database": exc.message})
    print_table(rows, ["service", "status", "version", "database"])
    if failed:
        raise SystemExit(1)


cli.add_command(events)
cli.add_command(directory)
cli.add_command(vpp)
cli.add_command(push)
cli.add_command(roster)
cli.add_command(enrollment)
cli.add_command(devices)
cli.add_command(groups)
cli.add_command(scope)
