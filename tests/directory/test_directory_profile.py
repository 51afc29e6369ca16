"""Profile validation: secure connections only, secrets never shown, AD defaults."""
from __future__ import annotations

import re

import pytest
import trustme

from services.directory.domain.profile import AD_USER_FILTER, apply_changes, parse_profile, profile_view
from shared.errors import ValidationError

CA_PEM = trustme.CA().cert_pem.bytes().decode()


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
