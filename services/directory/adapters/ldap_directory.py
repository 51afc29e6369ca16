"""A school's directory over LDAPS or StartTLS, with ldap3.

Every connection is encrypted before anything is sent: LDAPS wraps the socket at
once, StartTLS upgrades it before the bind. The server's certificate must chain to
the profile's CA (or the system store) and name the host. Searches are paged
(Active Directory returns at most 1,000 entries per page) and streamed.
"""
from __future__ import annotations

import math
import socket
import ssl
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Iterator, Sequence

from ldap3 import NONE, SIMPLE, SUBTREE, SYNC, Connection, Server, Tls
from ldap3.core import exceptions as ldap_errors
from ldap3.utils.conv import escape_filter_chars

from services.directory.domain.entries import DirectoryEntry
from services.directory.metrics import BIND_FAILURES
from services.directory.domain.ports import BindRefused, CertificateInfo, FoundUser
from services.directory.domain.profile import ConnectionSettings
from shared.errors import UpstreamError

PAGE_SIZE = 1000
PAGED_RESULTS_OID = "1.2.840.113556.1.4.319"


class LdapDirectory:
    """One connection to the directory; implements the domain's reader, password and probe ports."""

    def __init__(self, settings: ConnectionSettings, profile: str = ""):
        self.settings = settings
        self.profile = profile  # the stored profile's id, which labels its metrics
        self._server = Server(
            settings.host,
            port=settings.port,
            use_ssl=settings.security == "ldaps",
            tls=Tls(validate=ssl.CERT_REQUIRED, ca_certs_data=settings.ca_pem, sni=settings.host),
            connect_timeout=settings.connect_timeout,
            get_info=NONE,
        )
        self._connection: Connection | None = None
        self.certificate: CertificateInfo | None = None  # the server's, once TLS is up

    def __repr__(self) -> str:
        s = self.settings
        return f"<LdapDirectory {s.security}://{s.host}:{s.port}>"

    # -- connection steps (also the connection test's steps) --

    def connect(self) -> None:
        """Reach the server's port (TCP only)."""
        address = f"{self.settings.host}:{self.settings.port}"
        try:
            socket.create_connection((self.settings.host, self.settings.port),
                                     timeout=self.settings.connect_timeout).close()
        except OSError as exc:
            raise UpstreamError(f"cannot connect to {address}: {exc.strerror or exc}; check the host and port, "
                                "and that the school's firewall lets Orchard's egress addresses through") from None

    def secure(self) -> CertificateInfo:
        """Open the connection and complete TLS (LDAPS, or StartTLS on the plain port)."""
        self._connection = self._new_connection(self.settings.bind_dn, self.settings.bind_password.reveal())
        self._open_secure(self._connection)
        self.certificate = _certificate_info(self._connection.socket.getpeercert())
        return self.certificate

    def bind(self) -> None:
        """Bind as the service account on the secured connection."""
        try:
            _bind(self._connection, "binding as the service account")
        except ldap_errors.LDAPInvalidCredentialsResult:
            BIND_FAILURES.labels(self.profile).inc()
            raise BindRefused(f"the directory refused the bind as {self.settings.bind_dn}: the bind DN or "
                              "password is wrong (or the account is disabled)") from None
        except ldap_errors.LDAPException as exc:
            raise _upstream("binding as the service account", exc) from None

    def close(self) -> None:
        if self._connection is not None:
            _close(self._connection)
            self._connection = None

    @contextmanager
    def bound(self) -> Iterator["LdapDirectory"]:
        """Secured and bound as the service account for the duration of the block."""
        try:
            self.secure()
            self.bind()
            yield self
        finally:
            self.close()

    # -- reading --

    def search(self, ldap_filter: str, attributes: Sequence[str]) -> Iterator[DirectoryEntry]:
        """Entries under the base DN matching ``ldap_filter``, 1,000 per page, as they arrive."""
        connection = self._require_bound()
        cookie = None
        while True:
            try:
                connection.search(self.settings.base_dn, ldap_filter, SUBTREE, attributes=list(attributes),
                                  paged_size=PAGE_SIZE, paged_cookie=cookie,
                                  time_limit=int(self.settings.operation_timeout))
            except ldap_errors.LDAPNoSuchObjectResult:
                raise UpstreamError(f"the base DN {self.settings.base_dn} does not exist in the directory "
                                    "(or the service account may not read it)") from None
            except ldap_errors.LDAPInvalidFilterError as exc:
                raise UpstreamError(f"the filter {ldap_filter} is not valid LDAP: {exc}") from None
            except ldap_errors.LDAPException as exc:
                raise _upstream(f"searching {ldap_filter}", exc) from None
            if connection.result["description"] != "success":
                # ldap3 does not raise on size or time limits: a partial read must never reach the roster
                raise UpstreamError(f"the directory stopped the search {ldap_filter} early "
                                    f"({connection.result['description']}: {connection.result['message']}); "
                                    "nothing was imported. Raise the server's limits for the service account "
                                    "or the profile's operation timeout")
            for item in connection.response:
                if item["type"] == "searchResEntry":
                    yield DirectoryEntry(item["dn"], _decoded(item["raw_attributes"]))
            cookie = connection.result.get("controls", {}).get(PAGED_RESULTS_OID, {}).get("value", {}).get("cookie")
            if not cookie:
                return

    # -- passwords --

    def find_user(self, users_filter: str, login_attribute: str, username: str,
                  user_id_attribute: str) -> FoundUser | None:
        connection = self._require_bound()
        ldap_filter = f"(&{users_filter}({login_attribute}={escape_filter_chars(username)}))"
        try:
            connection.search(self.settings.base_dn, ldap_filter, SUBTREE, attributes=[user_id_attribute],
                              size_limit=2, time_limit=int(self.settings.operation_timeout))
        except ldap_errors.LDAPException as exc:
            raise _upstream("looking up the user", exc) from None
        entries = [item for item in connection.response if item["type"] == "searchResEntry"]
        if len(entries) != 1:  # none, or several: never guess which person this is
            return None
        entry = DirectoryEntry(entries[0]["dn"], _decoded(entries[0]["raw_attributes"]))
        return FoundUser(dn=entry.dn, user_id=entry.first(user_id_attribute))

    def password_matches(self, dn: str, password: str) -> bool:
        if not password:  # a simple bind without a password is an unauthenticated bind: never a success
            return False
        connection = self._new_connection(dn, password)
        try:
            self._open_secure(connection)
            _bind(connection, "checking the password")
            return True
        except ldap_errors.LDAPInvalidCredentialsResult:
            return False
        except ldap_errors.LDAPSASLPrepError:
            # ldap3 cannot send a password SASLprep (RFC 4013) refuses, e.g. with a control character:
            # to the caller that is a wrong password, known user or not
            return False
        except ldap_errors.LDAPException as exc:
            raise _upstream("checking the password", exc) from None
        finally:
            _close(connection)

    # -- internals --

    def _new_connection(self, user: str, password: str) -> Connection:
        return Connection(self._server, user=user, password=password, authentication=SIMPLE, client_strategy=SYNC,
                          auto_bind=False, raise_exceptions=True, read_only=True, auto_referrals=False,
                          receive_timeout=math.ceil(self.settings.operation_timeout))

    def _open_secure(self, connection: Connection) -> None:
        try:
            connection.open(read_server_info=False)
            if self.settings.security == "starttls":
                connection.start_tls(read_server_info=False)
        except ldap_errors.LDAPStartTLSError as exc:
            raise _tls_error(self.settings, exc) from None
        except ldap_errors.LDAPSocketOpenError as exc:
            if "ssl" in str(exc).lower() or "certificate" in str(exc).lower():
                raise _tls_error(self.settings, exc) from None
            raise _upstream("connecting", exc) from None
        except ldap_errors.LDAPException as exc:
            raise _upstream("connecting", exc) from None

    def _require_bound(self) -> Connection:
        if self._connection is None or not self._connection.bound:
            raise RuntimeError("search before bind: use LdapDirectory.bound()")
        return self._connection


