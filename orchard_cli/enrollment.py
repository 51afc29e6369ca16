"""``orchard enrollment``: Apple School Manager server tokens, ADE device sync and the device list."""
from __future__ import annotations

import itertools
from typing import Iterator

import click
import eventlet

from orchard_cli.files import output_path, read_text, read_yaml, write_output
from orchard_cli.output import print_record, print_table
from orchard_cli.rpc import call
from shared import green

TOKEN_COLUMNS = ["id", "name", "server_name", "org_name", "status", "access_token_expiry", "days_left", "last_sync_at",
                 "last_sync_result"]
RUN_COLUMNS = ["id", "trigger", "kind", "started_at", "finished_at", "added", "modified", "deleted", "error"]
DEVICE_COLUMNS = ["serial_number", "model", "description", "color", "os", "device_family", "profile_status",
                  "device_assigned_date", "device_assigned_by", "assign_result"]
PAGE = 1000
SYNC_TIMEOUT = 3600
NOTHING_TO_SYNC = ("nothing to sync: no server token is connected; create one with `orchard enrollment token create "
                   "NAME --out FILE`, then connect it with `orchard enrollment token upload TOKEN_ID FILE.p7m`")


@click.group()
def enrollment() -> None:
    """Automated Device Enrollment: MDM server tokens, device sync and enrollment profiles."""


@enrollment.group()
def token() -> None:
    """MDM server tokens (.p7m files from Apple School Manager)."""


def _read_p7m(path: str) -> str:
    return read_text(path, "the .p7m server token as downloaded from Apple School Manager")


@token.command("create")
@click.argument("name")
@click.option("--out", type=click.Path(dir_okay=False, writable=True), callback=output_path,
              help="Write the public key certificate here.")
def create_token(name: str, out: str | None) -> None:
    """Create a key pair; upload the certificate to Apple School Manager when adding the MDM server."""
    created = call("enrollment", "create_server_token", name)
    if out:
        _write_certificate(created, out)
        click.echo(f"Token {created['id']} created; upload {out} to Apple School Manager, then "
                   f"`orchard enrollment token upload {created['id']} <downloaded .p7m>`.")
    else:
        click.echo(f"# token id: {created['id']}")
        click.echo(created["public_key_pem"], nl=False)


def _write_certificate(created: dict, out: str) -> None:
    try:
        write_output(out, created["public_key_pem"])
    except click.ClickException as exc:
        click.echo(created["public_key_pem"], nl=False)  # the only copy: Orchard never hands it out again
        raise click.ClickException(f"token {created['id']} was created, but {exc.message}; its certificate "
                                   f"is printed above instead") from None


@token.command("upload")
@click.argument("token_id")
@click.argument("p7m_file", type=click.Path(exists=True, dir_okay=False))
def upload_token(token_id: str, p7m_file: str) -> None:
    """Connect the token downloaded from Apple School Manager; the first device sync starts right after."""
    print_record(call("enrollment", "upload_server_token", token_id, _read_p7m(p7m_file)))


@token.command("list")
def list_tokens() -> None:
    """Every server token with its status, expiry and last sync."""
    print_table(call("enrollment", "list_server_tokens"), TOKEN_COLUMNS)


@token.command("show")
@click.argument("token_id")
def show_token(token_id: str) -> None:
    """One token in detail, with its recent sync runs."""
    print_record(call("enrollment", "get_server_token", token_id))
    click.echo()
    print_table(call("enrollment", "sync_runs", token_id, 10), RUN_COLUMNS, status_column=None)


@token.command("rename")
@click.argument("token_id")
@click.argument("name")
def rename_token(token_id: str, name: str) -> None:
    """Change a token's display name."""
    print_record(call("enrollment", "update_server_token", token_id, name=name))


@token.command("restrict")
@click.argument("token_id")
@click.option("--location", "locations", multiple=True, help="Location id allowed to use the token (repeat).")
@click.option("--all", "all_locations", is_flag=True, help="Every current and future location.")
def restrict_token(token_id: str, locations: tuple[str, ...], all_locations: bool) -> None:
    """Limit which locations' leaders see and manage the token."""
    if all_locations == bool(locations):
        raise click.UsageError("give either --all or at least one --location")
    print_record(call("enrollment", "update_server_token", token_id, locations=None if all_locations else list(locations)))


@token.command("renew")
@click.argument("token_id")
@click.argument("p7m_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--force", is_flag=True, help="Accept a token of a different MDM server (its devices are synced afresh).")
def renew_token(token_id: str, p7m_file: str, force: bool) -> None:
    """Replace the token with the newly downloaded one for the same MDM server."""
    print_record(call("enrollment", "renew_server_token", token_id, _read_p7m(p7m_file), force=force))


@token.command("delete")
@click.argument("token_id")
@click.confirmation_option(prompt="Delete the token and forget its devices?")
def delete_token(token_id: str) -> None:
    """Delete a token and forget its devices."""
    call("enrollment", "delete_server_token", token_id)
    click.echo(f"Token {token_id} deleted.")


