"""The LDAP adapter against a real slapd shaped like Active Directory (LDAPS and StartTLS)."""
from __future__ import annotations

import ssl
import time
from contextlib import ExitStack

import pytest
import trustme
from ldap3 import SIMPLE, Connection, Server, Tls
from ldap3.core.exceptions import LDAPConfidentialityRequiredResult

from services.directory.adapters.ldap_directory import LdapDirectory, _decoded
from services.directory.domain.authentication import FailedSignInLimiter, authenticate
from tests.directory.scripted_ldaps import scripted_ldaps
from tests.directory.memory_failure_log import MemoryFailureLog
from services.directory.domain.connection_test import run_connection_test
from services.directory.domain.profile import parse_profile
from services.directory.domain.sync import read_import_batch
from shared.errors import PermissionDenied, UpstreamError, ValidationError
from tests.slapd import CERTIFICATE_DAYS, LIMITED_DN

SECURITY = ["ldaps", "starttls"]
FAILED = {"authenticated": False, "user_id": None}


def directory_for(data):
    return LdapDirectory(parse_profile(data).connection)


def test_the_server_refuses_binds_without_tls(slapd):
    plain = Connection(Server("127.0.0.1", port=slapd.plain_port), user=slapd.service_dn,
                       password=slapd.service_password, authentication=SIMPLE, raise_exceptions=True)
    with pytest.raises(LDAPConfidentialityRequiredResult):
        plain.bind()
    plain.unbind()


def test_a_plain_ldap_profile_is_refused(profile_data):
    with pytest.raises(ValidationError, match="only secure connections are supported"):
        parse_profile(profile_data(security="ldap"))


@pytest.mark.parametrize("security", SECURITY)
def test_a_server_certificate_from_another_ca_is_refused(profile_data, security):
    other_ca = trustme.CA().cert_pem.bytes().decode()
    directory = directory_for(profile_data(security, ca_pem=other_ca))
    with pytest.raises(UpstreamError, match="TLS with .* failed .certificate verify failed.* signed by the configured CA"):
        with directory.bound():
            pass


@pytest.mark.parametrize("security", SECURITY)
def test_the_certificate_must_name_the_host(profile_data, security):
    with pytest.raises(UpstreamError, match="TLS with 127.0.0.1.* failed .the server's certificate does not name 127"):
        with directory_for(profile_data(security, host="127.0.0.1")).bound():
            pass


def test_the_system_store_does_not_trust_a_private_ca(profile_data):
    with pytest.raises(UpstreamError, match="system's certificate store"):
        with directory_for(profile_data(ca_pem=None)).bound():
            pass


@pytest.mark.parametrize("security", SECURITY)
def test_a_wrong_bind_password_is_reported(profile_data, security):
    with pytest.raises(UpstreamError, match="refused the bind as CN=orchard-sync") as raised:
        with directory_for(profile_data(security, bind_password="not-it")).bound():
            pass
    assert "not-it" not in str(raised.value)


def test_paged_search_reads_past_the_server_size_limit(slapd, profile_data):
    user_filter = "(&(objectCategory=person)(objectClass=user))"
    raw = Connection(Server("localhost", port=slapd.ldaps_port, use_ssl=True,
                            tls=Tls(validate=ssl.CERT_REQUIRED, ca_certs_data=slapd.ca_pem)),
                     user=slapd.service_dn, password=slapd.service_password, auto_bind=True, raise_exceptions=True)
    raw.search(slapd.base_dn, user_filter, attributes=["cn"])  # the server stops an unpaged search at 1,000
    assert (raw.result["description"], len(raw.response)) == ("sizeLimitExceeded", 1000)
    raw.unbind()
    with directory_for(profile_data()).bound() as directory:
        names = [e.first("sAMAccountName") for e in directory.search(user_filter, ["sAMAccountName"])]
    assert len(names) == len(slapd.tree.people) > 1000
    assert set(names) == {p.sam for p in slapd.tree.people}


