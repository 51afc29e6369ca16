"""Profile validation: secure connections only, secrets never shown, AD defaults."""
from __future__ import annotations

import re

import pytest
import trustme

from services.directory.domain.profile import AD_USER_FILTER, apply_changes, parse_profile, profile_view
from shared.errors import ValidationError

CA_PEM = trustme.CA().cert_pem.bytes().decode()
#: as Active Directory writes a group's DN, and ldap3 sends it (a value with a DN's escape goes as written)
MEMBER_OF_DN_ESCAPES = "(&(objectClass=user)(memberOf=CN=Smith\\, John,OU=Staff,DC=school,DC=example))"


def request(**overrides):
    data = {"name": "District AD", "host": "dc1.school.example", "security": "ldaps", "ca_pem": CA_PEM,
            "bind_dn": "CN=orchard,OU=Service,DC=school,DC=example", "bind_password": "s3cret!",
            "base_dn": "DC=school,DC=example"}
    data.update(overrides)
    return data


def test_defaults_fit_active_directory():
    profile = parse_profile(request())
    assert profile.connection.port == 636
    assert parse_profile(request(security="starttls")).connection.port == 389
    users = profile.sync.users
    assert (users.filter, users.user_id, users.email, users.display_name, users.first_name, users.last_name) == (
        AD_USER_FILTER, "sAMAccountName", "mail", "displayName", "givenName", "sn")
    assert profile.authentication.login_attribute == "sAMAccountName"
    assert profile.sync.grade_levels.filter is None and profile.sync.classes.filter is None


@pytest.mark.parametrize("security", ["ldap", "plain", "none", "LDAP"])
def test_plain_ldap_is_refused(security):
    with pytest.raises(ValidationError, match="only secure connections are supported"):
        parse_profile(request(security=security, port=389))


def test_system_store_when_no_ca_is_given():
    assert parse_profile(request(ca_pem=None)).connection.ca_pem is None


@pytest.mark.parametrize("overrides, message", [
    ({"name": "x" * 201}, "at most 200"),
    ({"host": "ldaps://dc1.school.example"}, "host name"),
    ({"port": 70000}, "port"),
    ({"port": "636"}, "port"),
    ({"ca_pem": "not a certificate"}, "not a PEM certificate"),
    ({"bind_dn": "orchard"}, "distinguished name"),
    ({"bind_password": ""}, "bind_password is required"),
    ({"base_dn": ""}, "base_dn"),
    ({"connect_timeout": 0}, "connect_timeout"),
    ({"operation_timeout": 10_000}, "operation_timeout"),
    ({"sync": {"users": {"filter": "(&(objectClass=user)"}}}, "not an LDAP filter"),
    ({"sync": {"users": {"user_id": "sAM AccountName"}}}, "attribute name"),
    ({"sync": {"users": {"user_types": [{"user_type": "pupil", "ou": "OU=X,DC=y"}]}}}, "user_type"),
    ({"sync": {"users": {"user_types": [{"user_type": "student"}]}}}, "exactly one of"),
    ({"sync": {"daily_sync_time": "25:00"}}, "HH:MM"),
    ({"sync": {"only_add_new": "yes"}}, "true or false"),
])
def test_bad_requests_say_what_is_wrong(overrides, message):
    with pytest.raises(ValidationError, match=message):
        parse_profile(request(**overrides))


