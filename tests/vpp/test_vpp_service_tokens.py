"""Content tokens and licences through the running vpp service (real RabbitMQ, SQLite, the Apple sandbox)."""
import base64
import json
from datetime import timedelta

import pytest
import sqlalchemy as sa
from nameko.standalone.events import event_dispatcher

from shared.auth import Actor
from shared.contracts.enrollment import AssignedDevice, DevicesAssigned
from shared.errors import Conflict, NotFound, PermissionDenied, UpstreamError, ValidationError
from shared.storage import utc_now
from tests.conftest import postgres_database, replicas_on_postgresql, settle
from tests.vpp.test_vpp_service_invites import metric
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def test_content_token_lifecycle(vpp_sandbox, vpp_runner, rpc_as):
    stoken = vpp_sandbox.issue_token(locationName="North Campus", orgName="North District")
    with rpc_as() as rpc:
        with pytest.raises(ValidationError, match="not a content token"):
            rpc.vpp.add_content_token("definitely not a token")
        expired = vpp_sandbox.issue_token(locationName="Old", expDate="2020-01-01T00:00:00+0000")
        with pytest.raises(ValidationError, match="expired on 2020-01-01"):
            rpc.vpp.add_content_token(expired)

        added = rpc.vpp.add_content_token(stoken, name="North", locations=["north"], auto_invite_method="managed_apple_id")
        assert added["status"] == "ok" and added["location_name"] == "North Campus" and added["days_left"] >= 364
        assert added["organization"] == "North District" and added["integrated_by"] == "admin@school.example"
        assert stoken not in json.dumps(added)
        assert vpp_sandbox.state(stoken)["mdmInfo"]["id"] == "orchard-test"
        assert [t["id"] for t in rpc.vpp.list_content_tokens()] == [added["id"]]
        with pytest.raises(ValidationError, match="already here"):
            rpc.vpp.add_content_token(stoken)

        # another MDM claims the location: the next answer from Apple marks the token
        vpp_sandbox.post("mdm-info", sToken=stoken, mdmInfo={"id": "other", "name": "Other MDM"})
        with pytest.raises(Conflict, match="Other MDM.* renew the content token here with take_over"):
            rpc.vpp.sync_assets(added["id"])
        assert rpc.vpp.get_content_token(added["id"])["status"] == "conflict"

        # renewal: same location only, and it claims the location back when told to take it over (audited)
        other_location = vpp_sandbox.issue_token(locationName="South Campus")
        with pytest.raises(ValidationError, match="different location"):
            rpc.vpp.renew_content_token(added["id"], other_location)
        with pytest.raises(Conflict, match=f"orchard vpp token renew {added['id']} FILE.vpptoken --take-over"):
            rpc.vpp.renew_content_token(added["id"], vpp_sandbox.issue_token(locationName="North Campus"))
        assert rpc.vpp.get_content_token(added["id"])["status"] == "conflict"
        renewed = rpc.vpp.renew_content_token(added["id"], vpp_sandbox.issue_token(locationName="North Campus"),
                                              take_over=True)
        assert renewed["status"] == "ok" and renewed["managed_by_other_mdm"] is None
        assert vpp_sandbox.state(stoken)["mdmInfo"]["id"] == "orchard-test"
        (taken,) = [e for e in rpc.vpp.audit_log(f"content_token:{added['id']}")
                    if e["action"] == "content_token.taken_over"]
        assert taken["details"] == {"from_mdm": "Other MDM", "location": "North Campus"}
        rpc.vpp.sync_assets(added["id"])

        south = vpp_sandbox.issue_token(locationName="South Campus")
        vpp_sandbox.post("mdm-info", sToken=south, mdmInfo={"id": "other", "name": "Other MDM"})
        with pytest.raises(Conflict, match="from the other MDM, or add it here with take_over"):
            rpc.vpp.add_content_token(south)
        taken = rpc.vpp.add_content_token(south, take_over=True)
        assert vpp_sandbox.state(south)["mdmInfo"]["id"] == "orchard-test"
        assert any(e["action"] == "content_token.taken_over" for e in rpc.vpp.audit_log(f"content_token:{taken['id']}"))

        rpc.vpp.delete_content_token(taken["id"])
        with pytest.raises(NotFound):
            rpc.vpp.get_content_token(taken["id"])

    with rpc_as(Actor("leader@school.example", "location_leader", ("south",))) as rpc:
        assert rpc.vpp.list_content_tokens() == []  # the North token is not theirs
        with pytest.raises(NotFound):
            rpc.vpp.get_content_token(added["id"])


