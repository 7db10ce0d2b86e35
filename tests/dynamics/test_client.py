"""The Dataverse API client (connectors/dynamics) against a real Dynamics sandbox over HTTPS."""
from __future__ import annotations

import time
import uuid

import pytest
from pydantic import ValidationError

from connectors.dynamics.auth import DynamicsAccount, DynamicsAuthError, ServiceProtection, TokenProvider
from connectors.dynamics.client import ChangeSet, DataverseApiError, DataverseClient, Operation, format_key
from connectors.dynamics.pacing import Pacer
from tests.sandbox_dynamics.conftest import RunningSandbox

from .conftest import account_for


@pytest.mark.parametrize("method", ["client_secret", "certificate", "password"])
def test_every_sign_in_method_reaches_the_web_api(sandbox: RunningSandbox, method: str) -> None:
    with DataverseClient(account_for(sandbox, method)) as client:
        assert uuid.UUID(client.who_am_i()["UserId"])
        client.who_am_i()
        assert client.tokens.issued == 1 and client.requests_sent == 2  # the token was cached


def test_password_tokens_refresh_with_the_refresh_token(sandbox: RunningSandbox) -> None:
    tokens = TokenProvider(account_for(sandbox, "password"))
    first = tokens.token()
    tokens.invalidate()
    assert tokens.token() != first and tokens.issued == 2


def test_account_validation_and_auth_errors(sandbox: RunningSandbox) -> None:
    with pytest.raises(ValidationError, match="https"):
        account_for(sandbox, url="http://127.0.0.1:1")
    with pytest.raises(ValidationError, match="exactly one way"):
        account_for(sandbox, username="someone")
    account = account_for(sandbox, client_secret="wrong-secret-value")
    with pytest.raises(DynamicsAuthError) as refused:
        TokenProvider(account).token()
    assert refused.value.code == 7000215 and "wrong-secret-value" not in str(refused.value)
    assert "wrong-secret-value" not in repr(account)


def test_paged_query_follows_next_links(client: DataverseClient) -> None:
    pages = list(client.query_pages("contacts", select=["fullname", "emailaddress1"], filter="statecode eq 0",
                                    page_size=400))
    assert len(pages) >= 3 and all(len(p) == 400 for p in pages[:-1])
    assert sum(len(p) for p in pages) >= 1200 and client.requests_sent == len(pages)
    rows = list(client.query("accounts", select=["name"], orderby=["name desc"], page_size=50,
                             annotations="OData.Community.Display.V1.FormattedValue"))
    assert len(rows) >= 240 and [r["name"] for r in rows] == sorted((r["name"] for r in rows), reverse=True)


def test_change_tracking_rows_deleted_ids_and_delta_link(client: DataverseClient) -> None:
    first = client.changes("accounts", select=["name", "modifiedon"], page_size=100)
    assert len(first.rows) >= 240 and first.deleted_ids == []
    new = client.create("accounts", {"name": "Tracked by client"})
    client.update("accounts", first.rows[0]["accountid"], {"telephone1": "1"})
    client.delete("accounts", first.rows[1]["accountid"])
    second = client.changes("accounts", delta_link=first.delta_link)
    assert {r["accountid"] for r in second.rows} == {new, first.rows[0]["accountid"]}
    assert second.deleted_ids == [first.rows[1]["accountid"]]
    assert client.changes("accounts", delta_link=second.delta_link).rows == []


def test_expired_delta_link_is_a_clear_error(client: DataverseClient, admin_reset: RunningSandbox) -> None:
    first = client.changes("leads")
    admin_reset.admin("change-tracking", {"expire_days": 1})
    admin_reset.admin("clock", {"offset_seconds": 2 * 86400})
    client.tokens.invalidate()
    with pytest.raises(DataverseApiError) as expired:
        client.changes("leads", delta_link=first.delta_link)
    assert expired.value.status == 400 and "expired" in expired.value.message


def test_writes_by_id_and_alternate_key(client: DataverseClient) -> None:
    key = {"crmsync_campaignkey": f"O'Key-{uuid.uuid4().hex[:6]}"}
    created = client.upsert("contacts", key, {"lastname": "Keyed"}, insert_only=True)
    assert client.upsert("contacts", key, {"lastname": "Keyed again"}) == created
    with pytest.raises(DataverseApiError) as duplicate:
        client.upsert("contacts", key, {"lastname": "x"}, insert_only=True)
    assert duplicate.value.status == 412 and duplicate.value.code == "0x80040237"
    record = client.retrieve("contacts", created, select=["lastname", "versionnumber"])
    assert record is not None and record["lastname"] == "Keyed again"
    client.update("contacts", key, {"jobtitle": "Now"}, if_match=record["@odata.etag"])
    with pytest.raises(DataverseApiError) as stale:
        client.update("contacts", key, {"jobtitle": "Stale"}, if_match=record["@odata.etag"])
    assert stale.value.status == 412 and stale.value.code == "0x80060882"
    client.delete("contacts", created)
    assert client.retrieve("contacts", created) is None
    with pytest.raises(DataverseApiError) as missing:
        client.update("contacts", created, {"jobtitle": "Ghost"})
    assert missing.value.status == 404 and missing.value.code == "0x80040217"
    assert format_key({"a": "x'y", "b": 5}) == "(a='x''y',b=5)"