def _bind(connection: Connection, doing: str) -> None:
    """A simple bind that succeeded, or ``LDAPException`` as ldap3 raises it, or ``UpstreamError``.

    Even with ``raise_exceptions`` ldap3 only returns False for some answers (a referral,
    saslBindInProgress, and codes 3 to 6): none of them is a bind that succeeded. A referral
    naming servers makes ldap3 itself fail (a KeyError), which is no fault of Orchard's.
    """
    try:
        bound = connection.bind()
    except ldap_errors.LDAPException:
        raise
    except Exception as exc:
        raise UpstreamError(f"the directory failed while {doing}: its answer could not be read "
                            f"({type(exc).__name__}: {_reason(exc)})") from None
    if not bound:
        result = connection.result or {}
        raise UpstreamError(f"the directory failed while {doing}: it answered {result.get('description')} "
                            f"(result code {result.get('result')}) instead of accepting or refusing the bind")


def _close(connection: Connection) -> None:
    try:
        connection.unbind()
    except (ldap_errors.LDAPException, OSError):
        pass  # already closed by a failed handshake or by the server


def _decoded(raw: dict[str, list[bytes]]) -> dict[str, list[str]]:
    for name in raw:
        if ";range=" in name.lower():
            # Active Directory hands out a large group's members in ranges; ldap3 follows them (auto_range), so one
            # left over means members are missing: a sync must stop rather than take the group for smaller than it is
            raise UpstreamError(f"the directory returned only part of {name.split(';')[0]} ({name}); "
                                "check the server's MaxValRange setting and sync again")
    return {name.lower(): [value.decode("utf-8", "replace") for value in values] for name, values in raw.items()}