@pytest.mark.parametrize("overrides, path, accepted", [
    ({"prot": 636}, "prot", "the profile accepts name, host, port, security,"),
    ({"authentication": {"enable": True}}, "authentication.enable", "authentication accepts enabled, login_attribute"),
    ({"sync": {"daily_sync": "03:00"}}, "sync.daily_sync", "sync accepts users, grade_levels, classes,"),
    ({"sync": {"users": {"filtr": AD_USER_FILTER}}}, "sync.users.filtr", "sync.users accepts filter, user_id,"),
    ({"sync": {"grade_levels": {"member": "x"}}}, "sync.grade_levels.member",
     "sync.grade_levels accepts filter, name, members"),
    ({"sync": {"classes": {"id": "cn"}}}, "sync.classes.id", "sync.classes accepts filter, class_id, name, members"),
    ({"sync": {"users": {"user_types": [{"user_type": "staff", "ou": "OU=Staff,DC=x", "grade": "7"}]}}},
     "sync.users.user_types[0].grade", "sync.users.user_types[0] accepts user_type, group, ou"),
])
def test_unknown_settings_are_refused_with_their_path_and_the_accepted_ones(overrides, path, accepted):
    """A misspelt setting would otherwise be dropped and its default used without a word."""
    with pytest.raises(ValidationError, match=re.escape(f"unknown setting {path}: check the spelling; {accepted}")):
        parse_profile(request(**overrides))
    with pytest.raises(ValidationError, match=re.escape(f"unknown setting {path}:")):
        apply_changes(parse_profile(request()), overrides)


def test_the_password_is_never_shown():
    profile = parse_profile(request())
    assert "s3cret!" not in repr(profile)
    assert "s3cret!" not in str(profile_view(profile))
    assert "bind_password" not in profile_view(profile)
    assert profile.connection.bind_password.reveal() == "s3cret!"


def test_changes_keep_the_password_and_revalidate():
    profile = parse_profile(request())
    changed = apply_changes(profile, {"port": 3269, "sync": {"users": {"user_id": "uid"}, "welcome_email": True}})
    assert changed.connection.port == 3269
    assert changed.connection.bind_password.reveal() == "s3cret!"
    assert changed.sync.users.user_id == "uid" and changed.sync.users.email == "mail"
    assert changed.sync.welcome_email is True
    assert apply_changes(profile, {"bind_password": "new"}).connection.bind_password.reveal() == "new"
    with pytest.raises(ValidationError, match="only secure connections"):
        apply_changes(profile, {"security": "ldap"})


def test_a_view_parses_back_to_the_same_profile():
    profile = parse_profile(request(sync={"users": {"user_types": [{"user_type": "staff", "ou": "OU=Staff,DC=x"}],
                                                    "grade_level": "departmentNumber", "email": None},
                                          "daily_sync_time": "02:30"}))
    again = parse_profile({**profile_view(profile), "bind_password": "s3cret!"})
    assert again == profile


@pytest.mark.parametrize("changes, moved", [
    ({"host": "ldap.elsewhere.example"}, "host"),
    ({"bind_dn": "CN=someone-else,OU=Staff,DC=school,DC=example"}, "bind_dn"),
    ({"host": "ldap.elsewhere.example", "bind_dn": "CN=x,DC=elsewhere,DC=example"}, "host and bind_dn"),
])
def test_moving_the_password_to_another_server_or_account_needs_it_again(changes, moved):
    """Else an administrator could point the profile at a server of theirs and be sent the stored password."""
    profile = parse_profile(request())
    with pytest.raises(ValidationError, match=f"changing {moved} needs the bind password again") as refused:
        apply_changes(profile, changes)
    assert "s3cret!" not in str(refused.value)
    moved_profile = apply_changes(profile, {**changes, "bind_password": "for the new server"})
    assert moved_profile.connection.bind_password.reveal() == "for the new server"
    assert apply_changes(profile, {"host": " dc1.school.example "}).connection.bind_password.reveal() == "s3cret!"


