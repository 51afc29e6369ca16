"""Sustained load against all five services at once, each its own service process (``shared.run``).

    .venv/bin/python bench/load.py [--seconds 60] [--callers 20] [--users 50000]
        [--devices 20000] [--push-devices 5000] [--database sqlite|postgresql] [--drain 300]

On a fresh RabbitMQ vhost, with the Apple sandboxes (Device Assignment, Apps and Books,
APNs over HTTP/2) on real sockets, it runs for ``--seconds``:

- ``--callers`` concurrent RPC callers, each looping over a mix of reads and small writes
  across push, enrollment, vpp, roster and directory;
- a ``--users`` import (preview and apply through the roster), whose UserImported events
  the vpp service turns into auto-invites registered with Apple;
- an ADE sync of ``--devices`` devices (the first sync after a token upload);
- push fan-out: ``--push-devices`` devices announced by DeviceEnrolled events, woken in
  batches of 1,000 through the APNs stand-in, again and again.

Then it waits up to ``--drain`` seconds for the event backlog to be handled and the invites
registered with Apple, and reports RPC throughput, p50/p99 latency per service, errors, the
import/sync/push rates, and the messages left unacknowledged (or still queued) at the end.
"""
from __future__ import annotations

import eventlet

eventlet.monkey_patch()  # noqa: E402  the callers are green threads, as the services' workers are

import argparse
import itertools
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path
from urllib.parse import quote

import httpx
import sqlalchemy as sa
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MANAGEMENT = "http://127.0.0.1:15672/api"
AUTH = ("guest", "guest")
POSTGRES_ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
SERVICES = ("push", "enrollment", "vpp", "roster", "directory")
ADMIN = {"actor": {"id": "bench@school.example", "role": "administrator", "locations": None}}


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---------------------------------------------------------------- the platform