def test_assets_licences_and_revocation(vpp_sandbox, vpp_runner, rpc_as):
    stoken = vpp_sandbox.issue_token(locationName="North Campus")
    vpp_sandbox.add_asset(stoken, "111", 3)
    vpp_sandbox.add_asset(stoken, "222", 10)
    vpp_sandbox.add_asset(stoken, "900", 5, product_type="Book")
    vpp_sandbox.post("assignments", sToken=stoken, adamId="222", serialNumbers=["STRANGER1", "KNOWN1"], clientUserIds=["ghost"])
    vpp_sandbox.post("assignments", sToken=stoken, adamId="900", clientUserIds=["ghost"])
    with rpc_as() as rpc:
        token_id = rpc.vpp.add_content_token(stoken)["id"]
        assert rpc.vpp.sync_assets(token_id)["assets"] == 3
        assert [a["adam_id"] for a in rpc.vpp.list_assets(token_id, product_type="book")] == ["900"]
        apps = {a["adam_id"]: a for a in rpc.vpp.list_assets(token_id, product_type="App")}
        assert (apps["222"]["total"], apps["222"]["assigned"], apps["222"]["available"]) == (10, 3, 7)

        with pytest.raises(ValidationError, match="Not enough licences"):
            rpc.vpp.assign_licenses(token_id, "111", serial_numbers=["A", "B", "C", "D"])
        with pytest.raises(ValidationError, match="Books are assigned to users only"):
            rpc.vpp.assign_licenses(token_id, "900", serial_numbers=["A"])
        with pytest.raises(ValidationError, match="never be revoked"):
            rpc.vpp.revoke_licenses(token_id, "900", user_ids=["ghost"])
        with pytest.raises(NotFound, match="adamId"):
            rpc.vpp.assign_licenses(token_id, "404", serial_numbers=["A"])
        rpc.vpp.set_asset_hidden(token_id, "111", True)
        assert "111" not in {a["adam_id"] for a in rpc.vpp.list_assets(token_id)}
        with pytest.raises(ValidationError, match="hidden"):
            rpc.vpp.assign_licenses(token_id, "111", serial_numbers=["A"])
        requests = vpp_sandbox.state()["requests"]
        assert "assets/associate" not in requests and "assets/disassociate" not in requests  # refused before Apple

        rpc.vpp.set_asset_hidden(token_id, "111", False)
        result = rpc.vpp.assign_licenses(token_id, "111", serial_numbers=["A", "B"])
        assert sorted(result["assigned"]["serial_numbers"]) == ["A", "B"] and result["assigned"]["failures"] == []
        detail = rpc.vpp.get_asset(token_id, "111")
        assert detail["serial_numbers"] == ["A", "B"] and detail["available"] == 1
        revoked = rpc.vpp.revoke_licenses(token_id, "111", serial_numbers=["A", "Z"])
        assert revoked["revoked"]["serial_numbers"] == ["A"] and revoked["not_assigned"] == ["Z"]

        # KNOWN1 came to Orchard through Apple School Manager; A, B, the ghost and STRANGER1 are unknown
        _remember_device(vpp_runner, "KNOWN1")
        dry = rpc.vpp.revoke_unknown(token_id)
        holders = sorted(a["serial_number"] or a["user_id"] for a in dry["assignments"])
        assert dry["dry_run"] and holders == ["B", "STRANGER1", "ghost"]  # the ghost's book is never revoked
        applied = rpc.vpp.revoke_unknown(token_id, dry_run=False)
        assert applied["assignments"] == dry["assignments"] and applied["failures"] == []
        rpc.vpp.sync_assets(token_id)
        assert rpc.vpp.get_asset(token_id, "222")["serial_numbers"] == ["KNOWN1"]
        assert rpc.vpp.get_asset(token_id, "900")["user_ids"] == ["ghost"]

        everything = rpc.vpp.revoke_all(token_id)
        assert [a["serial_number"] for a in everything["assignments"]] == ["KNOWN1"]
        rpc.vpp.revoke_all(token_id, dry_run=False)
        rpc.vpp.sync_assets(token_id)
        assert rpc.vpp.get_asset(token_id, "222")["serial_numbers"] == []

    with rpc_as(Actor("t@school.example", "teacher", ("north",))) as rpc:
        with pytest.raises(PermissionDenied, match="study apps; .* the update_content_token RPC"):
            rpc.vpp.list_study_apps(token_id)
    with rpc_as() as rpc:
        rpc.vpp.update_content_token(token_id, allow_teacher_study_apps=True)
    with rpc_as(Actor("t@school.example", "teacher", ("north",))) as rpc:
        assert {a["adam_id"] for a in rpc.vpp.list_study_apps(token_id)} == {"111", "222"}
        with pytest.raises(PermissionDenied):
            rpc.vpp.assign_licenses(token_id, "222", serial_numbers=["X"])
    with rpc_as() as rpc:  # an administrator names any device; a teacher only their students' (test_vpp_scope_licences)
        with pytest.raises(ValidationError, match="not study apps of this token; .* the list_study_apps RPC"):
            rpc.vpp.install_study_apps(token_id, ["999"], ["CLASS-IPAD-1"])
        with pytest.raises(ValidationError, match="invite by e-mail with the invite_users RPC"):
            rpc.vpp.update_content_token(token_id, auto_invite_method="email")
        installed = rpc.vpp.install_study_apps(token_id, ["222"], ["CLASS-IPAD-1"])
        assert installed[0]["assigned"]["serial_numbers"] == ["CLASS-IPAD-1"]