@enrollment.command("sync")
@click.argument("token_id", required=False)
@click.option("--full", is_flag=True, help="Fetch every device again instead of only the changes.")
def sync(token_id: str | None, full: bool) -> None:
    """Sync devices with Apple School Manager now (one token, or every connected one), showing progress."""
    token_ids = [token_id] if token_id else [
        t["id"] for t in call("enrollment", "list_server_tokens") if t["status"] != "awaiting_upload"]
    if not token_ids:
        click.echo(NOTHING_TO_SYNC)
        return
    failed = False
    for current in token_ids:
        run = _sync_one(current, full)
        print_record({"token": current, **{key: run[key] for key in RUN_COLUMNS}})
        failed = failed or bool(run["error"])
    if failed:
        raise SystemExit(1)


def _sync_one(token_id: str, full: bool) -> dict:
    """Run the sync RPC in the background and show its run record's counts as they grow.

    Neither kind of sync knows its total in advance (Apple reports changes, and even a full fetch may find
    more or fewer devices than Orchard knows), so this is an activity indicator with counts, not a bar to fill.
    """
    # its error is raised here, by wait(): one escaping a plain green thread is also printed by eventlet's hub
    running = green.spawn(call, "enrollment", "sync_devices", token_id, full=full, timeout=SYNC_TIMEOUT)
    updates = _run_progress(token_id, running)
    first = next(updates, None)  # a sync refused at once (unknown token, not uploaded yet) shows only its error
    if first is not None:
        with click.progressbar(itertools.chain([first], updates), label=f"Syncing {token_id}",
                               item_show_func=_describe_progress) as shown:
            for _ in shown:
                pass
    return running.wait()


def _run_progress(token_id: str, running: green.Pending) -> Iterator[dict]:
    """The running sync's run record, once a second until the sync returns."""
    while not running.dead:
        eventlet.sleep(1)
        latest = call("enrollment", "sync_runs", token_id, 1)
        if latest and not latest[0]["finished_at"]:
            yield latest[0]


def _describe_progress(run: dict | None) -> str | None:
    if run is None:
        return None
    return (f"{run['kind']}: {run['pages']} page(s), {run['added']} added, {run['modified']} modified, "
            f"{run['deleted']} deleted")


@enrollment.command("devices")
@click.argument("token_id")
@click.option("--status", type=click.Choice(["empty", "assigned", "pushed", "removed"]), help="Only this profile status.")
def devices(token_id: str, status: str | None) -> None:
    """The token's devices with their profile status (coloured: who will go through Remote Management)."""
    rows, after = [], None
    while True:
        page = call("enrollment", "list_devices", token_id, profile_status=status, limit=PAGE, after=after)
        rows.extend(page["devices"])
        after = page["next_after"]
        if after is None:
            break
    print_table(rows, DEVICE_COLUMNS, status_column="profile_status", colour_column="status_colour")
    click.echo(", ".join(f"{name}: {count}" for name, count in sorted(page["counts"].items())) or "no devices")


@enrollment.group()
def profile() -> None:
    """The enrollment profile devices receive in Setup Assistant (Automated Device Enrollment)."""


@profile.command("define")
@click.argument("token_id")
@click.argument("profile_file", type=click.Path(exists=True, dir_okay=False))
def define_profile(token_id: str, profile_file: str) -> None:
    """Define the profile at Apple from a YAML or JSON file of Apple's profile keys (profile_name, url,
    is_supervised, skip_setup_items, ...). It becomes the token's default: new devices get it at their sync."""
    settings = read_yaml(profile_file, "a YAML or JSON file of enrollment profile keys (profile_name, url, ...)")
    if not isinstance(settings, dict):
        raise click.ClickException(f"{profile_file} must hold a mapping of Apple's profile keys, such as profile_name "
                                   "and url")
    defined = call("enrollment", "define_profile", token_id, settings)
    click.echo(f"Profile {defined['profile_uuid']} defined; it is the default for new devices of {token_id}.")
    click.echo(f"Assign it to devices already there with `orchard enrollment profile assign {token_id} SERIAL...`.")


@profile.command("assign")
@click.argument("token_id")
@click.argument("serial_numbers", nargs=-1)
@click.option("--from-file", type=click.Path(exists=True, dir_okay=False), help="A file with one serial number per line.")
@click.option("--profile", "profile_uuid", help="Another profile's uuid instead of the token's default.")
def assign_profile(token_id: str, serial_numbers: tuple[str, ...], from_file: str | None, profile_uuid: str | None) -> None:
    """Assign the enrollment profile to devices and show Apple's answer for each (exit 1 unless all succeed)."""
    listed = read_text(from_file, "one serial number per line") if from_file else ""
    wanted = list(serial_numbers) + [line.strip() for line in listed.splitlines() if line.strip()]
    if not wanted:
        raise click.UsageError("name at least one serial number")
    answer = call("enrollment", "assign_profile", token_id, wanted, profile_uuid=profile_uuid)
    print_table([{"serial_number": serial, "result": result} for serial, result in sorted(answer["devices"].items())],
                ["serial_number", "result"], status_column=None)
    if answer["error"]:
        click.echo(f"Apple: {answer['error']}", err=True)
    if answer["retry_after_seconds"] is not None or "THROTTLED" in answer["devices"].values():
        click.echo("Throttled devices are assigned again by the next sync once Apple allows it.", err=True)
    if set(answer["devices"].values()) != {"SUCCESS"}:
        raise SystemExit(1)
