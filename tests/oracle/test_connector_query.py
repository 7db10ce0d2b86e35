"""The record query against a sandbox of its own: every operator of the neutral filter tree rendered as a search
specification, hostile strings that stay literals, refusals that say what to fix, ordering (also where the
server will not filter and sort at once), ids, deleted records and the deleted-items window."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import pytest

from connectors.oracle import CONNECTOR
from connectors.oracle.connection import OracleConnection
from connectors.oracle.records import OracleRecordQuery
from connectors.oracle.searchspec import render
from crmsync import filters
from tests.sandbox_oracle.conftest import RunningOracle

MARK = {"field": "CustomText0", "op": "=", "value": "QRY"}
HOSTILE_TITLE = "O'Brien \\ *star* ?q"
PEOPLE = {
    "Q1": dict(ContactLastName="Alpha", CustomNumber0=10, DateofBirth="1980-01-01", NeverEmail=True,
               CustomDateTime0=datetime(2024, 5, 1, 10, tzinfo=timezone.utc), ContactType="Customer",
               JobTitle=HOSTILE_TITLE),
    "Q2": dict(ContactLastName="Beta", CustomNumber0=20, DateofBirth="1990-06-15", NeverEmail=False,
               CustomDateTime0=datetime(2024, 5, 2, 10, tzinfo=timezone.utc), ContactType="Prospect",
               JobTitle="Engineer"),
    "Q3": dict(ContactLastName="Gamma", CustomNumber0=30, DateofBirth="2000-12-31", ContactType="Partner"),
    "Q4": dict(ContactLastName="alphabet", CustomNumber0=40, ContactType="Other", JobTitle="100% sure_thing"),
}


@pytest.fixture(scope="module")
def people(own_oracle: RunningOracle) -> dict[str, str]:
    """The four contacts above, by external id -> OOD Id."""
    connection = CONNECTOR.client("ood", _account(own_oracle))
    try:
        outcomes = connection.api.web_services.insert_or_update("Contact", [
            {"ContactFirstName": "Query", "ExternalSystemId": key, "CustomText0": "QRY", **values}
            for key, values in PEOPLE.items()])
    finally:
        connection.close()
    assert all(o.ok for o in outcomes)
    return {key: o.id for key, o in zip(PEOPLE, outcomes)}


def _account(running: RunningOracle) -> Any:
    from tests.oracle.conftest import account_for

    return account_for(running)


@pytest.fixture
def query(own_oracle: RunningOracle, connect: Callable[..., OracleConnection],
          people: dict[str, str]) -> OracleRecordQuery:
    return CONNECTOR.query(connect(own_oracle))


def matching(query: OracleRecordQuery, condition: dict[str, Any], **kwargs: Any) -> list[str]:
    where = filters.parse({"and": [MARK, condition]})
    return sorted(r["ExternalSystemId"] for page in query.records("Contact", ["ExternalSystemId"], where, **kwargs)
                  for r in page)


CASES = [
    ({"field": "JobTitle", "op": "is empty"}, ["Q3"]),
    ({"field": "JobTitle", "op": "is not empty"}, ["Q1", "Q2", "Q4"]),
    ({"field": "CustomNumber0", "op": "=", "value": 20}, ["Q2"]),
    ({"field": "CustomNumber0", "op": "!=", "value": 20}, ["Q1", "Q3", "Q4"]),
    ({"field": "CustomNumber0", "op": "<", "value": 30}, ["Q1", "Q2"]),
    ({"field": "CustomNumber0", "op": "<=", "value": 30}, ["Q1", "Q2", "Q3"]),
    ({"field": "CustomNumber0", "op": ">", "value": 30}, ["Q4"]),
    ({"field": "CustomNumber0", "op": ">=", "value": 30.0}, ["Q3", "Q4"]),
    ({"field": "DateofBirth", "op": "after", "value": "1990-06-15"}, ["Q3"]),
    ({"field": "DateofBirth", "op": "before", "value": "1990/06/15"}, ["Q1"]),
    ({"field": "DateofBirth", "op": "on or after", "value": "new Date(1990,5,15)"}, ["Q2", "Q3"]),
    ({"field": "DateofBirth", "op": "on or before", "value": "1990-06-15"}, ["Q1", "Q2"]),
    ({"field": "CustomDateTime0", "op": "after", "value": "2024-05-01"}, ["Q2"]),
    ({"field": "CustomDateTime0", "op": "on or before", "value": "2024-05-01"}, ["Q1"]),
    ({"field": "CustomDateTime0", "op": "on or after", "value": "2024-05-01T10:00:00Z"}, ["Q1", "Q2"]),
    ({"field": "CustomDateTime0", "op": "=", "value": "2024-05-02T12:00:00+02:00"}, ["Q2"]),
    ({"field": "ContactLastName", "op": "like", "value": "alpha%"}, ["Q1", "Q4"]),
    ({"field": "ContactLastName", "op": "like", "value": "_eta"}, ["Q2"]),
    ({"field": "ContactLastName", "op": "contains", "value": "PH"}, ["Q1", "Q4"]),
    ({"field": "ContactLastName", "op": "starts with", "value": "gam"}, ["Q3"]),
    ({"field": "ContactLastName", "op": "ends with", "value": "TA"}, ["Q2"]),
    ({"field": "ContactType", "op": "in", "value": ["Customer", "Partner"]}, ["Q1", "Q3"]),
    ({"field": "ContactType", "op": "not in", "value": ["Customer", "Partner"]}, ["Q2", "Q4"]),
    ({"field": "NeverEmail", "op": "=", "value": True}, ["Q1"]),
    ({"field": "contactlastname", "op": "=", "value": "Beta"}, ["Q2"]),
    ({"or": [{"field": "ContactLastName", "op": "=", "value": "Beta"},
             {"and": [{"field": "CustomNumber0", "op": ">", "value": 35},
                      {"field": "JobTitle", "op": "is not empty"}]}]}, ["Q2", "Q4"]),
]


@pytest.mark.parametrize("condition, expected", CASES, ids=[str(c[0])[:60] for c in CASES])
def test_every_operator(query: OracleRecordQuery, condition: dict[str, Any], expected: list[str]) -> None:
    assert matching(query, condition) == expected


HOSTILE = [
    ({"field": "JobTitle", "op": "=", "value": HOSTILE_TITLE}, ["Q1"]),
    ({"field": "JobTitle", "op": "contains", "value": "*"}, ["Q1"]),
    ({"field": "JobTitle", "op": "contains", "value": "?"}, ["Q1"]),
    ({"field": "JobTitle", "op": "contains", "value": "\\"}, ["Q1"]),
    ({"field": "JobTitle", "op": "contains", "value": "'"}, ["Q1"]),
    ({"field": "JobTitle", "op": "contains", "value": "%"}, ["Q4"]),
    ({"field": "JobTitle", "op": "contains", "value": "_"}, ["Q4"]),
    ({"field": "ContactLastName", "op": "=", "value": "x' OR [ContactLastName] IS NOT NULL OR [Id] = '"}, []),
    ({"field": "ContactLastName", "op": "=", "value": "Alpha'' OR ''1''=''1"}, []),
    ({"field": "ContactLastName", "op": "in", "value": ["Alpha] OR [Id] IS NOT NULL", "Beta\" OR \"1\"=\"1"]}, []),
    ({"field": "ContactLastName", "op": "starts with", "value": "*"}, []),
    ({"field": "ContactLastName", "op": "like", "value": "</ListOfContact>&amp;<x>"}, []),
]


@pytest.mark.parametrize("condition, expected", HOSTILE, ids=[repr(c[0]["value"])[:40] for c in HOSTILE])
def test_hostile_strings_stay_literals(query: OracleRecordQuery, condition: dict[str, Any],
                                       expected: list[str]) -> None:
    assert matching(query, condition) == expected


REFUSED = [
    ({"field": "Nope", "op": "=", "value": 1}, "filter.and[1].field", "not a field"),
    ({"field": "CustomNumber0", "op": "starts with", "value": "1"}, "filter.and[1].op", "compares text"),
    ({"field": "ContactLastName", "op": "after", "value": "2024-01-01"}, "filter.and[1].op", "compares dates"),
    ({"field": "CustomNumber0", "op": "=", "value": "ten"}, "filter.and[1].value", "must be a number"),
    ({"field": "NeverEmail", "op": "=", "value": "yes"}, "filter.and[1].value", "true or false"),
    ({"field": "DateofBirth", "op": "=", "value": "soon"}, "filter.and[1].value", "not a date"),
]


@pytest.mark.parametrize("condition, path, words", REFUSED, ids=[c[2] for c in REFUSED])
def test_what_cannot_be_expressed_is_refused_clearly(query: OracleRecordQuery, condition: dict[str, Any], path: str,
                                                     words: str) -> None:
    with pytest.raises(filters.FilterError) as refused:
        matching(query, condition)
    assert refused.value.path == path and words in str(refused.value)


def test_rendered_search_specification(query: OracleRecordQuery) -> None:
    node = filters.parse({"or": [{"field": "ContactLastName", "op": "contains", "value": "a'b*"},
                                 {"field": "CustomNumber0", "op": "!=", "value": 3}]})
    assert render(node, query.described("Contact")) == "([ContactLastName] ~LIKE '*a''b\\**' OR [CustomNumber0] <> '3')"


@pytest.mark.parametrize("sort_or_filter", [False, True])
def test_order_by_also_sorted_here_when_the_server_refuses(own_oracle: RunningOracle, query: OracleRecordQuery,
                                                           sort_or_filter: bool) -> None:
    own_oracle.admin("settings", {"sort_or_filter": sort_or_filter})
    try:
        ordered = [r["ExternalSystemId"] for page in query.records(
            "Contact", ["ExternalSystemId"], filters.parse(MARK), order_by=[("CustomNumber0", True)]) for r in page]
        by_title = [r["ExternalSystemId"] for page in query.records(
            "Contact", ["ExternalSystemId"], filters.parse(MARK), order_by=[("JobTitle", False),
                                                                            ("CustomNumber0", True)]) for r in page]
    finally:
        own_oracle.admin("settings", {"sort_or_filter": False})
    assert ordered == ["Q4", "Q3", "Q2", "Q1"]
    assert query.sort_refused is sort_or_filter
    assert by_title == ["Q3", "Q4", "Q2", "Q1"]  # empty (first, as the sandbox sorts) < '100%…' < 'Engineer' < "O'…"


def test_ids_fields_and_deleted_records(own_oracle: RunningOracle, query: OracleRecordQuery,
                                        people: dict[str, str], connect: Callable[..., OracleConnection]) -> None:
    found = [r for page in query.records("Contact", ["contactlastname", "CustomDateTime0"],
                                         ids=[people["Q1"], people["Q3"]]) for r in page]
    assert sorted((r["id"], r["ContactLastName"], r["CustomDateTime0"]) for r in found) == sorted([
        (people["Q1"], "Alpha", "2024-05-01T10:00:00.000Z"), (people["Q3"], "Gamma", None)])

    connection = connect(own_oracle)
    before = datetime.now(timezone.utc) - timedelta(seconds=5)
    gone = connection.api.create("Contacts", {"ContactFirstName": "Gone", "ContactLastName": "Soon",
                                              "ExternalSystemId": "Q-GONE"})
    connection.api.delete("Contacts", gone)
    after = datetime.now(timezone.utc) + timedelta(seconds=5)
    deleted = query.deleted("Contact", before.isoformat(), after.isoformat())
    assert [d.id for d in deleted] == [gone] and before <= datetime.fromisoformat(deleted[0].deleted_at) <= after
    assert query.deleted("Account", before.isoformat(), after.isoformat()) == []
    assert query.deleted("Contact", after.isoformat(), (after + timedelta(hours=1)).isoformat()) == []
    with pytest.raises(ValueError, match="30 days"):
        query.deleted("Contact", (before - timedelta(days=31)).isoformat(), after.isoformat())

    with_deleted = [r for page in query.records("Contact", ["ExternalSystemId", "IsDeleted"],
                                                ids=[gone, people["Q2"]], include_deleted=True) for r in page]
    assert sorted((r["id"], r["ExternalSystemId"], r["IsDeleted"]) for r in with_deleted) == sorted([
        (gone, "Q-GONE", True), (people["Q2"], "Q2", False)])
    with pytest.raises(filters.FilterError, match="deleted records"):
        list(query.records("Contact", ["Id"], filters.parse(MARK), include_deleted=True))
