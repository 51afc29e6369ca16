"""The vpp gauges read at scrape time: bounded per-asset series that still show every asset short of licences."""
from sqlalchemy.orm import Session

from services.vpp.adapters import tables as t
from services.vpp.metrics import TOP_ASSETS_PER_TOKEN, state_gauges
from shared.storage import create_engine_for, utc_now
from tests.vpp.test_vpp_repository import add_token


def samples(engine, name: str) -> dict[tuple, float]:
    (family,) = [f for f in state_gauges(engine) if f.name == name]
    return {tuple(sorted(s.labels.items())): s.value for s in family.samples}


def test_an_asset_short_of_licences_is_shown_however_small_and_token_totals_count_every_asset(database_url):
    engine = create_engine_for(database_url)
    t.metadata.create_all(engine)
    now = utc_now()
    assets = TOP_ASSETS_PER_TOKEN + 10
    with Session(engine) as session:
        add_token(session, now)
        session.execute(t.assets.insert(), [
            {"token_id": "tok", "adam_id": str(n), "pricing_param": "STDQ", "product_type": "App",
             "total_count": 100 + n, "assigned_count": 100 + n if n == 0 else n,
             "available_count": 0 if n == 0 else 100,
             "device_assignable": True, "revocable": True, "hidden": False,
             "refused_for_licences": 7 if n == 0 else 0, "synced_at": now} for n in range(assets)])
        session.commit()
    try:
        per_asset = samples(engine, "orchard_vpp_licences")
        shown = {dict(labels)["adam_id"] for labels in per_asset}
        # the smallest asset is the one out of licences with assignments waiting: it is there beside the largest
        assert shown == {"0"} | {str(n) for n in range(assets - TOP_ASSETS_PER_TOKEN, assets)}
        waiting = samples(engine, "orchard_vpp_assignments_waiting_for_licences")
        assert waiting[(("adam_id", "0"), ("token_id", "tok"))] == 7
        totals = {dict(labels)["state"]: value
                  for labels, value in samples(engine, "orchard_vpp_token_licences").items()}
        assert totals == {"total": sum(100 + n for n in range(assets)), "available": 100 * (assets - 1),
                          "assigned": 100 + sum(range(1, assets))}
    finally:
        engine.dispose()