@pytest.mark.parametrize("security", SECURITY)
def test_sync_maps_the_directory_with_active_directory_defaults(slapd, profile_data, security):
    profile = parse_profile(profile_data(security))
    with LdapDirectory(profile.connection).bound() as directory:
        batch = read_import_batch(directory, profile)
    tree = slapd.tree
    assert batch.rejected == []
    assert len(batch.users) == len(tree.people)
    users = {u.user_id: u for u in batch.users}
    for person in (tree.person("s00001"), tree.person("s00007"), tree.person("t00001"), tree.person("f00003")):
        user = users[person.sam]
        assert user.user_type == person.kind
        assert user.name == (person.display_name or f"{person.given_name} {person.surname}")
        assert user.email == f"{person.sam}@orchard.test"
        assert user.locations == [person.school]
        assert user.grade_level == (f"Grade {person.grade}" if person.grade else None)
    assert {(g.name, g.location_id) for g in batch.grade_levels} == {
        (f"Grade {g}", s) for g in ("9", "10", "11", "12") for s in tree.shape.schools}
    classes = {c.class_id: c for c in batch.classes}
    assert len(classes) == len(tree.classes)
    for group in tree.classes[:3]:
        record = classes[group.cn]
        assert (record.name, record.location_id) == (group.description, group.school)
        assert record.teacher_ids == [group.teacher.sam]
        assert record.student_ids == [s.sam for s in group.students]
    assert sorted(loc.location_id for loc in batch.locations) == sorted(tree.shape.schools)


def test_sync_with_openldap_style_mapping(slapd, profile_data):
    profile = parse_profile(profile_data(sync={
        "users": {"filter": "(&(objectClass=inetOrgPerson)(employeeType=student))", "user_id": "uid",
                  "display_name": "cn", "grade_level": "departmentNumber", "default_user_type": "student"}}))
    with LdapDirectory(profile.connection).bound() as directory:
        batch = read_import_batch(directory, profile)
    students = slapd.tree.of_kind("student")
    assert len(batch.users) == len(students)
    first = batch.users[0]
    assert (first.user_id, first.name, first.grade_level, first.user_type) == (
        students[0].sam, students[0].sam, students[0].grade, "student")


def test_a_search_the_server_stops_early_is_an_error_not_a_partial_read(profile_data):
    profile = parse_profile(profile_data(bind_dn=LIMITED_DN))
    with LdapDirectory(profile.connection).bound() as directory:
        with pytest.raises(UpstreamError, match="stopped the search .* early .sizeLimitExceeded"):
            read_import_batch(directory, profile)


def test_a_filter_matching_nothing_is_an_error(profile_data):
    profile = parse_profile(profile_data(sync={"users": {"filter": "(sAMAccountName=nobody-here)"}}))
    with LdapDirectory(profile.connection).bound() as directory:
        with pytest.raises(UpstreamError, match="matched nothing"):
            read_import_batch(directory, profile)


@pytest.mark.parametrize("security", SECURITY)
def test_connection_test_reports_every_step(slapd, profile_data, security):
    profile = parse_profile(profile_data(security))
    steps = run_connection_test(LdapDirectory(profile.connection), profile, time.monotonic,
                                test_user=("t00001", "correct horse battery"))
    by_step = {s.step: s for s in steps}
    assert [s.step for s in steps] == ["connect", "tls", "bind", "search grade levels", "search users",
                                       "search classes", "authenticate"]
    assert all(s.ok for s in steps), [s.to_dict() for s in steps if not s.ok]
    assert "CN=localhost" in by_step["tls"].data["subject"]
    assert by_step["tls"].data["days_left"] in (CERTIFICATE_DAYS - 1, CERTIFICATE_DAYS)
    users = by_step["search users"].data
    assert users["count"] == len(slapd.tree.people)
    assert len(users["samples"]) == 3 and users["samples"][0]["user_id"] == "s00001"
    assert by_step["authenticate"].data["user_id"] == "t00001"


