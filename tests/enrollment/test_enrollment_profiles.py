"""Enrollment profile validation: nothing reaches Apple until the profile is complete."""
import pytest

from services.enrollment.domain.profiles import validated_profile
from shared.errors import ValidationError


def test_complete_profile_passes_without_device_list():
    profile = {"profile_name": "School iPads", "url": "https://mdm.school.example/enroll", "is_supervised": True,
               "devices": ["A"], "skip_setup_items": ["Siri"],
               "configuration_web_url": "https://mdm.school.example/enroll"}
    assert validated_profile(profile) == {k: v for k, v in profile.items() if k != "devices"}


@pytest.mark.parametrize("profile,message", [
    (None, "must be an object"),
    ({"url": "https://mdm.example/enroll"}, "needs a profile_name"),
    ({"profile_name": "P"}, "needs a url"),
    ({"profile_name": "P", "url": "http://mdm.example/enroll"}, "must be an https://"),
    ({"profile_name": "P", "url": "https:///enroll"}, "must be an https://"),
    ({"profile_name": "P", "url": "https://[::1/enroll"}, "must be an https://"),
    ({"profile_name": "P", "url": "https://mdm.example:99999/enroll"}, "must be an https://"),
    ({"profile_name": "P", "url": "https://m.example", "is_mdm_removable": False, "is_supervised": False}, "supervised"),
    ({"profile_name": "P", "url": "https://m.example", "configuration_web_url": "http://m.example/enroll"},
     "configuration_web_url 'http://m.example/enroll' must be an https://"),
    ({"profile_name": "P", "url": "https://m.example", "configuration_web_url": ["https://m.example/enroll"]},
     "configuration_web_url must be the https:// address of the sign-in page"),
])
def test_incomplete_profiles_are_refused(profile, message):
    with pytest.raises(ValidationError, match=message):
        validated_profile(profile)