def waiting_for_licences(config, adam_id):
    """What the alert on assets without licences reads: assignments refused for want of a licence."""
    (line,) = [m for m in metric(config, "orchard_vpp_assignments_waiting_for_licences{") if f'adam_id="{adam_id}"' in m]
    return float(line.rsplit(" ", 1)[1])


def test_only_a_shortage_of_licences_counts_as_waiting_for_licences(vpp_sandbox, vpp_config, vpp_runner, rpc_as):
    stoken = vpp_sandbox.issue_token(locationName="North Campus")
    vpp_sandbox.add_asset(stoken, "111", 3)
    vpp_sandbox.add_asset(stoken, "900", 2, product_type="Book")
    vpp_sandbox.post("assignments", sToken=stoken, adamId="111", serialNumbers=["HELD"])
    with rpc_as() as rpc:
        token_id = rpc.vpp.add_content_token(stoken)["id"]
        rpc.vpp.sync_assets(token_id)
        with pytest.raises(ValidationError, match="Books are assigned to users only"):
            rpc.vpp.assign_licenses(token_id, "900", serial_numbers=["S1", "S2", "S3", "S4", "S5"])
        assert waiting_for_licences(vpp_config, "900") == 0
        with pytest.raises(ValidationError, match="Not enough licences"):  # HELD needs no new licence: 3 for 2
            rpc.vpp.assign_licenses(token_id, "111", serial_numbers=["HELD", "S1", "S2", "S3"])
        assert waiting_for_licences(vpp_config, "111") == 1


def vpptoken(exp_date: str) -> str:
    """A .vpptoken file as Apple would never write it: its expiry date leaves datetime's range once in UTC."""
    payload = {"token": "never-sent-to-apple", "expDate": exp_date, "orgName": "North District"}
    return base64.b64encode(json.dumps(payload).encode()).decode()