def test_connection_test_stops_at_the_failing_step(profile_data, slapd):
    profile = parse_profile(profile_data(bind_password="wrong"))
    steps = run_connection_test(LdapDirectory(profile.connection), profile, time.monotonic)
    assert [(s.step, s.ok) for s in steps] == [("connect", True), ("tls", True), ("bind", False)]
    closed = parse_profile(profile_data(port=1))
    (connect,) = run_connection_test(LdapDirectory(closed.connection), closed, time.monotonic)
    assert not connect.ok and "cannot connect to localhost:1" in connect.detail


class BindCounting(LdapDirectory):
    """The real adapter, counting the binds that check a password."""

    def __init__(self, settings):
        super().__init__(settings)
        self.password_binds = 0

    def password_matches(self, dn, password):
        self.password_binds += 1
        return super().password_matches(dn, password)


@pytest.fixture
def sign_in(profile_data):
    """``sign_in(username, password)`` through one profile per login attribute, all sharing one limiter;
    ``sign_in.binds`` is how many password binds the last attempt made."""
    limiter = FailedSignInLimiter(MemoryFailureLog(), time.monotonic)

    def attempt(username, password, login_attributes=("sAMAccountName",)):
        profiles = [parse_profile(profile_data("starttls", authentication={"enabled": True, "login_attribute": name}))
                    for name in login_attributes]
        with ExitStack() as stack:
            candidates = [(stack.enter_context(BindCounting(p.connection).bound()), p) for p in profiles]
            try:
                return authenticate(candidates, limiter, username, password)
            finally:
                attempt.binds = sum(directory.password_binds for directory, _ in candidates)
    return attempt


def test_authentication_succeeds_with_the_right_password(sign_in):
    result = sign_in("t00001", "correct horse battery")
    assert (result.authenticated, result.user_id) == (True, "t00001")
    result = sign_in("t00001@orchard.test", "correct horse battery", login_attributes=["userPrincipalName"])
    assert (result.authenticated, result.user_id) == (True, "t00001")


def test_a_wrong_password_and_an_unknown_user_look_the_same(sign_in):
    wrong = sign_in("t00001", "incorrect")
    wrong_binds = sign_in.binds
    unknown = sign_in("no-such-user", "incorrect")
    assert wrong.to_dict() == unknown.to_dict() == FAILED
    assert wrong_binds == sign_in.binds == 1  # the same work, so the time taken does not tell them apart either


def test_an_empty_password_is_refused(sign_in, profile_data, slapd):
    with pytest.raises(ValidationError, match="a password is required"):
        sign_in("t00001", "")
    directory = directory_for(profile_data())
    assert directory.password_matches(slapd.tree.person("t00001").dn, "") is False


def test_filter_characters_in_usernames_are_escaped(sign_in):
    assert sign_in("lee*)(x", "parenthesised pass").to_dict() == {"authenticated": True, "user_id": "lee*)(x"}
    for username in ("*", "t0000*", "*)(sAMAccountName=t00001", "t00001)(|(objectClass=*"):
        assert sign_in(username, "correct horse battery").authenticated is False


#: spellings slapd (RFC 4518: NFKC and case folding) matches to the account t00001
T00001_SPELLINGS = ("t00001", "ｔ00001", "T00001", "t₀0001", "ｔ０００01", "Ｔ00001")


def test_lookalike_spellings_of_a_username_share_one_limit(sign_in):
    for spelling in T00001_SPELLINGS:
        assert sign_in(spelling, "correct horse battery").user_id == "t00001"
    for spelling in T00001_SPELLINGS[:5]:
        assert sign_in(spelling, "incorrect").to_dict() == FAILED
    with pytest.raises(PermissionDenied, match="too many failed sign-ins"):
        sign_in(T00001_SPELLINGS[5], "correct horse battery")


