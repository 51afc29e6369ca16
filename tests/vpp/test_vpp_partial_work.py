"""Work that Apple fails partway is kept and reported; work that would be refused is refused before Apple is asked."""
import pytest

from shared.errors import UpstreamError, ValidationError

pytestmark = pytest.mark.integration


def test_revoke_all_failing_partway_keeps_and_reports_what_was_revoked(vpp_sandbox, vpp_runner, rpc_as):
    vpp_sandbox.post("settings", limits={"maxRevokeSerialNumbers": 1})  # a request per licence
    stoken = vpp_sandbox.issue_token(locationName="North Campus")
    vpp_sandbox.add_asset(stoken, "111", 5)
    vpp_sandbox.post("assignments", sToken=stoken, adamId="111", serialNumbers=["A", "B", "C", "D"])
    with rpc_as() as rpc:
        token_id = rpc.vpp.add_content_token(stoken)["id"]
        rpc.vpp.sync_assets(token_id)
        vpp_sandbox.fault("assets/disassociate", status=503, retryAfter=0, skip=2, times=4)  # the third request
        with pytest.raises(UpstreamError, match=r"HTTP 503.* Before that, 2 licence\(s\) were revoked "
                                                r"\(2 of 4 requests\); run it again for the rest"):
            rpc.vpp.revoke_all(token_id, dry_run=False)
        assert rpc.vpp.get_asset(token_id, "111")["serial_numbers"] == ["C", "D"]
        assert vpp_sandbox.state(stoken)["assignments"] == 2

        assert rpc.vpp.revoke_all(token_id, dry_run=False)["failures"] == []  # again, for the rest
    assert vpp_sandbox.state(stoken)["assignments"] == 0


@pytest.fixture
def study_token(vpp_sandbox, vpp_runner, rpc_as):
    """A synced token whose teachers may install study apps: 111 and 333 with licences to spare, 222 with none left."""
    stoken = vpp_sandbox.issue_token(locationName="North Campus")
    vpp_sandbox.add_asset(stoken, "111", 5)
    vpp_sandbox.add_asset(stoken, "222", 1)
    vpp_sandbox.add_asset(stoken, "333", 5)
    vpp_sandbox.post("assignments", sToken=stoken, adamId="222", serialNumbers=["ELSEWHERE"])
    with rpc_as() as rpc:
        token_id = rpc.vpp.add_content_token(stoken, allow_teacher_study_apps=True)["id"]
        rpc.vpp.sync_assets(token_id)
    return stoken, token_id


def test_study_apps_are_all_checked_before_any_is_installed(study_token, vpp_sandbox, rpc_as):
    stoken, token_id = study_token
    with rpc_as() as rpc:
        with pytest.raises(ValidationError, match=r"Not enough licences for the app .*\(222\)"):
            rpc.vpp.install_study_apps(token_id, ["111", "222"], ["S1", "S2"])
        assert rpc.vpp.get_asset(token_id, "111")["serial_numbers"] == []
    assert vpp_sandbox.requests("assets/associate") == 0 and vpp_sandbox.state(stoken)["assignments"] == 1


def test_study_apps_apple_fails_partway_keep_and_report_the_apps_installed(study_token, vpp_sandbox, rpc_as):
    stoken, token_id = study_token
    vpp_sandbox.fault("assets/associate", status=503, retryAfter=0, skip=1, times=4)  # the second app's request
    with rpc_as() as rpc:
        with pytest.raises(UpstreamError, match=r"HTTP 503.* Before that, app 111 was installed on 2 device\(s\); "
                                                r"run it again for the rest"):
            rpc.vpp.install_study_apps(token_id, ["111", "333"], ["S1", "S2"])
        assert rpc.vpp.get_asset(token_id, "111")["serial_numbers"] == ["S1", "S2"]
        installed = rpc.vpp.install_study_apps(token_id, ["111", "333"], ["S1", "S2"])
        assert [(i["already_assigned"], i["assigned"]["serial_numbers"]) for i in installed] == [
            (["S1", "S2"], []), ([], ["S1", "S2"])]
    assert vpp_sandbox.state(stoken)["assignments"] == 5