def test_arguments_are_checked_before_apple_is_asked(vpp_sandbox, vpp_runner, rpc_as):
    stoken = vpp_sandbox.issue_token(locationName="North Campus")
    vpp_sandbox.post("mdm-info", sToken=stoken, mdmInfo={"id": "other", "name": "Other MDM"})
    out_of_range = ["9999-12-31T23:59:59-0100", "0001-01-01T00:00:00+0100"]
    with rpc_as() as rpc:
        for name in ["", 42, "x" * 300]:
            with pytest.raises(ValidationError, match="name must be"):
                rpc.vpp.add_content_token(stoken, name=name, take_over=True)
        assert rpc.vpp.list_content_tokens() == []
        assert "client/config" not in vpp_sandbox.state()["requests"]  # Apple was not asked at all
        assert vpp_sandbox.state(stoken)["mdmInfo"]["id"] == "other"  # the location stays with the other MDM
        for exp_date in out_of_range:
            with pytest.raises(ValidationError, match="expiry date .* is out of range"):
                rpc.vpp.add_content_token(vpptoken(exp_date), take_over=True)

        token_id = rpc.vpp.add_content_token(stoken, name="North", take_over=True)["id"]
        for exp_date in out_of_range:
            with pytest.raises(ValidationError, match="expiry date .* is out of range"):
                rpc.vpp.renew_content_token(token_id, vpptoken(exp_date))


@pytest.fixture
def vpp_on_postgresql(vpp_config):
    """The vpp service's database on PostgreSQL (which holds text to its column's length, as SQLite does not).
    Requested before ``runner_factory``, so it outlives the service."""
    with postgres_database() as url:
        vpp_config["SERVICES"]["vpp"]["database_url"] = url
        yield vpp_config


def test_long_apple_names_are_cut_to_fit_before_the_location_is_claimed(vpp_on_postgresql, runner_factory, vpp_sandbox,
                                                                       rpc_as):
    from services.vpp.service import VppService

    runner_factory(vpp_on_postgresql, VppService).start()
    location, organization = "North Campus " * 20, "North District " * 20  # 260 and 300 characters; 200 are stored
    stoken = vpp_sandbox.issue_token(locationName=location, orgName=organization)
    with rpc_as() as rpc:
        added = rpc.vpp.add_content_token(stoken)
        assert (added["name"], added["location_name"], added["organization"]) == (location[:200], location[:200],
                                                                                   organization[:200])
        renewed = rpc.vpp.renew_content_token(added["id"], vpp_sandbox.issue_token(locationName=location))
        assert renewed["location_name"] == location[:200] and renewed["fingerprint"] != added["fingerprint"]


def _remember_device(runner, serial):
    """The enrollment service tells vpp about a device (DevicesAssigned over RabbitMQ)."""
    config = runner.config
    event = DevicesAssigned(token_id="dep-1", devices=[AssignedDevice(serial_number=serial)])
    event_dispatcher(config)(DevicesAssigned.SOURCE, DevicesAssigned.TYPE, event.to_payload())
    engine = sa.create_engine(config["SERVICES"]["vpp"]["database_url"])

    def known() -> bool:
        with engine.connect() as connection:
            return connection.execute(sa.text("select count(*) from known_devices")).scalar() == 1

    try:
        wait_for(known, what="the device to be known")
    finally:
        engine.dispose()


