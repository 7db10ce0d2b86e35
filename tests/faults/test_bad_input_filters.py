"""Bad input, entry point: filters — the neutral filter tree (crmsync/filters.py) that drift repair, the wizard and
the workflow activities hand to each connector's RecordQuery (Salesforce SOQL, Dataverse OData, Oracle search
specifications, the in-memory test CRM) and to the Campaign's SQL. Each corpus value (tests/faults/corpus.py),
on a text field and on a date field, with the operators that take a value, either runs as a query of its CRM's
sandbox (or the Campaign database) or is refused with a FilterError naming the place — never an exception from
deep inside, never a query the CRM refuses as malformed (a value must not change a query's shape)."""
from __future__ import annotations

from typing import Any

import psycopg
import pytest

from crmsync import filters, pg
from crmsync.catalog import Catalog
from crmsync.filters import FilterError
from crmsync.workflow.activities.query import where_sql
from tests.connectors.conftest import Crm, crm  # noqa: F401 - crm is the conformance suite's fixture
from tests.faults.corpus import TEXTS

CASES = [(column, op) for column in ("last_name", "birth_date") for op in ("=", "!=", "contains", "after", "in")]


def _tree(field: str, op: str, value: Any) -> filters.Node:
    return filters.parse({"field": field, "op": op, "value": [value] if op == "in" else value})


def _runs_or_is_refused(run: Any) -> str:
    try:
        run()
    except FilterError as exc:
        assert str(exc).startswith(("filter", "where")) and len(str(exc)) < 600, str(exc)
        return "refused"
    return "ran"


@pytest.mark.parametrize("kind", sorted(TEXTS))
@pytest.mark.parametrize("column,op", CASES)
def test_a_crm_query_runs_or_is_refused_with_the_place(crm: Crm, column: str, op: str, kind: str) -> None:  # noqa: F811
    field = crm.field(column)
    query = crm.connector.query(crm.client)
    outcome = _runs_or_is_refused(lambda: [page for page in query.records(
        crm.contacts, [field], where=_tree(field, op, TEXTS[kind]))])
    if "\x00" in TEXTS[kind] or len(TEXTS[kind]) > filters.VALUE_MAX:
        assert outcome == "refused"  # no CRM stores a NUL; a 2 MB value is no filter


@pytest.mark.parametrize("kind", sorted(TEXTS))
@pytest.mark.parametrize("column,op", CASES)
def test_a_campaign_query_runs_or_is_refused_with_the_place(campaign_db, column: str, op: str, kind: str) -> None:
    def run() -> None:
        params: list[Any] = []
        with pg.connect(campaign_db[0]) as conn:
            clause = where_sql(_tree(column, op, TEXTS[kind]), params, Catalog(conn).table("recipients").columns)
            conn.execute(psycopg.sql.SQL("SELECT id FROM recipients WHERE {}").format(clause), params).fetchall()

    _runs_or_is_refused(run)
