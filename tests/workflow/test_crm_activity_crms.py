"""The workflow's CRM activity for every CRM with a connector other than the reference one (the other files of
this folder cover Salesforce in more detail): an import whose filter the connector renders in its CRM's own
query language (OData $filter, Oracle's search specification) with every literal escaped — checked by running
it against the sandbox — an incremental import by the CRM's modification stamp, an export (insert or update,
ids written back, a refused record in the reject output and the rejection file with the CRM's error code),
a delete by expression and an import of the deleted records fed to the sync as deletes."""
from __future__ import annotations

import csv
import random
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import psycopg
import pytest

from crmsync import topics
from crmsync.config import Settings
from crmsync.envelope import ApplyCommand
from crmsync.infra import Endpoints
from crmsync.workflow import engine, model
from tests.conftest import consume_changes
from tests.crms import CrmUnderTest, start_crm

ACCOUNT = "crm"


@pytest.fixture(scope="module", params=["dynamics", "oracle"])
def crm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrmUnderTest]:
    yield from start_crm(request.param, tmp_path_factory.mktemp(f"workflow-{request.param}"))


class Run:
    """Workflows of one test against the CRM's sandbox, in-process, on a fresh Campaign database."""

    def __init__(self, crm: CrmUnderTest, endpoints: Endpoints, dsn: str, name: str, state: Path) -> None:
        data = {"state_dir": str(state), "kafka": {"bootstrap_servers": endpoints.bootstrap_servers},
                "campaign": {"dsn": dsn, "name": name}, "accounts": {ACCOUNT: crm.running.account}}
        self.settings, self.endpoints = Settings.model_validate(data), Endpoints(endpoints.bootstrap_servers, dsn)
        self.crm, self.dsn = crm, dsn

    def __call__(self, *activities: dict[str, Any]) -> engine.RunResult:
        workflow = model.Workflow.model_validate({"name": f"w-{uuid.uuid4().hex[:6]}", "account": ACCOUNT,
                                                  "activities": list(activities)})
        result = engine.run(workflow, self.settings, self.endpoints)
        return result

    def rows(self, query: str, params: Any = ()) -> list[tuple]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return conn.execute(query, params).fetchall()


@pytest.fixture
def run(crm: CrmUnderTest, endpoints: Endpoints, campaign_db: tuple[str, str], tmp_path: Path) -> Run:
    dsn, name = campaign_db
    with psycopg.connect(dsn, autocommit=True) as conn:  # Campaign keys go into the one sandbox: unique per test
        conn.execute(f"ALTER SEQUENCE recipients_id_seq RESTART WITH {random.randrange(10 ** 6, 10 ** 9)}")
    return Run(crm, endpoints, dsn, name, tmp_path / "state")


def create(crm: CrmUnderTest, people: list[dict[str, Any]]) -> list[str]:
    """Contacts created through the connector's sink (upserts by the Campaign-key field); their CRM ids."""
    obj = crm.profile.tables[1]
    commands = [ApplyCommand(id=f"test:{uuid.uuid4().hex}", side="crm", target=crm.client.account_name, object=obj,
                             action="upsert",
                             key=None, values={crm.field("first_name"): "Test", **person}, cause="test",
                             match={crm.connector.default_external_id: uuid.uuid4().hex[:20]}) for person in people]
    outcomes = crm.connector.sink(crm.client).apply(commands)
    assert all(o.ok for o in outcomes), [o.message for o in outcomes]
    return [str(o.crm_id) for o in outcomes]


def ok(result: engine.RunResult) -> None:
    assert result.ok, [(a.name, a.message) for a in result.activities]


def import_activity(crm: CrmUnderTest, where: Any, **more: Any) -> dict[str, Any]:
    return {"name": "contacts", "type": "crm", "operation": "import", "object": crm.profile.tables[1],
            "fields": [crm.field("last_name")], "filter": where, "publish": False, **more}