def test_the_scheduled_sync_reads_due_tokens_and_records_failures(vpp_sandbox, vpp_runner, rpc_as):
    from nameko.testing.services import entrypoint_hook
    from nameko.testing.utils import get_container

    from services.vpp.service import VppService

    north, south = vpp_sandbox.issue_token(locationName="North Campus"), vpp_sandbox.issue_token(locationName="South Campus")
    vpp_sandbox.add_asset(north, "111", 4)
    with rpc_as() as rpc:
        north_id = rpc.vpp.add_content_token(north)["id"]
        south_id = rpc.vpp.add_content_token(south)["id"]
    vpp_sandbox.post("tokens/revoke", sToken=south)

    with entrypoint_hook(get_container(vpp_runner, VppService), "sync_due_tokens") as sync_due_tokens:
        sync_due_tokens()
    with rpc_as() as rpc:
        synced, revoked = rpc.vpp.get_content_token(north_id), rpc.vpp.get_content_token(south_id)
        assert synced["last_sync_at"] and [a["adam_id"] for a in rpc.vpp.list_assets(north_id)] == ["111"]
        assert revoked["status"] == "revoked" and revoked["last_sync_at"] is None
        assert "revoked" in revoked["last_sync_error"]
    requests = vpp_sandbox.state()["requests"]["assets"]
    with entrypoint_hook(get_container(vpp_runner, VppService), "sync_due_tokens") as sync_due_tokens:
        sync_due_tokens()  # nothing is due again for hours
    assert vpp_sandbox.state()["requests"]["assets"] == requests


def test_a_token_whose_scheduled_sync_failed_is_tried_again_minutes_later(vpp_sandbox, vpp_config, vpp_runner, rpc_as,
                                                                          monkeypatch):
    from nameko.testing.services import entrypoint_hook
    from nameko.testing.utils import get_container

    from services.vpp.service import VppService

    stoken = vpp_sandbox.issue_token(locationName="North Campus")
    vpp_sandbox.add_asset(stoken, "111", 4)
    with rpc_as() as rpc:
        token_id = rpc.vpp.add_content_token(stoken)["id"]

    def last_synced() -> list[str]:
        return [line for line in metric(vpp_config, "orchard_vpp_last_successful_sync_timestamp_seconds{")
                if f'token_id="{token_id}"' in line]

    def scheduled_sync() -> int:
        """Run the scheduled job once; how many asset listings Apple has answered so far."""
        with entrypoint_hook(get_container(vpp_runner, VppService), "sync_due_tokens") as sync_due_tokens:
            sync_due_tokens()
        return vpp_sandbox.state()["requests"].get("assets", 0)

    vpp_sandbox.fault("assets", status=503, retryAfter=0, times=4)  # the first try and the client's 3 retries
    failed = scheduled_sync()
    with rpc_as() as rpc:
        token = rpc.vpp.get_content_token(token_id)
    assert token["last_sync_at"] is None and "503" in token["last_sync_error"]
    assert last_synced() == []  # never synced: the alert has nothing to count from yet
    assert scheduled_sync() == failed  # not again at once

    from services.vpp.adapters.repository import VppRepository
    from services.vpp.adapters.tables import content_tokens

    def minutes_pass(minutes: int) -> None:
        engine = sa.create_engine(vpp_config["SERVICES"]["vpp"]["database_url"])
        with engine.begin() as connection:
            connection.execute(content_tokens.update().where(content_tokens.c.id == token_id)
                               .values(sync_attempted_at=utc_now() - timedelta(minutes=minutes)))
        engine.dispose()

    minutes_pass(6)
    scheduled_sync()
    with rpc_as() as rpc:
        token = rpc.vpp.get_content_token(token_id)
        assert token["last_sync_at"] and token["last_sync_error"] is None
        assert [a["adam_id"] for a in rpc.vpp.list_assets(token_id)] == ["111"]
    (line,) = last_synced()
    assert abs(float(line.rsplit(" ", 1)[1]) - utc_now().timestamp()) < 60

    # an error of Orchard's own is recorded as well, and tried again minutes later, not hours
    def broken(*args, **kwargs):
        raise RuntimeError("a fault of Orchard's")

    with monkeypatch.context() as patched:
        patched.setattr(VppRepository, "replace_assignments", broken)
        minutes_pass(3 * 60)
        scheduled_sync()
    with rpc_as() as rpc:
        assert "internal error" in rpc.vpp.get_content_token(token_id)["last_sync_error"]
    minutes_pass(6)
    scheduled_sync()
    with rpc_as() as rpc:
        assert rpc.vpp.get_content_token(token_id)["last_sync_error"] is None


