"""Fixtures shared by every test: the broker, databases, configuration and RPC callers.

The whole test process is cooperative (eventlet), as a service process is.
"""
import eventlet

eventlet.monkey_patch()  # noqa: E402  must precede every other import

import copy
import socket
import uuid
from contextlib import contextmanager
from typing import Any, Iterator

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet
from nameko.standalone.rpc import ClusterRpcProxy

from shared.auth import Actor

SERVICE_NAMES = ("push", "enrollment", "vpp", "roster", "directory")
POSTGRES_ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
ADMIN = Actor(id="admin@school.example", role="administrator")
TEST_SECRET_KEY = Fernet.generate_key().decode()


_handed_out: set[int] = set()


def free_port() -> int:
    """A port free now and not handed out before in this run: the kernel may offer a just-probed port again,
    and two services of one test given the same port would collide when they start."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


@pytest.fixture(autouse=True)
def fresh_apps_and_books_config(monkeypatch):
    """Each test starts with no cached ``service/config``: the client keeps Apple's for five minutes per URL, and a
    test's Apps and Books sandbox may be given the port of an earlier test's, whose limits or faults differed."""
    from services.vpp.adapters import apple_client

    monkeypatch.setattr(apple_client, "SERVICE_CONFIG_CACHE", apple_client._ServiceConfigCache())


@pytest.fixture
def orchard_config(rabbit_config: dict, tmp_path: Any) -> dict:
    """A full Orchard configuration on a fresh RabbitMQ vhost, SQLite files and free ports."""
    services = {
        name: {
            "database_url": f"sqlite:///{tmp_path}/{name}.db",
            "metrics_port": free_port(),
            "http_address": f"127.0.0.1:{free_port()}",
        }
        for name in SERVICE_NAMES
    }
    return {**rabbit_config, "max_workers": 10, "serializer": "json", "RPC_TIMEOUT": 20, "SERVICES": services,
            "SECRET_KEY": TEST_SECRET_KEY}


@pytest.fixture
def smtp_sink() -> Iterator[Any]:
    """A mail relay that keeps what it receives (``.messages``) and refuses the addresses in ``.refused``."""
    from apple_sandbox.smtp_sink import serve_smtp

    sink = serve_smtp()
    yield sink
    sink.stop()


@contextmanager
def postgres_database() -> Iterator[str]:
    """A new, empty PostgreSQL database for one test; dropped afterwards."""
    name = f"orchard_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def replicas_on_postgresql(start: Any, config: dict, service_cls: Any, count: int = 2) -> Iterator[None]:
    """``count`` replicas of ``service_cls`` (started with ``start``, e.g. ``runner_factory``) sharing a new
    PostgreSQL database and the broker, each with its own HTTP and metrics ports."""
    name = service_cls.name
    with postgres_database() as url:
        config["SERVICES"][name]["database_url"] = url
        for replica in range(count):
            own = copy.deepcopy(config)
            if replica:
                own["SERVICES"][name].update(http_address=f"127.0.0.1:{free_port()}", metrics_port=free_port())
            start(own, service_cls).start()
        yield


def settle(replies: list[Any], *errors: type[Exception]) -> list[Any]:
    """Each reply's result, or the text of the error (one of ``errors``) it ended with."""
    outcomes = []
    for reply in replies:
        try:
            outcomes.append(reply.result())
        except errors as refused:
            outcomes.append(str(refused))
    return outcomes


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: Any, tmp_path: Any) -> Iterator[str]:
    """Each storage test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/test.db"
    else:
        with postgres_database() as url:
            yield url


@pytest.fixture
def rpc_as(orchard_config: dict):
    """``with rpc_as(actor) as rpc: rpc.push.health()`` — a caller over the real broker."""
    @contextmanager
    def caller(actor: Actor | None = ADMIN, timeout: float = 20) -> Iterator[Any]:
        context = {"actor": actor.to_context()} if actor is not None else {}
        with ClusterRpcProxy(orchard_config, context_data=context, timeout=timeout) as proxy:
            yield proxy

    return caller
