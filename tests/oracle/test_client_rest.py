"""OracleClient's REST side against the sandbox: paging, CRUD, describe, value conversion, query escaping,
re-sign-in, pacing under the rate limit, retries, configuration checks and secret scrubbing."""
from __future__ import annotations

import time
import uuid
from datetime import date, datetime, timezone
from typing import Any, Callable

import pytest
from pydantic import ValidationError

from connectors.oracle.client import OracleClient
from connectors.oracle.errors import OracleApiError, SignInFailed
from connectors.oracle.query import (order_by, rest_all, rest_any_of, rest_any_of_chunks, rest_term)
from tests.oracle.conftest import config_for
from tests.sandbox_oracle.conftest import RunningOracle


def unique() -> str:
    return uuid.uuid4().hex[:8].upper()


def test_query_pages_until_lastpage(client: OracleClient, oracle: RunningOracle) -> None:
    accounts = list(client.query("Accounts", fields=["Id", "AccountName"], order_by=order_by("Id")))
    ids = [a["Id"] for a in accounts]
    assert len(ids) == len(set(ids)) >= 200 and ids == sorted(ids)
    counted = client.web_services.query_page("Account", ["Id"], page_size=1, count=True).record_count
    assert counted == len(ids)
    assert client.usage().rest_requests == -(-len(ids) // 100), "one request a page; lastpage ends the paging"


def test_create_get_update_delete_and_describe(client: OracleClient) -> None:
    tag = unique()
    when = datetime(2024, 7, 1, 16, 0, tzinfo=timezone.utc)
    contact_id = client.create("Contacts", {"ContactFirstName": "Cli", "ContactLastName": tag,
                                            "CustomDateTime0": when, "CustomDate0": date(2024, 2, 29),
                                            "ExternalSystemId": f"CL-{tag}"})
    record = client.get("Contacts", contact_id, ["Id", "CustomDateTime0", "CustomDate0", "ModifiedDate"])
    assert record["CustomDateTime0"] == "2024-07-01T09:00:00Z", "sent as the user's wall clock"
    assert client.clock.parse_rest(record["CustomDateTime0"]) == when
    assert record["CustomDate0"] == "2024-02-29"
    assert client.update("Contacts", contact_id, {"JobTitle": "CIO"})["JobTitle"] == "CIO"
    client.delete("Contacts", contact_id)
    with pytest.raises(OracleApiError) as missing:
        client.get("Contacts", contact_id)
    assert missing.value.status == 404 and missing.value.code == "SBL-EAI-04378"
    described = client.describe("Contacts", ["attributes"])["Contacts"]["attributes"]
    assert {a["name"] for a in described} >= {"ContactEmail", "ExternalSystemId", "ModifiedDate"}


NASTY = ["O'Brien", 'Say "hi"', "back\\slash", "star*name", "semi;colon", "x' OR = 'y", "Zoë Çelik 名前",
         "per%cent_under"]


@pytest.mark.parametrize("name", NASTY)
def test_query_values_are_escaped(client: OracleClient, name: str) -> None:
    tag = unique()
    wanted = client.create("Contacts", {"ContactFirstName": tag, "ContactLastName": name})
    client.create("Contacts", {"ContactFirstName": tag, "ContactLastName": "decoy"})
    found = list(client.query("Contacts", fields=["Id"], q=rest_all(rest_term("ContactFirstName", "=", tag),
                                                                     rest_term("ContactLastName", "=", name))))
    assert [r["Id"] for r in found] == [wanted]
    prefix = list(client.query("Contacts", fields=["Id"], q=rest_all(
        rest_term("ContactFirstName", "=", tag), rest_term("ContactLastName", "LIKE", name[:4].replace(
            "*", "\\*") + "*"))))
    assert [r["Id"] for r in prefix] == [wanted]


def test_any_of_chunks_stay_under_the_cap_and_find_every_key(client: OracleClient) -> None:
    keys = [f"CK-{n:08d}" for n in range(1, 401)]
    chunks = list(rest_any_of_chunks("ExternalSystemId", keys))
    assert len(chunks) > 1 and all(len(q) <= 4096 for q in chunks)
    found = {r["ExternalSystemId"] for q in chunks for r in client.query("Contacts", fields=["ExternalSystemId"],
                                                                          q=q)}
    assert found == set(keys)
    assert rest_any_of("Id", ["a", "b"]) == "Id = 'a' OR = 'b'"


def test_session_expiry_signs_in_again(client: OracleClient, oracle: RunningOracle) -> None:
    pages = client.query("Contacts", fields=["Id"], page_size=100)
    first = [next(pages) for _ in range(150)]
    oracle.admin("expire-sessions", {})
    rest = list(pages)
    assert len(first) + len(rest) >= 1000
    assert client.rest.sign_ins == 2


def test_pacer_keeps_under_the_limit_in_steady_state(oracle: RunningOracle, levers: Any,
                                                     make_client: Callable[..., OracleClient]) -> None:
    levers(rest_requests_per_window=5, rest_window_seconds=2)
    paced = make_client(oracle, rest_requests_per_window=5, rest_window_seconds=2)
    started = time.monotonic()
    for _ in range(12):
        paced.query_page("Contacts", fields=["Id"], limit=1)
    usage = paced.usage()
    assert usage.rate_limited == 0, "the pacer never let the server refuse a request"
    assert usage.rest_requests == 12 and time.monotonic() - started >= 3.5, "12 requests span three 2 s windows"
    assert usage.rest_window.limit == 5 and 0 <= usage.rest_window.remaining <= 5
    assert oracle.admin("stats")["rate_limited"] == 0


def test_rate_limit_answers_wait_for_the_next_window(oracle: RunningOracle, levers: Any,
                                                     make_client: Callable[..., OracleClient]) -> None:
    levers(rest_requests_per_window=3, rest_window_seconds=2)
    eager = make_client(oracle, rest_requests_per_window=100, rest_window_seconds=2)
    records = [eager.query_page("Contacts", fields=["Id"], limit=1).records for _ in range(8)]
    assert all(len(r) == 1 for r in records)
    assert eager.usage().rate_limited >= 1, "the server refused, the client waited, counted and retried"


def test_server_errors_are_retried(client: OracleClient, oracle: RunningOracle, levers: Any) -> None:
    client.sleep = lambda seconds: None
    oracle.admin("faults", {"server_error": 0.3, "seed": 3})
    assert len(list(client.query("Accounts", fields=["Id"]))) >= 200
    assert oracle.admin("stats")["faults_injected"]["server_error"] >= 1


def test_sort_or_filter_fallback(client: OracleClient, levers: Any) -> None:
    levers(sort_or_filter=True)
    q, ordering = rest_term("CustomNumber0", ">=", 95), order_by(("ExternalSystemId", "desc"))
    with pytest.raises(OracleApiError) as refused:
        list(client.query("Contacts", fields=["Id"], q=q, order_by=ordering))
    assert refused.value.code == "SBL-ODS-00127"
    rows = list(client.query("Contacts", fields=["ExternalSystemId", "CustomNumber0"], q=q, order_by=ordering,
                             sort_key=lambda r: r["ExternalSystemId"]))
    keys = [r["ExternalSystemId"] for r in rows]
    assert rows and all(r["CustomNumber0"] >= 95 for r in rows) and keys == sorted(keys)


def test_check_timezone(oracle: RunningOracle, make_client: Callable[..., OracleClient]) -> None:
    make_client(oracle).check_timezone()
    with pytest.raises(ValueError) as wrong:
        make_client(oracle, user_timezone="Asia/Tokyo").check_timezone()
    assert "Asia/Tokyo" in str(wrong.value)


def test_sign_in_failure_is_clear_and_scrubbed(oracle: RunningOracle,
                                               make_client: Callable[..., OracleClient]) -> None:
    secret = "Sup3r-S3cret-Passw0rd"
    client = make_client(oracle, password=secret)
    with pytest.raises(SignInFailed) as failed:
        client.query_page("Contacts")
    text = f"{failed.value} {failed.value!r}"
    assert "SBL-ODU-01003" in text and oracle.credentials.username in text
    assert secret not in text and secret not in repr(client.config)
    ws = make_client(oracle, password=secret)
    with pytest.raises(SignInFailed) as ws_failed:
        ws.web_services.query_page("Contact", ["Id"])
    assert secret not in f"{ws_failed.value!r}"


def test_configuration_is_checked(oracle: RunningOracle, tmp_path: Any) -> None:
    with pytest.raises(ValidationError, match="https://"):
        config_for(oracle, base_url=oracle.base_url.replace("https", "http"))
    with pytest.raises(ValidationError, match="IANA"):
        config_for(oracle, user_timezone="Pacific Time")
    with pytest.raises(ValidationError, match="does not exist"):
        config_for(oracle, ca_file=tmp_path / "missing.pem")


def test_environment_ca_variables_are_ignored(oracle: RunningOracle, monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Any, make_client: Callable[..., OracleClient]) -> None:
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("not a certificate")
    monkeypatch.setenv("SSL_CERT_FILE", str(bogus))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bogus))
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    assert make_client(oracle, rest_requests_per_window=1000).query_page("Contacts", limit=1).records
