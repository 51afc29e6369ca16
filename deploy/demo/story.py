"""The story, step by step, told with the ``orchard`` command a person would type."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from deploy.demo import district
from deploy.demo.apple import DEMO_DEVICES, NEW_DEVICES, AppleSandbox, check_in
from deploy.demo.processes import Ports
from deploy.demo.terminal import DemoFailed, Finished, Terminal

LDAP_PROFILE_ENV = "DEMO_LDAP_PROFILE"


@dataclass
class Story:
    terminal: Terminal
    apple: AppleSandbox
    ports: Ports
    work: Path  # where the files a person would download and upload are kept
    sandbox_dir: Path

    def tell(self) -> None:
        topic, certificate_id = self.push_certificate()
        serials = self.enrollment()
        self.check_ins(topic, certificate_id, serials)
        content_token = self.apps_and_books()
        self.district(content_token)
        self.directory()
        self.where_to_look()

    # 1
    def push_certificate(self) -> tuple[str, str]:
        t = self.terminal
        t.heading("1. Push certificate: request, Apple's signature, upload")
        request, certificate = self._file("push.req"), self._file("MDM_push.pem")
        t.run(["orchard", "push", "csr", "--out", request])
        t.say("Apple Push Certificates Portal (the sandbox's) signs the request:")
        t.run(["python", "-m", "apple_sandbox.push_portal", "--dir", t.shown_path(self.sandbox_dir), "issue",
               "--request", request, "--out", certificate])
        uploaded = t.run(["orchard", "push", "upload", certificate])
        topic = _certificate_topic(Path(certificate))
        certificate_id = _table_rows(uploaded)[0][0]
        return topic, certificate_id

    # 2
    def enrollment(self) -> list[str]:
        t = self.terminal
        t.heading("2. Apple School Manager: server token, .p7m, device sync")
        public_key, p7m = self._file("asm-public-key.pem"), self._file("server_token.p7m")
        created = t.run(["orchard", "enrollment", "token", "create", "Springfield ASM", "--out", public_key])
        token_id = _match(r"Token (\S+) created", created, "the new server token's id")
        t.say("Apple School Manager (the sandbox's) adds the MDM server with the public key and the school's "
              "devices, and issues its token (.p7m):")
        server_uuid, token_file = self.apple.create_mdm_server(Path(public_key).read_text())
        Path(p7m).write_text(token_file)
        t.say(f"  wrote {p7m}")
        t.run(["orchard", "enrollment", "token", "upload", token_id, p7m])
        t.say(f"Apple School Manager assigns {NEW_DEVICES} more devices to the server; sync again to fetch the changes:")
        self.apple.assign_new_devices(server_uuid)
        t.run_until(["orchard", "enrollment", "sync", token_id],  # waits for the sync the upload started
                    lambda synced: "already running" not in synced.output, "the first device sync to finish")
        listed = t.run(["orchard", "enrollment", "devices", token_id])
        ipads = [d.serial_number for d in DEMO_DEVICES if d.family == "iPad" and d.profile_status != "removed"]
        missing = [serial for serial in ipads if not re.search(rf"^{serial}\s", listed.output, re.MULTILINE)]
        if missing:
            raise DemoFailed(f"the device sync did not bring {', '.join(missing)} from Apple School Manager")
        return ipads

    # 3
    def check_ins(self, topic: str, certificate_id: str, serials: list[str]) -> None:
        """The school's iPads go through Setup Assistant and enroll."""
        t = self.terminal
        t.heading("3. Devices enroll: MDM check-in, and the push certificate's device count rises")
        url = f"http://127.0.0.1:{self.ports.http['enrollment']}"
        for index, serial in enumerate(serials, start=1):
            udid = check_in(url, serial, topic, index)
            t.say(f"  {serial}: POST {url}/mdm/enroll (profile with its identity), PUT {url}/mdm/checkin signed "
                  f"Authenticate, TokenUpdate -> 200 (UDID {udid})")
        wanted = len(serials)
        t.run_until(["orchard", "push", "list"], lambda listed: _device_count(listed, certificate_id) >= wanted,
                    f"the push certificate to count {wanted} devices")

    # 4
    def apps_and_books(self) -> str:
        t = self.terminal
        t.heading("4. Apps and Books: content token, asset sync, licence counts")
        token_file = self._file("Springfield.vpptoken")
        t.say("Apple School Manager (the sandbox's) issues a content token for the location, with licences:")
        Path(token_file).write_text(self.apple.content_token("Springfield Schools"))
        t.say(f"  wrote {token_file}")
        added = t.run(["orchard", "vpp", "token", "add", token_file, "--name", "Springfield", "--auto-invite"])
        token_id = _match(r"^id\s+(\S+)", added, "the content token's id")
        t.run(["orchard", "vpp", "sync", token_id])
        t.run(["orchard", "vpp", "assets", token_id])
        t.run(["orchard", "vpp", "assets", token_id, "--books"])
        return token_id

    # 5
    def district(self, content_token: str) -> None:
        t = self.terminal
        t.heading("5. Roster: import a district from the spreadsheet template (preview, then apply)")
        template, filled = self._file("roster-template.zip"), self._file("springfield-district.zip")
        t.run(["orchard", "roster", "template", "--format", "csv", "--output", template])
        district.fill_template(Path(template), Path(filled))
        t.say(f"  filled in {district.user_count()} users, 2 locations, 2 grade levels and 2 classes: {filled}")
        previewed = t.run(["orchard", "roster", "import", filled])
        plan_id = _match(r"^plan (\S+) \(", previewed, "the plan id")
        t.run(["orchard", "roster", "apply", plan_id])
        t.say("The vpp service invites each imported user (UserImported) with their Managed Apple ID, "
              "because the content token has auto-invite on:")
        wanted = district.user_count()
        t.run_until(["orchard", "vpp", "invites", content_token],
                    lambda listed: len(re.findall(r"\sregistered\s", listed.output)) >= wanted,
                    f"{wanted} invites registered with Apple")

    # 6
    def directory(self) -> None:
        t = self.terminal
        t.heading("6. Directory: LDAP sync")
        settings = os.environ.get(LDAP_PROFILE_ENV)
        if not settings:
            t.say(f"skipped: no directory configured. Set {LDAP_PROFILE_ENV}=<profile settings YAML> and "
                  "ORCHARD_LDAP_BIND_PASSWORD to add a profile, test it and sync it into the roster.")
            return
        if not os.environ.get("ORCHARD_LDAP_BIND_PASSWORD"):
            raise DemoFailed(f"{LDAP_PROFILE_ENV} is set, so set ORCHARD_LDAP_BIND_PASSWORD to the bind password too")
        added = t.run(["orchard", "directory", "profile", "add", settings])
        profile_id = _match(r"^id\s+(\S+)", added, "the LDAP profile's id")
        t.run(["orchard", "directory", "test", profile_id])
        t.run(["orchard", "directory", "sync", profile_id, "--apply"], timeout=600)

    # 7
    def where_to_look(self) -> None:
        t = self.terminal
        t.heading("7. Metrics and dashboards")
        for service, port in self.ports.metrics.items():
            t.say(f"  {service:<11} http://localhost:{port}/metrics")
        t.say("Grafana dashboards (an overview and one per service) are in deploy/grafana/dashboards/; "
              "`docker compose -f deploy/docker-compose.yml up -d` runs Prometheus (:9090, alert rules from "
              "deploy/prometheus/) and Grafana (:3000, folder \"Orchard\") with them provisioned.")

    def _file(self, name: str) -> str:
        return self.terminal.shown_path(self.work / name)


def _certificate_topic(path: Path) -> str:
    certificate = x509.load_pem_x509_certificate(path.read_bytes())
    return str(certificate.subject.get_attributes_for_oid(NameOID.USER_ID)[0].value)


def _table_rows(finished: Finished) -> list[list[str]]:
    lines = [line for line in finished.output.splitlines() if line.strip()]
    return [line.split() for line in lines[1:]]


def _device_count(listed: Finished, certificate_id: str) -> int:
    """The DEVICES column of the certificate's row in ``orchard push list``."""
    row = next((row for row in _table_rows(listed) if row and row[0] == certificate_id), None)
    return int(row[-2]) if row and row[-2].isdigit() else 0


def _match(pattern: str, finished: Finished | str, what: str) -> str:
    text = finished if isinstance(finished, str) else finished.output
    found = re.search(pattern, text, re.MULTILINE)
    if not found:
        raise DemoFailed(f"could not find {what} in the output above")
    return found.group(1)
