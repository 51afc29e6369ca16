"""Users by user ID in Orchard, by clientUserId at Apple: a user the roster renamed keeps Apple's."""
from services.vpp.domain.apple_users import AppleUserIds
from services.vpp.domain.licences import LicenceBatch

IDS = AppleUserIds({"new": "old", "b": "a", "a": "b"})  # old renamed to new; a and b swapped their IDs


def test_a_renamed_user_is_known_to_apple_by_the_id_it_registered():
    assert [IDS.client_user_id(u) for u in ("new", "a", "b", "ann")] == ["old", "b", "a", "ann"]
    assert [IDS.user_id(c) for c in ("old", "a", "b", "ann")] == ["new", "b", "a", "ann"]


def test_a_user_given_a_renamed_users_old_id_has_no_apple_user():
    assert IDS.client_user_id("old") is None  # Apple's "old" is the user now called "new"
    batch = LicenceBatch("111", "STDQ", client_user_ids=("new", "old", "ann"))
    assert IDS.for_apple(batch) == (LicenceBatch("111", "STDQ", client_user_ids=("old", "ann")), ["old"])
    assert AppleUserIds().for_apple(batch) == (batch, [])


def test_apples_failures_name_users_by_user_id():
    failures = [{"errorNumber": 9609, "errorInfo": {"clientUserIds": ["old", "ann"], "assets": []}},
                {"errorNumber": 9603, "errorMessage": "Internal error"}]
    assert IDS.failures_by_user_id(failures) == [
        {"errorNumber": 9609, "errorInfo": {"clientUserIds": ["new", "ann"], "assets": []}}, failures[1]]
