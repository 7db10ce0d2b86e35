"""Exports: example 3 (two queries → union → export contacts), example 5 (error and reject branches), and a
real `crmsync workflow run` killed with SIGKILL in the middle of an export, then run again."""
from __future__ import annotations

import csv
import logging
import os
import signal
import time
import uuid
from pathlib import Path

import yaml

from .conftest import EXAMPLES, Env


def contacts_by_key(client, keys: list[int]) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for start in range(0, len(keys), 200):
        chunk = ", ".join(f"'{k}'" for k in keys[start:start + 200])
        soql = f"SELECT Id, Campaign_Key__c, Email, LastName, Title FROM Contact WHERE Campaign_Key__c IN ({chunk})"
        for page in client.query_all_pages(soql):
            for record in page:
                found.setdefault(record["Campaign_Key__c"], []).append(record)
    return found


def add_recipients(env: Env, people: list[tuple]) -> list[int]:
    """(email, first_name, last_name, job_title, email_opt_out) → their keys."""
    keys = []
    for person in people:
        keys += [r[0] for r in env.rows("INSERT INTO recipients (email, first_name, last_name, job_title, email_opt_out)"
                                        " VALUES (%s, %s, %s, %s, %s) RETURNING id", person)]
    return keys


def test_union_export_inserts_or_updates_and_writes_back(env: Env, client) -> None:
    tag = uuid.uuid4().hex[:6]
    existing = client.collections_create("Contact", [{"LastName": "Before", "Email": f"e.{tag}@other.org"}])[0]["id"]
    a, b, c, d, e = add_recipients(env, [
        (f"a.{tag}@example.com", "Ann", f"A {tag}", None, False),         # newsletter
        (f"b.{tag}@other.org", "Bob", f"B {tag}", "IT Director", False),   # decision maker
        (f"c.{tag}@example.com", "Cy", f"C {tag}", "Sales Manager", False),  # both: exported once
        (f"d.{tag}@example.com", "Di", f"D {tag}", None, True),           # opted out, no title: not exported
        (f"e.{tag}@other.org", "Eve", f"E {tag}", "Marketing Director", False),  # already in the CRM
    ])
    env.execute("UPDATE recipients SET crm_account = 'salesforce', crm_id = %s WHERE id = %s", (existing, e))

    result = env.run("03-union-export-contacts.yaml")

    assert result.ok, [(x.name, x.message) for x in result.activities]
    in_crm = contacts_by_key(client, [a, b, c, d, e])
    assert {k: len(v) for k, v in in_crm.items()} == {str(a): 1, str(b): 1, str(c): 1, str(e): 1}
    assert in_crm[str(e)][0]["Id"] == existing and in_crm[str(e)][0]["LastName"] == f"E {tag}"  # updated
    assert in_crm[str(b)][0]["Title"] == "IT Director"
    written = dict(env.rows("SELECT id, crm_id FROM recipients WHERE id = ANY(%s)", ([a, b, c, d, e],)))
    assert written == {a: in_crm[str(a)][0]["Id"], b: in_crm[str(b)][0]["Id"], c: in_crm[str(c)][0]["Id"],
                       d: None, e: existing}
    assert env.rows("SELECT campaign_key, linked_by FROM crmsync.identity_links ORDER BY campaign_key") == \
        sorted([(a, "workflow"), (b, "workflow"), (c, "workflow"), (e, "workflow")])
    export = next(x for x in result.activities if x.name == "export")
    assert export.outputs.note.startswith("3 created, 1 updated, 0 rejected")

    again = env.run("03-union-export-contacts.yaml")  # a new run: updates by the written-back ids, no new records
    assert again.ok and next(x for x in again.activities if x.name == "export").outputs.note.startswith("0 created")
    assert {k: len(v) for k, v in contacts_by_key(client, [a, b, c, e]).items()} == \
        {str(a): 1, str(b): 1, str(c): 1, str(e): 1}


def branches_copy(tmp_path: Path, **changes) -> Path:
    """Example 5 with a few keys changed (the scripts are found next to the copy)."""
    data = yaml.safe_load((EXAMPLES / "05-export-with-branches.yaml").read_text())
    for activity in data["activities"]:
        activity.update(changes.get(activity["name"], {}))
    data.update(changes.get("workflow", {}))
    path = tmp_path / "05.yaml"
    path.write_text(yaml.safe_dump(data))
    (tmp_path / "scripts").mkdir(exist_ok=True)
    (tmp_path / "scripts" / "rejects.py").write_text((EXAMPLES / "scripts" / "rejects.py").read_text())
    return path


def test_export_with_reject_branch_rejection_file_and_ledger(env: Env, client) -> None:
    tag = uuid.uuid4().hex[:6]
    good, refused, nameless = add_recipients(env, [
        (f"good.{tag}@example.com", "Gus", f"Good {tag}", None, False),
        (f"bad.{tag}@invalid.example", "Bea", f"Bad {tag}", None, False),  # the sandbox's validation rule
        (f"anon.{tag}@example.com", "Al", None, None, False),             # LastName is required
    ])

    result = env.run("05-export-with-branches.yaml")

    assert result.ok, [(x.name, x.message) for x in result.activities]
    by_name = {x.name: x for x in result.activities}
    rejects = {r["id"]: r for r in by_name["export-to-sfdc"].outputs.reject}
    assert set(rejects) == {refused, nameless}
    assert rejects[refused]["errorSymbol"] == rejects[refused]["errorCode"] == "FIELD_CUSTOM_VALIDATION_EXCEPTION"
    assert "invalid.example" in rejects[refused]["errorMessage"]
    assert rejects[nameless]["errorSymbol"] == "REQUIRED_FIELD_MISSING"
    assert by_name["report-rejects"].rows_in == 2 and by_name["wait-before-retry"].status == "skipped"
    assert env.rows("SELECT crm_id IS NOT NULL FROM recipients WHERE id = ANY(%s) ORDER BY id",
                    ([good, refused, nameless],)) == [(True,), (False,), (False,)]
    files = list((env.settings.state_dir / "rejects").glob("export-with-branches-export-to-sfdc-*.csv"))
    assert len(files) == 1
    with files[0].open() as handle:
        rows = {int(r["id"]): r for r in csv.DictReader(handle)}
    assert set(rows) == {refused, nameless} and rows[refused]["errorSymbol"] == "FIELD_CUSTOM_VALIDATION_EXCEPTION"
    ledger = env.rows("SELECT error_code, stage FROM crmsync.rejects ORDER BY error_code")
    assert ledger == [("FIELD_CUSTOM_VALIDATION_EXCEPTION", "writer-crm"),
                      ("REQUIRED_FIELD_MISSING", "writer-crm")]
    assert list(contacts_by_key(client, [good, refused, nameless])) == [str(good)]


