"""The rejects ledger with the running writer service: waiting for parents, automatic retries, `rejects list`
and `rejects retry` (functions and the Typer app)."""
from __future__ import annotations

import json
import uuid

from typer.testing import CliRunner

from crmsync import kafka, pg, rejects, topics
from crmsync.envelope import ApplyCommand
from crmsync.rejects import RetryPolicy
from crmsync.rejects_cli import rejects_app
from tests.campaign_writer.conftest import RunningWriter, account, contact, ledger, produce, ref, rows
from tests.waiting import wait_for


def test_child_waits_for_its_parent_and_lands_once_it_arrives(endpoints, campaign_db, commands):
    dsn, name = campaign_db
    child = commands.upsert("recipients", match=contact("003C"), email="child@example.com", first_name="First",
                            organisation_id=ref("001P"))
    later = commands.upsert("recipients", match=contact("003C"), first_name="Second")  # same record, after it
    sibling = commands.upsert("recipients", match=contact("003S"), email="sibling@example.com")
    with RunningWriter(endpoints, dsn, name, ["recipients", "organisations"]):
        produce(endpoints.bootstrap_servers, [child, later, sibling])
        wait_for(lambda: rows(dsn, "SELECT 1 FROM recipients WHERE crm_id = '003S'"), 60, "the sibling to land")
        stored = wait_for(lambda: (s := ledger(dsn)) and len(s) == 2 and s, 30, "two ledger rows")
        assert stored[child.id]["status"] in ("waiting", "retrying")
        assert stored[child.id]["error_code"] == "PARENT_NOT_FOUND"
        assert "001P" in stored[child.id]["reason"]
        assert stored[later.id]["error_code"] == "WAITING_FOR_EARLIER"  # it must not overtake the first command
        assert rows(dsn, "SELECT count(*) FROM recipients WHERE crm_id = '003C'") == [(0,)]

        produce(endpoints.bootstrap_servers, [commands.upsert("organisations", match=account("001P"), name="Parent")])
        landed = wait_for(lambda: rows(dsn, "SELECT r.first_name, r.organisation_id, o.id FROM recipients r "
                                            "JOIN organisations o ON o.crm_id = '001P' WHERE r.crm_id = '003C' "
                                            "AND r.first_name = 'Second'"), 60, "the child and its update")
    first_name, organisation_id, parent_id = landed[0]
    assert organisation_id == parent_id
    final = ledger(dsn)
    assert {final[child.id]["status"], final[later.id]["status"]} == {"resolved"}
    assert final[child.id]["attempts"] >= 1


def test_a_failing_command_is_retried_with_backoff_then_abandoned(endpoints, campaign_db, commands):
    dsn, name = campaign_db
    policy = RetryPolicy(initial_wait=0.1, max_wait=0.3, max_attempts=3, retrying_timeout=30)
    bad = commands.upsert("organisations", match=account("001X"), name="Bad", employees=-5)
    with RunningWriter(endpoints, dsn, name, ["organisations"], policy=policy):
        produce(endpoints.bootstrap_servers, [bad])
        row = wait_for(lambda: (r := ledger(dsn).get(bad.id)) and r["status"] == "abandoned" and r, 60,
                       "the reject to be abandoned")
    assert row["attempts"] == 3 and row["error_code"] == "check_violation" and row["next_retry_at"] is None
    listed = rejects.list_rejects(dsn, status="abandoned")
    assert [r["id"] for r in listed] == [row["id"]]  # abandoned, still listed


def test_list_and_retry_functions(endpoints, campaign_db, commands, writer):
    dsn, name = campaign_db
    bad = commands.upsert("organisations", match=account("001F"), name="Fixable", employees=-1)
    writer.apply_batch([bad])
    listed = rejects.list_rejects(dsn)
    assert [(r["command_id"], r["status"], r["error_code"], r["attempts"]) for r in listed] == [
        (bad.id, "pending", "check_violation", 0)]
    assert rejects.list_rejects(dsn, status="resolved") == []

    sent = rejects.retry_now(dsn, endpoints.bootstrap_servers, [listed[0]["id"], "no-such-reject"])
    assert sent == [listed[0]["id"]]
    assert ledger(dsn)[bad.id]["status"] == "retrying"
    requeued = _read_apply_topic(endpoints.bootstrap_servers, topics.apply("campaign", name, "organisations"))
    assert [(c.id, c.attempt, c.values) for c in requeued] == [(bad.id, 1, bad.values)]

    with pg.connect(dsn, autocommit=True) as conn:  # someone fixes the cause, then the retry succeeds
        conn.execute("ALTER TABLE organisations DROP CONSTRAINT organisations_employees_check")
    result = writer.apply_batch(requeued)
    assert [a.command.id for a in result.applied] == [bad.id]
    assert ledger(dsn)[bad.id]["status"] == "resolved"
    assert rejects.retry_now(dsn, endpoints.bootstrap_servers, None) == []  # nothing left to retry


