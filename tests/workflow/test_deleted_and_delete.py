"""Import objects deleted in the CRM (inclusive window, date forms, retention), delete objects in the CRM by an
expression, import by ids computed upstream, and "query all elements"."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

from crmsync import topics
from crmsync.workflow import model
from tests.conftest import consume_changes

from .conftest import ACCOUNT, Env


def workflow(name: str, *activities: dict) -> model.Workflow:
    return model.Workflow.model_validate({"name": f"{name}-{uuid.uuid4().hex[:6]}", "activities": list(activities)})


def test_delete_by_expression_then_import_by_upstream_ids_with_query_all(env: Env, client) -> None:
    tag = uuid.uuid4().hex[:6]
    made = client.collections_create("Contact", [{"LastName": f"Del{i} {tag}"} for i in range(3)])
    ids = [r["id"] for r in made]
    for i, crm_id in enumerate(ids):
        env.execute("INSERT INTO recipients (last_name, crm_account, crm_id) VALUES (%s, 'salesforce', %s)",
                    (f"Del{i} {tag}", crm_id))
    env.execute("INSERT INTO recipients (last_name, crm_account, crm_id) VALUES (%s, 'salesforce', '003000000000000AAA')",
                (f"Ghost {tag}",))
    query = {"name": "linked", "type": "query", "table": "recipients", "columns": ["id", "crm_id", "last_name"],
             "where": {"field": "last_name", "op": "ends with", "value": tag}, "then": "delete"}
    delete = {"name": "delete", "type": "crm", "operation": "delete", "object": "Contact",
              "remote_id": "{crm_id}", "then": {"reject": "refused"}}
    refused = {"name": "refused", "type": "union"}

    result = env.run(workflow("delete", query, delete, refused))

    assert result.ok, [(a.name, a.message) for a in result.activities]
    removed = next(a for a in result.activities if a.name == "delete")
    assert sorted(r["crm_id"] for r in removed.outputs.ok) == sorted(ids)
    (ghost,) = removed.outputs.reject
    assert ghost["crm_id"] == "003000000000000AAA" and ghost["errorSymbol"] and ghost["errorMessage"]
    assert next(a for a in result.activities if a.name == "refused").rows_in == 1
    soql = f"SELECT Id FROM Contact WHERE LastName LIKE 'Del% {tag}'"
    assert [r for page in client.query_all_pages(soql) for r in page] == []

    def imported(query_all: bool) -> list[dict]:
        crm = {"name": "again", "type": "crm", "operation": "import", "object": "Contact", "ids_from": "crm_id",
               "fields": ["LastName", "IsDeleted"], "query_all": query_all, "publish": False}
        run = env.run(workflow("by-ids", {**query, "then": "again"}, crm))
        assert run.ok, [(a.name, a.message) for a in run.activities]
        return run.activities[-1].outputs.ok

    assert imported(query_all=False) == []  # deleted records are invisible to query
    everything = imported(query_all=True)  # queryAll: the recycle bin too
    assert sorted(r["Id"] for r in everything) == sorted(ids) and all(r["IsDeleted"] for r in everything)


def test_import_deleted_inclusive_window_in_the_seed_date_forms(env: Env, client) -> None:
    tag = uuid.uuid4().hex[:6]
    ids = [r["id"] for r in client.collections_create("Contact", [{"LastName": f"Gone{i} {tag}"} for i in range(2)])]
    client.collections_delete(ids)
    today = datetime.now(timezone.utc).date()
    crm = {"name": "deleted", "type": "crm", "operation": "import-deleted", "object": "Contact",
           "start": (today - timedelta(days=1)).strftime("%Y/%m/%d"), "end": today.isoformat()}
    env.sandbox.admin("clock", {"offset_seconds": 120})  # the resource covers whole minutes up to the last one
    try:
        result = env.run(workflow("deleted", crm))
    finally:
        env.sandbox.admin("clock", {"offset_seconds": 0})

    assert result.ok, [(a.name, a.message) for a in result.activities]
    found = {r["Id"] for r in result.activities[0].outputs.ok}
    assert set(ids) <= found  # the end date is inclusive: today's deletes are in
    stamps = {(r["Id"], r["deletedDate"]) for r in result.activities[0].outputs.ok if r["Id"] in ids}

    def ours(seen: list) -> set:  # other modules' sandboxes hand out the same ids: match id and time
        return {(c.key["id"], c.position["modstamp"]) for c in seen if c.op == "d"} & stamps

    changes = consume_changes(env.endpoints.bootstrap_servers, [topics.changes("crm", ACCOUNT, "Contact")],
                              lambda seen: ours(seen) == stamps, timeout=30)
    assert len(stamps) == 2 and ours(changes) == stamps  # fed to the sync as deletes

    yesterday = {**crm, "end": f"{today - timedelta(days=1):%Y-%m-%d} 23:59:59"}
    earlier = env.run(workflow("deleted", yesterday))
    assert earlier.ok and not set(ids) & {r["Id"] for r in earlier.activities[0].outputs.ok}


def test_a_window_beyond_the_retention_is_a_clear_error(env: Env) -> None:
    start = (datetime.now(timezone.utc) - timedelta(days=40)).strftime("%Y-%m-%d")
    crm = {"name": "deleted", "type": "crm", "operation": "import-deleted", "object": "Contact", "start": start,
           "end": "new Date(2099,0,1)"}
    result = env.run(workflow("too-old", crm))
    assert not result.ok
    assert result.activities[0].outputs.error[0]["errorCode"] == "INVALID_REPLICATION_DATE"
    assert "returns deleted records for the last 15 days only" in result.activities[0].message
