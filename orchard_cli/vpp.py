"""``orchard vpp``: Apps and Books — content tokens, apps and books, licences and invites."""
from __future__ import annotations

import click

from orchard_cli.files import output_path, read_text, write_output
from orchard_cli.output import print_record, print_table
from orchard_cli.rpc import call

TOKEN_COLUMNS = ["id", "name", "location_name", "status", "expires_at", "days_left", "last_sync_at"]


@click.group()
def vpp() -> None:
    """Apps and Books: content tokens, licences and user invitations."""


@vpp.group()
def token() -> None:
    """Content tokens (.vpptoken files from Apple School Manager)."""


def _read_token(path: str) -> str:
    return read_text(path, "the .vpptoken content token as downloaded from Apple School Manager").strip()


@token.command("add")
@click.argument("vpptoken_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--name", help="Display name (default: Apple's location name).")
@click.option("--location", "locations", multiple=True, help="Roster location this token serves (repeat; none = all).")
@click.option("--teacher-study-apps", is_flag=True, help="Let teachers pick study apps from this token.")
@click.option("--auto-invite", is_flag=True, help="Invite imported users with their Managed Apple ID automatically.")
@click.option("--take-over", is_flag=True, help="Claim the location even though another MDM manages it.")
def add_token(vpptoken_file: str, name: str | None, locations: tuple[str, ...], teacher_study_apps: bool,
              auto_invite: bool, take_over: bool) -> None:
    """Add a content token and claim its location for Orchard."""
    print_record(call("vpp", "add_content_token", _read_token(vpptoken_file), name=name, locations=list(locations),
                      allow_teacher_study_apps=teacher_study_apps, take_over=take_over,
                      auto_invite_method="managed_apple_id" if auto_invite else None))


@token.command("list")
def list_tokens() -> None:
    """Show every content token with its status and expiry."""
    print_table(call("vpp", "list_content_tokens"), TOKEN_COLUMNS)


@token.command("show")
@click.argument("token_id")
def show_token(token_id: str) -> None:
    """One content token in detail."""
    print_record(call("vpp", "get_content_token", token_id))


@token.command("renew")
@click.argument("token_id")
@click.argument("vpptoken_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--take-over", is_flag=True, help="Claim the location back from another MDM that manages it now.")
def renew_token(token_id: str, vpptoken_file: str, take_over: bool) -> None:
    """Replace a token with the newly downloaded one for the same location."""
    print_record(call("vpp", "renew_content_token", token_id, _read_token(vpptoken_file), take_over=take_over))


@token.command("delete")
@click.argument("token_id")
@click.confirmation_option(prompt="Delete this content token from Orchard?")
def delete_token(token_id: str) -> None:
    """Delete a content token from Orchard."""
    call("vpp", "delete_content_token", token_id)
    click.echo(f"deleted {token_id}")


@vpp.command("sync")
@click.argument("token_id")
def sync(token_id: str) -> None:
    """Read the token's apps, books, licences and users from Apple now."""
    result = call("vpp", "sync_assets", token_id, timeout=600)
    click.echo(f"{result['assets']} assets, {result['assignments']} licences in use, {result['users']} users")


@vpp.command("assets")
@click.argument("token_id")
@click.option("--books", is_flag=True, help="Show books instead of apps.")
@click.option("--hidden", is_flag=True, help="Include hidden assets.")
def assets(token_id: str, books: bool, hidden: bool) -> None:
    """Apps (or books) with licences used and available."""
    rows = call("vpp", "list_assets", token_id, product_type="Book" if books else "App", include_hidden=hidden)
    print_table(rows, ["adam_id", "name", "pricing_param", "total", "assigned", "available", "hidden"], status_column=None)


def _licence_command(name: str, method: str, verb: str) -> None:
    @vpp.command(name, help=f"{name.capitalize()} licences of an app or book for devices and/or users.")
    @click.argument("token_id")
    @click.argument("adam_id")
    @click.option("--serial", "serials", multiple=True, help="Device serial number (repeat).")
    @click.option("--user", "users", multiple=True, help="User id (repeat).")
    def command(token_id: str, adam_id: str, serials: tuple[str, ...], users: tuple[str, ...]) -> None:
        result = call("vpp", method, token_id, adam_id, serial_numbers=list(serials), user_ids=list(users), timeout=600)
        done = result["assigned" if method == "assign_licenses" else "revoked"]
        click.echo(f"{verb}: {len(done['serial_numbers'])} device(s), {len(done['user_ids'])} user(s)")
        if done["failures"]:
            print_table(done["failures"], ["holder", "error_number", "message"], status_column=None)


_licence_command("assign", "assign_licenses", "assigned")
_licence_command("revoke", "revoke_licenses", "revoked")


def _bulk_revoke_command(name: str, method: str, what: str) -> None:
    @vpp.command(name, help=f"Revoke {what}; shows the list only, unless --apply.")
    @click.argument("token_id")
    @click.option("--apply", is_flag=True, help="Revoke them (without it, only list them).")
    def command(token_id: str, apply: bool) -> None:
        result = call("vpp", method, token_id, dry_run=not apply, timeout=1800)
        print_table(result["assignments"], ["adam_id", "serial_number", "user_id"], status_column=None)
        if apply:
            click.echo(f"revoked {result['count'] - len(result['failures'])} of {result['count']}")
        else:
            click.echo(f"{result['count']} licence(s) would be revoked; run again with --apply to revoke them")


_bulk_revoke_command("revoke-all", "revoke_all", "every revocable licence of the token")
_bulk_revoke_command("revoke-unknown", "revoke_unknown", "licences held by devices and users Orchard does not know")


@vpp.command("invites")
@click.argument("token_id")
@click.option("--status", type=click.Choice(["pending", "accepted", "revoked", "failed"]))
@click.option("--export", "export_file", type=click.Path(dir_okay=False, writable=True), callback=output_path,
              help="Write the invites to this CSV file.")
def invites(token_id: str, status: str | None, export_file: str | None) -> None:
    """Invited users, their status, invite links, and why Apple or the mail relay refused one."""
    if export_file:
        write_output(export_file, call("vpp", "export_invites", token_id))
        click.echo(f"wrote {export_file}")
        return
    rows = [{**row, "problem": row["error"] or row["mail_error"] or row.get("invite_url_error")}
            for row in call("vpp", "list_invites", token_id, status=status)]
    print_table(rows, ["user_id", "name", "method", "status", "registration", "mail", "invite_url", "problem"])