def test_error_branch_and_warnings_for_unprocessed_rejects(env: Env, tmp_path: Path, caplog) -> None:
    tag = uuid.uuid4().hex[:6]
    add_recipients(env, [(f"x.{tag}@invalid.example", "Xi", f"X {tag}", None, False)])
    failing = branches_copy(tmp_path, **{"export-to-sfdc": {"account": "nowhere"}, "wait-before-retry": {"seconds": 0}})
    result = env.run(failing)
    by_name = {x.name: x for x in result.activities}
    assert result.ok and by_name["export-to-sfdc"].status == "error (handled)"
    assert "no account 'nowhere'" in by_name["export-to-sfdc"].message
    assert by_name["wait-before-retry"].status == "ok" and by_name["update-recipients"].status == "skipped"

    unhandled = branches_copy(tmp_path, **{"export-to-sfdc": {"then": {"ok": "update-recipients"}}})
    with caplog.at_level(logging.WARNING, logger="crmsync.workflow"):
        result = env.run(unhandled)
    assert result.ok
    assert any("rejected a record" in r.message and "FIELD_CUSTOM_VALIDATION_EXCEPTION" in r.message
               for r in caplog.records)

    failing_unhandled = branches_copy(tmp_path, **{"export-to-sfdc": {"account": "nowhere", "then": {}}})
    process = env.cli("run", str(failing_unhandled))
    output = process.communicate(timeout=180)[0].decode()
    assert process.returncode == 1, output
    assert "no account 'nowhere'" in output and "error" in output


def crash_workflow(tmp_path: Path, tag: str) -> Path:
    path = tmp_path / "crash.yaml"
    path.write_text(yaml.safe_dump({"name": f"crash-{tag}", "activities": [
        {"name": "mine", "type": "query", "table": "recipients", "columns": ["id", "email", "last_name", "crm_id"],
         "where": {"field": "last_name", "op": "ends with", "value": tag}, "order_by": ["id"], "then": "export"},
        {"name": "export", "type": "crm", "operation": "export", "object": "Contact", "batch_size": 10,
         "mapping": [{"campaign": "email", "crm": "Email"}, {"campaign": "last_name", "crm": "LastName"}],
         "write_back": "recipients"}]}))
    return path


def test_kill_9_in_the_middle_of_an_export_then_rerun_neither_loses_nor_doubles(env: Env, client, tmp_path) -> None:
    tag = uuid.uuid4().hex[:6]
    keys = add_recipients(env, [(f"k{i}.{tag}@example.com", None, f"K{i} {tag}", None, False) for i in range(300)])
    workflow = crash_workflow(tmp_path, tag)
    env.sandbox.admin("reset-stats", {})
    env.sandbox.admin("faults", {"slow_seconds": 0.15, "slow_probability": 1.0})  # ~30 calls of 10 records
    try:
        process = env.cli("run", str(workflow))
        deadline = time.monotonic() + 180
        done = 0
        while done < 60:
            assert process.poll() is None, process.communicate()[0].decode()
            assert time.monotonic() < deadline, "the export did not get going"
            time.sleep(0.05)
            done = env.rows("SELECT count(*) FROM crmsync.workflow_journal WHERE state = 'done'")[0][0]
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        env.sandbox.admin("faults", {})
    states = dict(env.rows("SELECT state, count(*) FROM crmsync.workflow_journal GROUP BY state"))
    assert 60 <= states.get("done", 0) < 300, states  # killed in the middle, some records in flight or not sent
    assert env.rows("SELECT status FROM crmsync.workflow_runs") == [("running",)]

    rerun = env.cli("run", str(workflow))
    output = rerun.communicate(timeout=300)[0].decode()
    assert rerun.returncode == 0, output
    assert "resumed" in output and f"({states['done']} already done before a restart)" in output  # not resent
    account = env.settings.accounts["salesforce"]
    for secret in (account.password, account.security_token, account.client_secret):
        assert secret.get_secret_value() not in output

    in_crm = contacts_by_key(client, keys)
    assert sorted(map(int, in_crm)) == keys and all(len(v) == 1 for v in in_crm.values())  # no loss, no double
    written = dict(env.rows("SELECT id, crm_id FROM recipients WHERE id = ANY(%s)", (keys,)))
    assert written == {int(k): v[0]["Id"] for k, v in in_crm.items()}
    assert env.rows("SELECT state, count(*) FROM crmsync.workflow_journal GROUP BY state") == [("done", 300)]
    writes = sum(env.sandbox.admin("stats")["writes"].get("Contact", {}).values())
    assert writes <= 300 + 10  # records done before the kill were not sent again; at most the chunk in flight was
    assert env.rows("SELECT status FROM crmsync.workflow_runs") == [("succeeded",)]
