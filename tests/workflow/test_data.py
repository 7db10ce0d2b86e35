"""Data activities against the real Campaign database: update-data's four operations, batch size and "only if
different", deduplicate's keep rules, the query's bound parameters, import by more upstream ids than one IN."""
from __future__ import annotations

import uuid
from pathlib import Path

from crmsync.workflow import model
from crmsync.workflow.activities.data import deduplicate
from crmsync.workflow.engine import Progress

from .conftest import Env

ROWS_FILE = """
def rows(_rows, ctx):
    return {rows!r}
"""


def run_with_rows(env: Env, tmp_path: Path, rows: list[dict], *activities: dict):
    """A workflow whose first activity (a script) emits `rows`, then `activities`."""
    (tmp_path / "rows.py").write_text(ROWS_FILE.format(rows=rows))
    first = {"name": "source", "type": "script", "file": "rows.py", "function": "rows", "then": activities[0]["name"]}
    workflow = model.Workflow.model_validate({"name": f"data-{uuid.uuid4().hex[:6]}",
                                              "activities": [first, *activities]})
    result = env.run(workflow, file=tmp_path / "wf.yaml")
    assert result.ok, [(a.name, a.message) for a in result.activities]
    return {a.name: a for a in result.activities}


def test_update_data_operations(env: Env, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:6]
    keys = [r[0] for r in env.rows("INSERT INTO recipients (email, last_name) VALUES (%s, 'One'), (%s, 'Two') "
                                   "RETURNING id", (f"1.{tag}@x.org", f"2.{tag}@x.org"))]
    update = {"name": "write", "type": "update-data", "table": "recipients", "columns": {"last_name": "name"},
              "batch_size": 1}

    out = run_with_rows(env, tmp_path, [{"id": keys[0], "name": "One"}, {"id": keys[1], "name": "Deux"},
                                        {"id": None, "name": f"New {tag}"}], {**update, "operation": "insert-or-update"})
    assert out["write"].outputs.note == "3 applied, 1 unchanged, 1 inserted"
    assert env.rows("SELECT last_name FROM recipients WHERE id = ANY(%s) ORDER BY id", (keys,)) == [("One",), ("Deux",)]
    assert env.rows("SELECT count(*) FROM recipients WHERE last_name = %s", (f"New {tag}",)) == [(1,)]

    out = run_with_rows(env, tmp_path, [{"id": keys[0], "name": "Uno"}, {"id": None, "name": "Nobody"}],
                        {**update, "operation": "insert"})
    assert out["write"].outputs.note == "1 applied, 1 exists, 1 inserted"  # the existing row was left alone
    assert env.rows("SELECT last_name FROM recipients WHERE id = %s", (keys[0],)) == [("One",)]

    out = run_with_rows(env, tmp_path, [{"id": keys[0], "name": "Uno"}, {"id": None, "name": "Ghost"}],
                        {**update, "operation": "update"})
    assert out["write"].outputs.note == "1 applied, 1 not found"
    assert env.rows("SELECT count(*) FROM recipients WHERE last_name = 'Ghost'") == [(0,)]

    out = run_with_rows(env, tmp_path, [{"id": keys[1]}], {**update, "operation": "delete", "columns": {}})
    assert env.rows("SELECT count(*) FROM recipients WHERE id = %s", (keys[1],)) == [(0,)]


def test_update_data_rejects_what_postgres_refuses(env: Env, tmp_path: Path) -> None:
    (key,) = env.rows("INSERT INTO recipients (email) VALUES ('r@x.org') RETURNING id")[0]
    update = {"name": "write", "type": "update-data", "table": "recipients", "columns": {"birth_date": "born"},
              "then": {"reject": "refused"}}
    out = run_with_rows(env, tmp_path, [{"id": key, "born": "not a date"}], update, {"name": "refused", "type": "union"})
    (reject,) = out["write"].outputs.reject
    assert reject["errorCode"] == reject["errorSymbol"] and "birth_date" in reject["errorMessage"]
    assert out["refused"].rows_in == 1
    assert env.rows("SELECT count(*) FROM crmsync.rejects WHERE stage = 'writer-campaign'") == [(1,)]


