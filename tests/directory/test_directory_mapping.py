"""Mapping entries to roster records, the empty-result guard and sign-in rate limiting (in memory)."""
from __future__ import annotations

import pytest

from services.directory.domain.authentication import FailedSignInLimiter, authenticate
from tests.directory.memory_failure_log import MemoryFailureLog
from services.directory.domain.entries import DirectoryEntry, normalize_dn, rdn_value, split_dn
from services.directory.domain.ports import FoundUser
from services.directory.domain.profile import parse_profile
from services.directory.domain.sync import read_import_batch
from shared.errors import PermissionDenied, UpstreamError, ValidationError

BASE = "DC=school,DC=example"
TEACHERS = f"CN=Teachers,OU=Groups,OU=North,{BASE}"


def entry(dn, **attributes):
    return DirectoryEntry(dn, {k.lower(): v if isinstance(v, list) else [v] for k, v in attributes.items()})


def person(cn, ou, school="North", **attributes):
    return entry(f"CN={cn},OU={ou},OU={school},{BASE}", sAMAccountName=cn, mail=f"{cn}@school.example", **attributes)


class FakeDirectory:
    def __init__(self, by_filter):
        self.by_filter = by_filter
        self.searches = []

    def search(self, ldap_filter, attributes):
        self.searches.append((ldap_filter, tuple(attributes)))
        return iter(self.by_filter.get(ldap_filter, []))


def profile(**sync):
    return parse_profile({"name": "p", "host": "dc.school.example", "security": "ldaps",
                          "bind_dn": f"CN=svc,{BASE}", "bind_password": "pw", "base_dn": BASE, "sync": sync})


USER_FILTER = "(&(objectCategory=person)(objectClass=user))"
GRADES = "(cn=Grade*)"
CLASSES = "(cn=Class*)"
RULES = {"user_types": [{"user_type": "teacher", "group": TEACHERS},
                        {"user_type": "student", "ou": f"OU=Students,OU=North,{BASE}"}]}


def test_users_grades_and_classes_map_with_active_directory_defaults():
    ann = person("ann", "Students", displayName="Ann Lee", givenName="Ann", sn="Lee")
    bob = person("bob", "Students", givenName="Bob", sn="Stone")  # no displayName
    tom = person("tom", "Teachers", displayName="Tom Tutor", memberOf=[TEACHERS.upper()])
    grade = entry(f"CN=Grade 9,OU=Groups,OU=North,{BASE}", cn="Grade 9", member=[ann.dn.lower(), bob.dn])
    klass = entry(f"CN=Class 1,OU=Classes,OU=North,{BASE}", sAMAccountName="MATH-1", description="Maths, period 1",
                  member=[tom.dn, ann.dn, bob.dn, f"CN=printer,{BASE}"])
    directory = FakeDirectory({USER_FILTER: [ann, bob, tom], GRADES: [grade], CLASSES: [klass]})
    p = profile(users=RULES, grade_levels={"filter": GRADES}, classes={"filter": CLASSES}, welcome_email=True)

    batch = read_import_batch(directory, p)

    assert batch.source == "ldap"
    assert [(u.user_id, u.user_type, u.name, u.grade_level, u.locations) for u in batch.users] == [
        ("ann", "student", "Ann Lee", "Grade 9", ["North"]),
        ("bob", "student", "Bob Stone", "Grade 9", ["North"]),
        ("tom", "teacher", "Tom Tutor", None, ["North"])]
    assert all(u.welcome_email and u.email == f"{u.user_id}@school.example" for u in batch.users)
    assert [(g.name, g.location_id) for g in batch.grade_levels] == [("Grade 9", "North")]
    (cls,) = batch.classes
    assert (cls.class_id, cls.name, cls.location_id, cls.teacher_ids, cls.student_ids) == (
        "MATH-1", "Maths, period 1", "North", ["tom"], ["ann", "bob"])
    assert [loc.location_id for loc in batch.locations] == ["North"]
    assert batch.rejected == []
    assert [f for f, _ in directory.searches] == [GRADES, USER_FILTER, CLASSES]


def test_openldap_attributes_work_by_mapping():
    users = [entry(f"uid=amy,ou=people,o=North,{BASE}", uid="amy", cn="Amy Ng", mail="amy@x.example",
                   departmentNumber="7", o="North")]
    p = profile(users={"filter": "(objectClass=inetOrgPerson)", "user_id": "uid", "display_name": "cn",
                       "grade_level": "departmentNumber", "default_user_type": "student"},
                location_attribute="o")
    batch = read_import_batch(FakeDirectory({"(objectClass=inetOrgPerson)": users}), p)
    (amy,) = batch.users
    assert (amy.user_id, amy.name, amy.grade_level, amy.locations, amy.user_type) == (
        "amy", "Amy Ng", "7", ["North"], "student")


