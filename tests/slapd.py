"""A real OpenLDAP ``slapd`` that looks like a school's Active Directory.

``start_slapd(shape)`` generates a CA and a server certificate, writes a cn=config
(TLS required for every bind, a 1,000-entry size limit like Active Directory's page
limit, the memberOf overlay, a small schema with Active Directory's ``user`` and
``group`` classes and ``sAMAccountName``/``userPrincipalName``/``objectCategory``),
bulk-loads the tree with ``slapadd`` and starts ``slapd`` on free loopback ports:
one plain port (StartTLS only) and one LDAPS port. Relies on Debian's ``slapd``
package (``/usr/sbin/slapd``, ``/usr/sbin/slapadd``, the schemas in
``/etc/ldap/schema`` and the modules in ``/usr/lib/ldap``).

The tree, under ``DC=orchard,DC=test``::

    OU=<school>
        OU=Students   CN=<student>   (objectClass user, memberOf its grade group)
        OU=Teachers   CN=<teacher>   (memberOf CN=Teachers,OU=Groups,...)
        OU=Staff      CN=<staff>
        OU=Groups     CN=Grade <n>, CN=Teachers   (objectClass group, member ...)
        OU=Classes    CN=<class>     (objectClass group: one teacher, some students)
    OU=Service Accounts  CN=orchard-sync   (the bind account)

Every person also carries OpenLDAP-style attributes (``uid``, ``cn``,
``departmentNumber`` = grade), so mappings for either directory can be tested.
"""
from __future__ import annotations

import base64
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import trustme

SLAPD = "/usr/sbin/slapd"
SLAPADD = "/usr/sbin/slapadd"
SCHEMA_DIR = Path("/etc/ldap/schema")
MODULE_DIR = Path("/usr/lib/ldap")

BASE_DN = "DC=orchard,DC=test"
SERVICE_DN = f"CN=orchard-sync,OU=Service Accounts,{BASE_DN}"
SERVICE_PASSWORD = "sync-account-secret"
#: a second bind account whose paged searches the server stops after 500 entries
LIMITED_DN = f"CN=orchard-limited,OU=Service Accounts,{BASE_DN}"
ADMIN_DN = f"CN=admin,{BASE_DN}"
ADMIN_PASSWORD = "admin-secret"
GRADES = ("9", "10", "11", "12")
CERTIFICATE_DAYS = 365

# Active Directory's own OIDs, so the schema reads like the real one.
AD_SCHEMA_LDIF = """\
dn: cn=orchard-ad,cn=schema,cn=config
objectClass: olcSchemaConfig
cn: orchard-ad
olcAttributeTypes: ( 1.2.840.113556.1.4.221 NAME 'sAMAccountName'
  EQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
olcAttributeTypes: ( 1.2.840.113556.1.4.656 NAME 'userPrincipalName'
  EQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
olcAttributeTypes: ( 1.2.840.113556.1.4.782 NAME 'objectCategory'
  EQUALITY caseIgnoreMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
olcObjectClasses: ( 1.2.840.113556.1.5.9 NAME 'user' SUP inetOrgPerson STRUCTURAL
  MAY ( sAMAccountName $ userPrincipalName $ objectCategory ) )
olcObjectClasses: ( 1.2.840.113556.1.5.8 NAME 'group' SUP top STRUCTURAL
  MUST cn MAY ( member $ sAMAccountName $ description $ displayName $ mail $ objectCategory ) )
"""


@dataclass(frozen=True)
class TreeShape:
    """How many of each kind of entry to generate (deterministically)."""

    schools: tuple[str, ...] = ("Lincoln High", "Roosevelt High")
    students: int = 1150
    teachers: int = 40
    staff: int = 12
    class_size: int = 25
    #: sAMAccountName -> password, for the people tests sign in as
    passwords: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Person:
    dn: str
    sam: str
    kind: str  # student | teacher | staff
    school: str
    given_name: str
    surname: str
    display_name: str | None
    grade: str | None


