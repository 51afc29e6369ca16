"""Invite fan-out: 20,000 ``UserImported`` events on RabbitMQ become users registered with Apple.

Times, in one run:

- the floor: the same number of messages of the same size, published persistently
  with publisher confirms one after another, and consumed with kombu (first
  publish to last message consumed);
- Orchard end to end: the events published on ``roster.events`` (persistent, with
  publisher confirms pipelined over a few connections) → the vpp service
  (``--replicas`` processes on PostgreSQL; batches of events per worker) queues an
  auto-invite per user → users registered with the Apps and Books sandbox (its own
  process) in ``users/create`` calls of 100, 16 in flight (first publish until the
  sandbox holds every user).

Prints events per second for both and their ratio in every round, and when each stage of Orchard's
run was done (goal: Orchard at least 1.0x the floor in every round).

    .venv/bin/python bench/invite_fanout.py [--events 20000] [--replicas 2] [--publishers 4] [--rounds 1] [--profile DIR]
"""
from __future__ import annotations

import warnings

warnings.filterwarnings("ignore", message=r"(?s).*Eventlet is deprecated")

import eventlet  # noqa: E402

eventlet.monkey_patch()  # first, as in a service process: the modules below must see green threads and sockets

import argparse  # noqa: E402
import cProfile  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import logging.config  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Iterator  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import amqp  # noqa: E402
import httpx  # noqa: E402
from cryptography.fernet import Fernet  # noqa: E402
import sqlalchemy as sa  # noqa: E402
import yaml  # noqa: E402
from eventlet.greenpool import GreenPool  # noqa: E402
from kombu import Connection, Exchange, Queue  # noqa: E402
from nameko.events import get_event_exchange  # noqa: E402
from nameko.standalone.rpc import ClusterRpcProxy  # noqa: E402

from apple_sandbox.server import serve_wsgi  # noqa: E402
from apple_sandbox.vpp import VppSandbox  # noqa: E402
from shared.auth import Actor  # noqa: E402
from shared.contracts.roster import UserImported  # noqa: E402

BROKER = "127.0.0.1:5672"
MANAGEMENT = "http://guest:guest@127.0.0.1:15672/api"
POSTGRES_ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
ADMIN = Actor(id="bench@school.example", role="administrator")


def events(count: int) -> list[UserImported]:
    return [UserImported(user_id=f"student-{n:06d}", user_type="student", name=f"Student {n}", source="csv",
                         locations=["north"], managed_apple_id=f"student-{n:06d}@north.appleid.example",
                         email=f"student-{n:06d}@home.example", grade_level="7")
            for n in range(count)]


@contextmanager
def fresh_vhost() -> Iterator[str]:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    httpx.put(f"{MANAGEMENT}/vhosts/{name}").raise_for_status()
    httpx.put(f"{MANAGEMENT}/permissions/{name}/guest", json={"configure": ".*", "write": ".*", "read": ".*"}).raise_for_status()
    try:
        yield f"amqp://guest:guest@{BROKER}/{name}"
    finally:
        httpx.delete(f"{MANAGEMENT}/vhosts/{name}")


@contextmanager
def fresh_postgres() -> Iterator[str]:
    name = f"orchard_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def floor(amqp_uri: str, bodies: list[bytes]) -> float:
    """Seconds for a sequential persistent+confirm publish loop and a kombu consumer to move ``bodies``."""
    exchange = Exchange("floor.events", type="topic", durable=True)
    queue = Queue("floor-consumer", exchange, routing_key="UserImported", durable=True)
    consumed, done = [0], eventlet.event.Event()

    def consume() -> None:
        with Connection(amqp_uri) as connection:
            def on_message(body: Any, message: Any) -> None:
                message.ack()
                consumed[0] += 1
                if consumed[0] == len(bodies):
                    done.send(True)
            with connection.Consumer(queue, callbacks=[on_message], prefetch_count=100):
                while not done.ready():
                    try:
                        connection.drain_events(timeout=1)
                    except TimeoutError:
                        continue

    with Connection(amqp_uri, transport_options={"confirm_publish": True}) as connection:
        queue(connection).declare()
        consumer = eventlet.spawn(consume)
        producer = connection.Producer(exchange=exchange)
        started = time.perf_counter()
        for body in bodies:
            producer.publish(body, routing_key="UserImported", delivery_mode=2, content_type="application/json",
                             content_encoding="utf-8")
        done.wait()
        elapsed = time.perf_counter() - started
        consumer.wait()
        queue(connection).delete()
    return elapsed


