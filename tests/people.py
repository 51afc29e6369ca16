"""A small district for the devices-and-people tests: two locations, grade 7 and 8 students, devices."""
from __future__ import annotations

from tests.enrollment.signing import enrolled_identity, put_checkin

TOPIC = "com.apple.mgmt.External.18a16429-886b-41f1-9c30-2bd04ae4fc37"
LOCATIONS = [{"location_id": "A", "name": "Alpha"}, {"location_id": "B", "name": "Beta"}]


def student(user_id: str, location: str, grade: str) -> dict:
    return {"user_id": user_id, "user_type": "student", "name": user_id, "locations": [location],
            "grade_level": grade}


USERS = [
    student("s7a1", "A", "7"), student("s7a2", "A", "7"), student("s8a1", "A", "8"),
    student("s7b1", "B", "7"),
    {"user_id": "t7a", "user_type": "teacher", "name": "Teacher", "locations": ["A"], "grade_level": "7"},
]
#: each user's device
DEVICES = {"SER7A1": "s7a1", "SER7A2": "s7a2", "SER8A1": "s8a1", "SER7B1": "s7b1", "SERT7A": "t7a"}
GRADE_7_STUDENTS_AT_A = {"locations": ["A"], "grade_levels": ["7"], "user_types": ["student"]}


def import_roster(rpc, users: list[dict], source: str = "api") -> dict:
    batch = {"source": source, "locations": LOCATIONS, "grade_levels": [{"name": "7"}, {"name": "8"}],
             "users": users}
    return rpc.roster.apply_plan(rpc.roster.preview_records(batch)["plan_id"])


def moved_to_grade_8(user_id: str) -> list[dict]:
    return [dict(u, grade_level="8") if u["user_id"] == user_id else u for u in USERS]


def enroll(config: dict, serial: str) -> None:
    """An ADE device gets its profile and announces itself with the signed MDM Authenticate check-in."""
    udid = f"UDID-{serial}"
    identity = enrolled_identity(config, serial, udid)
    response = put_checkin(config, {"MessageType": "Authenticate", "UDID": udid, "Topic": TOPIC,
                                    "SerialNumber": serial}, identity)
    assert response.status_code == 200, response.text