def test_every_name_that_reaches_an_account_shares_its_limit(sign_in):
    """Profiles logging in by sAMAccountName and by userPrincipalName: two names for one account.

    Once the account's failures are used up its other name fails even with the right password,
    without saying so: an unknown user's other name answers the same."""
    both = ("sAMAccountName", "userPrincipalName")
    for _ in range(5):
        assert sign_in("t00001", "incorrect", both).to_dict() == FAILED
        sign_in("no-such-user", "incorrect", both)
    locked = sign_in("t00001@orchard.test", "correct horse battery", both)
    locked_binds = sign_in.binds
    unknown = sign_in("no-such-user@orchard.test", "incorrect", both)
    assert locked.to_dict() == unknown.to_dict() == FAILED
    assert locked_binds == sign_in.binds == 2


def test_a_password_the_directory_cannot_take_is_a_failed_sign_in(sign_in):
    # ldap3 refuses to send each of these (SASLprep, RFC 4013): an answer must not depend on the user existing
    for password in ("x\x01", "tab\tstop", "\u00ad", "private \ue000", "\ufdd0"):
        assert sign_in("t00001", password).to_dict() == sign_in("no-such-user", password).to_dict() == FAILED
    with pytest.raises(PermissionDenied, match="too many failed sign-ins"):  # each one counted
        sign_in("t00001", "correct horse battery")


@pytest.mark.parametrize("username, password", [("\ud800", "correct horse battery"), ("t0\udfff0001", "x"),
                                                ("t00001", "hunter\ud8002")])
def test_unpaired_surrogates_are_refused_and_change_nothing(sign_in, username, password):
    for _ in range(5):
        with pytest.raises(ValidationError, match="not valid Unicode text") as refused:
            sign_in(username, password)
        assert "\ud800" not in str(refused.value) and "hunter" not in str(refused.value) and sign_in.binds == 0
    assert sign_in("t00001", "correct horse battery").authenticated is True


def test_a_username_longer_than_an_email_address_is_refused(sign_in):
    with pytest.raises(ValidationError, match="321 characters long; at most 320"):
        sign_in("t" * 321, "correct horse battery")


def test_a_partial_ranged_attribute_stops_the_read_instead_of_dropping_members():
    assert _decoded({"member": [b"CN=a"]}) == {"member": ["CN=a"]}
    with pytest.raises(UpstreamError, match=r"only part of member \(member;range=0-1499\)"):
        _decoded({"member;range=0-1499": [b"CN=a"] * 1500})


#: answers ldap3 does not raise for, even with raise_exceptions: referral, saslBindInProgress, timeLimitExceeded,
#: sizeLimitExceeded, compareFalse, compareTrue
UNRAISED_BIND_RESULTS = (10, 14, 3, 4, 5, 6)


@pytest.mark.parametrize("result_code, referrals", [(code, ()) for code in UNRAISED_BIND_RESULTS]
                         + [(10, ("ldap://dc2.school.example/",))])
def test_a_bind_the_directory_neither_accepts_nor_refuses_is_never_a_success(profile_data, result_code, referrals):
    """Against a server answering every bind so, a password check and the service account's bind are errors of
    the directory's: never a right password, nor a bind step that passed (nor, for a referral naming servers,
    ldap3's own KeyError, an internal error that would end a round of scheduled syncs)."""
    with scripted_ldaps(result_code, referrals=referrals) as server:
        profile = parse_profile(profile_data(host=server.host, port=server.port, ca_pem=server.ca_pem))
        with pytest.raises(UpstreamError, match="the directory failed while checking the password: "):
            LdapDirectory(profile.connection).password_matches("CN=t00001,OU=Teachers,DC=orchard,DC=test", "a guess")
        with pytest.raises(UpstreamError, match="the directory failed while binding as the service account: "):
            with LdapDirectory(profile.connection).bound():
                pass
        steps = run_connection_test(LdapDirectory(profile.connection), profile, time.monotonic)
    assert [(s.step, s.ok) for s in steps] == [("connect", True), ("tls", True), ("bind", False)]