def test_a_token_revoked_between_licence_batches_keeps_what_apple_did_and_is_marked(vpp_sandbox, vpp_runner, rpc_as):
    vpp_sandbox.post("settings", limits={"maxSerialNumbers": 2})
    stoken = vpp_sandbox.issue_token(locationName="North Campus")
    vpp_sandbox.add_asset(stoken, "111", 10)
    with rpc_as() as rpc:
        token_id = rpc.vpp.add_content_token(stoken)["id"]
        rpc.vpp.sync_assets(token_id)
        vpp_sandbox.fault("assets/associate", kind="error", errorNumber=9625, skip=1)  # the second request
        with pytest.raises(UpstreamError, match=r"2 device .* were assigned \(1 of 2 requests\)"):
            rpc.vpp.assign_licenses(token_id, "111", serial_numbers=["A", "B", "C"])
        assert rpc.vpp.get_content_token(token_id)["status"] == "revoked"
        assert rpc.vpp.get_asset(token_id, "111")["assigned"] == 2
    assert vpp_sandbox.state(stoken)["assignments"] == 2


def test_licence_changes_to_one_asset_on_two_replicas_run_one_after_the_other(runner_factory, vpp_config, vpp_sandbox,
                                                                              rpc_as):
    """Each checks the free licences against the other's outcome and stores counts that include it."""
    from services.vpp.service import VppService

    with replicas_on_postgresql(runner_factory, vpp_config, VppService):
        vpp_sandbox.post("settings", eventPolls=0)  # Apple's events complete at once: the calls overlap
        stoken = vpp_sandbox.issue_token(locationName="North Campus")
        vpp_sandbox.add_asset(stoken, "111", 100)
        vpp_sandbox.add_asset(stoken, "222", 3)
        with rpc_as() as rpc:
            token_id = rpc.vpp.add_content_token(stoken)["id"]
            rpc.vpp.sync_assets(token_id)
            replies = [rpc.vpp.assign_licenses.call_async(token_id, "111", serial_numbers=[f"A{n}", f"B{n}"])
                       for n in range(4)]
            assert all(len(reply.result()["assigned"]["serial_numbers"]) == 2 for reply in replies)
            asset = rpc.vpp.get_asset(token_id, "111")
            assert (asset["assigned"], asset["available"]) == (8, 92)

            only_one_gets_the_last_licences(rpc, token_id, "222")


def only_one_gets_the_last_licences(rpc, token_id, adam_id):
    """Two assignments of 2 licences each, asked at once of an asset with 3 left: one is refused."""
    replies = [rpc.vpp.assign_licenses.call_async(token_id, adam_id, serial_numbers=[f"C{n}", f"D{n}"])
               for n in range(2)]
    outcomes = settle(replies, ValidationError)
    assigned = [o for o in outcomes if isinstance(o, dict) and len(o["assigned"]["serial_numbers"]) == 2]
    assert len(assigned) == 1 and any("Not enough licences" in str(o) for o in outcomes), outcomes
    assert rpc.vpp.get_asset(token_id, adam_id)["assigned"] == 2


def test_licence_changes_to_one_asset_run_one_after_the_other_while_apple_answers(vpp_sandbox, vpp_runner, rpc_as):
    """No database connection (nor row lock) is held while Apple answers: the asset's turn keeps a second change
    from planning against counts the first is changing at Apple."""
    stoken = vpp_sandbox.issue_token(locationName="North Campus")
    vpp_sandbox.add_asset(stoken, "222", 3)
    with rpc_as() as rpc:
        token_id = rpc.vpp.add_content_token(stoken)["id"]
        rpc.vpp.sync_assets(token_id)
        only_one_gets_the_last_licences(rpc, token_id, "222")
    assert vpp_sandbox.requests("assets/associate") == 1


