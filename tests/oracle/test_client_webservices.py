"""OracleClient's Web Services side against the sandbox: QueryPage paging, InsertOrUpdate batches with
per-record outcomes (and the documented v2.0 fallback), DeletedItemQueryPage, pacing and re-sign-in."""
from __future__ import annotations

import math
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from connectors.oracle.client import OracleClient
from connectors.oracle.query import ws_any_of, ws_term
from tests.sandbox_oracle.conftest import REST, RunningOracle


def unique() -> str:
    return uuid.uuid4().hex[:8].upper()


def people(tag: str, count: int) -> list[dict[str, Any]]:
    return [{"ExternalSystemId": f"{tag}-{n:02d}", "ContactFirstName": f"P{n}", "ContactLastName": tag}
            for n in range(count)]


def test_query_pages_with_sort_and_count(client: OracleClient) -> None:
    ws = client.web_services
    first = ws.query_page("Contact", ["Id", "ExternalSystemId"], sort=[("ExternalSystemId", "ASC")], count=True,
                          filters={"ExternalSystemId": ws_term("LIKE", "CK-*")})
    assert len(first.records) == 100 and not first.last_page and first.record_count >= 1000
    everything = list(ws.query("Contact", ["ExternalSystemId"], filters={"ExternalSystemId": ws_term(
        "LIKE", "CK-*")}, sort=[("ExternalSystemId", "DESC")]))
    keys = [r["ExternalSystemId"] for r in everything]
    assert len(keys) == first.record_count and keys == sorted(keys, reverse=True)


def test_insert_or_update_gives_every_record_its_outcome(client: OracleClient, oracle: RunningOracle) -> None:
    tag = unique()
    records = people(tag, 20)
    records[13]["LeadSource"] = "NOT-A-SOURCE"
    records[2] = {"ExternalSystemId": "CK-00000003", "JobTitle": f"Updated {tag}"}
    ws = client.web_services
    calls = ws.calls
    outcomes = ws.insert_or_update("Contact", records, echo=False)
    assert [o.index for o in outcomes] == list(range(20))
    failed = [o for o in outcomes if not o.ok]
    assert [o.index for o in failed] == [13]
    assert failed[0].error is not None and failed[0].error.code == "SBL-DAT-00225"
    assert failed[0].error.symbol and failed[0].error.log_file.endswith(".log")
    assert outcomes[2].operation == "update" and outcomes[0].operation == "insert"
    assert all(o.id and o.modified and o.modified.tzinfo for o in outcomes if o.ok)
    assert ws.calls - calls <= 1 + 2 * math.ceil(math.log2(20)), "bisection isolates the bad record cheaply"
    stored = list(ws.query("Contact", ["ExternalSystemId"], filters={"ContactLastName": ws_term("=", tag)}))
    assert len(stored) == 18
    again = ws.insert_or_update("Contact", [{"ExternalSystemId": f"{tag}-00", "JobTitle": "Second pass"}])
    assert again[0].ok and again[0].operation == "update" and again[0].id == outcomes[0].id


def test_records_without_the_user_key_fail_alone(client: OracleClient) -> None:
    outcomes = client.web_services.insert_or_update("Contact", [{"ContactFirstName": "No", "ContactLastName": "Key"},
                                                                *people(unique(), 1)])
    assert [o.ok for o in outcomes] == [False, True]
    assert "ExternalSystemId" in str(outcomes[0].error)


def test_fallback_to_query_and_execute_when_insert_or_update_is_unknown(client: OracleClient, levers: Any) -> None:
    levers(ws_v2_insert_or_update=False)
    tag = unique()
    existing = client.web_services.insert_or_update("Contact", people(tag, 3))
    mixed = [{"ExternalSystemId": f"{tag}-01", "JobTitle": "Via Execute"}, *people(tag + "N", 2)]
    outcomes = client.web_services.insert_or_update("Contact", mixed)
    assert client.web_services.insert_or_update_supported is False
    assert [(o.ok, o.operation) for o in outcomes] == [(True, "update"), (True, "insert"), (True, "insert")]
    assert outcomes[0].id == existing[1].id
    assert client.get("Contacts", existing[1].id or "", ["JobTitle"])["JobTitle"] == "Via Execute"


def test_deleted_items_since(client: OracleClient) -> None:
    tag = unique()
    created = client.web_services.insert_or_update("Contact", people(tag, 5))
    since = datetime.now(timezone.utc) - timedelta(seconds=5)
    for outcome in created:
        client.delete("Contacts", outcome.id or "")
    items = [i for i in client.web_services.deleted_items("Contact", since=since, page_size=2)
             if i.external_id.startswith(tag)]
    assert [i.object_id for i in items] == [o.id for o in created]
    assert all(i.type == "Contact" and i.name == f"P{n} {tag}" for n, i in enumerate(items))
    assert all(abs((i.deleted_at - datetime.now(timezone.utc)).total_seconds()) < 60 for i in items)


def test_ws_pacing_and_rate_limit_retries(oracle: RunningOracle, levers: Any,
                                          make_client: Callable[..., OracleClient]) -> None:
    levers(ws_min_interval_ms=50)
    paced = make_client(oracle)
    for _ in range(10):
        paced.web_services.query_page("Contact", ["Id"], page_size=1)
    assert paced.usage().rate_limited == 0
    levers(ws_min_interval_ms=300)
    eager = make_client(oracle)
    for _ in range(4):
        assert eager.web_services.query_page("Contact", ["Id"], page_size=1).records
    assert eager.usage().rate_limited >= 3, "each refusal said how long to wait; the client waited and retried"


def test_stateful_ws_session_expiry_signs_in_again(oracle: RunningOracle,
                                                   make_client: Callable[..., OracleClient]) -> None:
    client = make_client(oracle, ws_stateless=False)
    ws = client.web_services
    assert ws.query_page("Contact", ["Id"], page_size=1).records
    oracle.admin("expire-sessions", {})
    assert ws.query_page("Contact", ["Id"], filters={"ExternalSystemId": ws_any_of(["CK-00000001",
                                                                                   "CK-00000002"])}).records
    assert client.ws_session.sign_ins == 2


def test_stateless_web_services_share_one_session(oracle: RunningOracle,
                                                  make_client: Callable[..., OracleClient]) -> None:
    """OOD allows 10 sessions per company: clients (one per process) share the user's stateless Web Services
    session instead of holding one each, and a session expiry costs them nothing."""
    oracle.admin("expire-sessions", {})
    clients = [make_client(oracle) for _ in range(4)]
    for client in clients:
        assert client.web_services.query_page("Contact", ["Id"], page_size=1).records
    kinds = [s["kind"] for s in oracle.admin("stats")["sessions"]]
    assert kinds.count("stateless") == 1 and kinds.count("ws") == 0
    oracle.admin("expire-sessions", {})
    assert clients[0].web_services.query_page("Contact", ["Id"], page_size=1).records
    assert all(client.ws_session.sign_ins == 0 for client in clients)


def test_rest_and_ws_see_the_same_records(client: OracleClient, oracle: RunningOracle) -> None:
    tag = unique()
    outcome = client.web_services.insert_or_update("Contact", people(tag, 1))[0]
    with oracle.rest() as http:
        rest = http.get(f"{REST}/Contacts/{outcome.id}", params={"fields": "ModifiedDate"}).json()["Contacts"][0]
    assert client.clock.parse_rest(rest["ModifiedDate"]) == outcome.modified