def test_bulk_actions(client: DataverseClient) -> None:
    tag = uuid.uuid4().hex[:6]
    ids = client.create_multiple("contacts", "contact", [{"lastname": f"{tag} {i}"} for i in range(4)])
    assert len(ids) == 4
    client.update_multiple("contacts", "contact", [{"contactid": i, "jobtitle": tag} for i in ids])
    results = client.upsert_multiple("contacts", "contact", [({"crmsync_campaignkey": f"{tag}-new"},
                                                              {"lastname": "New"}), (ids[0], {"lastname": "Renamed"})])
    assert [r["RecordCreated"] for r in results] == [True, False]
    assert len(list(client.query("contacts", filter=f"jobtitle eq '{tag}'", select=["contactid"]))) == 4


def test_batch_change_sets_and_outcomes(client: DataverseClient) -> None:
    tag = uuid.uuid4().hex[:6]
    outcomes = client.batch([
        Operation("GET", "WhoAmI"),
        ChangeSet([Operation("POST", "accounts", {"name": f"{tag} parent"}, content_id="1"),
                   Operation("POST", "contacts", {"lastname": tag, "parentcustomerid_account@odata.bind": "$1"})]),
        Operation("GET", f"contacts?$filter=lastname eq '{tag}'&$select=_parentcustomerid_value")])
    assert [o.status for o in outcomes] == [200, 204, 204, 200]
    assert outcomes[1].content_id == "1" and outcomes[1].entity_id
    assert outcomes[3].body["value"][0]["_parentcustomerid_value"] == outcomes[1].entity_id
    failed = client.batch([ChangeSet([Operation("POST", "accounts", {"name": f"{tag} rolled back"}),
                                      Operation("POST", "accounts", {"nosuch": 1})]),
                           Operation("POST", "accounts", {"name": f"{tag} after"})], continue_on_error=True)
    assert [o.status for o in failed] == [400, 204] and failed[0].error["code"] == "0x80060888"
    names = [r["name"] for r in client.query("accounts", filter=f"startswith(name,'{tag}')", select=["name"])]
    assert sorted(names) == [f"{tag} after", f"{tag} parent"]


def test_metadata_with_option_sets(client: DataverseClient) -> None:
    entity = client.entity("contact")
    assert entity["EntitySetName"] == "contacts" and entity["Keys"][0]["KeyAttributes"] == ["crmsync_campaignkey"]
    assert {a["LogicalName"] for a in entity["Attributes"]} >= {"contactid", "parentcustomerid", "birthdate"}
    choices = client.option_sets("contact")
    assert choices["gendercode"] == {1: "Male", 2: "Female"} and choices["statecode"] == {0: "Active", 1: "Inactive"}
    assert choices["crmsync_interests"][3] == "Product updates"


def test_retries_honour_retry_after_and_count_the_budget(client: DataverseClient,
                                                          admin_reset: RunningSandbox) -> None:
    admin_reset.admin("faults", {"throttle_429": 0.5, "unavailable_503": 0.3, "seed": 3})
    started = time.monotonic()
    for _ in range(6):
        assert client.who_am_i()["UserId"]
    assert client.retries >= 2 and time.monotonic() - started >= 1.0  # Retry-After: 1 was honoured
    admin_reset.admin("faults", {})
    client.who_am_i()
    assert client.budget.remaining_requests is not None and client.budget.remaining_requests < 6000
    assert client.budget.remaining_seconds is not None and client.budget.remaining_seconds <= 1200


def test_a_401_gets_one_new_token(client: DataverseClient, admin_reset: RunningSandbox) -> None:
    client.who_am_i()
    admin_reset.admin("expire-tokens", {})
    assert client.who_am_i()["UserId"] and client.tokens.issued == 2


def test_service_protection_429_surfaces_after_the_last_attempt(sandbox: RunningSandbox,
                                                                 admin_reset: RunningSandbox) -> None:
    admin_reset.admin("limits", {"requests_per_window": 2, "reset": True})
    unpaced = Pacer(ServiceProtection(headroom=1.0))  # no reserve: the server's 429 is what this test is about
    with DataverseClient(account_for(sandbox), max_attempts=2, max_retry_after=0.1, pacer=unpaced) as client:
        client.who_am_i()
        client.who_am_i()
        with pytest.raises(DataverseApiError) as throttled:
            client.who_am_i()
    assert throttled.value.status == 429 and throttled.value.code == "0x80072322"
    assert throttled.value.retry_after and throttled.value.retry_after >= 1
    assert client.budget.remaining_requests == 0


def test_links_to_other_hosts_are_refused(client: DataverseClient) -> None:
    with pytest.raises(ValueError, match="refusing to send the token"):
        client.request("GET", "https://elsewhere.example/api/data/v9.2/contacts")


def test_account_is_plain_data() -> None:
    account = DynamicsAccount(url="https://org.crm.dynamics.com/", tenant_id="t", client_id="c",
                              client_secret="s")
    assert account.url == "https://org.crm.dynamics.com" and account.scope.endswith("/.default")
    assert account.token_endpoint == "https://login.microsoftonline.com/t/oauth2/v2.0/token"
