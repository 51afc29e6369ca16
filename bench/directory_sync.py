"""Directory sync throughput: 20,000 users read over LDAPS, mapped and made into a roster preview batch.

Starts a real slapd shaped like Active Directory (``tests/slapd.py``), then times,
in the same run and over the same TLS connection settings:

- the floor: a bare ldap3 paged search (1,000 per page) of the same entries and
  attributes, doing nothing with them;
- Orchard: ``LdapDirectory`` paged search, mapping to ``UserRecord``s with the
  profile's rules, and the ``ImportBatch`` turned into the JSON-ready dict that is
  sent to the roster's preview.

Prints entries per second for both and their ratio (goal: Orchard within 1.5x).

    .venv/bin/python bench/directory_sync.py [--users 20000] [--rounds 3]
"""
from __future__ import annotations

import argparse
import ssl
import sys
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message=r"(?s).*Eventlet is deprecated")

import eventlet  # noqa: E402

eventlet.monkey_patch()  # as in a service process

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ldap3 import SIMPLE, SUBTREE, Connection, Server, Tls  # noqa: E402

from services.directory.adapters.ldap_directory import LdapDirectory  # noqa: E402
from services.directory.domain.mapping import BatchBuilder  # noqa: E402
from services.directory.domain.profile import parse_profile  # noqa: E402
from services.directory.domain.sync import read_import_batch  # noqa: E402
from tests.slapd import BASE_DN, RunningSlapd, TreeShape, school_dn, start_slapd  # noqa: E402


def bench_profile(server: RunningSlapd):
    schools = server.tree.shape.schools
    return parse_profile({
        "name": "bench", "host": server.host, "port": server.ldaps_port, "security": "ldaps",
        "ca_pem": server.ca_pem, "bind_dn": server.service_dn, "bind_password": server.service_password,
        "base_dn": BASE_DN,
        "sync": {"users": {
            "user_types": [{"user_type": "teacher", "ou": f"OU=Teachers,{school_dn(s)}"} for s in schools]
            + [{"user_type": "staff", "ou": f"OU=Staff,{school_dn(s)}"} for s in schools],
            "default_user_type": "student",
            "grade_level": "departmentNumber",
        }},
    })


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


def orchard(profile) -> int:
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
        profile = bench_profile(server)
        attributes = BatchBuilder(profile.sync, BASE_DN).user_attributes()
        floor_seconds, floor_count = best_of(args.rounds, lambda: floor(server, profile.sync.users.filter, attributes))
        ours_seconds, ours_count = best_of(args.rounds, lambda: orchard(profile))
    finally:
        server.stop()
    assert floor_count == ours_count == len(server.tree.people), (floor_count, ours_count)
    print(f"{'':34}{'entries':>9}{'seconds':>9}{'entries/s':>11}")
    print(f"{'floor: bare ldap3 paged search':34}{floor_count:>9,}{floor_seconds:>9.2f}{floor_count / floor_seconds:>11,.0f}")
    print(f"{'orchard: read, map, preview batch':34}{ours_count:>9,}{ours_seconds:>9.2f}{ours_count / ours_seconds:>11,.0f}")
    ratio = ours_seconds / floor_seconds
    print(f"ratio (orchard time / floor time): {ratio:.2f}x  (goal: at most 1.5x) -> {'ok' if ratio <= 1.5 else 'over'}")


if __name__ == "__main__":
    main()
