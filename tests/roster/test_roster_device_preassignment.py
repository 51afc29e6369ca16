"""Which serial numbers an applied plan hands to enrollment, and how refusals are reported."""
from __future__ import annotations

from services.roster.domain import planning as p
from services.roster.domain.device_preassignment import DeviceAssignmentFailure, assign_devices, device_assignments
from shared.contracts.roster import ImportBatch, LocationRecord, UserRecord
from shared.errors import UpstreamError


def student(uid, serials=(), name="Ann"):
    return UserRecord(user_id=uid, user_type="student", name=name, locations=["L1"], serial_numbers=list(serials))


def test_every_serial_of_the_users_a_plan_lists_is_handed_over_not_only_new_ones(hierarchy):
    """A device enrollment refused (not synced yet) is sent again by the next import of the same rows."""
    def plan(users, **options):
        records = ImportBatch(source="csv", locations=[LocationRecord(location_id="L1", name="North")], users=users)
        return p.build_plan(hierarchy, records, p.PlanOptions(**options))

    first = plan([student("u1", ["A1", "A2"]), student("u2", ["B1"]), student("u3"), student("u4", ["D1"])])
    list(p.apply_plan(first.changes, hierarchy, "csv"))
    assert device_assignments(first.changes) == [("A1", "u1"), ("A2", "u1"), ("B1", "u2"), ("D1", "u4")]

    # u1 unchanged, u2 gains a device, u3 renamed, u4 no longer listed (deleted), u5 rejected
    again = plan([student("u1", ["A2", "A1"]), student("u2", ["B1", "B2"]), student("u3", name="Al"),
                  student("u5", ["E1"], name="")], max_user_delete_share=1)
    assert again.summary.total_changes == 3  # u2 and u3 updated, u4 deleted: the devices are no change
    assert device_assignments(again.changes) == [("A1", "u1"), ("A2", "u1"), ("B1", "u2"), ("B2", "u2")]
    assert [c.entity for c in again.changes][-2:] == ["devices", "devices"]  # handed over after the writes
    events = list(p.apply_plan(again.changes, hierarchy, "csv"))
    assert len(events) == 3  # the devices rows write nothing and announce nothing

    # only new data: an existing user keeps the devices the roster holds, and those are what is sent
    kept = plan([student("u1", ["Z9"])], only_add_new=True)
    assert device_assignments(kept.changes) == [("A1", "u1"), ("A2", "u1")]


def test_refusals_are_reported_per_device_and_an_absent_enrollment_is_not_waited_for_again():
    calls = []

    def assign(batch):
        calls.append([pair["serial_number"] for pair in batch])
        if batch[0]["serial_number"] == "DOWN":
            raise UpstreamError("enrollment did not answer")
        refused = [dict(pair, reason=f"no device {pair['serial_number']}") for pair in batch
                   if pair["serial_number"].startswith("X")]
        return {"assigned": len(batch) - len(refused), "failed": refused}

    pairs = [(f"A{n}", "u1") for n in range(499)] + [("X1", "u1"), ("DOWN", "u2"), ("B", "u3")]
    done, failures = assign_devices(pairs, assign)
    assert done == 499 and [len(batch) for batch in calls] == [500, 2]  # in batches; none after enrollment is away
    assert failures == [DeviceAssignmentFailure("u1", "X1", "no device X1"),
                        DeviceAssignmentFailure("u2", "DOWN", "enrollment did not answer"),
                        DeviceAssignmentFailure("u3", "B", "enrollment did not answer")]
