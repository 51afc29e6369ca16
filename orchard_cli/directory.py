"""``orchard directory``: school directories (Active Directory / LDAP) — profiles, test, sync, sign-in."""
from __future__ import annotations

import json
from typing import Any

import click
import yaml

from orchard_cli.files import read_yaml
from orchard_cli.output import print_record, print_table
from orchard_cli.rpc import call

PASSWORD_ENV = "ORCHARD_LDAP_BIND_PASSWORD"


@click.group()
def directory() -> None:
    """School directories: LDAP profiles, connection tests, syncs into the roster, password checks."""


@directory.group()
def profile() -> None:
    """LDAP profiles: how to reach a directory and what to read from it."""


def _settings_file(path: str) -> dict[str, Any]:
    data = read_yaml(path, "YAML or JSON profile settings")  # JSON is a subset of YAML
    if not isinstance(data, dict):
        raise click.ClickException(f"{path} must hold a mapping of profile settings (see `orchard directory profile add --help`)")
    return data


@profile.command("add")
@click.argument("settings_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--bind-password", envvar=PASSWORD_ENV, prompt="Bind password", hide_input=True,
              help=f"The service account's password (prompted, or from ${PASSWORD_ENV}); never stored in the file.")
def add_profile(settings_file: str, bind_password: str) -> None:
    """Add a profile from a YAML/JSON file (name, host, port, security, ca_pem, bind_dn, base_dn, sync, ...)."""
    settings = _settings_file(settings_file)
    settings["bind_password"] = bind_password
    _show(call("directory", "add_ldap_profile", settings))


@profile.command("list")
def list_profiles() -> None:
    """Show every profile and how its last sync went."""
    rows = [{"id": p["id"], "name": p["name"], "server": f"{p['security']}://{p['host']}:{p['port']}",
             "daily_sync": p["sync"]["daily_sync_time"], "sign_in": p["authentication"]["enabled"],
             "last_sync": p["last_sync"]["at"], "status": p["last_sync"]["outcome"],
             "certificate_expires": p["certificate_not_after"]}
            for p in call("directory", "list_ldap_profiles")]
    print_table(rows, ["id", "name", "server", "daily_sync", "sign_in", "last_sync", "status", "certificate_expires"])


@profile.command("show")
@click.argument("profile_id", type=int)
def show_profile(profile_id: int) -> None:
    """Show one profile's settings (never its password)."""
    _show(call("directory", "get_ldap_profile", profile_id))


@profile.command("update")
@click.argument("profile_id", type=int)
@click.argument("changes_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--new-bind-password", is_flag=True, help="Also prompt for a new bind password.")
def update_profile(profile_id: int, changes_file: str, new_bind_password: bool) -> None:
    """Change a profile with the settings in a YAML/JSON file (only the keys given change)."""
    changes = _settings_file(changes_file)
    if new_bind_password:
        changes["bind_password"] = click.prompt("New bind password", hide_input=True, confirmation_prompt=True)
    _show(call("directory", "update_ldap_profile", profile_id, changes))


@profile.command("delete")
@click.argument("profile_id", type=int)
@click.confirmation_option(prompt="Delete this LDAP profile? Its users stay in the roster.")
def delete_profile(profile_id: int) -> None:
    """Delete a profile."""
    call("directory", "delete_ldap_profile", profile_id)
    click.echo(f"deleted LDAP profile {profile_id}")


@directory.command("test")
@click.argument("profile_id", type=int)
@click.option("--user", "test_username", help="Also check this user's password (prompted).")
def test_profile(profile_id: int, test_username: str | None) -> None:
    """Test the integration step by step: connect, TLS, bind, each filter, an optional user."""
    test_password = click.prompt(f"Password of {test_username}", hide_input=True) if test_username else None
    steps = call("directory", "test_ldap_profile", profile_id, test_username, test_password)
    print_table([{**step, "status": "ok" if step["ok"] else "failed"} for step in steps], ["step", "status", "detail"])
    for step in steps:
        for sample in step.get("samples", []):
            click.echo(f"  {step['step']} sample: {json.dumps(sample, ensure_ascii=False)}")
    if not all(step["ok"] for step in steps):
        raise SystemExit(1)


@directory.command("sync")
@click.argument("profile_id", type=int)
@click.option("--apply", is_flag=True, help="Apply the changes to the roster (default: only preview them).")
def sync_profile(profile_id: int, apply: bool) -> None:
    """Read the directory and preview (or apply) the roster changes it implies."""
    result = call("directory", "sync_ldap_profile", profile_id, apply, timeout=900)
    read = result["read"]
    click.echo(f"read {read['users']} users, {read['grade_levels']} grade levels, {read['classes']} classes "
               f"in {read['locations']} locations; {read['rejected']} entries could not be mapped")
    click.echo(json.dumps({"plan": result["plan"], "applied": result["applied"]}, indent=2, ensure_ascii=False))


@directory.command("auth")
@click.argument("username")
@click.option("--profile", "profile_id", type=int, help="Only this profile (default: every profile that validates passwords).")
def auth(username: str, profile_id: int | None) -> None:
    """Check USERNAME's password against the directory (prompted)."""
    password = click.prompt("Password", hide_input=True)
    result = call("directory", "authenticate", username, password, profile_id)
    if not result["authenticated"]:
        raise click.ClickException("not authenticated: the username or password is wrong")
    click.echo(f"authenticated as {result['user_id']}")


@directory.command("egress-ips")
def egress_ips() -> None:
    """The addresses Orchard connects from, for the school's firewall."""
    addresses = call("directory", "egress_ips")
    for address in addresses:
        click.echo(address)
    if not addresses:
        click.echo("(none configured; set ORCHARD_EGRESS_IPS for the directory service)")


def _show(view: dict[str, Any]) -> None:
    shown = {key: value for key, value in view.items() if not isinstance(value, dict)}
    shown["ca_pem"] = "the given CA certificate (PEM)" if view["ca_pem"] else "the system's certificate store"
    print_record(shown)
    for section in ("sync", "authentication", "last_sync"):
        click.echo(f"{section}:")
        click.echo("  " + yaml.safe_dump(view[section], sort_keys=False, allow_unicode=True).replace("\n", "\n  ").rstrip())