@pytest.mark.parametrize("users_filter, problem", [
    ("(cn=a)(cn=b)", "more after the filter's last ')'; combine filters with (&...) or (|...) (at character 7)"),
    ("(&)", "'&' needs at least one filter after it"),
    ("(cn)", "'(cn)' is not an assertion"),
    ("(=x)", "must start with an attribute name"),
    ("((cn=a))", "needs '&', '|' or '!' before it"),
    ("(!(cn=a)(cn=b))", "'!' takes exactly one filter"),
    ("(&(objectClass=user)x)", "'x' where a '(' or ')' should be"),
    ("(cn=Smith\\ John)", "a '\\' in a value must start an escape of two hex digits, or a DN's escape "
                          "(\\, \\+ \\\" \\# \\\\ \\< \\> \\; \\=): write '\\' as \\5c"),
    ("(cn=Smith\\)", "')' as \\29 (at character 10)"),  # at the end: ldap3 would send a '\' of the value's
    ("(cn=Smith\\4g)", "')' as \\29 (at character 10)"),
    ("(cn=Smith\\*)", "')' as \\29 (at character 10)"),
    ("(cn=a\\\\\\)", "')' as \\29 (at character 8)"),  # '\\' is one escape, the next '\' none
    ("(cn>=a*)", "'*' matches anything only after '='"),
    ("(:dn:=x)", "not an extensible match"),
    ("(&(objectClass=user)", "a '(' is not closed"),
    ("objectClass=user", "must be enclosed in parentheses"),
])
def test_a_filter_that_is_not_ldap_is_refused_when_saved_not_at_the_next_sync(users_filter, problem):
    with pytest.raises(ValidationError, match=re.escape(f"sync.users.filter is not an LDAP filter: ") + ".*"
                       + re.escape(problem)):
        parse_profile(request(sync={"users": {"filter": users_filter}}))
    with pytest.raises(ValidationError, match=re.escape("sync.classes.filter is not an LDAP filter")):
        apply_changes(parse_profile(request()), {"sync": {"classes": {"filter": users_filter}}})


@pytest.mark.parametrize("users_filter", [
    AD_USER_FILTER,
    "(&(objectCategory=person)(objectClass=user)(!(userAccountControl:1.2.840.113556.1.4.803:=2)))",
    "(memberOf:1.2.840.113556.1.4.1941:=CN=Grade 9,OU=Groups,DC=school,DC=example)",
    "(|(sAMAccountName=s*)(mail=*@school.example)(cn=*van*der*))",
    "(cn=Smith\\2c John)",
    MEMBER_OF_DN_ESCAPES,
    '(memberOf=CN=\\#1 \\"Lab\\" \\+ Staff\\; Kitchen \\<A\\> \\= \\\\ \\28old\\29,OU=Groups,DC=school,DC=example)',
    "(&\n  (objectClass=user)\n  (employeeType=student)\n)",
    "(cn:dn:=Lincoln High)",
    "(2.5.4.3=Grade 9)",
    "(displayName=Zoë)",
])
def test_filters_schools_write_are_accepted(users_filter):
    assert parse_profile(request(sync={"users": {"filter": users_filter}})).sync.users.filter == users_filter.strip()


def test_a_profile_saved_with_a_dn_s_escapes_in_its_filter_can_be_renamed():
    """Any update checks every filter again: one refused then, the profile could never be changed."""
    saved = {**profile_view(parse_profile(request())), "bind_password": "s3cret!"}
    saved["sync"]["users"]["filter"] = MEMBER_OF_DN_ESCAPES
    renamed = apply_changes(parse_profile(saved, saved=True), {"name": "District AD (staff)"})
    assert renamed.name == "District AD (staff)"
    assert renamed.sync.users.filter == MEMBER_OF_DN_ESCAPES


def test_a_saved_filter_an_earlier_check_let_through_still_loads_and_is_refused_at_the_next_update():
    """A profile stored before filters were checked must stay readable, or it could be neither listed nor fixed."""
    saved = {**profile_view(parse_profile(request())), "bind_password": "s3cret!"}
    saved["sync"]["users"]["filter"] = "(cn=a)(cn=b)"
    profile = parse_profile(saved, saved=True)
    assert profile.sync.users.filter == "(cn=a)(cn=b)"
    with pytest.raises(ValidationError, match=re.escape("sync.users.filter is not an LDAP filter")):
        apply_changes(profile, {"sync": {"daily_sync_time": "03:00"}})
    fixed = apply_changes(profile, {"sync": {"users": {"filter": "(|(cn=a)(cn=b))"}}})
    assert fixed.sync.users.filter == "(|(cn=a)(cn=b))"