def test_import_filters_are_rendered_in_the_crm_language_and_escaped(crm: CrmUnderTest, run: Run) -> None:
    last, email = crm.field("last_name"), crm.field("email")
    tag = uuid.uuid4().hex[:8]
    names = ["O'Brien \\ back", "50% off_sale", "500 offXsale", "x' or 1 eq 1 or 'y", "Plain*Star"]
    ids = create(crm, [{last: n, email: f"p{i}@{tag}.example.com"} for i, n in enumerate(names)])

    def found(tree: dict[str, Any]) -> list[str]:
        where = {"and": [{"field": email, "op": "ends with", "value": f"@{tag}.example.com"}, tree]}
        result = run(import_activity(crm, where))
        ok(result)
        return sorted(r[last] for r in result.activities[0].outputs.ok)

    assert found({"field": last, "op": "=", "value": "O'Brien \\ back"}) == ["O'Brien \\ back"]
    assert found({"field": last, "op": "contains", "value": "0% off_"}) == ["50% off_sale"]
    assert found({"field": last, "op": "=", "value": "x' or 1 eq 1 or 'y"}) == ["x' or 1 eq 1 or 'y"]
    assert found({"field": last, "op": "like", "value": "50%"}) == ["50% off_sale", "500 offXsale"]
    assert found({"field": last, "op": "starts with", "value": "Plain*"}) == ["Plain*Star"]
    assert found({"field": last, "op": "in", "value": ["O'Brien \\ back", "nobody"]}) == ["O'Brien \\ back"]
    assert found({"field": last, "op": "is not empty"}) == sorted(names)

    published = run(import_activity(crm, {"field": email, "op": "ends with", "value": f"@{tag}.example.com"},
                                    publish=True))  # an import is a backfill of the CRM change topic
    ok(published)
    topic = topics.changes("crm", ACCOUNT, crm.profile.tables[1])
    seen = consume_changes(run.endpoints.bootstrap_servers, [topic],
                           lambda found: set(ids) <= {c.key["id"] for c in found if c.op == "r"}, timeout=30)
    assert set(ids) <= {c.key["id"] for c in seen if c.op == "r"}

    refused = run(import_activity(crm, {"field": "NoSuchField", "op": "=", "value": "x"}))
    assert not refused.ok and "NoSuchField" in refused.activities[0].message


def test_incremental_import_reads_only_what_changed_since_the_last_run(crm: CrmUnderTest, run: Run) -> None:
    last, email = crm.field("last_name"), crm.field("email")
    tag = uuid.uuid4().hex[:8]
    mine = {"field": email, "op": "ends with", "value": f"@{tag}.example.com"}
    incremental = import_activity(crm, mine, automatic_index={"enabled": True})
    first = create(crm, [{last: f"First {tag}", email: f"a@{tag}.example.com"}])
    time.sleep(1.1)  # stamps to the second: the window's end is after the first record's stamp
    result = run(incremental)
    ok(result)
    assert [r["Id"] for r in result.activities[0].outputs.ok] == first

    time.sleep(1.1)
    second = create(crm, [{last: f"Second {tag}", email: f"b@{tag}.example.com"}])
    time.sleep(1.1)
    again = run(incremental)
    ok(again)
    assert [r["Id"] for r in again.activities[0].outputs.ok] == second  # only what changed since the last run


def test_export_inserts_or_updates_writes_back_and_rejects_with_the_crm_code(crm: CrmUnderTest, run: Run,
                                                                             tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:6]
    refused = crm.running and crm.connector.sandbox().refused_contact_values()
    assert list(refused) == ["job_title"]
    people = [(f"a.{tag}@example.com", "Ann", f"A {tag}", "Director"),
              (f"b.{tag}@example.com", "Bob", f"B {tag}", refused["job_title"]),
              (f"c.{tag}@example.com", "Cy", f"C {tag}", None)]
    keys = [run.rows("INSERT INTO recipients (email, first_name, last_name, job_title) VALUES (%s, %s, %s, %s) "
                     "RETURNING id", p)[0][0] for p in people]
    existing = create(crm, [{crm.field("last_name"): "Before"}])[0]
    run.rows("UPDATE recipients SET crm_account = %s, crm_id = %s WHERE id = %s RETURNING id",
             (ACCOUNT, existing, keys[2]))
    query = {"name": "people", "type": "query", "table": "recipients",
             "columns": ["id", "email", "first_name", "last_name", "job_title", "crm_id"],
             "where": {"field": "last_name", "op": "ends with", "value": tag}, "then": "export"}
    export = {"name": "export", "type": "crm", "operation": "export", "object": crm.profile.tables[1],
              "mapping": [{"campaign": c, "crm": crm.field(c)} for c in ("email", "first_name", "last_name",
                                                                         "job_title")],
              "write_back": "recipients", "rejection_file": str(tmp_path / "rejects-{activity}.csv")}

    result = run(query, export)

    ok(result)
    outputs = result.activities[-1].outputs
    assert outputs.note.startswith("1 created, 1 updated, 1 rejected"), outputs.note
    (rejected,) = outputs.reject
    assert rejected["id"] == keys[1] and rejected["errorSymbol"] and rejected["errorMessage"]
    written = dict(run.rows("SELECT id, crm_id FROM recipients WHERE id = ANY(%s)", (keys,)))
    assert written[keys[1]] is None and written[keys[2]] == existing and written[keys[0]]
    record = next(crm.connector.query(crm.client).records(crm.profile.tables[1], [crm.field("last_name")],
                                                          ids=[existing]))[0]
    assert record[crm.field("last_name")] == f"C {tag}"  # updated by the CRM id in the row
    with open(tmp_path / "rejects-export.csv", newline="") as handle:
        (line,) = list(csv.DictReader(handle))
    assert line["id"] == str(keys[1]) and line["errorCode"] == rejected["errorSymbol"]

    again = run(query, export)  # a new run: updates by the written-back ids, no new records
    ok(again)
    assert again.activities[-1].outputs.note.startswith("0 created, 2 updated, 1 rejected")


