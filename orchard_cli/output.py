"""Readable terminal output: aligned tables and coloured statuses."""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import click

STATUS_COLOURS = {
    "ok": "green", "healthy": "green", "success": "green",
    "expiring": "yellow", "pending": "yellow",
    "expired": "red", "error": "red", "failed": "red", "conflict": "red", "revoked": "red",
    "revoked_or_invalid": "red", "terms_not_accepted": "red",
}
# colour names a service may send that the terminal spells differently
TERMINAL_COLOURS = {"grey": "bright_black", "gray": "bright_black"}


def coloured(status: Any, colour: str | None = None) -> str:
    """``status`` in ``colour`` (a service's choice), or in the colour this module gives it."""
    text = "" if status is None else str(status)
    colour = TERMINAL_COLOURS.get(colour, colour) if colour else STATUS_COLOURS.get(text.lower())
    try:
        return click.style(text, fg=colour) if colour else text
    except ValueError:  # a colour the terminal has no name for: the status is still worth showing
        return text


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(item) for item in value) or "-"
    return str(value)


def print_table(rows: Iterable[Mapping[str, Any]], columns: Sequence[str | tuple[str, str]],
                status_column: str | None = "status", colour_column: str | None = None) -> None:
    """Print rows as an aligned table; ``columns`` are keys or ``(key, heading)`` pairs.

    The ``status_column`` is coloured: in each row's ``colour_column`` when the service chose its colours.
    """
    rows = list(rows)
    specs = [(c, c.replace("_", " ").upper()) if isinstance(c, str) else c for c in columns]
    table = [[_cell(row.get(key)) for key, _ in specs] for row in rows]
    widths = [max([len(heading)] + [len(line[i]) for line in table]) for i, (_, heading) in enumerate(specs)]
    click.echo("  ".join(heading.ljust(width) for (_, heading), width in zip(specs, widths)).rstrip())
    for row, line in zip(rows, table):
        colour = row.get(colour_column) if colour_column else None
        cells = []
        for (key, _), value, width in zip(specs, line, widths):
            padded = value.ljust(width)
            cells.append(padded.replace(value, coloured(value, colour), 1) if key == status_column else padded)
        click.echo("  ".join(cells).rstrip())
    if not table:
        click.echo("(none)")


def print_record(record: Mapping[str, Any]) -> None:
    """Print one object as ``key: value`` lines."""
    width = max((len(key) for key in record), default=0)
    for key, value in record.items():
        shown = coloured(value) if key == "status" else _cell(value)
        click.echo(f"{key.replace('_', ' ').ljust(width)}  {shown}")