def test_deduplicate_keep_rules() -> None:
    rows = [{"k": "A@x.org ", "n": 1, "at": "2026-01-02T00:00:00Z", "x": None},
            {"k": "a@x.org", "n": 2, "at": "2026-01-03T00:00:00+02:00", "x": "full"},
            {"k": "a@X.org", "n": 3, "at": "2026-01-02T23:00:00Z", "x": None},
            {"k": None, "n": 4}, {"k": "b@x.org", "n": 5}]

    def kept(**rule) -> list[int]:
        activity = model.DeduplicateActivity.model_validate({"name": "d", "type": "deduplicate", "keys": ["k"], **rule})
        return [r["n"] for r in deduplicate(activity, rows, None, Progress()).ok]

    assert kept() == [1, 4, 5]
    assert kept(keep="last") == [3, 4, 5]
    assert kept(keep="most-recent", by="at") == [3, 4, 5]  # 2026-01-02T23:00Z is later than 2026-01-03T00:00+02
    assert kept(keep="non-empty") == [2, 4, 5]


def test_query_values_are_bound_and_names_checked(env: Env) -> None:
    env.execute("INSERT INTO recipients (email, last_name) VALUES ('q@x.org', 'Quote''s')")

    def query(where: dict, **more):
        workflow = model.Workflow.model_validate({"name": "q", "activities": [
            {"name": "q", "type": "query", "table": "recipients", "columns": ["id", "last_name"], "where": where,
             **more}]})
        return env.run(workflow).activities[0]

    assert [r["last_name"] for r in query({"field": "last_name", "op": "=", "value": "Quote's"}).outputs.ok] == ["Quote's"]
    assert query({"field": "last_name", "op": "=", "value": "x' OR '1'='1"}).outputs.ok == []
    assert env.rows("SELECT count(*) FROM recipients") == [(1,)]
    refused = query({"field": "last_name", "op": "=", "value": "x"}, columns=["id", "email; DROP TABLE recipients"])
    assert refused.status == "error" and "not column(s) of recipients" in refused.message


def test_import_by_upstream_ids_in_several_chunks(env: Env, client, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:6]
    made = client.collections_create("Contact", [{"LastName": f"Chunk{i} {tag}"} for i in range(450)])
    ids = [r["id"] for r in made]
    crm = {"name": "import", "type": "crm", "operation": "import", "object": "Contact", "ids_from": "crm_id",
           "fields": ["LastName"], "publish": False}
    out = run_with_rows(env, tmp_path, [{"crm_id": i} for i in ids] + [{"crm_id": None}], crm)
    assert sorted(r["Id"] for r in out["import"].outputs.ok) == sorted(ids)  # 3 queries of ≤ 200 ids


def test_one_run_of_a_workflow_at_a_time(env: Env) -> None:
    import psycopg
    import pytest

    from crmsync.workflow import engine

    workflow = model.Workflow.model_validate({"name": "busy", "activities": [{"name": "w", "type": "wait",
                                                                              "seconds": 0}]})
    with psycopg.connect(env.dsn, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s, hashtext('busy'))", (engine.RUN_LOCK_CLASS,))
        with pytest.raises(engine.WorkflowBusy, match="already running"):
            env.run(workflow)
    assert env.run(workflow).ok  # the holder's connection closed: the lock went with it


def test_enrich_quotes_the_column_it_matches_on(env: Env, tmp_path: Path) -> None:
    """A column whose name needs quoting (mixed case, a dash) is matched as itself, never spliced into SQL."""
    tag = uuid.uuid4().hex[:6]
    env.execute('ALTER TABLE recipients ADD COLUMN "Work-Mail" text')
    (key,) = env.rows('INSERT INTO recipients (email, "Work-Mail") VALUES (%s, %s) RETURNING id',
                      (f"home.{tag}@x.org", f"Work.{tag}@X.org"))[0]
    for exact, offered in ((False, f"  work.{tag}@x.ORG "), (True, f"Work.{tag}@X.org")):
        enrich = {"name": "link", "type": "enrich", "table": "recipients", "key_column": "found",
                  "keys": [{"source": "mail", "target": "Work-Mail", "exact": exact}]}
        out = run_with_rows(env, tmp_path, [{"mail": offered}], enrich)
        assert out["link"].outputs.note == "1 of 1 linked to recipients", exact
