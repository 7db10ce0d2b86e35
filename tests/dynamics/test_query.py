"""The Dynamics record query against a real sandbox: every operator of the neutral filter rendered as OData and
run, hostile strings that must stay literals, clear refusals, ids/order/fields, and deletions by date."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from connectors.dynamics import CONNECTOR
from connectors.dynamics.connector import DynamicsClient
from connectors.dynamics.query import to_odata
from crmsync.filters import FilterError, parse

HOSTILE = "x') or (1 eq 1"


@pytest.fixture(scope="module")
def people(sandbox: Any) -> dict[str, Any]:
    """Four contacts under one tag, with values every operator can tell apart."""
    from .conftest import connector_client

    client = connector_client(sandbox)
    tag = f"Q{uuid.uuid4().hex[:6]}"
    company = client.create("accounts", {"name": f"{tag} company"})
    rows = {
        "A": {"firstname": "Ann", "numberofchildren": 1, "creditlimit": 100.5, "birthdate": "1990-01-01",
              "lastusedincampaign": "2024-05-01T10:00:00Z", "crmsync_interests": "1,3", "gendercode": 2,
              "emailaddress1": "ann@q.example", "parentcustomerid_account@odata.bind": f"/accounts({company})"},
        "B": {"firstname": "O'Brien", "numberofchildren": 3, "creditlimit": 2000, "birthdate": "1985-06-15",
              "lastusedincampaign": "2024-05-02T00:00:00Z", "donotemail": True, "crmsync_interests": "2",
              "gendercode": 1},
        "C": {"firstname": "50%_off[sale]", "jobtitle": HOSTILE},
        "D": {"firstname": "5000ff", "numberofchildren": 0, "jobtitle": "x"},
    }
    ids = {name: client.create("contacts", {"lastname": f"{tag} {name}", **values}) for name, values in rows.items()}
    client.close()
    return {"tag": tag, "ids": ids, "company": company}


def found(client: DynamicsClient, people: dict[str, Any], condition: dict[str, Any]) -> set[str]:
    """Which of the four contacts `condition` selects (scoped to them by their tag)."""
    where = parse({"and": [{"field": "lastname", "op": "starts with", "value": people["tag"]}, condition]})
    names = {v: k for k, v in people["ids"].items()}
    return {names[row["id"]] for page in CONNECTOR.query(client).records("contact", ["lastname"], where)
            for row in page}


CASES = [
    ({"field": "emailaddress1", "op": "is empty"}, {"B", "C", "D"}),
    ({"field": "emailaddress1", "op": "is not empty"}, {"A"}),
    ({"field": "numberofchildren", "op": "=", "value": 3}, {"B"}),
    ({"field": "numberofchildren", "op": "!=", "value": 3}, {"A", "D"}),
    ({"field": "creditlimit", "op": ">", "value": 100.5}, {"B"}),
    ({"field": "creditlimit", "op": ">=", "value": 100.5}, {"A", "B"}),
    ({"field": "creditlimit", "op": "<", "value": 2000}, {"A"}),
    ({"field": "creditlimit", "op": "<=", "value": 2000}, {"A", "B"}),
    ({"field": "lastusedincampaign", "op": "after", "value": "2024-05-01"}, {"B"}),  # after the whole day
    ({"field": "lastusedincampaign", "op": "on or after", "value": "2024-05-01"}, {"A", "B"}),
    ({"field": "lastusedincampaign", "op": "before", "value": "2024-05-02"}, {"A"}),
    ({"field": "lastusedincampaign", "op": "on or before", "value": "2024/05/01"}, {"A"}),
    ({"field": "lastusedincampaign", "op": "=", "value": "2024-05-02T02:00:00+02:00"}, {"B"}),
    ({"field": "birthdate", "op": "after", "value": "1986-01-01"}, {"A"}),
    ({"field": "birthdate", "op": "on or before", "value": "1985-06-15"}, {"B"}),
    ({"field": "firstname", "op": "like", "value": "O'B%"}, {"B"}),
    ({"field": "firstname", "op": "like", "value": "%off[sale]"}, {"C"}),
    ({"field": "firstname", "op": "like", "value": "5_0%"}, {"D"}),  # _ is one character: "50%" has no 0 third
    ({"field": "firstname", "op": "like", "value": "5_%f%"}, {"C", "D"}),
    ({"field": "firstname", "op": "like", "value": "ann"}, {"A"}),
    ({"field": "firstname", "op": "contains", "value": "%_off["}, {"C"}),
    ({"field": "firstname", "op": "starts with", "value": "50%"}, {"C"}),  # % is a character here, not a wildcard
    ({"field": "firstname", "op": "ends with", "value": "[sale]"}, {"C"}),
    ({"field": "firstname", "op": "contains", "value": "'"}, {"B"}),
    ({"field": "gendercode", "op": "in", "value": [1, "Female"]}, {"A", "B"}),
    ({"field": "gendercode", "op": "not in", "value": ["Male"]}, {"A"}),
    ({"field": "gendercode", "op": "=", "value": "female"}, {"A"}),
    ({"field": "firstname", "op": "in", "value": ["Ann", "O'Brien"]}, {"A", "B"}),
    ({"field": "firstname", "op": "not in", "value": ["Ann", "O'Brien"]}, {"C", "D"}),
    ({"field": "crmsync_interests", "op": "in", "value": ["Newsletter", "Webinars"]}, {"B"}),
    ({"field": "crmsync_interests", "op": "contains", "value": "Events"}, {"A"}),
    ({"field": "crmsync_interests", "op": "not in", "value": [1]}, {"B", "C", "D"}),
    ({"field": "donotemail", "op": "=", "value": True}, {"B"}),
    ({"field": "jobtitle", "op": "=", "value": HOSTILE}, {"C"}),
    ({"field": "jobtitle", "op": "contains", "value": "') or ("}, {"C"}),
    ({"field": "firstname", "op": "=", "value": "O'Brien"}, {"B"}),
    ({"or": [{"field": "numberofchildren", "op": "=", "value": 1}, {"field": "firstname", "op": "=",
                                                                     "value": "5000ff"}]}, {"A", "D"}),
]


@pytest.mark.parametrize("condition, expected", CASES, ids=[f"{c.get('op', 'or')}-{i}" for i, (c, _) in
                                                            enumerate(CASES)])
def test_every_operator(dynamics: DynamicsClient, people: dict[str, Any], condition: dict[str, Any],
                        expected: set[str]) -> None:
    assert found(dynamics, people, condition) == expected


def test_lookups_compare_by_id_and_literals_are_escaped(dynamics: DynamicsClient, people: dict[str, Any]) -> None:
    assert found(dynamics, people, {"field": "parentcustomerid", "op": "=", "value": people["company"]}) == {"A"}
    table = dynamics.catalog.table("contact")
    rendered = to_odata(parse({"field": "jobtitle", "op": "=", "value": HOSTILE}), table)
    assert rendered == "jobtitle eq 'x'') or (1 eq 1'"
    assert to_odata(parse({"field": "firstname", "op": "contains", "value": "a%b_c[d'"}), table) == \
        "contains(firstname,'a[%]b[_]c[[]d''')"
    assert to_odata(parse({"field": "parentcustomerid", "op": "is empty"}), table) == "_parentcustomerid_value eq null"


REFUSED = [
    ({"field": "nosuch", "op": "=", "value": 1}, "filter.field", "not a column of contact"),
    ({"field": "firstname", "op": "after", "value": "2024-01-01"}, "filter.op", "compares dates"),
    ({"field": "numberofchildren", "op": "contains", "value": "1"}, "filter.op", "compares text"),
    ({"field": "numberofchildren", "op": "=", "value": "abc"}, "filter.value", "must be a number"),
    ({"field": "numberofchildren", "op": "=", "value": 1.5}, "filter.value", "whole numbers"),
    ({"field": "parentcustomerid", "op": "=", "value": "1 or 1 eq 1"}, "filter.value", "must be a GUID"),
    ({"field": "gendercode", "op": "=", "value": "Robot"}, "filter.value", "allowed: 1 (Male), 2 (Female)"),
    ({"field": "crmsync_interests", "op": "=", "value": "1"}, "filter.op", "multi-select"),
    ({"field": "firstname", "op": "like", "value": "a%b"}, "filter.value", "neither starts nor ends with %"),
    ({"field": "birthdate", "op": "=", "value": "yesterday"}, "filter.value", "is not a date"),
    ({"field": "donotemail", "op": "=", "value": "yes"}, "filter.value", "true or false"),
]


@pytest.mark.parametrize("condition, path, message", REFUSED, ids=[c[2][:20] for c in REFUSED])
def test_clear_refusals(dynamics: DynamicsClient, condition: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(FilterError) as refused:
        to_odata(parse(condition), dynamics.catalog.table("contact"))
    assert refused.value.path == path and message in str(refused.value)


def test_fields_ids_and_order(dynamics: DynamicsClient, people: dict[str, Any]) -> None:
    query = CONNECTOR.query(dynamics)
    ids = people["ids"]
    rows = [r for page in query.records("contacts", ["firstname", "crmsync_interests", "parentcustomerid"],
                                        order_by=[("firstname", True)], ids=[ids["A"], ids["B"], ids["C"]],
                                        include_deleted=True) for r in page]
    assert [r["firstname"] for r in rows] == ["O'Brien", "Ann", "50%_off[sale]"]
    assert rows[1] == {"id": ids["A"], "firstname": "Ann", "crmsync_interests": ["1", "3"],
                       "parentcustomerid": people["company"]}
    assert [r for page in query.records("contact", ["firstname"], ids=[]) for r in page] == []
    by_id = parse({"field": "id", "op": "=", "value": ids["D"]})  # "id", as neutral changes name it
    assert [r for page in query.records("contact", ["id", "lastname"], by_id) for r in page] == \
        [{"id": ids["D"], "lastname": f"{people['tag']} D"}]
    with pytest.raises(ValueError, match="not a GUID"):
        list(query.records("contact", ["firstname"], ids=["x' or 1 eq 1"]))
    with pytest.raises(ValueError, match="fields: 'nosuch' is not a column"):
        list(query.records("contact", ["nosuch"]))
    paged = CONNECTOR.query(dynamics)
    paged.page_size = 500
    assert sum(len(page) for page in paged.records("contact", ["lastname"])) >= 1200


def test_deleted_records_by_date_from_the_audit_log(dynamics: DynamicsClient) -> None:
    query = CONNECTOR.query(dynamics)
    before = datetime.now(timezone.utc) - timedelta(minutes=5)  # the sandbox clock may run a little apart
    gone = dynamics.create("contacts", {"lastname": "To be deleted"})
    dynamics.delete("contacts", gone)
    after = datetime.now(timezone.utc) + timedelta(minutes=5)
    found_ids = [d.id for d in query.deleted("contact", before.isoformat(), after.isoformat())]
    assert gone in found_ids
    deleted = next(d for d in query.deleted("contact", before.isoformat(), after.isoformat()) if d.id == gone)
    assert deleted.deleted_at.endswith("Z")
    assert gone not in [d.id for d in query.deleted("contact", (before - timedelta(days=1)).isoformat(),
                                                        before.isoformat())]
    assert gone not in [d.id for d in query.deleted("account", before.isoformat(), after.isoformat())]
    with pytest.raises(ValueError, match="auditing is off for systemuser"):
        query.deleted("systemuser", before.isoformat(), after.isoformat())
