"""``python -m deploy.demo`` (``make demo``): start the Apple sandbox and the five services, then walk the story.

Everything the demo creates lives in a fresh state directory (default ``var/demo/``): the
services' SQLite databases, their logs, the secret key, the sandbox's Apple CA and the files
a person would download and upload. After the walk everything keeps running until Ctrl-C.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from cryptography.fernet import Fernet

from deploy.demo.apple import AppleSandbox
from deploy.demo.processes import HTTP_SERVICES, SERVICES, Children, Ports, require_free
from deploy.demo.story import Story
from deploy.demo.terminal import DemoFailed, Terminal

ROOT = Path(__file__).resolve().parents[2]
READY_SECONDS = 90
STATE_MARKER = ".orchard-demo"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", default="var/demo", help="emptied and used for everything the demo creates")
    parser.add_argument("--free-ports", action="store_true",
                        help="use free ports instead of the usual ones (e.g. next to `make run`)")
    parser.add_argument("--no-wait", action="store_true", help="stop everything after the walk instead of waiting")
    args = parser.parse_args(argv)

    state_dir = (ROOT / args.state_dir).resolve()
    ports = Ports.free() if args.free_ports else Ports.fixed()
    children = Children(ROOT, state_dir)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the children as on Ctrl-C
    started = time.monotonic()
    try:
        require_free(ports)
        terminal = walk(children, state_dir, ports)
        terminal.say(f"\nThe walk took {time.monotonic() - started:.0f} s. Service logs: "
                     f"{terminal.shown_path(state_dir)}/<service>.log")
        if args.no_wait:
            return 0
        terminal.say("Everything keeps running; press Ctrl-C to stop.")
        stopped = children.wait_until_one_stops()
        print(f"{stopped} stopped; see its log in {terminal.shown_path(state_dir)}/. Stopping the rest.", file=sys.stderr)
        return 1
    except DemoFailed as exc:
        print(f"\nThe demo failed: {exc}", file=sys.stderr)
        if (state_dir / STATE_MARKER).exists():
            print(f"The services' and the sandbox's logs are in {state_dir}/.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nStopping Orchard and the Apple sandbox...", file=sys.stderr)
        return 0
    finally:
        children.stop()


def walk(children: Children, state_dir: Path, ports: Ports) -> Terminal:
    empty_state_dir(state_dir)
    work = state_dir / "files"
    work.mkdir()
    key_file = state_dir / "secret.key"
    key_file.write_text(Fernet.generate_key().decode() + "\n")
    key_file.chmod(0o600)

    env = {**os.environ, "PYTHONWARNINGS": os.environ.get("PYTHONWARNINGS", "ignore::DeprecationWarning"),
           "ORCHARD_SECRET_KEY_FILE": str(key_file)}
    env.pop("ORCHARD_SECRET_KEY", None)
    terminal = Terminal(ROOT, env, colour=sys.stdout.isatty())
    terminal.heading("Starting the Apple sandbox and Orchard's five services")
    settings = children.start_sandbox(ports, env)
    terminal.say("Apple sandbox: " + " ".join(f"{k}={v}" for k, v in settings.items() if k != "admin"))
    terminal.say(f"  {settings['admin']}")
    sandbox_dir = state_dir / "apple_sandbox"
    vendor_certificate, vendor_key = state_dir / "vendor.pem", state_dir / "vendor.key"
    env.update(service_environment(state_dir, ports, settings, vendor_certificate, vendor_key))
    children.start_services(env)  # they read the vendor files only when asked for a push certificate request
    terminal.say("The sandbox's Apple CA issues a test MDM vendor certificate for signing push certificate requests:")
    terminal.run(["python", "-m", "apple_sandbox.push_portal", "--dir", terminal.shown_path(sandbox_dir), "vendor",
                  "--cert", terminal.shown_path(vendor_certificate), "--key", terminal.shown_path(vendor_key)])
    children.wait_for_ports({f"{name} metrics": port for name, port in ports.metrics.items()}, READY_SECONDS)
    terminal.run_until(["orchard", "health", "--timeout", "5"], lambda health: health.exit_code == 0,
                       "every service to answer", seconds=READY_SECONDS, pause=0.2)
    Story(terminal, AppleSandbox.from_settings(settings), ports, work, sandbox_dir).tell()
    return terminal


def empty_state_dir(state_dir: Path) -> None:
    """Empty the demo's directory from a previous run; never a directory the demo did not make."""
    if state_dir.exists() and any(state_dir.iterdir()) and not (state_dir / STATE_MARKER).exists():
        raise DemoFailed(f"{state_dir} holds files the demo did not make; choose another --state-dir")
    shutil.rmtree(state_dir, ignore_errors=True)
    state_dir.mkdir(parents=True)
    (state_dir / STATE_MARKER).touch()


def service_environment(state_dir: Path, ports: Ports, settings: dict[str, str], vendor_certificate: Path,
                        vendor_key: Path) -> dict[str, str]:
    """What points the five services at the sandbox, the demo's databases and its ports."""
    env = {name: settings[name] for name in ("DEP_URL", "VPP_URL", "APNS_URL", "APNS_CA_FILE", "SMTP_HOST", "SMTP_PORT")}
    env.update(PUSH_VENDOR_CERTIFICATE=str(vendor_certificate), PUSH_VENDOR_KEY=str(vendor_key),
               PUSH_VENDOR_CHAIN=settings["APNS_CA_FILE"],  # the vendor certificate's issuer: the sandbox's Apple CA
               ENROLLMENT_PUBLIC_URL=f"http://127.0.0.1:{ports.http['enrollment']}",
               VPP_PUBLIC_URL=f"http://127.0.0.1:{ports.http['vpp']}")
    for service in SERVICES:
        env[f"DATABASE_URL_{service.upper()}"] = f"sqlite:///{state_dir / service}.db"
        env[f"METRICS_PORT_{service.upper()}"] = str(ports.metrics[service])
    for service in HTTP_SERVICES:
        env[f"HTTP_ADDRESS_{service.upper()}"] = f"127.0.0.1:{ports.http[service]}"
    return env


if __name__ == "__main__":
    sys.exit(main())
