"""A location-restricted content token refuses devices and users outside its locations."""
import pytest

from services.vpp.domain.licence_reach import LicenceTarget, require_within_token
from shared.errors import PermissionDenied


def test_unrestricted_tokens_reach_everything_and_restricted_ones_their_locations():
    anywhere = [LicenceTarget("device", "D1", ()), LicenceTarget("user", "u1", ("B",))]
    require_within_token("District", [], anywhere)
    require_within_token("Alpha", ["A"], [LicenceTarget("device", "D1", ("A",)), LicenceTarget("user", "u1", ("A", "B"))])


@pytest.mark.parametrize("target, message", [
    (LicenceTarget("device", "D2", ("B",)), "device D2 is at location\\(s\\) B"),
    (LicenceTarget("user", "u2", ()), "user u2 is at no known location"),
])
def test_outside_targets_are_refused_naming_the_location(target, message):
    with pytest.raises(PermissionDenied, match=message):
        require_within_token("Alpha", ["A"], [LicenceTarget("device", "D1", ("A",)), target])