def publish_events(amqp_uri: str, payloads: list[dict], publishers: int, window: int = 500) -> None:
    """Persistent publishes with publisher confirms, pipelined: up to ``window`` unconfirmed per connection.

    Each connection publishes a window of events, then waits until RabbitMQ has confirmed
    every one of them (a nack fails the run), several connections at once.
    """
    exchange = get_event_exchange(UserImported.SOURCE, {})

    def publish_share(share: list[dict]) -> None:
        with Connection(amqp_uri) as connection:
            exchange(connection.default_channel).declare()
            channel = connection.connection.channel()
            channel.confirm_select()
            confirmed, refused = [0], []

            def on_ack(delivery_tag: int, multiple: bool) -> None:
                confirmed[0] = delivery_tag if multiple else confirmed[0] + 1

            channel.events["basic_ack"].add(on_ack)
            channel.events["basic_nack"].add(lambda tag, multiple: refused.append(tag))
            sent = 0
            for start in range(0, len(share), window):
                for payload in share[start:start + window]:
                    channel.basic_publish(
                        amqp.Message(json.dumps(payload), delivery_mode=2, content_type="application/json",
                                     content_encoding="utf-8"),
                        exchange=exchange.name, routing_key=UserImported.TYPE)
                    sent += 1
                while confirmed[0] < sent and not refused:
                    connection.connection.drain_events(timeout=30)
                if refused:
                    raise RuntimeError(f"RabbitMQ refused {len(refused)} event(s)")

    list(GreenPool(publishers).imap(publish_share, [payloads[i::publishers] for i in range(publishers)]))


def replica_config(amqp_uri: str, database_url: str, sandbox_url: str, secret_key: str, index: int) -> dict:
    return {
        "AMQP_URI": amqp_uri, "max_workers": 20, "serializer": "json", "RPC_TIMEOUT": 60,
        "SECRET_KEY": secret_key,
        "SERVICES": {"vpp": {
            "database_url": database_url, "vpp_url": sandbox_url + "/mdm/v2/", "mdm_id": "orchard-bench",
            "mdm_name": "Orchard bench", "apple_poll_interval": 0.05, "http_address": f"127.0.0.1:{18300 + index}",
        }},
        "LOGGING": {"version": 1, "disable_existing_loggers": False, "root": {"level": "WARNING"}},
    }


def serve(config_path: str, profile_path: str | None) -> None:
    """One vpp replica (run as a subprocess of the benchmark); with ``profile_path``, its CPU profiled until terminated."""
    from nameko.runners import ServiceRunner

    from services.vpp.service import VppService

    with open(config_path) as handle:
        config = yaml.safe_load(handle)
    logging.config.dictConfig(config["LOGGING"])
    runner = ServiceRunner(config)
    runner.add_service(VppService)
    runner.start()
    if profile_path:
        profiler = cProfile.Profile(time.process_time)  # CPU time: waits on the network or database cost nothing
        profiler.enable()

        def dump(*_: Any) -> None:
            profiler.disable()
            profiler.dump_stats(profile_path)
            os._exit(0)
        signal.signal(signal.SIGTERM, dump)
    runner.wait()


