"""``orchard events``: the events that could not be handled."""
from __future__ import annotations

import click

from orchard_cli.output import print_table
from orchard_cli.rpc import broker
from shared.dead_letters import list_dead_letters, replay_dead_letters


@click.group()
def events() -> None:
    """Events between the services."""


@events.group("dead-letters")
def dead_letters() -> None:
    """Events parked after their handler kept failing."""


@dead_letters.command("list")
@click.option("--queue", "queues", multiple=True, help="Only this handler queue (repeatable).")
def list_command(queues: tuple[str, ...]) -> None:
    """Show parked events, why they failed, and how often they were tried."""
    with broker() as config:
        parked = list_dead_letters(config["AMQP_URI"], list(queues) or None)
    print_table([vars(letter) for letter in parked],
                ["queue", "event_type", "event_id", "attempts", "failed_at", "error"], status_column=None)


@dead_letters.command("replay")
@click.option("--queue", "queues", multiple=True, help="Only this handler queue (repeatable).")
def replay_command(queues: tuple[str, ...]) -> None:
    """Send parked events back to the handler that failed them (after fixing the cause)."""
    with broker() as config:
        count = replay_dead_letters(config["AMQP_URI"], list(queues) or None)
    click.echo(f"replayed {count} event(s)")
