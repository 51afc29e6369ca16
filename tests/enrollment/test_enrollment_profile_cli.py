"""``orchard enrollment profile ...``: the enrollment profile from a file, and assigned to devices."""
import re

import pytest
import yaml

from tests.enrollment.test_enrollment_cli import orchard  # noqa: F401  the CLI against a running service
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def test_a_profile_is_defined_from_a_file_and_assigned_to_devices(orchard, dep_sandbox, tmp_path):  # noqa: F811
    certificate = tmp_path / "orchard.pem"
    created = orchard("token", "create", "Springfield", "--out", str(certificate))
    token_id = re.search(r"Token (\S+) created", created.output).group(1)
    server = dep_sandbox.create_server(certificate.read_bytes(), server_name="ASM Springfield")
    dep_sandbox.server(server["server_uuid"], "devices/generate", {"count": 3})
    p7m = tmp_path / "Springfield_Token_2026.p7m"
    p7m.write_text(server["p7m"])
    assert orchard("token", "upload", token_id, str(p7m)).exit_code == 0
    wait_for(lambda: re.search(r"upload +fetch .* 3 ", orchard("token", "show", token_id).output), what="first sync")
    serials = re.findall(r"^(C\w+) ", orchard("devices", token_id).output, re.M)
    assert len(serials) == 3

    incomplete = tmp_path / "incomplete.yaml"
    incomplete.write_text("profile_name: Springfield iPads\n")
    refused = orchard("profile", "define", token_id, str(incomplete))
    assert refused.exit_code == 1 and "needs a url" in refused.output and "Traceback" not in refused.output

    settings = tmp_path / "profile.yaml"
    settings.write_text(yaml.safe_dump({"profile_name": "Springfield iPads", "url": "https://mdm.example/mdm/enroll",
                                        "is_supervised": True, "skip_setup_items": ["Location"]}))
    defined = orchard("profile", "define", token_id, str(settings))
    assert defined.exit_code == 0, defined.output
    profile_uuid = re.search(r"Profile (\S+) defined", defined.output).group(1)
    assert re.search(rf"^default profile uuid +{profile_uuid}$", orchard("token", "show", token_id).output, re.M)

    assigned = orchard("profile", "assign", token_id, serials[0], serials[1], "NOT-OURS-1")
    assert assigned.exit_code == 1, assigned.output  # not every device took it
    assert re.search(rf"^{serials[0]} +SUCCESS$", assigned.output, re.M)
    assert re.search(r"^NOT-OURS-1 +NOT_ACCESSIBLE$", assigned.output, re.M)
    assert "assigned: 2" in orchard("devices", token_id).output