def serve_sandbox() -> None:
    """The Apps and Books sandbox in a process of its own, so the publishers do not slow Apple down."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    sandbox = serve_wsgi(VppSandbox(event_polls=1))
    print(sandbox.url, flush=True)
    sandbox.thread.join()


def sandbox_users(sandbox_url: str, stoken: str) -> int:
    return httpx.get(f"{sandbox_url}/_sandbox/state", params={"sToken": stoken}).json()["users"]


def invites_stored(engine: sa.engine.Engine) -> int:
    with engine.connect() as connection:
        return connection.execute(sa.text("SELECT count(*) FROM invites")).scalar_one()


def orchard(payloads: list[dict], replicas: int, publishers: int, profile_dir: str | None) -> tuple[float, dict[str, float], int]:
    """Seconds from the first event published until the sandbox holds every user; when each stage was done
    (published, every event handled and its invite queued); users/create calls."""
    secret_key = Fernet.generate_key().decode()
    processes: list[subprocess.Popen] = []
    with fresh_vhost() as amqp_uri, fresh_postgres() as database_url, tempfile.TemporaryDirectory() as workdir:
        try:
            sandbox = subprocess.Popen([sys.executable, __file__, "--serve-sandbox"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
            processes.append(sandbox)
            sandbox_url = sandbox.stdout.readline().strip()
            stoken = httpx.post(f"{sandbox_url}/_sandbox/tokens", json={"locationName": "North Campus"}).json()["sToken"]
            for index in range(replicas):
                path = Path(workdir) / f"replica-{index}.yaml"
                path.write_text(yaml.safe_dump(replica_config(amqp_uri, database_url, sandbox_url, secret_key, index)))
                profile = ["--profile", str(Path(profile_dir) / f"replica-{index}.prof")] if profile_dir else []
                processes.append(subprocess.Popen([sys.executable, __file__, "--serve", str(path), *profile], cwd=ROOT))
                if index == 0:
                    _wait_healthy(amqp_uri)  # the first replica migrates the database alone
            _wait_healthy(amqp_uri)
            with ClusterRpcProxy({"AMQP_URI": amqp_uri}, context_data={"actor": ADMIN.to_context()}, timeout=60) as rpc:
                rpc.vpp.add_content_token(stoken, locations=["north"], auto_invite_method="managed_apple_id")

            engine = sa.create_engine(database_url)
            stages: dict[str, float] = {}

            def watch_handling() -> None:
                while invites_stored(engine) < len(payloads):
                    eventlet.sleep(0.05)
                stages["handled"] = time.perf_counter() - started

            started = time.perf_counter()
            watcher = eventlet.spawn(watch_handling)
            publish_events(amqp_uri, payloads, publishers)
            stages["published"] = time.perf_counter() - started
            while sandbox_users(sandbox_url, stoken) < len(payloads):
                eventlet.sleep(0.05)
            total = time.perf_counter() - started
            watcher.wait()
            engine.dispose()
            creates = httpx.get(f"{sandbox_url}/_sandbox/state").json()["requests"].get("users/create", 0)
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(timeout=30)
    return total, stages, creates


def run(count: int, replicas: int, publishers: int, rounds: int, profile_dir: str | None) -> None:
    payloads = [e.to_payload() for e in events(count)]
    bodies = [json.dumps(p).encode() for p in payloads]
    size = sum(map(len, bodies)) / len(bodies)
    floors, totals = [], []
    for _ in range(rounds):  # alternating, so both see the same load on a shared machine
        with fresh_vhost() as amqp_uri:
            floors.append(floor(amqp_uri, bodies))
        print(f"floor  : {count} messages of ~{size:.0f} bytes, sequential persistent+confirm publish, kombu consumer: "
              f"{floors[-1]:.2f} s = {count / floors[-1]:,.0f} msg/s", flush=True)
        total, stages, creates = orchard(payloads, replicas, publishers, profile_dir)
        totals.append(total)
        print(f"orchard: {count} UserImported events -> {count} users registered with Apple ({replicas} replicas, "
              f"{creates} users/create calls): {total:.2f} s = {count / total:,.0f} events/s "
              f"(published by {publishers} pipelined publishers at {stages['published']:.2f} s, "
              f"every event handled and its invite queued at {stages['handled']:.2f} s)", flush=True)
        print(f"ratio  : {floors[-1] / totals[-1]:.2f}x the floor in this round (goal >= 1.0x)", flush=True)
    ratios = [f / t for f, t in zip(floors, totals)]
    print(f"rounds : {len(ratios)}, ratio worst {min(ratios):.2f}x, best {max(ratios):.2f}x (goal >= 1.0x in every round)")


def _wait_healthy(amqp_uri: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with ClusterRpcProxy({"AMQP_URI": amqp_uri}, context_data={"actor": ADMIN.to_context()}, timeout=5) as rpc:
        while True:
            try:
                rpc.vpp.health()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                eventlet.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--profile", metavar="DIR", help="write each vpp replica's cProfile statistics into DIR")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--serve-sandbox", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_sandbox:
        serve_sandbox()
    elif args.serve:
        serve(args.serve, args.profile)
    else:
        run(args.events, args.replicas, args.publishers, args.rounds, args.profile)


if __name__ == "__main__":
    main()
