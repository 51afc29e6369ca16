"""Directory sync throughput: 20,000 users read over LDAPS, mapped and previewed by the roster.

Starts a real slapd shaped like Active Directory (``tests/slapd.py``) and the directory
and roster services on RabbitMQ (SQLite databases, the default storage), then times,
in the same run and over the same TLS connection settings:

- the floor: a bare ldap3 paged search (1,000 per page) of the same entries and
  attributes, doing nothing with them;
- Orchard: the ``sync_ldap_profile`` preview RPC, as an administrator runs it: the
  directory service's paged search, mapping with the profile's rules, and the roster's
  preview of the batch (matched against the roster and stored as a plan to apply).

Also shown, not part of the figure: the directory's own part alone (read, map, batch) in
this process. Prints entries per second and the ratio (goal: Orchard within 1.5x).

    .venv/bin/python bench/directory_sync.py [--users 20000] [--rounds 3]
"""
from __future__ import annotations

import argparse
import ssl
import sys
import tempfile
import time
import uuid
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

warnings.filterwarnings("ignore", message=r"(?s).*Eventlet is deprecated")

import eventlet  # noqa: E402

eventlet.monkey_patch()  # as in a service process

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
from cryptography.fernet import Fernet  # noqa: E402
from ldap3 import SIMPLE, SUBTREE, Connection, Server, Tls  # noqa: E402
from nameko.runners import ServiceRunner  # noqa: E402
from nameko.standalone.rpc import ClusterRpcProxy  # noqa: E402

from services.directory.adapters.ldap_directory import LdapDirectory  # noqa: E402
from services.directory.service import DirectoryService  # noqa: E402
from services.roster.service import RosterService  # noqa: E402
from services.directory.domain.mapping import BatchBuilder  # noqa: E402
from services.directory.domain.profile import parse_profile  # noqa: E402
from services.directory.domain.sync import read_import_batch  # noqa: E402
from tests.slapd import BASE_DN, RunningSlapd, TreeShape, school_dn, start_slapd  # noqa: E402


MANAGEMENT = "http://127.0.0.1:15672/api"
ADMIN = {"actor": {"id": "bench@school.example", "role": "administrator", "locations": None}}


def bench_settings(server: RunningSlapd) -> dict[str, Any]:
    schools = server.tree.shape.schools
    return {
        "name": "bench", "host": server.host, "port": server.ldaps_port, "security": "ldaps",
        "ca_pem": server.ca_pem, "bind_dn": server.service_dn, "bind_password": server.service_password,
        "base_dn": BASE_DN,
        "sync": {"users": {
            "user_types": [{"user_type": "teacher", "ou": f"OU=Teachers,{school_dn(s)}"} for s in schools]
            + [{"user_type": "staff", "ou": f"OU=Staff,{school_dn(s)}"} for s in schools],
            "default_user_type": "student",
            "grade_level": "departmentNumber",
        }},
    }


def floor(server: RunningSlapd, ldap_filter: str, attributes: list[str]) -> int:
    """A bare ldap3 paged search: every entry received and decoded, nothing else."""
    tls = Tls(validate=ssl.CERT_REQUIRED, ca_certs_data=server.ca_pem)
    connection = Connection(Server(server.host, port=server.ldaps_port, use_ssl=True, tls=tls),
                            user=server.service_dn, password=server.service_password, authentication=SIMPLE,
                            auto_bind=True, raise_exceptions=True)
    count = 0
    for entry in connection.extend.standard.paged_search(BASE_DN, ldap_filter, SUBTREE, attributes=attributes,
                                                         paged_size=1000, generator=True):
        count += entry["type"] == "searchResEntry"
    connection.unbind()
    return count


@contextmanager
def directory_and_roster() -> Iterator[ClusterRpcProxy]:
    """The directory and roster services on a vhost of their own, with SQLite databases in a temporary folder;
    an administrator's RPC proxy to them."""
    vhost = f"directory_bench_{uuid.uuid4().hex[:10]}"
    auth = ("guest", "guest")
    httpx.put(f"{MANAGEMENT}/vhosts/{vhost}", auth=auth).raise_for_status()
    httpx.put(f"{MANAGEMENT}/permissions/{vhost}/guest", auth=auth,
              json={"configure": ".*", "write": ".*", "read": ".*"}).raise_for_status()
    try:
        with tempfile.TemporaryDirectory() as folder:
            config = {"AMQP_URI": f"pyamqp://guest:guest@127.0.0.1:5672/{vhost}", "max_workers": 10,
                      "serializer": "json", "SECRET_KEY": Fernet.generate_key().decode(),
                      "SERVICES": {name: {"database_url": f"sqlite:///{folder}/{name}.db"}
                                   for name in ("directory", "roster")}}
            runner = ServiceRunner(config)
            runner.add_service(DirectoryService)
            runner.add_service(RosterService)
            runner.start()
            try:
                with ClusterRpcProxy(config, context_data=ADMIN, timeout=900) as rpc:
                    yield rpc
            finally:
                runner.stop()
    finally:
        httpx.delete(f"{MANAGEMENT}/vhosts/{vhost}", auth=auth)


def preview(rpc: ClusterRpcProxy, profile_id: int) -> int:
    """The administrator's preview of a directory sync: the entries the roster was given (users and rejected)."""
    read = rpc.directory.sync_ldap_profile(profile_id)["read"]
    return read["users"] + read["rejected"]


def read_and_map(profile) -> int:
    directory = LdapDirectory(profile.connection)
    with directory.bound():
        batch = read_import_batch(directory, profile)
    batch.to_dict()  # what the roster's preview receives
    return len(batch.users) + len(batch.rejected)


def best_of(rounds: int, run) -> tuple[float, int]:
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        count = run()
        timings.append(time.perf_counter() - started)
    return min(timings), count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    teachers, staff = args.users // 25, args.users // 100
    shape = TreeShape(schools=("Lincoln High", "Roosevelt High", "Hamilton Middle", "Adams Elementary"),
                      students=args.users - teachers - staff, teachers=teachers, staff=staff)
    started = time.perf_counter()
    server = start_slapd(shape)
    print(f"slapd with {len(server.tree.people):,} users loaded and started in {time.perf_counter() - started:.1f} s")
    try:
        settings = bench_settings(server)
        profile = parse_profile(settings)
        attributes = BatchBuilder(profile.sync, BASE_DN).user_attributes()
        floor_seconds, floor_count = best_of(args.rounds, lambda: floor(server, profile.sync.users.filter, attributes))
        part_seconds, part_count = best_of(args.rounds, lambda: read_and_map(profile))
        with directory_and_roster() as rpc:
            profile_id = rpc.directory.add_ldap_profile(settings)["id"]
            ours_seconds, ours_count = best_of(args.rounds, lambda: preview(rpc, profile_id))
    finally:
        server.stop()
    assert floor_count == part_count == ours_count == len(server.tree.people), (floor_count, part_count, ours_count)
    print(f"{'':40}{'entries':>9}{'seconds':>9}{'entries/s':>11}")
    for label, count, seconds in (("floor: bare ldap3 paged search", floor_count, floor_seconds),
                                  ("orchard: the preview RPC, end to end", ours_count, ours_seconds),
                                  ("  of which read, map, batch (alone)", part_count, part_seconds)):
        print(f"{label:40}{count:>9,}{seconds:>9.2f}{count / seconds:>11,.0f}")
    ratio = ours_seconds / floor_seconds
    print(f"ratio (orchard time / floor time): {ratio:.2f}x  (goal: at most 1.5x) -> {'ok' if ratio <= 1.5 else 'over'}")


if __name__ == "__main__":
    main()
