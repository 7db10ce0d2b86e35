"""The connector as the engine finds it (entry point `oracle`): the account model's checks, the user's time zone
from the profile, usage() and REST pacing under OOD's limit, discovery (tables, typed fields, picklists), the
default mappings against the describe, and the sandbox kit."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import pytest
from pydantic import ValidationError

from connectors.oracle import CONNECTOR
from connectors.oracle.connection import OracleConnection
from connectors.oracle.errors import SignInFailed
from connectors.oracle.source import OracleChangeSource
from crmsync import connectors
from crmsync.config import Mapping
from crmsync.process import stop
from tests.sandbox_oracle.conftest import RunningOracle


def test_registered_under_its_type() -> None:
    found = connectors.connector("oracle")
    assert found is CONNECTOR and found.type == "oracle" and found.default_external_id == "ExternalSystemId"
    assert found.objects == {"contacts": "Contact", "accounts": "Account", "opportunities": "Opportunity"}
    assert found.index_fields == ("ModifiedDate", "LastUpdated", "LastLoggedIn") and found.deleted_flag == "IsDeleted"
    assert found.api_error(ValueError("x")) is None


def test_api_error_names_the_code(oracle: RunningOracle, connect: Callable[..., OracleConnection]) -> None:
    with pytest.raises(Exception) as refused:
        connect(oracle).api.get("Contacts", "1SBX-NOPE00")
    code, message = CONNECTOR.api_error(refused.value)
    assert code.startswith("SBL-") and message


@pytest.mark.parametrize("change, words", [
    ({"url": "http://pod.crmondemand.com"}, "https://"),
    ({"user_timezone": "Pacific Time"}, "IANA"),
    ({"api": "soap"}, "'rest' or 'webservices'"),
    ({"password": None}, "password"),
    ({"type": "salesforce"}, "oracle"),
    ({"username": ""}, "username"),
])
def test_account_validation_says_what_to_fix(change: dict, words: str) -> None:
    values = {"type": "oracle", "url": "https://pod.crmondemand.com", "username": "CO/USER", "password": "secret"}
    with pytest.raises(ValidationError) as refused:
        CONNECTOR.account_model.model_validate({**values, **change})
    assert words in str(refused.value) and "secret" not in str(refused.value)


def test_password_is_a_secret() -> None:
    account = CONNECTOR.account_model.model_validate({"type": "oracle", "url": "https://pod.crmondemand.com/",
                                                      "username": "CO/USER", "password": "hunter22"})
    assert "hunter22" not in repr(account) and "hunter22" not in account.model_dump_json()
    assert account.url == "https://pod.crmondemand.com" and account.api == "webservices"


def test_a_wrong_password_fails_the_connection_without_showing_it(oracle: RunningOracle,
                                                                  connect: Callable[..., OracleConnection]) -> None:
    with pytest.raises(SignInFailed) as refused:
        connect(oracle, password="wrong-Pa55word")
    assert refused.value.status == 401 and "wrong-Pa55word" not in str(refused.value) + repr(refused.value)


def test_time_zone_from_the_profile_and_usage(oracle: RunningOracle, connect: Callable[..., OracleConnection]) -> None:
    connection = connect(oracle)
    assert connection.account.user_timezone is None and connection.user_timezone == "America/Los_Angeles"
    fixed = connect(oracle, user_timezone="Europe/Paris")
    assert fixed.user_timezone == "Europe/Paris"
    before = connection.usage()
    connection.api.query_page("Contacts", fields=["Id"], limit=1)
    after = connection.usage()
    assert after.calls == before.calls + 1 and after.window == "minute"
    assert after.remaining == after.limit - connection.api.usage().rest_window.used


def test_rest_reads_stay_under_the_rate_limit(start_oracle: Callable[..., RunningOracle],
                                              connect: Callable[..., OracleConnection]) -> None:
    """OOD's REST limit shrunk to 5 requests per 2-second window on both sides: a change source paging 40
    contacts 4 at a time waits for each next window and is never refused."""
    sandbox = start_oracle("paced", seed_contacts=40)
    sandbox.admin("settings", {"rest_requests_per_window": 5, "rest_window_seconds": 2.0, "ws_min_interval_ms": 0})
    connection = connect(sandbox, rest_requests_per_window=5, rest_window_seconds=2.0)
    started = time.monotonic()
    pages = list(OracleChangeSource(connection, "Contact", api="rest", page_size=4).read(None))
    took = time.monotonic() - started
    assert sum(len(p.changes) for p in pages) == 40
    stats = sandbox.admin("stats")
    assert stats["rate_limited"] == 0 and "SBL-ODU-01005" not in stats["errors"]
    rest_calls = sum(n for op, n in stats["requests"].items() if op.startswith("REST "))
    assert rest_calls >= 11 and took >= 2 * (rest_calls // 5 - 1), "it waited for the windows"
    assert connection.usage().remaining is not None and connection.usage().limit == 5


def test_discovery(oracle: RunningOracle, connect: Callable[..., OracleConnection]) -> None:
    discovery = CONNECTOR.discovery(connect(oracle))
    assert (discovery.namespace, discovery.connector_label) == ("ood", "Oracle On Demand")
    assert {t.name for t in discovery.list_tables()} >= {"Account", "Contact", "Opportunity", "Lead", "User"}
    spec = discovery.describe_table("Contact")
    fields = {f.name: f for f in spec.fields}
    assert (fields["CustomDateTime0"].pg_type, fields["CustomDateTime0"].kind) == ("timestamp with time zone",
                                                                                  "datetime")
    assert (fields["DateofBirth"].pg_type, fields["CustomCurrency0"].pg_type, fields["CustomNumber0"].pg_type) == \
        ("date", "numeric", "numeric")
    assert (fields["NeverEmail"].pg_type, fields["ContactFirstName"].pg_type) == ("boolean", "text")
    assert not fields["AccountName"].updateable and fields["ExternalSystemId"].external_id
    source = next(e for e in spec.enumerations if e.name == "Contact_LeadSource")
    assert source.label == "List of 'Source' from 'Contact'" and not source.multiple
    assert {"name": "EVENT", "label": "Trade Show", "value": "EVENT"} in source.values
    assert fields["LeadSource"].enumeration == "Contact_LeadSource"
    assert ("CI_ContactEmail", "search field (an upper-cased copy)") in spec.skipped
    rows = next(discovery.rows("Contact", ["ExternalSystemId", "ModifiedDate"]))
    assert set(rows[0]) == {"ExternalSystemId", "ModifiedDate"} and rows[0]["ModifiedDate"].endswith("Z")


def test_default_mappings_name_real_fields(oracle: RunningOracle, connect: Callable[..., OracleConnection]) -> None:
    discovery = CONNECTOR.discovery(connect(oracle))
    mappings = [Mapping.model_validate(m) for m in CONNECTOR.default_mappings("my ood")]
    assert [(m.name, m.crm_object, m.campaign_table) for m in mappings] == [
        ("accounts", "Account", "organisations"), ("contacts", "Contact", "recipients"),
        ("purchases", "Opportunity", "purchases")]
    for mapping in mappings:
        assert mapping.account == "my ood" and mapping.crm_external_id == "ExternalSystemId"
        fields = {f.name: f for f in discovery.describe_table(mapping.crm_object).fields}
        assert {f.crm for f in mapping.fields} <= set(fields), mapping.name
        assert all(fields[f.crm].updateable for f in mapping.fields), mapping.name
    references = {(m.name, f.crm): f.reference for m in mappings for f in m.fields if f.reference}
    assert references == {("contacts", "AccountId"): "accounts", ("purchases", "AccountId"): "accounts",
                          ("purchases", "ContactId"): "contacts"}


def test_sandbox_kit_starts_a_reachable_sandbox(tmp_path: Path) -> None:
    running = CONNECTOR.sandbox().start(tmp_path / "kit", seed_contacts=10, log_file=tmp_path / "kit.log")
    try:
        assert running.url.startswith("https://127.0.0.1:") and running.ca_file.is_file()
        connection = CONNECTOR.client("kit", CONNECTOR.account_model.model_validate(running.account))
        try:
            assert sum(len(p) for p in CONNECTOR.query(connection).records("Contact", ["Id"])) == 10
        finally:
            connection.close()
        assert running.stats()["requests"]
    finally:
        stop(running.process)
    assert running.process.poll() is not None
