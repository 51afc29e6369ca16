"""Benchmark: a full ADE sync of 100,000 devices through the enrollment service.

The DEP sandbox runs in its own process (1,000 devices per page). The service runs
here on RabbitMQ and PostgreSQL, exactly as deployed: ``sync_devices(full=True)``
over RPC stores every device and writes one ``DevicesAssigned`` per page to the
outbox, which the relay publishes to RabbitMQ; the run ends when the outbox is empty
(every event published and confirmed). The floor is the same pages merely
downloaded and parsed with httpx. Peak memory is read after a 10,000-device warm-up
and after the 100,000-device runs: flat means the second is not ten times the first.

A shared machine's speed can drift by a third within minutes (the 2-core development
machine's does), so the floor is measured right before each sync, round after round,
and each round's ratio is its own; the median ratio is the figure. Every round (and
the warm-up) syncs a new MDM server's devices, so each round stores 100,000 new
devices and publishes their events (a repeated full sync of the same devices would
only update them and announce nothing). The CPU time each process used per page is
printed too, for the floor and for the sync.

    .venv/bin/python bench/ade_sync.py [--devices 100000] [--rounds 3]
"""
from __future__ import annotations

import eventlet

eventlet.monkey_patch()  # noqa: E402  a service process is cooperative

import argparse
import logging
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import httpx
import sqlalchemy as sa
from cryptography.fernet import Fernet
from nameko.runners import ServiceRunner
from nameko.standalone.rpc import ClusterRpcProxy

from services.enrollment.adapters.dep_client import CONTENT_TYPE
from services.enrollment.adapters.oauth1 import authorization_header
from services.enrollment.adapters.token_crypto import decrypt_enveloped_data
from services.enrollment.domain.server_tokens import cms_from_token_file, credentials_from_plaintext
from services.enrollment.service import EnrollmentService
from shared import json_text
from shared.auth import Actor