class Platform:
    """A vhost, databases, the Apple sandboxes and the five service processes."""

    def __init__(self, workdir: Path, database: str):
        from cryptography.fernet import Fernet

        from apple_sandbox.apns import start_apns_sandbox
        from apple_sandbox.dep import DepSandbox
        from apple_sandbox.push_portal import SandboxAppleCA
        from apple_sandbox.server import serve_wsgi
        from apple_sandbox.vpp import VppSandbox

        self.workdir = workdir
        self.vhost = f"orchard_load_{uuid.uuid4().hex[:8]}"
        httpx.put(f"{MANAGEMENT}/vhosts/{self.vhost}", auth=AUTH).raise_for_status()
        httpx.put(f"{MANAGEMENT}/permissions/{self.vhost}/guest", auth=AUTH,
                  json={"configure": ".*", "write": ".*", "read": ".*"}).raise_for_status()
        self.databases = {name: self._database(database, name) for name in SERVICES}
        self.ca = SandboxAppleCA.load_or_create(workdir)
        self.apns = start_apns_sandbox(workdir)
        self.dep = serve_wsgi(DepSandbox())
        self.vpp = serve_wsgi(VppSandbox(page_size=1000, event_polls=1))
        self.secret_key = Fernet.generate_key().decode()
        self.amqp_uri = f"amqp://guest:guest@127.0.0.1:5672/{self.vhost}"
        self.config = self._config()
        self.processes: list[subprocess.Popen] = []

    def _database(self, kind: str, name: str) -> str:
        if kind == "sqlite":
            return f"sqlite:///{self.workdir}/{name}.db"
        database = f"orchard_load_{name}_{uuid.uuid4().hex[:6]}"
        admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{database}"'))
        admin.dispose()
        return f"postgresql://postgres@127.0.0.1:5432/{database}"

    def _config(self) -> dict:
        services = {name: {"database_url": self.databases[name], "metrics_port": free_port(),
                           "http_address": f"127.0.0.1:{free_port()}"} for name in SERVICES}
        services["push"].update(apns_url=self.apns.url, apns_ca_file=self.apns.ca_file)
        services["enrollment"].update(dep_url=self.dep.url)
        services["vpp"].update(vpp_url=self.vpp.url + "/mdm/v2/", mdm_id="orchard-load", mdm_name="Orchard Load",
                               public_url=f"http://{services['vpp']['http_address']}", apple_poll_interval=0.05,
                               smtp_host="127.0.0.1", smtp_port=1, mail_from="apps@school.example")
        return {"AMQP_URI": self.amqp_uri, "max_workers": 10, "serializer": "json", "RPC_TIMEOUT": 60,
                "SERVICES": services, "LOGGING": {"version": 1, "root": {"level": "WARNING"}}}

    def start(self) -> None:
        path = self.workdir / "orchard.yaml"
        path.write_text(yaml.safe_dump(self.config))
        env = {**os.environ, "ORCHARD_SECRET_KEY": self.secret_key, "PYTHONWARNINGS": "ignore"}
        for name in SERVICES:
            target = f"services.{name}.service:{name.title()}Service"
            log = open(self.workdir / f"{name}.log", "w")
            self.processes.append(subprocess.Popen([sys.executable, "-m", "shared.run", "--config", str(path), target],
                                                   cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 90
        for name in SERVICES:
            while True:
                try:
                    with self.rpc(timeout=3) as rpc:
                        getattr(rpc, name).health()
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{name} did not start; see {self.workdir}/{name}.log")
                    time.sleep(0.5)

    def rpc(self, timeout: float = 120):
        from nameko.standalone.rpc import ClusterRpcProxy

        import shared.entrypoints  # noqa: F401  registers Orchard's error types

        return ClusterRpcProxy({"AMQP_URI": self.amqp_uri, "serializer": "json"}, context_data=ADMIN, timeout=timeout)

    def count(self, service: str, statement: str) -> int:
        from shared.storage import create_engine_for

        engine = create_engine_for(self.databases[service])
        try:
            with engine.connect() as connection:
                return connection.execute(sa.text(statement)).scalar_one()
        finally:
            engine.dispose()

    def queues(self) -> list[dict]:
        response = httpx.get(f"{MANAGEMENT}/queues/{quote(self.vhost, safe='')}", auth=AUTH, timeout=30)
        response.raise_for_status()
        return response.json()

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        self.apns.stop()
        self.dep.stop()
        self.vpp.stop()
        httpx.delete(f"{MANAGEMENT}/vhosts/{self.vhost}", auth=AUTH)
        admin = None
        for url in self.databases.values():
            if url.startswith("postgresql"):
                admin = admin or sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
                with admin.connect() as connection:
                    connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
        if admin is not None:
            admin.dispose()


# ---------------------------------------------------------------- the workload


class Recorder:
    def __init__(self) -> None:
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, list[str]] = defaultdict(list)

    def call(self, service: str, method, *args, **kwargs):
        started = time.monotonic()
        try:
            return method(*args, **kwargs)
        except Exception as exc:
            self.errors[service].append(f"{type(exc).__name__}: {str(exc)[:120]}")
            return None
        finally:
            self.latencies[service].append(time.monotonic() - started)


def caller_mix(rpc, ids: dict) -> list[tuple[str, str, object]]:
    """(service, what, call) — reads and small writes, cycled by each caller."""
    toggle = itertools.cycle([True, False])
    names = itertools.count()
    return [
        ("push", "read", lambda: rpc.push.list_certificates()),
        ("enrollment", "read", lambda: rpc.enrollment.list_devices(ids["token"], limit=100)),
        ("vpp", "read", lambda: rpc.vpp.list_assets(ids["content_token"])),
        ("roster", "read", lambda: rpc.roster.list_users(page_size=50)),
        ("directory", "read", lambda: rpc.directory.list_ldap_profiles()),
        ("vpp", "write", lambda: rpc.vpp.set_asset_hidden(ids["content_token"], "111", next(toggle))),
        ("enrollment", "write", lambda: rpc.enrollment.update_server_token(ids["token"], name=f"Load {next(names)}")),
        ("roster", "write", lambda: rpc.roster.set_asm_preferences(ids["token"], {"only_add_new": next(toggle)})),
        ("push", "write", lambda: rpc.push.send_push([ids["udids"][next(names) % len(ids["udids"])]])),
        ("directory", "read", lambda: rpc.directory.egress_ips()),
    ]


def run_callers(platform: Platform, ids: dict, callers: int, deadline: float, recorder: Recorder) -> None:
    def one(offset: int) -> None:
        with platform.rpc(timeout=60) as rpc:
            mix = caller_mix(rpc, ids)
            for service, _, call in itertools.islice(itertools.cycle(mix), offset, None):
                if time.monotonic() > deadline:
                    return
                recorder.call(service, call)

    pool = eventlet.GreenPool(callers)
    for offset in range(callers):
        pool.spawn(one, offset)
    pool.waitall()


def setup(platform: Platform, args) -> dict:
    """A push certificate and its devices, a content token with auto-invites, an MDM server with devices."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from nameko.standalone.events import event_dispatcher

    from shared.contracts.enrollment import DeviceEnrolled

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    certificate = platform.ca.issue_push_certificate(key.public_key())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    vpp_admin = httpx.Client(base_url=platform.vpp.url + "/_sandbox/", timeout=30)
    stoken = vpp_admin.post("tokens", json={"locationName": "North Campus"}).json()["sToken"]
    vpp_admin.post("assets", json={"sToken": stoken, "adamId": "111", "totalCount": 100, "productType": "App"})
    with platform.rpc() as rpc:
        topic = rpc.push.upload_certificate(certificate, key_pem)["topic"]
        content_token = rpc.vpp.add_content_token(stoken, locations=["north"],
                                                  auto_invite_method="managed_apple_id")["id"]
        rpc.vpp.sync_assets(content_token)
        created = rpc.enrollment.create_server_token("Load MDM")
    dep_admin = httpx.Client(base_url=platform.dep.url + "/_sandbox/", timeout=30)
    server = dep_admin.post("servers", json={"certificate_pem": created["public_key_pem"]}).json()
    dep_admin.post(f"servers/{server['server_uuid']}/devices/generate", json={"count": args.devices})

    udids = [f"LOAD-{i:06d}" for i in range(args.push_devices)]
    dispatch = event_dispatcher({"AMQP_URI": platform.amqp_uri, "serializer": "json"})
    for udid in udids:
        dispatch("enrollment", "DeviceEnrolled", DeviceEnrolled(
            udid=udid, topic=topic, push_token=uuid.uuid4().hex * 2, push_magic=udid).to_payload())
    deadline = time.monotonic() + 300
    while platform.count("push", "select count(*) from push_devices") < len(udids):
        if time.monotonic() > deadline:
            raise RuntimeError("push did not take in the enrolled devices")
        time.sleep(0.5)
    return {"token": created["id"], "p7m": server["p7m"], "content_token": content_token, "udids": udids,
            "stoken": stoken}


def district(users: int) -> dict:
    return {"source": "api", "locations": [{"location_id": "north", "name": "North"}], "users": [
        {"user_id": f"u{i:06d}", "user_type": "student", "first_name": "Uma", "last_name": f"U{i}",
         "managed_apple_id": f"u{i}@north.appleid.example", "locations": ["north"]} for i in range(users)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--callers", type=int, default=20)
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--devices", type=int, default=20_000)
    parser.add_argument("--push-devices", type=int, default=5_000)
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--drain", type=float, default=300, help="seconds to wait for the event backlog")
    args = parser.parse_args()

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the sandboxes' request lines
    workdir = Path(tempfile.mkdtemp(prefix="orchard-load-"))
    platform = Platform(workdir, args.database)
    try:
        platform.start()
        ids = setup(platform, args)
        report(platform, ids, args, workload(platform, ids, args))
    finally:
        platform.stop()


def workload(platform: Platform, ids: dict, args) -> dict:
    recorder = Recorder()
    results: dict = {"recorder": recorder}
    started = time.monotonic()
    deadline = started + args.seconds

    def import_users() -> None:
        with platform.rpc(timeout=600) as rpc:
            t = time.monotonic()
            plan_id = rpc.roster.preview_records(district(args.users))["plan_id"]
            results["preview_s"] = time.monotonic() - t
            t = time.monotonic()
            rpc.roster.apply_plan(plan_id)
            results["apply_s"] = time.monotonic() - t

    def ade_sync() -> None:
        with platform.rpc(timeout=600) as rpc:
            t = time.monotonic()
            rpc.enrollment.upload_server_token(ids["token"], ids["p7m"])  # the upload starts the first sync
            while True:
                runs = rpc.enrollment.sync_runs(ids["token"])
                if runs and runs[0]["finished_at"]:
                    results["ade"] = {**runs[0], "seconds": time.monotonic() - t}
                    return
                eventlet.sleep(0.5)

    def fan_out() -> None:
        pushed, rounds = 0, 0
        with platform.rpc(timeout=600) as rpc:
            while time.monotonic() < deadline:
                for start in range(0, len(ids["udids"]), 1000):
                    reply = rpc.push.send_push(ids["udids"][start:start + 1000])
                    pushed += reply["delivered"]
                rounds += 1
        results["pushes"] = pushed
        results["push_rounds"] = rounds

    threads = [eventlet.spawn(import_users), eventlet.spawn(ade_sync), eventlet.spawn(fan_out)]
    run_callers(platform, ids, args.callers, deadline, recorder)
    results["rpc_seconds"] = time.monotonic() - started
    for thread in threads:
        thread.wait()
    results["busy_seconds"] = time.monotonic() - started

    drain_deadline = time.monotonic() + args.drain
    while time.monotonic() < drain_deadline:  # every event handled, every invite registered
        outboxes = sum(platform.count(name, "select count(*) from outbox") for name in SERVICES)
        queued = platform.count("vpp", "select count(*) from invites where apple_state = 'queued'")
        if outboxes == 0 and queued == 0 and not busy_queues(platform):
            break
        time.sleep(1)
    results["events_done_seconds"] = time.monotonic() - started
    results["users_handled"] = platform.count("vpp", "select count(*) from inbox where handler = 'on_user_imported'")
    time.sleep(2)
    return results


def busy_queues(platform: Platform) -> dict[str, tuple[int, int]]:
    """Queues (other than dead letters) with messages waiting or unacknowledged: name -> (ready, unacked)."""
    return {q["name"]: (q.get("messages_ready", 0), q.get("messages_unacknowledged", 0)) for q in platform.queues()
            if not q["name"].endswith(".dead-letters")
            and (q.get("messages_ready", 0) or q.get("messages_unacknowledged", 0))}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def report(platform: Platform, ids: dict, args, results: dict) -> None:
    recorder: Recorder = results["recorder"]
    total = sum(len(v) for v in recorder.latencies.values())
    errors = sum(len(v) for v in recorder.errors.values())
    print(f"\n{args.callers} callers for {results['rpc_seconds']:.0f} s ({args.database}): {total} RPCs, "
          f"{total / results['rpc_seconds']:.0f} RPC/s, {errors} errors")
    print(f"{'service':<12}{'calls':>8}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}")
    for service in SERVICES:
        values = recorder.latencies[service]
        print(f"{service:<12}{len(values):>8}{percentile(values, 0.5) * 1000:>10.1f}"
              f"{percentile(values, 0.99) * 1000:>10.1f}{len(recorder.errors[service]):>8}")
    for service, messages in recorder.errors.items():
        for message in sorted(set(messages))[:3]:
            print(f"  {service} error: {message}")
    print(f"import of {args.users} users: preview {results.get('preview_s', float('nan')):.1f} s, "
          f"apply {results.get('apply_s', float('nan')):.1f} s; "
          f"{results['users_handled']} UserImported handled by vpp, all done {results['events_done_seconds']:.0f} s "
          f"after the start")
    ade = results.get("ade") or {}
    print(f"ADE sync: {ade.get('added')} devices in {ade.get('pages')} pages, {ade.get('seconds', float('nan')):.1f} s, "
          f"error: {ade.get('error')}")
    print(f"push fan-out: {results['pushes']} delivered in {results['push_rounds']} rounds of {len(ids['udids'])} "
          f"({results['pushes'] / results['busy_seconds']:.0f} pushes/s over the run)")
    invites = platform.count("vpp", "select count(*) from invites where apple_state = 'registered'")
    print(f"invites registered with Apple: {invites}")
    busy = busy_queues(platform)
    parked = sum(q.get("messages", 0) for q in platform.queues() if q["name"].endswith(".dead-letters"))
    print(f"at the end: {sum(u for _, u in busy.values())} messages unacknowledged, "
          f"{sum(r for r, _ in busy.values())} waiting in queues, {parked} dead-lettered")
    for name, (ready, unacked) in sorted(busy.items()):
        print(f"  {name}: {ready} waiting, {unacked} unacknowledged")


if __name__ == "__main__":
    main()
