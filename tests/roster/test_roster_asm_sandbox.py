"""Apple School Manager syncs end to end: the roster, the enrollment service and the DEP sandbox's roster API."""
from __future__ import annotations

import pytest

from apple_sandbox.dep import DepSandbox
from apple_sandbox.server import serve_wsgi
from services.enrollment.service import EnrollmentService
from services.roster.service import RosterService
from tests.enrollment.conftest import SandboxAdmin

pytestmark = pytest.mark.integration


@pytest.fixture
def dep_sandbox():
    running = serve_wsgi(DepSandbox())
    yield SandboxAdmin(running.url)
    running.stop()


def test_a_person_apple_gives_no_user_id_any_more_keeps_their_user(runner_factory, orchard_config, rpc_as,
                                                                    dep_sandbox):
    orchard_config["SERVICES"]["enrollment"]["dep_url"] = dep_sandbox.url
    runner_factory(orchard_config, EnrollmentService, RosterService).start()
    # twelve people, so that deleting one stays under the deletion guard's 10 %
    persons = [{"unique_identifier": f"P{i}", "name": f"Person {i}", "managed_apple_id": f"p{i}@appleid.school.example"}
               for i in range(12)]
    with rpc_as() as rpc:
        created = rpc.enrollment.create_server_token("Springfield MDM")
        server = dep_sandbox.create_server(created["public_key_pem"].encode())
        token_id = rpc.enrollment.upload_server_token(created["id"], server["p7m"])["id"]
        dep_sandbox.server(server["server_uuid"], "roster", {
            "locations": [{"unique_identifier": "L1", "name": "North"}],
            "classes": [{"unique_identifier": "C1", "name": "Maths", "location": {"unique_identifier": "L1"},
                         "instructor_unique_identifiers": ["P0"],
                         "student_unique_identifiers": [f"P{i}" for i in range(1, 12)]}],
            "persons": persons})
        rpc.roster.set_asm_preferences(token_id, {"user_id_source": "managed_apple_id"})
        first = rpc.roster.preview_asm(token_id)
        assert first["counts"]["user"]["add"] == 12
        rpc.roster.apply_plan(first["plan_id"])

        # the Managed Apple ID of a student is removed in Apple School Manager
        dep_sandbox.server(server["server_uuid"], "roster", {"persons": [
            {key: value for key, value in persons[5].items() if key != "managed_apple_id"}]})
        second = rpc.roster.preview_asm(token_id)
        assert second["counts"]["user"] == {"add": 0, "update": 0, "delete": 0}
        (rejected,) = second["rejected"]
        assert rejected["id"] == "p5@appleid.school.example"
        assert rejected["reason"] == (
            "Person 5 has no managed apple id in Apple School Manager, which the sync preferences use as user ID; "
            "user 'p5@appleid.school.example', imported before for this person, is not deleted")
        assert "user(s) p5@appleid.school.example kept, not deleted, because their rows were rejected; fix those " \
               "rows and import again" in second["warnings"]
        assert rpc.roster.apply_plan(second["plan_id"])["events"] == 0
        assert rpc.roster.list_users()["total"] == 12
        assert rpc.roster.get_user("p5@appleid.school.example")["classes"] == [{"class_id": "C1", "role": "student"}]
