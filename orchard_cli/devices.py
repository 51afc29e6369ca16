"""``orchard devices``, ``orchard groups`` and ``orchard scope``: who uses which device."""
from __future__ import annotations

import click

from orchard_cli.output import print_record, print_table
from orchard_cli.rpc import call

ASSIGNMENT_COLUMNS = ["serial_number", "user_id", "group_id", "locations", "source"]
GROUP_COLUMNS = ["id", "name", "location_id", "devices"]
SCOPE_COLUMNS = ["serial_number", "user_id", "group_id", "locations"]


@click.group()
def devices() -> None:
    """Assign devices to the people who use them."""


@devices.command("assign")
@click.argument("serial_number")
@click.argument("user_id")
def assign(serial_number: str, user_id: str) -> None:
    """Assign a device to a roster user (a device in a shared group must leave the group first)."""
    print_table([call("enrollment", "assign_device", serial_number, user_id)], ASSIGNMENT_COLUMNS)


@devices.command("unassign")
@click.argument("serial_number")
def unassign(serial_number: str) -> None:
    """Free a device from its user or shared group."""
    print_table([call("enrollment", "unassign_device", serial_number)], ASSIGNMENT_COLUMNS)


@devices.command("show")
@click.argument("serial_number")
def show(serial_number: str) -> None:
    """Who uses a device."""
    print_table([call("enrollment", "device_assignment", serial_number)], ASSIGNMENT_COLUMNS)


@click.group()
def groups() -> None:
    """Shared device groups (carts, labs): devices used by no one in particular."""


@groups.command("create")
@click.argument("name")
@click.option("--location", "location_id", required=True, help="The roster location id the group belongs to.")
def create_group(name: str, location_id: str) -> None:
    """Create a shared group in a location."""
    print_table([call("enrollment", "create_shared_group", name, location_id)], GROUP_COLUMNS)


@groups.command("list")
@click.option("--location", "location_id", help="Only this location's groups.")
def list_groups(location_id: str | None) -> None:
    """List shared groups and how many devices each holds."""
    print_table(call("enrollment", "list_shared_groups", location_id), GROUP_COLUMNS)


@groups.command("rename")
@click.argument("group_id")
@click.argument("name")
def rename_group(group_id: str, name: str) -> None:
    """Rename a shared group."""
    print_table([call("enrollment", "rename_shared_group", group_id, name)], GROUP_COLUMNS)


@groups.command("delete")
@click.argument("group_id")
def delete_group(group_id: str) -> None:
    """Delete a group; its devices become unassigned."""
    print_record(call("enrollment", "delete_shared_group", group_id))


@groups.command("add")
@click.argument("group_id")
@click.argument("serial_numbers", nargs=-1, required=True)
def add_devices(group_id: str, serial_numbers: tuple[str, ...]) -> None:
    """Add devices to a group (all or nothing)."""
    print_record(call("enrollment", "add_devices_to_group", group_id, list(serial_numbers)))


@groups.command("remove")
@click.argument("group_id")
@click.argument("serial_numbers", nargs=-1, required=True)
def remove_devices(group_id: str, serial_numbers: tuple[str, ...]) -> None:
    """Remove devices from a group; they become unassigned."""
    print_record(call("enrollment", "remove_devices_from_group", group_id, list(serial_numbers)))


@click.group()
def scope() -> None:
    """Scopes: which devices "grade 7 students at Lincoln" reaches today."""


@scope.command("resolve")
@click.option("--location", "locations", multiple=True, help="Roster location id (repeat for several).")
@click.option("--grade", "grade_levels", multiple=True, help="Grade level name, e.g. 7.")
@click.option("--class", "classes", multiple=True, help="Roster class id.")
@click.option("--type", "user_types", multiple=True, type=click.Choice(["student", "teacher", "staff"]))
@click.option("--group", "groups_", multiple=True, help="Shared device group id.")
@click.option("--user", "users", multiple=True, help="Roster user id.")
@click.option("--device", "devices_", multiple=True, help="Serial number.")
def resolve(locations, grade_levels, classes, user_types, groups_, users, devices_) -> None:
    """Print the devices a scope reaches (an AND across --location/--grade/--class/--type, OR within one)."""
    given = {"locations": locations, "grade_levels": grade_levels, "classes": classes, "user_types": user_types,
             "groups": groups_, "users": users, "devices": devices_}
    rows = call("enrollment", "resolve_scope", {key: list(values) for key, values in given.items() if values})
    print_table(rows, SCOPE_COLUMNS)
    click.echo(f"{len(rows)} device(s)")