def test_delete_by_expression_then_import_the_deleted_records(crm: CrmUnderTest, run: Run) -> None:
    tag = uuid.uuid4().hex[:6]
    last = crm.field("last_name")
    ids = create(crm, [{last: f"Del{i} {tag}"} for i in range(2)])
    for i, crm_id in enumerate(ids):
        run.rows("INSERT INTO recipients (last_name, crm_account, crm_id) VALUES (%s, %s, %s) RETURNING id",
                 (f"Del{i} {tag}", ACCOUNT, crm_id))
    run.rows("INSERT INTO recipients (last_name, crm_account, crm_id) VALUES (%s, %s, 'not-an-id') RETURNING id",
             (f"Ghost {tag}", ACCOUNT))
    query = {"name": "linked", "type": "query", "table": "recipients", "columns": ["id", "crm_id", "last_name"],
             "where": {"field": "last_name", "op": "ends with", "value": tag}, "then": "delete"}
    delete = {"name": "delete", "type": "crm", "operation": "delete", "object": crm.profile.tables[1],
              "remote_id": "{crm_id}"}

    result = run(query, delete)

    ok(result)
    removed = result.activities[-1].outputs
    if crm.profile.refuses_malformed_ids:
        assert sorted(r["crm_id"] for r in removed.ok) == sorted(ids)
        (ghost,) = removed.reject
        assert ghost["crm_id"] == "not-an-id" and ghost["errorSymbol"] and ghost["errorMessage"]
    else:  # a delete of a record that is not there is a success (the connector contract)
        assert sorted(r["crm_id"] for r in removed.ok) == sorted([*ids, "not-an-id"]) and removed.reject == []
    left = [r for page in crm.connector.query(crm.client).records(
        crm.profile.tables[1], [last], where=None, ids=ids) for r in page]
    assert left == []

    today = datetime.now(timezone.utc).date()
    deleted = {"name": "deleted", "type": "crm", "operation": "import-deleted", "object": crm.profile.tables[1],
               "start": (today - timedelta(days=1)).strftime("%Y/%m/%d"), "end": today.isoformat()}
    imported = run(deleted)
    ok(imported)
    found = {r["Id"]: r["deletedDate"] for r in imported.activities[0].outputs.ok}
    assert set(ids) <= set(found)  # the end date is inclusive: today's deletes are in
    stamps = {(i, found[i]) for i in ids}

    def ours(seen: list) -> set:
        return {(c.key["id"], c.position["modstamp"]) for c in seen if c.op == "d"} & stamps

    changes = consume_changes(run.endpoints.bootstrap_servers, [topics.changes("crm", ACCOUNT, crm.profile.tables[1])],
                              lambda seen: ours(seen) == stamps, timeout=30)
    assert ours(changes) == stamps  # fed to the sync as deletes

    yesterday = {**deleted, "end": f"{today - timedelta(days=1):%Y-%m-%d} 23:59:59"}
    earlier = run(yesterday)
    ok(earlier)
    assert not set(ids) & {r["Id"] for r in earlier.activities[0].outputs.ok}
