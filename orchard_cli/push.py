"""``orchard push``: Apple push certificates, the devices under them, and MDM wake-ups."""
from __future__ import annotations

import base64
from pathlib import Path
from typing import BinaryIO

import click

from orchard_cli.files import output_path, read_bytes, read_text, text_content, write_output
from orchard_cli.output import print_record, print_table
from orchard_cli.rpc import call

CERTIFICATE_COLUMNS = ["id", "topic", "serial_number", ("not_after", "EXPIRES"), "days_left",
                       ("devices_enrolled", "DEVICES"), "status"]
P12_SUFFIXES = (".p12", ".pfx")


@click.group()
def push() -> None:
    """Apple push certificates and MDM pushes."""


def _pem(path: str | None, what: str, openssl: str) -> str | None:
    """A PEM file's text. The push service reads PEM, or PKCS#12 through its own RPCs, but no DER: a binary file
    is refused with the formats it reads and how to convert DER."""
    if not path:
        return None
    return read_text(path, f"a PEM {what} (-----BEGIN {what.upper()}-----) or the certificate with its key as "
                           f"PKCS#12 (.p12 or .pfx, or any name with --p12); convert a DER {what} with "
                           f"`openssl {openssl} -inform der -in {path} -out {what.replace(' ', '-')}.pem`")


def _p12(path: str) -> str:
    return base64.b64encode(read_bytes(path)).decode()  # the PKCS#12 RPCs take the file's bytes in base64


def _certificate_source(certificate: str | None, key: str | None, p12: str | None) -> tuple[str | None, str | None]:
    """The PEM certificate or the PKCS#12 file to send: a .p12 or .pfx named as the certificate is one."""
    if bool(certificate) == bool(p12):
        raise click.UsageError("give either a PEM certificate file or --p12 FILE")
    if certificate and Path(certificate).suffix.lower() in P12_SUFFIXES:
        certificate, p12 = None, certificate
    if p12 and key:
        raise click.UsageError("--key goes with a PEM certificate; a PKCS#12 file holds its own key")
    return certificate, p12


@push.command()
@click.argument("certificate", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--key", type=click.Path(exists=True, dir_okay=False), help="The certificate's private key (PEM).")
@click.option("--p12", type=click.Path(exists=True, dir_okay=False), help="A PKCS#12 file instead of PEM files.")
@click.option("--password", envvar="ORCHARD_P12_PASSWORD", help="The PKCS#12 password (or ORCHARD_P12_PASSWORD).")
def upload(certificate: str | None, key: str | None, p12: str | None, password: str | None) -> None:
    """Store a new push certificate: PEM (with its key unless Orchard made the request), or a .p12 or .pfx file."""
    certificate, p12 = _certificate_source(certificate, key, p12)
    if p12:
        stored = call("push", "upload_certificate_pkcs12", _p12(p12), password)
    else:
        stored = call("push", "upload_certificate", _pem(certificate, "certificate", "x509"),
                      _pem(key, "private key", "pkey"))
    print_table([stored], CERTIFICATE_COLUMNS)


@push.command()
@click.argument("certificate_id", type=int)
@click.argument("certificate", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--key", type=click.Path(exists=True, dir_okay=False), help="The renewed certificate's private key.")
@click.option("--p12", type=click.Path(exists=True, dir_okay=False), help="A PKCS#12 file instead of PEM files.")
@click.option("--password", envvar="ORCHARD_P12_PASSWORD", help="The PKCS#12 password (or ORCHARD_P12_PASSWORD).")
def renew(certificate_id: int, certificate: str | None, key: str | None, p12: str | None, password: str | None) -> None:
    """Replace a certificate with its renewal (same topic): devices keep working."""
    certificate, p12 = _certificate_source(certificate, key, p12)
    if p12:
        stored = call("push", "renew_certificate_pkcs12", certificate_id, _p12(p12), password)
    else:
        stored = call("push", "renew_certificate", certificate_id, _pem(certificate, "certificate", "x509"),
                      _pem(key, "private key", "pkey"))
    print_table([stored], CERTIFICATE_COLUMNS)


@push.command("list")
def list_command() -> None:
    """The stored push certificates, their expiry and devices."""
    print_table(call("push", "list_certificates"), CERTIFICATE_COLUMNS)


@push.command()
@click.argument("certificate_id", type=int)
def show(certificate_id: int) -> None:
    """Everything Orchard knows about one certificate."""
    print_record(call("push", "get_certificate", certificate_id))


@push.command()
@click.argument("certificate_id", type=int)
@click.option("--format", "file_format", type=click.Choice(["csv", "xlsx"]), default="csv", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), callback=output_path,
              help="File to write (default: the suggested name).")
def export(certificate_id: int, file_format: str, out: str | None) -> None:
    """Write the devices enrolled under a certificate to a CSV or Excel file."""
    exported = call("push", "export_devices", certificate_id, file_format)
    path = Path(out or exported["filename"])
    write_output(path, base64.b64decode(exported["content_b64"]))
    click.echo(f"wrote {exported['devices']} device(s) of {exported['topic']} to {path}")


@push.command()
@click.argument("certificate_id", type=int)
def history(certificate_id: int) -> None:
    """Who uploaded and renewed a certificate, and what changed."""
    print_table(call("push", "certificate_history", certificate_id),
                ["at", "user", "action", "before_serial_number", "after_serial_number", "after_not_after"],
                status_column=None)


@push.command()
@click.option("--out", type=click.Path(dir_okay=False), callback=output_path,
              help="File to write (default: the suggested name).")
def csr(out: str | None) -> None:
    """Make a vendor-signed push certificate request to upload to Apple Push Certificates Portal."""
    request = call("push", "create_signing_request")
    path = Path(out or request["filename"])
    write_output(path, request["signing_request_b64"])
    click.echo(f"wrote {path}: upload it at Apple Push Certificates Portal, then `orchard push upload` the "
               "certificate Apple gives you (no key needed: Orchard kept it)")


@push.command()
@click.argument("udids", nargs=-1)
@click.option("--from-file", type=click.File("rb"), help="A file with one UDID per line.")
def send(udids: tuple[str, ...], from_file: BinaryIO | None) -> None:
    """Wake devices with an MDM push and show what APNs answered for each."""
    listed = text_content(from_file.read(), from_file.name, "one device UDID per line") if from_file else ""
    wanted = list(udids) + [line.strip() for line in listed.splitlines() if line.strip()]
    if not wanted:
        raise click.UsageError("name at least one device UDID")
    answer = call("push", "send_push", wanted)
    print_table(answer["results"], ["udid", ("result", "STATUS"), ("status", "APNS STATUS"), ("detail", "WHY")],
                status_column="result")
    click.echo(f"{answer['delivered']} delivered, {answer['failed']} failed, {answer['skipped']} skipped, "
               f"{answer['disabled']} no longer pushed")
