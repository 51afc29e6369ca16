"""``orchard roster``: the school hierarchy — imports, Apple School Manager sync, API tokens."""
from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import click

from orchard_cli.files import output_path, write_output
from orchard_cli.output import print_record, print_table
from orchard_cli.rpc import call

LARGE_FILE_BYTES = 1024 * 1024
IMPORT_TIMEOUT = 600  # a 100,000-user district previews and applies in well under this


@click.group()
def roster() -> None:
    """Locations, grade levels, classes and users: imports and queries."""


def print_plan(plan: dict[str, Any]) -> None:
    """A plan summary: counts per entity, rejected rows and warnings."""
    click.echo(f"plan {plan['plan_id']} ({plan['source']}, {plan.get('status', 'previewed')})")
    print_table([{"entity": entity, **actions} for entity, actions in plan["counts"].items()],
                ["entity", "add", "update", "delete"], status_column=None)
    if plan["skipped_updates"] or plan["skipped_deletions"]:
        click.echo(f"skipped (only add new): {plan['skipped_updates']} update(s), "
                   f"{plan['skipped_deletions']} deletion(s)")
    if plan["needs_mass_delete_approval"]:
        click.secho(f"this plan deletes {plan['user_delete_share']:.0%} of the users; apply it "
                    f"with --allow-mass-delete if that is intended", fg="yellow")
    for warning in plan["warnings"]:
        click.secho(f"warning: {warning}", fg="yellow")
    if plan["rejected"]:
        click.echo(f"{len(plan['rejected'])} rejected row(s):")
        print_table(plan["rejected"][:50], ["sheet", "row", "reason"], status_column=None)
        if len(plan["rejected"]) > 50:
            click.echo(f"... and {len(plan['rejected']) - 50} more (see `orchard roster plan`)")


def print_applied(result: dict[str, Any]) -> None:
    """What applying a plan did, and which pre-assigned devices enrollment refused (the import stands)."""
    state = "was already applied" if result["already_applied"] else "applied"
    click.secho(f"plan {result['plan_id']} {state}; {result['events']} event(s) published", fg="green")
    refused = result.get("device_assignments", {}).get("failed", [])
    if refused:
        click.secho(f"{len(refused)} device(s) not assigned:", fg="yellow")
        print_table(refused, ["user_id", "serial_number", "reason"], status_column=None)


@roster.command()
@click.option("--format", "fmt", type=click.Choice(["xlsx", "csv"]), default="xlsx", show_default=True)
@click.option("--output", type=click.Path(dir_okay=False), callback=output_path,
              help="File to write (default: the template's name).")
def template(fmt: str, output: str | None) -> None:
    """Download the import template (XLSX, or a zip of four CSV files)."""
    answer = call("roster", "spreadsheet_template", fmt)
    path = Path(output or answer["filename"])
    write_output(path, base64.b64decode(answer["content_b64"]))
    click.echo(f"wrote {path}: fill it in without deleting any sheet or header, and replace each sheet's example "
               "row (user s-1001, location north, class maths-7a): left in, it is imported too")


@roster.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--apply", "apply_now", is_flag=True, help="Apply the plan after previewing it.")
@click.option("--only-add-new", is_flag=True, help="Add new data; do not edit or delete existing data.")
@click.option("--allow-mass-delete", is_flag=True, help="Apply even if many users would be deleted.")
def import_file(file: str, apply_now: bool, only_add_new: bool, allow_mass_delete: bool) -> None:
    """Preview importing a filled template (XLSX or CSV zip), and apply it with --apply."""
    path = Path(file)
    steps = ["upload and preview"] + (["apply"] if apply_now else [])
    show_progress = path.stat().st_size > LARGE_FILE_BYTES
    with click.progressbar(steps, label=path.name, show_pos=True, hidden=not show_progress,
                           item_show_func=lambda step: step or "") as progress:
        plan, result = None, None
        for step in progress:
            if step == "apply":
                result = call("roster", "apply_plan", plan["plan_id"], allow_mass_delete,
                              timeout=IMPORT_TIMEOUT)
            else:
                content = base64.b64encode(path.read_bytes()).decode()
                plan = call("roster", "preview_spreadsheet", path.name, content,
                            {"only_add_new": only_add_new}, timeout=IMPORT_TIMEOUT)
    print_plan(plan)
    if result is not None:
        print_applied(result)
    else:
        click.echo(f"nothing was changed; apply with `orchard roster apply {plan['plan_id']}`")


@roster.command("plan")
@click.argument("plan_id")
@click.option("--page", default=1, show_default=True)
def show_plan(plan_id: str, page: int) -> None:
    """Show a stored plan and a page of its changes."""
    plan = call("roster", "plan", plan_id, page)
    print_plan(plan)
    rows = [{"entity": c["entity"], "action": c["action"], "id": c["id"],
             "details": ", ".join(f"{name}: {f['before']} → {f['after']}"
                                  for name, f in c.get("fields", {}).items())}
            for c in plan["changes"]]
    print_table(rows, ["entity", "action", "id", "details"], status_column=None)


@roster.command()
def runs() -> None:
    """Recent import runs."""
    rows = [{**r, "added": sum(a["add"] for a in r["counts"].values()),
             "updated": sum(a["update"] for a in r["counts"].values()),
             "deleted": sum(a["delete"] for a in r["counts"].values())}
            for r in call("roster", "import_runs")]
    print_table(rows, ["plan_id", "source", "status", "origin", "created_at", "added", "updated",
                       "deleted", "rejected"])


