"""Run services as ``nameko run`` does, reading the configuration with Orchard's own loader.

    python -m shared.run --config deploy/config.yaml services.vpp.service:VppService [...]

``nameko run`` parses every substituted ``${VAR}`` as YAML, so ``VPP_MDM_ID=0123`` would become the
octal number 83 and ``VPP_MDM_NAME="Acme: North"`` a mapping, and a variable without a default that is
not set would become nothing at all. ``shared.config`` keeps such values the text they are and refuses a
missing one by name. Services run as ``nameko run`` runs them (graceful stop on SIGTERM or Ctrl-C, a
second Ctrl-C kills), except that further SIGTERMs during the stop change nothing: Nameko would start a
second stop of the same containers, which never ends.
"""
from __future__ import annotations

import warnings

# eventlet announces its deprecation on import; the log stays JSON from its first line
warnings.filterwarnings("ignore", message=r"(?s).*Eventlet is deprecated")

import eventlet  # noqa: E402

eventlet.monkey_patch()  # noqa: E402  before anything opens a socket

import argparse  # noqa: E402
import errno  # noqa: E402
import logging  # noqa: E402
import logging.config  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

import yaml  # noqa: E402
from nameko.cli.run import import_service  # noqa: E402
from nameko.exceptions import CommandError  # noqa: E402
from nameko.runners import ServiceRunner  # noqa: E402

from shared.config import load_config  # noqa: E402
from shared.errors import ValidationError  # noqa: E402
from shared.storage import DatabaseInUse, database_url_for, require_sqlite_file_free  # noqa: E402


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.run", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the YAML configuration (deploy/config.yaml)")
    parser.add_argument("services", nargs="+", help="module:Class of each service to run")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except (OSError, ValidationError, yaml.YAMLError) as problem:
        print(f"cannot read the configuration {args.config}: {problem}", file=sys.stderr)
        return 2
    if "LOGGING" in config:
        logging.config.dictConfig(config["LOGGING"])
    else:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    if "." not in sys.path:
        sys.path.insert(0, ".")
    try:
        services = [service for path in args.services for service in import_service(path)]
    except (CommandError, ImportError) as problem:  # a module or class that is not there
        print(f"cannot start: {problem}", file=sys.stderr)
        return 2
    try:
        for service in services:
            require_sqlite_file_free(database_url_for(config, service.name))
        serve(services, config)
    except DatabaseInUse as problem:
        print(f"cannot start: {problem}", file=sys.stderr)
        return 2
    return 0


def serve(services: list[Any], config: dict[str, Any]) -> None:
    """Run the services until they are stopped: by SIGTERM (once, however many arrive) or Ctrl-C."""
    runner = ServiceRunner(config)
    for service in services:
        runner.add_service(service)
    stopping = False

    def on_sigterm(signum: int, frame: Any) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            eventlet.spawn_n(runner.stop)  # a signal handler runs outside the hub: it cannot wait for the stop

    signal.signal(signal.SIGTERM, on_sigterm)
    runner.start()
    waiting = eventlet.spawn(runner.wait)  # a signal interrupts the main greenlet's wait, not this one
    while True:
        try:
            waiting.wait()
            return
        except OSError as exc:
            if exc.errno != errno.EINTR:  # EINTR: a signal arrived; its handler has done what it does
                raise
        except KeyboardInterrupt:
            print()  # after the ^C the terminal shows
            try:
                if stopping:
                    runner.kill()
                else:
                    stopping = True
                    runner.stop()
            except KeyboardInterrupt:
                print()
                runner.kill()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
