"""An LDAP profile: how to reach a school's directory, what to read from it, how users sign in.

``parse_profile`` turns a request (a plain dict) into a checked ``LdapProfile``;
``profile_view`` is what callers get back: everything but the bind password.
The defaults fit Active Directory; OpenLDAP works by naming its attributes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from cryptography import x509

from services.directory.domain.ldap_filter import OID, filter_problem
from services.directory.domain.secret import Secret
from shared.contracts.roster import USER_TYPES
from shared.errors import ValidationError

SECURITY_MODES = ("ldaps", "starttls")
DEFAULT_PORTS = {"ldaps": 636, "starttls": 389}
MAX_CONNECT_TIMEOUT = 60.0
MAX_OPERATION_TIMEOUT = 600.0
MAX_NAME_LENGTH = 200
#: the server the stored bind password goes to and the account it is for: changing either needs it again
#: (a new port on the same host is fine: TLS still requires a certificate naming that host)
PASSWORD_DESTINATION = ("host", "bind_dn")

AD_USER_FILTER = "(&(objectCategory=person)(objectClass=user))"

_ATTRIBUTE = re.compile(rf"^{OID}$")
_HOST = re.compile(r"^[A-Za-z0-9.-]+$|^\[?[0-9A-Fa-f:.]+\]?$")
_TIME = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")


@dataclass(frozen=True, kw_only=True)
class ConnectionSettings:
    host: str
    port: int
    security: str  # one of SECURITY_MODES
    ca_pem: str | None  # None: trust the system's certificate store
    bind_dn: str
    bind_password: Secret
    base_dn: str
    connect_timeout: float = 10.0
    operation_timeout: float = 60.0


@dataclass(frozen=True, kw_only=True)
class UserTypeRule:
    """Users who are members of ``group`` (a DN) or live under ``ou`` (a DN) get ``user_type``."""

    user_type: str
    group: str | None = None
    ou: str | None = None


@dataclass(frozen=True, kw_only=True)
class UserMapping:
    filter: str = AD_USER_FILTER
    user_id: str = "sAMAccountName"
    email: str | None = "mail"
    display_name: str | None = "displayName"
    first_name: str | None = "givenName"
    last_name: str | None = "sn"
    member_of: str = "memberOf"
    user_types: tuple[UserTypeRule, ...] = ()
    default_user_type: str | None = None  # when no rule matches; None rejects the user
    grade_level: str | None = None  # an attribute holding the grade; else grade groups decide


@dataclass(frozen=True, kw_only=True)
class GradeLevelMapping:
    filter: str | None = None  # None: grade levels are not read
    name: str = "cn"
    members: str = "member"


@dataclass(frozen=True, kw_only=True)
class ClassMapping:
    filter: str | None = None  # None: class periods are not read
    class_id: str = "sAMAccountName"
    name: str = "description"
    members: str = "member"


@dataclass(frozen=True, kw_only=True)
class SyncSettings:
    users: UserMapping = field(default_factory=UserMapping)
    grade_levels: GradeLevelMapping = field(default_factory=GradeLevelMapping)
    classes: ClassMapping = field(default_factory=ClassMapping)
    location_attribute: str | None = None  # None: the OU directly below the base DN names the school
    only_add_new: bool = False
    welcome_email: bool = False
    daily_sync_time: str | None = None  # "HH:MM" UTC, None: no automatic sync


@dataclass(frozen=True, kw_only=True)
class AuthenticationSettings:
    enabled: bool = False
    login_attribute: str = "sAMAccountName"


@dataclass(frozen=True, kw_only=True)
class LdapProfile:
    name: str
    connection: ConnectionSettings
    sync: SyncSettings = field(default_factory=SyncSettings)
    authentication: AuthenticationSettings = field(default_factory=AuthenticationSettings)


def parse_profile(data: Any, *, saved: bool = False) -> LdapProfile:
    """Check a whole profile request; raises ``ValidationError`` naming the first problem.

    ``saved``: a profile read back from the database. Its filters were checked when it was saved, by
    the rules of that day: one an earlier Orchard let through still loads (to be listed, fixed or
    deleted), and its next update must fix it.
    """
    data = _section(data, "", ("name", *_keys(ConnectionSettings), "sync", "authentication"))
    name = _text(data, "name", "the profile")
    if len(name) > MAX_NAME_LENGTH:
        raise ValidationError(f"the profile name is {len(name)} characters long; at most {MAX_NAME_LENGTH} are allowed")
    sync = _section(data.get("sync") or {}, "sync", _keys(SyncSettings))
    auth = _section(data.get("authentication") or {}, "authentication", _keys(AuthenticationSettings))
    return LdapProfile(
        name=name,
        connection=_connection(data),
        sync=_sync(sync, check_filters=not saved),
        authentication=AuthenticationSettings(
            enabled=_flag(auth, "enabled", "authentication"),
            login_attribute=_attribute(auth, "login_attribute", "authentication", "sAMAccountName"),
        ),
    )


def apply_changes(current: LdapProfile, changes: Any) -> LdapProfile:
    """The profile after ``changes`` (a partial request).

    The bind password stays unless given, but only for the same server and account: kept
    across a change of host or bind DN, it would go wherever an administrator points it.
    """
    changes = _mapping(changes, "the changes")
    merged = _merge(profile_view(current), changes)
    if "bind_password" in changes:
        return parse_profile(merged)
    changed = parse_profile({**merged, "bind_password": current.connection.bind_password.reveal()})
    moved = [name for name in PASSWORD_DESTINATION
             if getattr(changed.connection, name) != getattr(current.connection, name)]
    if moved:
        raise ValidationError(f"changing {' and '.join(moved)} needs the bind password again: give bind_password "
                              "(`orchard directory profile update --new-bind-password`)")
    return changed


def profile_view(profile: LdapProfile) -> dict[str, Any]:
    """The profile as callers see it: the bind password is never returned."""
    c, s = profile.connection, profile.sync
    return {
        "name": profile.name,
        "host": c.host,
        "port": c.port,
        "security": c.security,
        "ca_pem": c.ca_pem,
        "bind_dn": c.bind_dn,
        "base_dn": c.base_dn,
        "connect_timeout": c.connect_timeout,
        "operation_timeout": c.operation_timeout,
        "sync": {
            "users": {
                "filter": s.users.filter,
                "user_id": s.users.user_id,
                "email": s.users.email,
                "display_name": s.users.display_name,
                "first_name": s.users.first_name,
                "last_name": s.users.last_name,
                "member_of": s.users.member_of,
                "user_types": [
                    {k: v for k, v in vars(rule).items() if v is not None} for rule in s.users.user_types
                ],
                "default_user_type": s.users.default_user_type,
                "grade_level": s.users.grade_level,
            },
            "grade_levels": vars(s.grade_levels).copy(),
            "classes": vars(s.classes).copy(),
            "location_attribute": s.location_attribute,
            "only_add_new": s.only_add_new,
            "welcome_email": s.welcome_email,
            "daily_sync_time": s.daily_sync_time,
        },
        "authentication": vars(profile.authentication).copy(),
    }


def _connection(data: Mapping[str, Any]) -> ConnectionSettings:
    security = _text(data, "security", "the profile").lower()
    if security not in SECURITY_MODES:
        raise ValidationError(
            f"security '{security}' is not allowed: only secure connections are supported; "
            "use 'ldaps' (usually port 636) or 'starttls' (usually port 389)")
    host = _text(data, "host", "the profile")
    if "://" in host or not _HOST.match(host):
        raise ValidationError(f"host '{host}' is not a host name or address; give the name only, "
                              "e.g. dc1.school.example (the security setting chooses LDAPS or StartTLS)")
    port = data.get("port", DEFAULT_PORTS[security])
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValidationError(f"port must be a whole number from 1 to 65535, not {port!r}")
    password = data.get("bind_password")
    if not isinstance(password, str) or not password:
        raise ValidationError("bind_password is required: the password of the service account Orchard binds as")
    return ConnectionSettings(
        host=host,
        port=port,
        security=security,
        ca_pem=_ca_pem(data.get("ca_pem")),
        bind_dn=_dn(data, "bind_dn"),
        bind_password=Secret(password),
        base_dn=_dn(data, "base_dn"),
        connect_timeout=_seconds(data, "connect_timeout", 10.0, MAX_CONNECT_TIMEOUT),
        operation_timeout=_seconds(data, "operation_timeout", 60.0, MAX_OPERATION_TIMEOUT),
    )


def _sync(data: Mapping[str, Any], check_filters: bool) -> SyncSettings:
    users = _section(data.get("users") or {}, "sync.users", _keys(UserMapping))
    grades = _section(data.get("grade_levels") or {}, "sync.grade_levels", _keys(GradeLevelMapping))
    classes = _section(data.get("classes") or {}, "sync.classes", _keys(ClassMapping))
    default_type = users.get("default_user_type")
    if default_type is not None and default_type not in USER_TYPES:
        raise ValidationError(f"sync.users.default_user_type must be one of {', '.join(USER_TYPES)} or null")
    daily = data.get("daily_sync_time")
    if daily is not None and (not isinstance(daily, str) or not _TIME.match(daily)):
        raise ValidationError(f"sync.daily_sync_time must be a 24-hour time HH:MM (UTC) or null, not {daily!r}")
    return SyncSettings(
        users=UserMapping(
            filter=_filter(users, "filter", "sync.users", AD_USER_FILTER, check_filters),
            user_id=_attribute(users, "user_id", "sync.users", "sAMAccountName"),
            email=_optional_attribute(users, "email", "sync.users", "mail"),
            display_name=_optional_attribute(users, "display_name", "sync.users", "displayName"),
            first_name=_optional_attribute(users, "first_name", "sync.users", "givenName"),
            last_name=_optional_attribute(users, "last_name", "sync.users", "sn"),
            member_of=_attribute(users, "member_of", "sync.users", "memberOf"),
            user_types=_type_rules(users.get("user_types") or []),
            default_user_type=default_type,
            grade_level=_optional_attribute(users, "grade_level", "sync.users", None),
        ),
        grade_levels=GradeLevelMapping(
            filter=_filter(grades, "filter", "sync.grade_levels", None, check_filters),
            name=_attribute(grades, "name", "sync.grade_levels", "cn"),
            members=_attribute(grades, "members", "sync.grade_levels", "member"),
        ),
        classes=ClassMapping(
            filter=_filter(classes, "filter", "sync.classes", None, check_filters),
            class_id=_attribute(classes, "class_id", "sync.classes", "sAMAccountName"),
            name=_attribute(classes, "name", "sync.classes", "description"),
            members=_attribute(classes, "members", "sync.classes", "member"),
        ),
        location_attribute=_optional_attribute(data, "location_attribute", "sync", None),
        only_add_new=_flag(data, "only_add_new", "sync"),
        welcome_email=_flag(data, "welcome_email", "sync"),
        daily_sync_time=daily,
    )


def _type_rules(rules: Any) -> tuple[UserTypeRule, ...]:
    if not isinstance(rules, list):
        raise ValidationError("sync.users.user_types must be a list of {user_type, group or ou}")
    checked = []
    for i, rule in enumerate(rules):
        where = f"sync.users.user_types[{i}]"
        rule = _section(rule, where, _keys(UserTypeRule))
        if rule.get("user_type") not in USER_TYPES:
            raise ValidationError(f"{where}.user_type must be one of {', '.join(USER_TYPES)}")
        group = _dn(rule, "group", where) if rule.get("group") is not None else None
        ou = _dn(rule, "ou", where) if rule.get("ou") is not None else None
        if (group is None) == (ou is None):
            raise ValidationError(f"{where} needs exactly one of 'group' (a group DN) or 'ou' (an OU DN)")
        checked.append(UserTypeRule(user_type=rule["user_type"], group=group, ou=ou))
    return tuple(checked)


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValidationError(f"{what} must be an object")
    return value


def _section(value: Any, where: str, accepted: tuple[str, ...]) -> Mapping[str, Any]:
    """An object of settings (``where`` is its path, "" for the profile itself) naming only ``accepted`` keys:
    a misspelt key would otherwise be dropped and its setting silently left at the default."""
    data = _mapping(value, where or "the profile")
    unknown = [f"{where}.{key}" if where else str(key) for key in data if key not in accepted]
    if unknown:
        raise ValidationError(f"unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}: check the "
                              f"spelling; {where or 'the profile'} accepts {', '.join(accepted)}")
    return data


def _keys(settings: type) -> tuple[str, ...]:
    return tuple(setting.name for setting in fields(settings))


def _text(data: Mapping[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(f"{where} needs '{key}' (a non-empty string)")
    return value.strip()


def _dn(data: Mapping[str, Any], key: str, where: str = "the profile") -> str:
    value = _text(data, key, where)
    if "=" not in value:
        raise ValidationError(f"{key} '{value}' is not a distinguished name, e.g. CN=orchard,OU=Service,DC=school,DC=example")
    return value


def _flag(data: Mapping[str, Any], key: str, where: str) -> bool:
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise ValidationError(f"{where}.{key} must be true or false")
    return value


def _attribute(data: Mapping[str, Any], key: str, where: str, default: str) -> str:
    value = data.get(key)
    if value is None:
        return default
    if not isinstance(value, str) or not _ATTRIBUTE.match(value):
        raise ValidationError(f"{where}.{key} must be an LDAP attribute name such as {default}, not {value!r}")
    return value


def _optional_attribute(data: Mapping[str, Any], key: str, where: str, default: str | None) -> str | None:
    if key not in data:
        return default
    if data[key] in (None, ""):
        return None
    return _attribute(data, key, where, default or "cn")


def _filter(data: Mapping[str, Any], key: str, where: str, default: str | None, check: bool) -> str | None:
    value = data.get(key, default)
    if value in (None, ""):
        if default is not None:
            raise ValidationError(f"{where}.{key} cannot be empty; the default is {default}")
        return None
    if not isinstance(value, str):
        raise ValidationError(f"{where}.{key} must be an LDAP filter (text), e.g. {AD_USER_FILTER}")
    problem = filter_problem(value.strip()) if check else None
    if problem:
        # here, not at the next sync: there it would be a failure of the directory's, retried all day
        raise ValidationError(f"{where}.{key} is not an LDAP filter: {problem}")
    return value.strip()


def _seconds(data: Mapping[str, Any], key: str, default: float, limit: float) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= limit:
        raise ValidationError(f"{key} must be a number of seconds above 0 and at most {limit:g}, not {value!r}")
    return float(value)


def _ca_pem(value: Any) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise ValidationError("ca_pem must be PEM text (-----BEGIN CERTIFICATE-----) or null for the system store")
    try:
        x509.load_pem_x509_certificates(value.encode())
    except ValueError:
        raise ValidationError("ca_pem is not a PEM certificate: paste the CA certificate that signed the "
                              "directory server's certificate, starting with -----BEGIN CERTIFICATE-----") from None
    return value


def _merge(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged

