import pytest

from services.vpp.domain.licences import (
    Asset, Assignment, Limits, NotEnoughLicences, ProductType, chunks, plan_assignment, plan_revocation,
    revocation_batches, revoke_all_selection, revoke_unknown_selection,
)
from shared.errors import ValidationError

LIMITS = Limits(max_serial_numbers=3, max_client_user_ids=2, max_revoke_serial_numbers=2, max_revoke_client_user_ids=1)


def app(adam_id="100", available=10, **kw) -> Asset:
    base = dict(adam_id=adam_id, pricing_param="STDQ", product_type=ProductType.APP, total_count=available + 2,
                assigned_count=2, available_count=available, device_assignable=True, revocable=True)
    return Asset(**{**base, **kw})


def book(adam_id="900", available=10) -> Asset:
    return Asset(adam_id, "STDQ", ProductType.BOOK, available, 0, available, False, False, name="Atlas")


def test_limits_come_from_service_config_with_safe_defaults():
    limits = Limits.from_service_config({"maxSerialNumbers": 500, "maxUsers": "x", "maxClientUserIds": 0})
    assert limits.max_serial_numbers == 500
    assert limits.max_users == 100 and limits.max_client_user_ids == 1000


def test_assignment_is_batched_to_limits_and_skips_existing_holders():
    holders = [Assignment("100", "STDQ", serial_number="S0")]
    plan = plan_assignment(app(), ["S0", "S1", "S2", "S3", "S4", "S1"], ["u1", "u2", "u3"], holders)
    assert plan.serial_numbers == ("S1", "S2", "S3", "S4")
    assert plan.already_done == ("S0",)
    assert [b.serial_numbers for b in plan.batches(LIMITS) if b.serial_numbers] == [("S1", "S2", "S3"), ("S4",)]
    assert [b.client_user_ids for b in plan.batches(LIMITS) if b.client_user_ids] == [("u1", "u2"), ("u3",)]
    assert all(b.size <= 3 for b in plan.batches(LIMITS))


def test_not_enough_licences_is_refused_before_calling_apple():
    with pytest.raises(ValidationError, match="Not enough licences.*3 needed, 2 available"):
        plan_assignment(app(available=2), ["A", "B", "C"], None, [])


def test_the_shortage_counts_only_licences_still_missing():
    holders = [Assignment("100", "STDQ", serial_number="S0")]  # already holds one: needs no new licence
    with pytest.raises(NotEnoughLicences) as short:
        plan_assignment(app(available=1), ["S0", "S1", "S2"], None, holders)
    assert short.value.shortage == 1


def test_books_go_to_users_only():
    with pytest.raises(ValidationError, match="Books are assigned to users only") as refused:
        plan_assignment(book(available=2), ["S1", "S2", "S3", "S4", "S5"], None, [])
    assert not isinstance(refused.value, NotEnoughLicences)  # a refusal for another reason is no shortage
    assert plan_assignment(book(), None, ["u1"], []).client_user_ids == ("u1",)


def test_hidden_and_device_unassignable_assets():
    with pytest.raises(ValidationError, match="hidden"):
        plan_assignment(app(hidden=True), ["S1"], None, [])
    with pytest.raises(ValidationError, match="cannot be assigned to devices"):
        plan_assignment(app(device_assignable=False), ["S1"], None, [])
    with pytest.raises(ValidationError, match="at least one"):
        plan_assignment(app(), [], [], [])
    with pytest.raises(ValidationError, match="non-empty"):
        plan_assignment(app(), [" "], [], [])


def test_books_are_never_revoked():
    with pytest.raises(ValidationError, match="never be revoked"):
        plan_revocation(book(), None, ["u1"], [Assignment("900", "STDQ", client_user_id="u1")])
    with pytest.raises(ValidationError, match="not revocable"):
        plan_revocation(app(revocable=False), ["S1"], None, [])


def test_revocation_reports_holders_without_a_licence():
    holders = [Assignment("100", "STDQ", serial_number=s) for s in ("S1", "S2", "S3")]
    plan = plan_revocation(app(), ["S1", "S2", "S3", "S9"], None, holders)
    assert plan.serial_numbers == ("S1", "S2", "S3") and plan.already_done == ("S9",)
    assert [b.serial_numbers for b in plan.batches(LIMITS)] == [("S1", "S2"), ("S3",)]


def test_revoke_all_and_unknown_selections_skip_books_and_unsynced_assets():
    assets = {("100", "STDQ"): app(), ("900", "STDQ"): book()}
    assignments = [
        Assignment("100", "STDQ", serial_number="KNOWN1"),
        Assignment("100", "STDQ", serial_number="STRANGER"),
        Assignment("100", "STDQ", client_user_id="ghost"),
        Assignment("100", "STDQ", client_user_id="alice"),
        Assignment("900", "STDQ", client_user_id="ghost"),  # a book: never revoked
        Assignment("555", "STDQ", serial_number="STRANGER"),  # asset not synced yet
    ]
    everything = revoke_all_selection(assignments, assets)
    assert len(everything) == 4 and all(a.adam_id == "100" for a in everything)
    unknown = revoke_unknown_selection(assignments, assets, {"KNOWN1"}, {"alice"})
    assert unknown == [Assignment("100", "STDQ", client_user_id="ghost"), Assignment("100", "STDQ", serial_number="STRANGER")]
    batches = revocation_batches(everything, LIMITS)
    assert sum(b.size for b in batches) == 4
    assert all(len(b.serial_numbers) <= 2 and len(b.client_user_ids) <= 1 for b in batches)
    assert {s for b in batches for s in b.serial_numbers + b.client_user_ids} == {"KNOWN1", "STRANGER", "ghost", "alice"}


def test_chunks():
    assert chunks([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]
    assert chunks([], 2) == []
    with pytest.raises(ValueError):
        chunks([1], 0)
