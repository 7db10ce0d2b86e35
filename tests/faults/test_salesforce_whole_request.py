"""Salesforce can refuse a whole sObject Collections request for one record's value: the request body is turned
into typed sObjects before any record runs, and a value its field's type cannot hold ('2024-02-30' in a date
field, text in a number field, an object where a value belongs) ends the request with HTTP 400
JSON_PARSER_ERROR — no record is processed — while what is decided per record (a too-long string, a validation
rule) stays a per-record error in a 200 answer.

Against the real HTTPS sandbox with simple-salesforce (what the sandbox answers), then through the Salesforce
sink (what crmsync does about it: it bisects the refused request down to the bad records, so the others are
applied and only the bad ones are rejected, with Salesforce's code)."""
from __future__ import annotations

import uuid
from typing import Any

import pytest
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceMalformedRequest

from connectors.salesforce.sink import SalesforceSink
from crmsync.envelope import ApplyCommand
from tests.salesforce.conftest import make_client
from tests.sandbox_salesforce.conftest import RunningSandbox, launch

WRONG_TYPES = [("Birthdate", "2024-02-30"), ("Birthdate", "0000-01-01"), ("Birthdate", {}),
               ("Birthdate", "0001-01-01T00:30:00+01:00"),  # before year 1 once in UTC (a 500 here once)
               ("HasOptedOutOfEmail", "maybe"), ("FirstName", {"a": 1, "b": 2}), ("FirstName", [1])]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory):
    running = launch(tmp_path_factory.mktemp("sf-whole-request") / "salesforce", seed_contacts=0)
    yield running
    running.stop()


def _sf(sandbox: RunningSandbox) -> Salesforce:
    return Salesforce(session_id=sandbox.access_token(), instance_url=sandbox.base_url, session=sandbox.session())


def _contacts(sf: Salesforce, count: int, marker: str) -> list[str]:
    body = {"allOrNone": False, "records": [{"attributes": {"type": "Contact"}, "LastName": f"{marker}-{i}",
                                             "Title": "before"} for i in range(count)]}
    return [r["id"] for r in sf.restful("composite/sobjects", method="POST", json=body)]


def _titles(sf: Salesforce, marker: str) -> dict[str, str]:
    rows = sf.query_all(f"SELECT LastName, Title FROM Contact WHERE LastName LIKE '{marker}-%'")["records"]
    return {r["LastName"]: r["Title"] for r in rows}


@pytest.mark.parametrize("field,value", WRONG_TYPES)
def test_a_value_of_the_wrong_type_refuses_the_whole_collections_request(sandbox, field: str, value: Any) -> None:
    sf, marker = _sf(sandbox), f"wt{uuid.uuid4().hex[:8]}"
    ids = _contacts(sf, 5, marker)
    records = [{"attributes": {"type": "Contact"}, "id": rid, "Title": "after"} for rid in ids]
    records[3][field] = value
    with pytest.raises(SalesforceMalformedRequest) as refused:
        sf.restful("composite/sobjects", method="PATCH", json={"allOrNone": False, "records": records})
    assert refused.value.status == 400
    [error] = refused.value.content
    assert error["errorCode"] == "JSON_PARSER_ERROR"
    assert error["message"].startswith("Cannot deserialize instance of ")
    assert "at [line:1, column:" in error["message"]
    assert set(_titles(sf, marker).values()) == {"before"}  # not one record was processed


def test_a_too_long_value_stays_a_per_record_error(sandbox) -> None:
    sf, marker = _sf(sandbox), f"tl{uuid.uuid4().hex[:8]}"
    ids = _contacts(sf, 3, marker)
    records = [{"attributes": {"type": "Contact"}, "id": rid, "Title": "after"} for rid in ids]
    records[1]["Title"] = "x" * 300
    results = sf.restful("composite/sobjects", method="PATCH", json={"allOrNone": False, "records": records})
    assert [r["success"] for r in results] == [True, False, True]
    assert results[1]["errors"][0]["statusCode"] == "STRING_TOO_LONG"


def _update(rid: str, values: dict[str, Any]) -> ApplyCommand:
    return ApplyCommand(id=f"cmd-{uuid.uuid4().hex}", side="crm", target="sf", object="Contact", action="upsert",
                        key={"id": rid}, values=values, cause="test")


def test_the_sink_bisects_a_refused_request_down_to_the_bad_records(sandbox) -> None:
    """200 updates in one collections call, two of them with a date Salesforce cannot read: 198 are applied,
    the two are refused with JSON_PARSER_ERROR, and finding them costs a bounded number of calls."""
    sf, marker = _sf(sandbox), f"bi{uuid.uuid4().hex[:8]}"
    ids = _contacts(sf, 200, marker)
    bad = {17, 150}
    commands = [_update(rid, {"Title": "after", **({"Birthdate": "2024-02-30"} if i in bad else {})})
                for i, rid in enumerate(ids)]
    client = make_client(sandbox)
    sandbox.admin("reset-stats", {})
    outcomes = SalesforceSink(client).apply(commands)
    assert [i for i, o in enumerate(outcomes) if not o.ok] == sorted(bad)
    assert {(o.code, o.command.key["id"]) for o in outcomes if not o.ok} == {("JSON_PARSER_ERROR", ids[i]) for i in bad}
    assert all("Cannot deserialize instance of date" in o.message for o in outcomes if not o.ok)
    titles = _titles(sf, marker)
    assert sum(t == "after" for t in titles.values()) == 198
    calls = sandbox.admin("stats")["requests"].get("PATCH collections_update", 0)
    assert calls <= 1 + 2 * 2 * 8  # the refused call, then two halves per level of the bisection, per bad record


def test_bisecting_stops_at_its_budget_when_every_record_is_refused(sandbox) -> None:
    """A mapping that sends a wrong type for every record must not cost 2n-1 calls per batch: after the budget
    the records still together are rejected together (each is retried on its own by the rejects ledger)."""
    sf, marker = _sf(sandbox), f"all{uuid.uuid4().hex[:8]}"
    ids = _contacts(sf, 200, marker)
    client = make_client(sandbox)
    sandbox.admin("reset-stats", {})
    outcomes = SalesforceSink(client).apply([_update(rid, {"Birthdate": "not a date"}) for rid in ids])
    assert not any(o.ok for o in outcomes) and {o.code for o in outcomes} == {"JSON_PARSER_ERROR"}
    assert sandbox.admin("stats")["requests"]["PATCH collections_update"] <= 1 + 64