def _certificate_info(cert: dict) -> CertificateInfo:
    not_after = datetime.fromtimestamp(ssl.cert_time_to_seconds(cert["notAfter"]), tz=timezone.utc)
    return CertificateInfo(
        subject=_name(cert.get("subject", ())),
        issuer=_name(cert.get("issuer", ())),
        not_after=not_after.isoformat(),
        days_left=(not_after - datetime.now(timezone.utc)).days,
    )


_SHORT_NAMES = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU", "countryName": "C",
                "localityName": "L", "stateOrProvinceName": "ST", "domainComponent": "DC"}


def _name(rdns) -> str:
    return ", ".join(f"{_SHORT_NAMES.get(key, key)}={value}" for rdn in rdns for key, value in rdn)


def _tls_error(settings: ConnectionSettings, exc: Exception) -> UpstreamError:
    trust = "the configured CA certificate" if settings.ca_pem else "the system's certificate store"
    reason = _reason(exc)
    if "doesn't match any name" in reason:
        reason = f"the server's certificate does not name {settings.host}"
    elif "certificate verify failed" in reason:
        reason = "certificate verify failed: " + reason.split("certificate verify failed:")[-1].split("(_ssl")[0].strip()
    return UpstreamError(
        f"TLS with {settings.host}:{settings.port} failed ({reason}); the server's certificate must be "
        f"signed by {trust} and name {settings.host}, and the port must speak "
        f"{'LDAPS' if settings.security == 'ldaps' else 'LDAP with StartTLS'}")


def _upstream(doing: str, exc: Exception) -> UpstreamError:
    return UpstreamError(f"the directory failed while {doing}: {_reason(exc)}")


def _reason(exc: Exception) -> str:
    # ldap3 wraps some messages in nested tuples
    args = exc.args
    while len(args) == 1 and isinstance(args[0], tuple):
        args = args[0]
    return " ".join(str(arg) for arg in args).strip() or type(exc).__name__