@roster.command()
def locations() -> None:
    """List locations, with their ids and how many users each has."""
    print_table(call("roster", "list_locations"), ["location_id", "name", "source", "users"], status_column=None)


@roster.command()
@click.option("--location", help="Only users in this location.")
@click.option("--type", "user_type", type=click.Choice(["student", "teacher", "staff"]))
@click.option("--page", default=1, show_default=True)
def users(location: str | None, user_type: str | None, page: int) -> None:
    """List users."""
    answer = call("roster", "list_users", location, user_type, page)
    print_table(answer["users"], ["user_id", "user_type", "first_name", "last_name", "email",
                                  "locations", "grade_level"], status_column=None)
    click.echo(f"page {answer['page']} of {max(1, -(-answer['total'] // answer['page_size']))}, "
               f"{answer['total']} user(s)")


@roster.command()
@click.argument("user_id")
def user(user_id: str) -> None:
    """One user: details, classes, devices listed for them, and their welcome e-mail."""
    found = call("roster", "get_user", user_id)
    mail = found["welcome_mail"]
    rows = [(name, found[key]) for name, key in (
        ("user ID", "user_id"), ("type", "user_type"), ("name", "name"), ("e-mail", "email"),
        ("Managed Apple ID", "managed_apple_id"), ("locations", "locations"), ("grade level", "grade_level"),
        ("devices", "serial_numbers"))]
    rows.append(("classes", [f"{c['class_id']} ({c['role']})" for c in found["classes"]]))
    if mail is None:
        rows.append(("welcome e-mail", "none asked for"))
    else:
        said = f": {mail['error']}" if mail["error"] else ""
        rows.append(("welcome e-mail", f"{mail['status']} {mail['at'][:16]} to {mail['to']}{said}"))
    print_table([{"field": name, "value": value} for name, value in rows], ["field", "value"], status_column=None)


@roster.command()
@click.option("--location", help="Only classes in this location.")
@click.option("--page", default=1, show_default=True)
def classes(location: str | None, page: int) -> None:
    """List classes."""
    answer = call("roster", "list_classes", location, page)
    rows = [{**c, "students": len(c["student_ids"])} for c in answer["classes"]]
    print_table(rows, ["class_id", "name", "location_id", "course_name", "teacher_ids", "students"],
                status_column=None)
    click.echo(f"{answer['total']} class(es)")


@roster.group()
def asm() -> None:
    """Apple School Manager roster sync."""


@asm.command()
@click.argument("token_id")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Change a preference (repeat), e.g. user_id_source=sis_username, sync_time=02:30, "
                   "locations=north,south (all: every location).")
def prefs(token_id: str, settings: tuple[str, ...]) -> None:
    """Show or change a server token's sync preferences."""
    current = call("roster", "get_asm_preferences", token_id)
    if settings:
        preferences = dict(current["preferences"])
        for setting in settings:
            key, _, value = setting.partition("=")
            preferences[key.strip()] = _preference_value(key.strip(), value.strip())
        current = {**current, **call("roster", "set_asm_preferences", token_id, preferences)}
    print_record({**current.pop("preferences"), **current})


def _preference_value(key: str, text: str) -> Any:
    if text.lower() in ("", "none", "all"):
        return None
    if key == "locations":  # a list, of one location too
        return [part.strip() for part in text.split(",") if part.strip()]
    if text.lower() in ("true", "yes", "on"):
        return True
    if text.lower() in ("false", "no", "off"):
        return False
    return text


@asm.command()
@click.argument("token_id")
def preview(token_id: str) -> None:
    """Pull fresh data from Apple School Manager and show what would change."""
    print_plan(call("roster", "preview_asm", token_id, timeout=IMPORT_TIMEOUT))


@asm.command("apply")
@click.argument("plan_id")
@click.option("--allow-mass-delete", is_flag=True, help="Apply even if many users would be deleted.")
def apply_plan(plan_id: str, allow_mass_delete: bool) -> None:
    """Apply a previewed plan (from any source)."""
    print_applied(call("roster", "apply_plan", plan_id, allow_mass_delete, timeout=IMPORT_TIMEOUT))


roster.add_command(apply_plan, "apply")


@roster.group("api-token")
def api_token() -> None:
    """Access tokens for the Mosyle-compatible HTTP API."""


@api_token.command("create")
@click.argument("name")
@click.option("--allow-ip", "allowed_ips", multiple=True,
              help="Address or CIDR network allowed to use the token (repeat; none = open).")
def create_token(name: str, allowed_ips: tuple[str, ...]) -> None:
    """Create a token; it is shown only this once."""
    answer = call("roster", "create_api_token", name, list(allowed_ips) or None)
    token = answer.pop("token")
    print_record(answer)
    click.secho(f"token: {token}", fg="green")
    click.echo("store it now: Orchard keeps only a hash of it")


@api_token.command("list")
def list_tokens() -> None:
    """List tokens (never the tokens themselves)."""
    print_table(call("roster", "list_api_tokens"),
                ["token_id", "name", "access", "allowed_ips", "created_at", "last_used_at", "revoked_at"],
                status_column=None)


@api_token.command("revoke")
@click.argument("token_id", type=int)
def revoke_token(token_id: str) -> None:
    """Revoke a token at once."""
    print_record(call("roster", "revoke_api_token", token_id))
