"""What `make run` checks and shows around starting the services (deploy/run-local.sh, deploy/ensure-broker.sh).

    python -m deploy.run_local broker AMQP_URI           # does RabbitMQ accept this login?
    python -m deploy.run_local ports CONFIG SERVICE...    # are the services' ports free?
    python -m deploy.run_local banner CONFIG SERVICE...   # where each service answers
    python -m deploy.run_local secret-key                  # create the secret key if there is none

Each check prints one line saying what to do and exits 1 when it fails.
"""
from __future__ import annotations

import sys
import warnings
from urllib.parse import urlsplit

warnings.filterwarnings("ignore", message=r"(?s).*Eventlet is deprecated")

from kombu import Connection  # noqa: E402

from deploy.demo.processes import listening  # noqa: E402
from shared.config import load_config, service_settings  # noqa: E402
from shared.secrets import load_key  # noqa: E402

BROKER_TIMEOUT_SECONDS = 5


def broker_accepts(uri: str) -> bool:
    parts = urlsplit(uri)
    # who and where, never the password
    where = f"{parts.username or 'guest'}@{parts.hostname}:{parts.port or 5672}{parts.path or '/'}"
    try:
        with Connection(uri, connect_timeout=BROKER_TIMEOUT_SECONDS) as connection:
            connection.ensure_connection(max_retries=1)
    except Exception as exc:
        print(f"RabbitMQ answers but refused {where}: {str(exc).rstrip('.')}. Set AMQP_URI to a user, password "
              "and virtual host it accepts (the broker in deploy/docker-compose.yml takes "
              "amqp://orchard:orchard@localhost:5672/).", file=sys.stderr)
        return False
    return True


def endpoints(config_path: str, services: list[str]) -> dict[str, dict[str, int]]:
    """Each service's ports by use: metrics, and http where it has one."""
    config = load_config(config_path)
    found = {}
    for name in services:
        settings = service_settings(config, name)
        ports = {"metrics": int(settings["metrics_port"])}
        if settings.get("http_address"):
            ports["http"] = int(settings["http_address"].rsplit(":", 1)[1])
        found[name] = ports
    return found


def ports_free(config_path: str, services: list[str]) -> bool:
    busy = [f"{name} {use} :{port}" for name, ports in endpoints(config_path, services).items()
            for use, port in ports.items() if listening(port)]
    if busy:
        print(f"These ports are already in use: {', '.join(busy)}. Is another `make run` or `make demo` running? "
              "Stop it, or change the ports in deploy/config.yaml.", file=sys.stderr)
    return not busy


def banner(config_path: str, services: list[str]) -> None:
    print("Orchard is starting; logs are in var/<service>.log. Endpoints:")
    for name, ports in endpoints(config_path, services).items():
        line = f"  {name:<11} metrics http://localhost:{ports['metrics']}/metrics"
        if "http" in ports:
            line += f"   http on port {ports['http']}"
        print(line)
    print("Check them with `.venv/bin/orchard health`; stop with Ctrl-C.")


def main(argv: list[str]) -> int:
    command, *rest = argv
    if command == "broker":
        return 0 if broker_accepts(rest[0]) else 1
    if command == "ports":
        return 0 if ports_free(rest[0], rest[1:]) else 1
    if command == "banner":
        banner(rest[0], rest[1:])
        return 0
    if command == "secret-key":
        load_key(create=True)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
