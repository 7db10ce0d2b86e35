"""A change too large for one Kafka message (librdkafka's message.max.bytes, 1 MB) never stops a stream: it goes
to the rejects ledger with its reason, and the next change of every record still arrives (issue 13).

Campaign side: a recipient with a 1.1 MB street, in capture's first snapshot and in the stream after it; the
snapshot finishes (its done-marker is written) and the slot moves past the big transaction. CRM side: a Contact
of the Salesforce sandbox holding 1.1 MB in long text area fields (Salesforce allows several of 131,072
characters per record); the poller's snapshot finishes and its checkpoint moves on. Each is followed by an
ordinary edit that must arrive."""
from __future__ import annotations

import time

import pytest

from crmsync import names, pg, rejects, topics
from crmsync.infra import Endpoints
from services.crm_poller import service as poller
from tests.conftest import consume_changes
from tests.salesforce.conftest import make_client, settings_for, unique_name
from tests.sandbox_salesforce.conftest import launch
from tests.throughput.conftest import running_capture
from tests.waiting import wait_for

BIG = 1_100_000


def _too_large(dsn: str, stage: str) -> list[dict]:
    with pg.connect(dsn) as conn:
        return [dict(zip(("object", "status", "reason", "record"), row)) for row in conn.execute(
            "SELECT object, status, reason, record FROM crmsync.rejects WHERE stage = %s AND error_code = %s "
            "ORDER BY seq", (stage, rejects.MESSAGE_TOO_LARGE))]


def test_capture_rejects_a_change_over_the_message_limit_and_goes_on(endpoints: Endpoints, campaign_db) -> None:
    dsn, name = campaign_db
    with pg.connect(dsn, autocommit=True) as conn:
        in_snapshot = conn.execute("INSERT INTO recipients (email, street) VALUES ('snap@example.com', %s) "
                                   "RETURNING id", ("S" * BIG,)).fetchone()[0]
        plain = conn.execute("INSERT INTO recipients (email) VALUES ('plain@example.com') RETURNING id").fetchone()[0]
    with running_capture(endpoints.bootstrap_servers, dsn, name) as service:
        wait_for(lambda: service._snapshot_done(), 60, "the snapshot's done-marker")
        with pg.connect(dsn, autocommit=True) as conn:
            streamed = conn.execute("INSERT INTO recipients (email, street) VALUES ('big@example.com', %s) "
                                    "RETURNING id", ("T" * BIG,)).fetchone()[0]
            conn.execute("UPDATE recipients SET city = 'Lyon' WHERE id = %s", (plain,))  # ordinary edits after it
            conn.execute("UPDATE recipients SET street = 'short' WHERE id = %s", (streamed,))
        topic = topics.changes("campaign", name, "recipients")
        seen = consume_changes(endpoints.bootstrap_servers, [topic],
                               lambda s: sum(c.op == "u" for c in s) >= 2 and any(c.op == "r" for c in s), timeout=60)
        wait_for(lambda: len(_too_large(dsn, "capture")) >= 2, 30, "both rejects")
        status = service.slot_status()
    assert {(c.op, c.key["id"]) for c in seen} == {("r", plain), ("u", plain), ("u", streamed)}
    assert [c.after["street"] for c in seen if c.key["id"] == streamed] == ["short"]
    found = _too_large(dsn, "capture")
    assert [(r["object"], r["status"], r["record"]["change"]["key"]["id"]) for r in found] == [
        ("recipients", "abandoned", in_snapshot), ("recipients", "abandoned", streamed)]
    assert all("street (1,100,00" in r["reason"] and "1,000,000-byte limit" in r["reason"] for r in found)
    assert len(found[1]["record"]["change"]["after"]["street"]) == BIG  # the ledger keeps the whole change
    assert status["lag_bytes"] < BIG  # the slot moved past the big transaction


@pytest.fixture
def big_contact_sandbox(tmp_path):
    running = launch(tmp_path / "salesforce", seed_contacts=20)
    yield running
    running.stop()


def test_poller_rejects_a_record_over_the_message_limit_and_goes_on(big_contact_sandbox, endpoints: Endpoints,
                                                                    campaign_db, tmp_path) -> None:
    fields = [f"Notes_{i}__c" for i in range(9)]  # 9 x 122,223 characters: 1.1 MB in one Contact
    for field in fields:
        big_contact_sandbox.admin("fields", {"object": "Contact", "name": field, "type": "textarea"})
    account = unique_name("big")
    client = make_client(big_contact_sandbox, account)
    big = client.collections_create("Contact", [{"LastName": "Big", "Email": "big@example.com",
                                                 **{f: "N" * (BIG // len(fields) + 1) for f in fields}}])[0]
    assert big["success"], big
    found = Endpoints(bootstrap_servers=endpoints.bootstrap_servers, campaign_dsn=campaign_db[0])
    p = poller.build(settings_for(account, client.account, tmp_path), found, account, ["Contact"], client=client)
    try:
        first = p.objects["Contact"].poll_once()
        assert p.objects["Contact"].snapshot_done and first.published["r"] == 21
        other = client.query_all_pages("SELECT Id FROM Contact WHERE LastName != 'Big' LIMIT 1").__next__()[0]["Id"]
        time.sleep(0.01)
        client.collections_update("Contact", [{"id": other, "Title": "after the big one"},
                                              {"id": big["id"], **{f: "short" for f in fields}}])
        p.objects["Contact"].poll_once()
    finally:
        p.close()
    seen = consume_changes(endpoints.bootstrap_servers, [topics.changes("crm", account, "Contact")],
                           lambda s: sum(c.op == "u" for c in s) >= 2 and sum(c.op == "r" for c in s) >= 20,
                           timeout=60)
    assert len([c for c in seen if c.op == "r"]) == 20, [(c.op, c.key) for c in seen]
    assert big["id"] not in {c.key["id"] for c in seen if c.op == "r"}
    assert {c.key["id"]: c.after.get("Title") for c in seen if c.op == "u"}[other] == "after the big one"
    assert [c.after[fields[0]] for c in seen if c.op == "u" and c.key["id"] == big["id"]] == ["short"]
    [reject] = _too_large(campaign_db[0], "poller")
    assert reject["object"] == "Contact" and reject["record"]["change"]["key"] == {"id": big["id"]}
    assert "Notes_" in reject["reason"] and "message.max.bytes" in reject["reason"]
    with pg.connect(campaign_db[0]) as conn:
        done = conn.execute("SELECT position->'snapshot_done' FROM crmsync.checkpoints WHERE name = %s",
                            (names.poller_checkpoint(account, "Contact"),)).fetchone()[0]
    assert done is True