def test_rejects_cli_lists_and_retries(endpoints, campaign_db, commands, writer, tmp_path):
    dsn, name = campaign_db
    bad = commands.upsert("organisations", match=account("001C"), name="Cli", employees=-3)
    writer.apply_batch([bad])
    env = {"CAMPAIGN_DSN": dsn, "KAFKA_BOOTSTRAP_SERVERS": endpoints.bootstrap_servers,
           "CRMSYNC_STATE_DIR": str(tmp_path), "COLUMNS": "250"}
    runner = CliRunner()
    listed = runner.invoke(rejects_app, ["list", "--status", "pending"], env=env)
    assert listed.exit_code == 0, listed.output
    line = next(line for line in listed.output.splitlines() if bad.id in line)
    assert f"writer-campaign:{name}:{bad.id}" in line
    assert all(word in line for word in ("writer-campaign", "organisations", "check_violation", "pending"))
    assert "violates check constraint" in line
    empty = runner.invoke(rejects_app, ["list", "--status", "resolved"], env=env)
    assert empty.exit_code == 0 and bad.id not in empty.output
    refused = runner.invoke(rejects_app, ["retry"], env=env)
    assert refused.exit_code == 2
    retried = runner.invoke(rejects_app, ["retry", "--all"], env=env)
    assert retried.exit_code == 0 and "requeued 1 reject" in retried.output
    assert ledger(dsn)[bad.id]["status"] == "retrying" and ledger(dsn)[bad.id]["attempts"] == 1
    bad_status = runner.invoke(rejects_app, ["list", "--status", "nonsense"], env=env)
    assert bad_status.exit_code == 2


def _read_apply_topic(bootstrap: str, topic: str, count: int = 1) -> list[ApplyCommand]:
    consumer = kafka.consumer(bootstrap, f"test-{uuid.uuid4().hex}")
    consumer.subscribe([topic])
    found: list[ApplyCommand] = []
    try:
        for _ in range(100):
            for message in consumer.consume(100, 0.2):
                if message.error() is None:
                    found.append(ApplyCommand(**json.loads(message.value())))
            if len(found) >= count:
                break
    finally:
        consumer.close()
    return found


def test_unreadable_and_malformed_messages_are_rejected_not_fatal(endpoints, campaign_db, commands):
    dsn, name = campaign_db
    topic = topics.apply("campaign", name, "recipients")
    good = commands.upsert("recipients", match=contact("003G"), email="good@example.com")
    malformed = json.loads(commands.upsert("recipients", match=contact("003M")).to_json())
    malformed["values"] = ["not", "an", "object"]
    with RunningWriter(endpoints, dsn, name, ["recipients"]):
        producer = kafka.producer(endpoints.bootstrap_servers)
        producer.produce(topic, value=b"{not json", key=b"x")
        producer.produce(topic, value=json.dumps(malformed).encode(), key=b"x")
        producer.flush(10)
        produce(endpoints.bootstrap_servers, [good])
        wait_for(lambda: rows(dsn, "SELECT 1 FROM recipients WHERE crm_id = '003G'"), 60, "the good command")
        stored = wait_for(lambda: (r := rejects.list_rejects(dsn)) and len(r) == 2 and r, 30, "two rejects")
    assert {r["error_code"] for r in stored} == {"CRMSYNC_BAD_MESSAGE"}
    reasons = sorted(r["reason"] for r in stored)
    assert reasons[0].startswith("malformed apply command: values must be an object")
    assert reasons[1].startswith("unreadable apply command")
    assert all(r["status"] == "abandoned" and r["next_retry_at"] is None for r in stored)  # nothing to retry