@dataclass(frozen=True)
class ClassGroup:
    dn: str
    cn: str
    description: str
    school: str
    teacher: Person
    students: tuple[Person, ...]


@dataclass(frozen=True)
class Tree:
    shape: TreeShape
    people: tuple[Person, ...]
    classes: tuple[ClassGroup, ...]

    def person(self, sam: str) -> Person:
        return next(p for p in self.people if p.sam == sam)

    def of_kind(self, kind: str) -> list[Person]:
        return [p for p in self.people if p.kind == kind]


def school_dn(school: str) -> str:
    return f"OU={school},{BASE_DN}"


def grade_group_dn(school: str, grade: str) -> str:
    return f"CN=Grade {grade},OU=Groups,{school_dn(school)}"


def teachers_group_dn(school: str) -> str:
    return f"CN=Teachers,OU=Groups,{school_dn(school)}"


_GIVEN = ("Ada", "Ben", "Chloé", "Dev", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jon", "Kai", "Lena")
_SURNAMES = ("Adams", "Brown", "Chen", "Diaz", "Evans", "Fischer", "García", "Hughes", "Ito", "Jones", "Khan")


def build_tree(shape: TreeShape) -> Tree:
    people: list[Person] = []
    counters = {"student": shape.students, "teacher": shape.teachers, "staff": shape.staff}
    prefixes = {"student": "s", "teacher": "t", "staff": "f"}
    ous = {"student": "Students", "teacher": "Teachers", "staff": "Staff"}
    for kind, count in counters.items():
        for n in range(1, count + 1):
            school = shape.schools[n % len(shape.schools)]
            sam = f"{prefixes[kind]}{n:05d}"
            given, surname = _GIVEN[n % len(_GIVEN)], _SURNAMES[(n // len(_GIVEN)) % len(_SURNAMES)]
            # every 7th person has no displayName, so the name comes from givenName + sn
            display = None if n % 7 == 0 else f"{given} {surname}"
            grade = GRADES[(n // len(shape.schools)) % len(GRADES)] if kind == "student" else None
            dn = f"CN={sam},OU={ous[kind]},{school_dn(school)}"
            people.append(Person(dn, sam, kind, school, given, surname, display, grade))
    for sam in shape.passwords:
        if not any(p.sam == sam for p in people):
            school = shape.schools[0]
            dn = f"CN={_escape_rdn_value(sam)},OU=Teachers,{school_dn(school)}"
            people.append(Person(dn, sam, "teacher", school, "Pat", "Special", "Pat Special", None))
    classes = []
    for school in shape.schools:
        teachers = [p for p in people if p.kind == "teacher" and p.school == school]
        students = [p for p in people if p.kind == "student" and p.school == school]
        for i, teacher in enumerate(teachers):
            members = tuple(students[i * shape.class_size:(i + 1) * shape.class_size])
            if not members:
                break
            cn = f"{school.split()[0][:3].upper()}-MATH-{i + 1:03d}"
            dn = f"CN={cn},OU=Classes,{school_dn(school)}"
            classes.append(ClassGroup(dn, cn, f"Math {i + 1}, period {i % 6 + 1}", school, teacher, members))
    return Tree(shape, tuple(people), tuple(classes))


def _escape_rdn_value(value: str) -> str:
    out = "".join("\\" + ch if ch in ',+"\\<>;=' else ch for ch in value)
    return ("\\" + out) if out.startswith(("#", " ")) else out


def _line(name: str, value: str) -> str:
    if value.isascii() and not value.startswith((" ", ":", "<")) and "\n" not in value:
        return f"{name}: {value}\n"
    return f"{name}:: {base64.b64encode(value.encode()).decode()}\n"


def _ssha(password: str) -> str:
    salt = os.urandom(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def tree_ldif(tree: Tree) -> Iterator[str]:
    """The tree as LDIF records, parents first (memberOf precomputed: slapadd runs no overlays)."""
    yield f"dn: {BASE_DN}\nobjectClass: domain\ndc: orchard\n"
    yield (f"dn: OU=Service Accounts,{BASE_DN}\nobjectClass: organizationalUnit\nou: Service Accounts\n")
    yield (f"dn: {SERVICE_DN}\nobjectClass: applicationProcess\nobjectClass: simpleSecurityObject\n"
           f"cn: orchard-sync\nuserPassword: {_ssha(SERVICE_PASSWORD)}\n")
    yield (f"dn: {LIMITED_DN}\nobjectClass: applicationProcess\nobjectClass: simpleSecurityObject\n"
           f"cn: orchard-limited\nuserPassword: {_ssha(SERVICE_PASSWORD)}\n")
    member_of: dict[str, list[str]] = {}
    groups: list[str] = []
    for school in tree.shape.schools:
        yield f"dn: {school_dn(school)}\nobjectClass: organizationalUnit\nou: {school}\n"
        for ou in ("Students", "Teachers", "Staff", "Groups", "Classes"):
            yield f"dn: OU={ou},{school_dn(school)}\nobjectClass: organizationalUnit\nou: {ou}\n"
        for grade in GRADES:
            dns = [p.dn for p in tree.people if p.school == school and p.grade == grade]
            groups.append(_group(grade_group_dn(school, grade), f"Grade {grade}", f"Grade {grade}", dns, member_of))
        dns = [p.dn for p in tree.people if p.school == school and p.kind == "teacher"]
        groups.append(_group(teachers_group_dn(school), "Teachers", "Teachers", dns, member_of))
    for group in tree.classes:
        dns = [group.teacher.dn, *(s.dn for s in group.students)]
        groups.append(_group(group.dn, group.cn, group.description, dns, member_of))
    for person in tree.people:
        yield _person(person, tree.shape.passwords.get(person.sam), member_of.get(person.dn, []))
    yield from groups


def _group(dn: str, cn: str, description: str, members: list[str], member_of: dict[str, list[str]]) -> str:
    for member in members:
        member_of.setdefault(member, []).append(dn)
    text = f"dn: {dn}\nobjectClass: group\nobjectCategory: group\ncn: {cn}\nsAMAccountName: {cn}\n"
    text += _line("description", description)
    return text + "".join(f"member: {m}\n" for m in members)


def _person(p: Person, password: str | None, groups: list[str]) -> str:
    text = (f"dn: {p.dn}\nobjectClass: user\nobjectCategory: person\n" + _line("cn", p.sam)
            + _line("sAMAccountName", p.sam) + _line("uid", p.sam)
            + _line("userPrincipalName", f"{p.sam}@orchard.test") + _line("mail", f"{p.sam}@orchard.test")
            + _line("givenName", p.given_name) + _line("sn", p.surname) + f"employeeType: {p.kind}\n")
    if p.display_name:
        text += _line("displayName", p.display_name)
    if p.grade:
        text += f"departmentNumber: {p.grade}\n"
    if password is not None:
        text += f"userPassword: {_ssha(password)}\n"
    return text + "".join(f"memberOf: {g}\n" for g in groups)


def _config_ldif(workdir: Path) -> str:
    includes = "".join(f"include: file://{SCHEMA_DIR / name}.ldif\n\n" for name in ("core", "cosine", "inetorgperson"))
    return f"""\
dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: {workdir}/slapd.pid
olcTLSCACertificateFile: {workdir}/ca.pem
olcTLSCertificateFile: {workdir}/server.pem
olcTLSCertificateKeyFile: {workdir}/server.key
olcSecurity: simple_bind=128
olcLogLevel: none

dn: cn=module{{0}},cn=config
objectClass: olcModuleList
cn: module{{0}}
olcModulePath: {MODULE_DIR}
olcModuleLoad: back_mdb
olcModuleLoad: memberof

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

{includes}{AD_SCHEMA_LDIF}
dn: olcDatabase={{-1}}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {{-1}}frontend

dn: olcDatabase={{0}}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {{0}}config
olcAccess: to * by * none

dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcDbDirectory: {workdir}/data
olcSuffix: {BASE_DN}
olcRootDN: {ADMIN_DN}
olcRootPW: {ADMIN_PASSWORD}
olcDbMaxSize: 1073741824
olcDbNoSync: TRUE
olcSizeLimit: size.soft=1000 size.hard=1000 size.prtotal=unlimited
olcLimits: dn.exact="{LIMITED_DN}" size.soft=500 size.hard=500 size.prtotal=500
olcSecurity: tls=128
olcDbIndex: objectClass eq
olcDbIndex: sAMAccountName,userPrincipalName,mail,uid eq
olcDbIndex: member,memberOf eq
olcAccess: to attrs=userPassword by anonymous auth by * none
olcAccess: to * by users read by * none

dn: olcOverlay={{0}}memberof,olcDatabase={{1}}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcMemberOf
olcOverlay: {{0}}memberof
olcMemberOfGroupOC: group
olcMemberOfMemberAD: member
olcMemberOfMemberOfAD: memberOf
olcMemberOfRefInt: TRUE
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningSlapd:
    workdir: Path
    process: subprocess.Popen
    tree: Tree
    ca_pem: str
    plain_port: int
    ldaps_port: int
    host: str = "localhost"
    base_dn: str = BASE_DN
    service_dn: str = SERVICE_DN
    service_password: str = SERVICE_PASSWORD

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_slapd(shape: TreeShape | None = None) -> RunningSlapd:
    """Generate, load and start a directory; the caller must ``stop()`` it."""
    shape = shape or TreeShape()
    tree = build_tree(shape)
    workdir = Path(tempfile.mkdtemp(prefix="orchard-slapd-"))
    try:
        ca = trustme.CA(organization_name="Orchard Test Directory CA")
        # names "localhost" only, so connecting by address tests the hostname check
        cert = ca.issue_cert("localhost", common_name="localhost", organization_name="Orchard Test Directory",
                             not_after=datetime.now(timezone.utc) + timedelta(days=CERTIFICATE_DAYS))
        ca.cert_pem.write_to_path(str(workdir / "ca.pem"))
        cert.cert_chain_pems[0].write_to_path(str(workdir / "server.pem"))
        cert.private_key_pem.write_to_path(str(workdir / "server.key"))
        (workdir / "config").mkdir()
        (workdir / "data").mkdir()
        (workdir / "config.ldif").write_text(_config_ldif(workdir))
        with open(workdir / "tree.ldif", "w") as out:
            for record in tree_ldif(tree):
                out.write(record + "\n")
        _run([SLAPADD, "-n0", "-F", str(workdir / "config"), "-l", str(workdir / "config.ldif")])
        _run([SLAPADD, "-q", "-n1", "-F", str(workdir / "config"), "-l", str(workdir / "tree.ldif")])
        plain_port, ldaps_port = free_port(), free_port()
        urls = f"ldap://127.0.0.1:{plain_port}/ ldaps://127.0.0.1:{ldaps_port}/"
        process = subprocess.Popen([SLAPD, "-d", "0", "-h", urls, "-F", str(workdir / "config")],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        running = RunningSlapd(workdir, process, tree, ca.cert_pem.bytes().decode(), plain_port, ldaps_port)
        _wait_until_listening(running)
        return running
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip()}")


def _wait_until_listening(running: RunningSlapd, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running.process.poll() is not None:
            raise RuntimeError(f"slapd exited: {running.process.stderr.read().decode(errors='replace')}")
        try:
            for port in (running.plain_port, running.ldaps_port):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    running.stop()
    raise RuntimeError("slapd did not start listening in time")