def test_a_location_renamed_in_apple_school_manager_is_still_the_same_location(vpp_sandbox, vpp_runner, rpc_as):
    stoken = vpp_sandbox.issue_token(locationName="North Campus")
    with rpc_as() as rpc:
        token_id = rpc.vpp.add_content_token(stoken)["id"]
        vpp_sandbox.post("locations/rename", sToken=stoken, locationName="North Campus (Main)")
        renewal = vpp_sandbox.issue_token(locationName="North Campus (Main)")
        with pytest.raises(ValidationError, match=f"already here as content token .*{token_id}"):
            rpc.vpp.add_content_token(renewal)
        renewed = rpc.vpp.renew_content_token(token_id, renewal)
        assert renewed["location_name"] == "North Campus (Main)" and renewed["status"] == "ok"
        assert [t["id"] for t in rpc.vpp.list_content_tokens()] == [token_id]


def test_licence_requests_are_checked_before_apple_is_asked_for_its_limits(vpp_sandbox, vpp_runner, rpc_as):
    vpp_sandbox.fault("service/config", status=503, retryAfter=0, times=10_000)  # Apple's service config is away
    stoken = vpp_sandbox.issue_token(locationName="North Campus")
    vpp_sandbox.add_asset(stoken, "111", 1)
    vpp_sandbox.add_asset(stoken, "900", 5, product_type="Book")
    with rpc_as() as rpc:
        token_id = rpc.vpp.add_content_token(stoken)["id"]
        rpc.vpp.sync_assets(token_id)  # the names are not looked up; the sync goes on
        asked = vpp_sandbox.requests("service/config")
        with pytest.raises(ValidationError, match="Books are assigned to users only"):
            rpc.vpp.assign_licenses(token_id, "900", serial_numbers=["A"])
        with pytest.raises(ValidationError, match="Not enough licences"):
            rpc.vpp.assign_licenses(token_id, "111", serial_numbers=["A", "B"])
        with pytest.raises(ValidationError, match="never be revoked"):
            rpc.vpp.revoke_licenses(token_id, "900", user_ids=["u1"])
        rpc.vpp.set_asset_hidden(token_id, "111", True)
        with pytest.raises(ValidationError, match="hidden"):
            rpc.vpp.assign_licenses(token_id, "111", serial_numbers=["A"])
        with pytest.raises(UpstreamError, match="HTTP 503"):  # an allowed request needs Apple's limits
            rpc.vpp.assign_licenses(token_id, "900", user_ids=["u1"])
    assert vpp_sandbox.requests("service/config") == asked + 4  # the allowed request, with the client's 3 retries


def test_apple_naming_no_location_is_an_upstream_error_not_a_location_every_token_shares():
    from datetime import datetime, timezone

    from services.vpp.domain.tokens import ContentToken
    from services.vpp.service import _apple_location

    token = ContentToken(stoken="s", expires_at=datetime(2030, 1, 1, tzinfo=timezone.utc), org_name="District")
    assert _apple_location({"uId": " 42 ", "locationName": "North"}, token) == ("42", "North")
    for config in ({}, {"uId": ""}, {"uId": None, "locationName": "North"}):
        with pytest.raises(UpstreamError, match="names no location"):
            _apple_location(config, token)


def test_a_token_apple_calls_invalid_mid_change_is_read_again_from_the_database_and_the_change_goes_on(
        vpp_sandbox, vpp_runner, rpc_as):
    """Apple answering 9622 (another replica renewed the token meanwhile, say): the stored token is read again, on a
    connection of its own, and the request is sent once more."""
    stoken = vpp_sandbox.issue_token(locationName="North Campus")
    vpp_sandbox.add_asset(stoken, "111", 5)
    with rpc_as() as rpc:
        token_id = rpc.vpp.add_content_token(stoken)["id"]
        rpc.vpp.sync_assets(token_id)
        vpp_sandbox.fault("assets/associate", kind="error", errorNumber=9622)
        assert rpc.vpp.assign_licenses(token_id, "111", serial_numbers=["C"])["assigned"]["serial_numbers"] == ["C"]
        assert rpc.vpp.get_asset(token_id, "111")["assigned"] == 1
    assert vpp_sandbox.requests("assets/associate") == 2
