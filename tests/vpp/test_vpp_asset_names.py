"""Asset names from Apple's content metadata lookup (the asset list carries none), over real HTTP."""
import pytest

from services.vpp import metrics
from services.vpp.adapters.apple_client import LOOKUP_IDS_PER_REQUEST, AppleRequestError, AppsAndBooksClient, MdmIdentity

pytestmark = pytest.mark.integration


def test_the_client_looks_names_up_in_batches_with_the_token_as_cookie(vpp_sandbox):
    stoken = vpp_sandbox.issue_token(locationName="North Campus")
    for n in range(LOOKUP_IDS_PER_REQUEST + 5):
        vpp_sandbox.add_asset(stoken, str(1000 + n), 1, name=f"App number {n}")
    client = AppsAndBooksClient(stoken, MdmIdentity("orchard-test", "Orchard"), base_url=vpp_sandbox.api_url)
    try:
        found = client.content_metadata([str(1000 + n) for n in range(LOOKUP_IDS_PER_REQUEST + 5)] + ["404"],
                                        platform="volumestore", country="US")
        assert len(found) == LOOKUP_IDS_PER_REQUEST + 5 and "404" not in found
        assert found["1007"].name == "App number 7" and found["1007"].kind == "iosSoftware"
        assert "1007" in found["1007"].artwork_url
        assert vpp_sandbox.requests("lookup") == 2  # 56 ids, at most LOOKUP_IDS_PER_REQUEST a request

        stranger = AppsAndBooksClient("not-a-token", MdmIdentity("orchard-test", "Orchard"), base_url=vpp_sandbox.api_url)
        with pytest.raises(AppleRequestError, match="HTTP 401"):
            stranger.content_metadata(["1000"], platform="volumestore", country="US")
        stranger.close()
    finally:
        client.close()


def test_sync_stores_names_and_a_failed_lookup_does_not_fail_it(vpp_sandbox, vpp_runner, rpc_as):
    stoken = vpp_sandbox.issue_token(locationName="North Campus")
    vpp_sandbox.add_asset(stoken, "111", 3, name="Keynote")
    vpp_sandbox.add_asset(stoken, "900", 5, product_type="Book", name="Field Guide to Birds")
    with rpc_as() as rpc:
        token_id = rpc.vpp.add_content_token(stoken)["id"]

        vpp_sandbox.fault("lookup", status=503)
        failures = metrics.NAME_LOOKUP_FAILURES._value.get()
        assert rpc.vpp.sync_assets(token_id)["assets"] == 2  # the sync itself succeeds
        assert [a["name"] for a in rpc.vpp.list_assets(token_id, include_hidden=True)] == [None, None]
        assert metrics.NAME_LOOKUP_FAILURES._value.get() == failures + 1

        rpc.vpp.sync_assets(token_id)  # names are looked up again while they are missing
        app, book = rpc.vpp.list_assets(token_id)
        assert (app["name"], app["kind"]) == ("Keynote", "iosSoftware") and app["artwork_url"].startswith("https://")
        assert (book["name"], book["kind"]) == ("Field Guide to Birds", "ebook")
        assert rpc.vpp.get_asset(token_id, "111")["name"] == "Keynote"
        lookups = vpp_sandbox.requests("lookup")

        vpp_sandbox.add_asset(stoken, "222", 4, name="Pages")
        rpc.vpp.sync_assets(token_id)  # only the new asset is looked up; known names are kept
        assert vpp_sandbox.requests("lookup") == lookups + 1
        assert {a["adam_id"]: a["name"] for a in rpc.vpp.list_assets(token_id)} == {
            "111": "Keynote", "222": "Pages", "900": "Field Guide to Birds"}