def test_unmappable_entries_are_rejected_with_reasons():
    users = [person("ann", "Students"), person("ann", "Students", school="South"), person("zed", "Visitors"),
             entry(f"CN=noid,OU=Students,OU=North,{BASE}", mail="x@y.z")]
    batch = read_import_batch(FakeDirectory({USER_FILTER: users}), profile(users=RULES))
    assert [u.user_id for u in batch.users] == ["ann"]
    reasons = [r.reason for r in batch.rejected]
    assert "is also used by" in reasons[0] and "OU=South" in reasons[0]
    assert "matches no user type rule" in reasons[1]
    assert "has no sAMAccountName" in reasons[2]
    # the roster keeps a user whose entry it could not map, instead of deleting them as gone from the directory
    assert [r.id for r in batch.rejected] == [None, "zed", None]


@pytest.mark.parametrize("which", ["users", "grade_levels", "classes"])
def test_a_filter_that_matches_nothing_is_an_error_not_an_empty_plan(which):
    found = {USER_FILTER: [person("ann", "Students")], GRADES: [entry(f"CN=G,{BASE}", cn="G")],
             CLASSES: [entry(f"CN=C,OU=Classes,OU=North,{BASE}", sAMAccountName="C")]}
    empty = {"users": USER_FILTER, "grade_levels": GRADES, "classes": CLASSES}[which]
    found[empty] = []
    p = profile(users=RULES, grade_levels={"filter": GRADES}, classes={"filter": CLASSES})
    with pytest.raises(UpstreamError, match="matched nothing .* nothing was imported"):
        read_import_batch(FakeDirectory(found), p)


def test_users_none_of_which_map_are_an_error():
    with pytest.raises(UpstreamError, match="none of the 1 users .* could be mapped"):
        read_import_batch(FakeDirectory({USER_FILTER: [person("ann", "Students")]}), profile())


def test_distinguished_names_compare_without_case_or_spacing():
    assert normalize_dn("CN=Ann Lee, OU = Students,DC=X") == normalize_dn("cn=ann lee,ou=students,dc=x")
    assert split_dn(r"CN=Lee\, Ann,OU=S,DC=x") == [r"CN=Lee\, Ann", "OU=S", "DC=x"]
    assert rdn_value(r"OU=North\2C East") == "North, East"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class FakePasswords:
    def __init__(self):
        self.binds = []

    def find_user(self, users_filter, login_attribute, username, user_id_attribute):
        return FoundUser(dn=f"CN={username},{BASE}", user_id=username) if username == "ann" else None

    def password_matches(self, dn, password):
        self.binds.append(dn)
        return password == "right"


def test_repeated_failures_are_rate_limited_per_username_then_forgiven():
    clock, passwords = Clock(), FakePasswords()
    limiter = FailedSignInLimiter(MemoryFailureLog(), clock, max_failures=3, window=600)
    p = profile()
    for _ in range(3):
        assert not authenticate([(passwords, p)], limiter, "ann", "wrong").authenticated
    with pytest.raises(PermissionDenied, match="too many failed sign-ins .* 10 minute"):
        authenticate([(passwords, p)], limiter, "ANN", "right")
    assert authenticate([(passwords, p)], limiter, "bob", "x").authenticated is False  # other usernames unaffected
    clock.now += 601
    result = authenticate([(passwords, p)], limiter, "ann", "right")
    assert (result.authenticated, result.user_id) == (True, "ann")


def test_unknown_users_are_limited_the_same_way():
    clock = Clock()
    limiter = FailedSignInLimiter(MemoryFailureLog(), clock, max_failures=2)
    for _ in range(2):
        authenticate([(FakePasswords(), profile())], limiter, "ghost", "x")
    with pytest.raises(PermissionDenied):
        authenticate([(FakePasswords(), profile())], limiter, "ghost", "x")


def test_empty_passwords_are_refused_before_any_bind():
    passwords = FakePasswords()
    for username, password in (("ann", ""), ("", "right"), ("ann", None)):
        with pytest.raises(ValidationError, match="required"):
            authenticate([(passwords, profile())], FailedSignInLimiter(MemoryFailureLog(), Clock()), username, password)
    assert passwords.binds == []