POSTGRES = "postgresql+psycopg2://postgres@127.0.0.1:5432"
MANAGEMENT = "http://127.0.0.1:15672/api"
ADMIN = Actor("bench@orchard.example", "administrator")
SANDBOX = (
    "import logging, sys, time; logging.getLogger('werkzeug').setLevel(logging.WARNING);"
    "from apple_sandbox.dep import DepSandbox; from apple_sandbox.server import serve_wsgi;"
    "server = serve_wsgi(DepSandbox()); print(server.url, flush=True); time.sleep(10**6)"
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a local process so far (Linux ``/proc``); 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_by_process(sandbox_pid: int) -> dict[str, float]:
    """CPU seconds so far of the parts a sync runs on: this process (the service), PostgreSQL, RabbitMQ
    and the DEP stand-in. A backend that ends during the sync takes its time with it: PostgreSQL's
    figure is a floor."""
    by_name = {"postgres": 0.0, "beam.smp": 0.0}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/comm") as comm:
                name = comm.read().strip()
        except OSError:
            continue
        if name in by_name:
            by_name[name] += cpu_seconds(int(entry))
    return {"service": cpu_seconds(os.getpid()), "PostgreSQL": by_name["postgres"], "RabbitMQ": by_name["beam.smp"],
            "DEP stand-in": cpu_seconds(sandbox_pid)}


class Bench:
    def __init__(self, devices: int):
        self.devices = devices
        self.tag = uuid.uuid4().hex[:10]
        self.vhost = f"enrollment_bench_{self.tag}"
        self.database = f"enrollment_bench_{self.tag}"

    def __enter__(self) -> Bench:
        try:
            return self._start()
        except BaseException:
            self.__exit__()
            raise

    def _start(self) -> Bench:
        self.sandbox_process = subprocess.Popen([sys.executable, "-c", SANDBOX], stdout=subprocess.PIPE, text=True)
        self.sandbox = self.sandbox_process.stdout.readline().strip()
        self.admin = httpx.Client(base_url=self.sandbox, timeout=60)
        auth = ("guest", "guest")
        httpx.put(f"{MANAGEMENT}/vhosts/{self.vhost}", auth=auth).raise_for_status()
        httpx.put(f"{MANAGEMENT}/permissions/{self.vhost}/guest", auth=auth,
                  json={"configure": ".*", "write": ".*", "read": ".*"}).raise_for_status()
        self.pg_admin = sa.create_engine(f"{POSTGRES}/postgres", isolation_level="AUTOCOMMIT")
        with self.pg_admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{self.database}"'))
        self.config = {
            "AMQP_URI": f"pyamqp://guest:guest@127.0.0.1:5672/{self.vhost}", "max_workers": 10, "serializer": "json",
            "RPC_TIMEOUT": 600, "SECRET_KEY": Fernet.generate_key().decode(),
            "SERVICES": {"enrollment": {"database_url": f"{POSTGRES}/{self.database}", "dep_url": self.sandbox,
                                        "http_address": f"127.0.0.1:{free_port()}"}},
        }
        self.runner = ServiceRunner(self.config)
        self.runner.add_service(EnrollmentService)
        self.runner.start()
        self.engine = sa.create_engine(f"{POSTGRES}/{self.database}")
        return self

    def __exit__(self, *exc: object) -> None:
        """Undo whatever was set up, also after a failed start."""
        if hasattr(self, "runner"):
            self.runner.stop()
        if hasattr(self, "engine"):
            self.engine.dispose()
        if hasattr(self, "pg_admin"):
            with self.pg_admin.connect() as connection:
                connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)'))
            self.pg_admin.dispose()
        httpx.delete(f"{MANAGEMENT}/vhosts/{self.vhost}", auth=("guest", "guest"))
        if hasattr(self, "sandbox_process"):
            self.sandbox_process.kill()
            self.sandbox_process.wait()

    def rpc(self) -> ClusterRpcProxy:
        return ClusterRpcProxy(self.config, context_data={"actor": ADMIN.to_context()}, timeout=900)

    def connect_token(self) -> tuple[str, str, str]:
        with self.rpc() as rpc:
            created = rpc.enrollment.create_server_token("Benchmark")
            server = self.admin.post("/_sandbox/servers", json={"certificate_pem": created["public_key_pem"]}).json()
            rpc.enrollment.upload_server_token(created["id"], server["p7m"])
            while not any(run["finished_at"] for run in rpc.enrollment.sync_runs(created["id"])):
                eventlet.sleep(0.2)
        return created["id"], server["server_uuid"], server["p7m"]

    def generate(self, server_uuid: str, count: int) -> None:
        self.admin.post(f"/_sandbox/servers/{server_uuid}/devices/generate", json={"count": count}).raise_for_status()

    def timed_sync(self, token_id: str) -> tuple[float, float, dict, dict[str, float]]:
        """Seconds until the RPC returned (stored, events in the outbox), and until all were published;
        the run record; the CPU seconds each process used meanwhile."""
        cpu_before = cpu_by_process(self.sandbox_process.pid)
        started = time.perf_counter()
        with self.rpc() as rpc:
            run = rpc.enrollment.sync_devices(token_id, full=True)
        stored = time.perf_counter() - started
        while self.pending_events():
            eventlet.sleep(0.05)
        published = time.perf_counter() - started
        cpu = {name: used - cpu_before[name] for name, used in cpu_by_process(self.sandbox_process.pid).items()}
        return stored, published, run, cpu

    def pending_events(self) -> int:
        with self.engine.connect() as connection:
            return connection.execute(sa.text("SELECT count(*) FROM outbox")).scalar_one()

    def floor(self, token_id: str, p7m: str, expected: int,
              parse: Callable[[httpx.Response], Any]) -> tuple[float, dict[str, float]]:
        """Download and parse the same pages with httpx, nothing else (after opening a session); the seconds
        it took and the CPU seconds of this client and the DEP stand-in."""
        credentials = self.credentials(token_id, p7m)
        with httpx.Client(base_url=self.sandbox, timeout=60) as http:
            authorization = authorization_header(
                "GET", f"{self.sandbox.rstrip('/')}/session", consumer_key=credentials.consumer_key,
                consumer_secret=credentials.consumer_secret, token=credentials.access_token,
                token_secret=credentials.access_secret)
            session = http.get("/session", headers={"Authorization": authorization, "Content-Type": CONTENT_TYPE}).json()[
                "auth_session_token"]
            cpu_before = self.client_and_stand_in_cpu()
            started = time.perf_counter()
            count, body = 0, {"limit": 1000}
            while True:
                response = http.post("/server/devices", content=json_text.dumps(body),
                                     headers={"X-ADM-Auth-Session": session, "X-Server-Protocol-Version": "3",
                                              "Content-Type": CONTENT_TYPE})
                response.raise_for_status()
                session = response.headers.get("X-ADM-Auth-Session", session)
                page = parse(response)
                count += len(page["devices"])
                if not page.get("more_to_follow"):
                    break
                body = {"limit": 1000, "cursor": page["cursor"]}
            elapsed = time.perf_counter() - started
            cpu = {name: used - cpu_before[name] for name, used in self.client_and_stand_in_cpu().items()}
        assert count == expected, (count, expected)
        return elapsed, cpu

    def client_and_stand_in_cpu(self) -> dict[str, float]:
        return {"client": cpu_seconds(os.getpid()), "DEP stand-in": cpu_seconds(self.sandbox_process.pid)}

    def credentials(self, token_id: str, p7m: str):
        with self.engine.connect() as connection:
            sealed_key = connection.execute(sa.text("SELECT sealed_private_key FROM server_tokens WHERE id = :id"),
                                            {"id": token_id}).scalar_one()
        key_pem = Fernet(self.config["SECRET_KEY"].encode()).decrypt(sealed_key.encode())
        return credentials_from_plaintext(decrypt_enveloped_data(cms_from_token_file(p7m), key_pem),
                                          now=datetime.now(timezone.utc))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--warm-up", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    devices = args.devices
    rounds: list[tuple[float, float, float]] = []  # floor, stored, published
    cpu_per_page: dict[str, list[float]] = {}
    floor_cpu_per_page: dict[str, list[float]] = {}

    with Bench(devices) as bench:
        token_id, server_uuid, _ = bench.connect_token()
        bench.generate(server_uuid, args.warm_up)
        warm_stored, warm_published, _, _ = bench.timed_sync(token_id)
        warm_rss = peak_rss_mb()
        for _ in range(args.rounds):  # a new MDM server each round: all its devices are new to Orchard
            token_id, server_uuid, p7m = bench.connect_token()
            bench.generate(server_uuid, devices)
            floor, floor_cpu = bench.floor(token_id, p7m, devices, httpx.Response.json)
            for name, seconds in floor_cpu.items():
                floor_cpu_per_page.setdefault(name, []).append(seconds * 1000 / (devices / 1000))
            stored, published, run, cpu = bench.timed_sync(token_id)
            assert run["error"] is None and run["added"] == devices, run
            rounds.append((floor, stored, published))
            for name, seconds in cpu.items():
                cpu_per_page.setdefault(name, []).append(seconds * 1000 / run["pages"])
        full_rss = peak_rss_mb()
        floor_orjson, _ = bench.floor(token_id, p7m, devices, lambda response: json_text.loads(response.content))

    print(f"ADE full sync of {devices:,} new devices, 1,000 per page (sandbox in its own process, PostgreSQL, RabbitMQ)")
    print("  round   floor (httpx download + JSON parse)   stored, RPC done   stored and every event published   ratio")
    for number, (floor, stored, published) in enumerate(rounds, 1):
        print(f"  {number:5d}   {floor:6.2f} s {devices / floor:9,.0f} devices/s        {stored:6.2f} s"
              f"           {published:6.2f} s {devices / published:9,.0f} devices/s        {published / floor:4.2f}x")
    ratio = statistics.median(published / floor for floor, _, published in rounds)
    print(f"  median ratio, stored and published / floor: {ratio:4.2f}x (goal: within 2x)")
    for label, per_page in (("floor", floor_cpu_per_page), ("sync ", cpu_per_page)):
        medians = {name: statistics.median(values) for name, values in per_page.items()}
        print(f"  CPU per 1,000-device page, {label} (median of rounds): "
              f"{', '.join(f'{name} {ms:.1f} ms' for name, ms in medians.items())}; together {sum(medians.values()):.1f} ms")
    print(f"  the last round's download parsed with orjson, as Orchard's client parses it: {floor_orjson:.2f} s")
    print(f"  warm-up {args.warm_up:,} devices: {warm_stored:.2f} s stored, {warm_published:.2f} s published")
    print(f"  peak RSS after {args.warm_up:,} devices: {warm_rss:.0f} MB; after {args.rounds} x {devices:,}: {full_rss:.0f} MB")
    print(f"  machine: {os.cpu_count()} cores; load average (1, 5, 15 min): "
          f"{', '.join(f'{load:.1f}' for load in os.getloadavg())}")


if __name__ == "__main__":
    main()
