"""Every message on a change topic is one keyed change in the documented envelope (docs/envelope.md, "One
message, one change"), backfills and snapshots included — read back with a plain confluent-kafka consumer, as
any Kafka tool would read them (issue 16).

Campaign side: 600 recipients in capture's first snapshot, then an insert, an update and a delete. CRM side:
the Salesforce sandbox's 600 seeded contacts in the poller's first full read, then an edit. Every message must
have a key equal to the canonical JSON of its change's `key`, hold one JSON object with exactly the envelope's
fields and `"v": 1` (never a `{"changes": [...]}` batch), and all records must be there."""
from __future__ import annotations

import json
import time
import uuid

import pytest
from confluent_kafka import Consumer

from crmsync import pg, topics
from crmsync.infra import Endpoints
from services.crm_poller import service as poller
from tests.salesforce.conftest import make_client, settings_for, unique_name
from tests.sandbox_salesforce.conftest import launch
from tests.throughput.conftest import running_capture
from tests.waiting import wait_for

ENVELOPE_FIELDS = {"id", "side", "source", "object", "op", "key", "after", "position", "source_ts", "captured_ts",
                   "before", "origin", "partial", "v"}
RECORDS = 600


def read_topic(bootstrap: str, topic: str, until: int, timeout: float = 60) -> list[tuple[bytes | None, bytes]]:
    """(key, value) of the first `until` messages of `topic`, read by a plain confluent-kafka consumer."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"test-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    seen: list[tuple[bytes | None, bytes]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(seen) < until and time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.5):
                assert message.error() is None, message.error()
                seen.append((message.key(), message.value()))
    finally:
        consumer.close()
    return seen


def checked(messages: list[tuple[bytes | None, bytes]], side: str, source: str, obj: str) -> list[dict]:
    """Each message: one change in the envelope, keyed by its record. Returns the changes."""
    changes = []
    for key, value in messages:
        change = json.loads(value)
        assert isinstance(change, dict) and "changes" not in change, value[:200]
        assert set(change) == ENVELOPE_FIELDS and change["v"] == 1, sorted(change)
        assert (change["side"], change["source"], change["object"]) == (side, source, obj)
        assert change["op"] in ("c", "u", "d", "r")
        assert key == json.dumps(change["key"], sort_keys=True, separators=(",", ":")).encode(), (key, change["key"])
        changes.append(change)
    return changes


def test_capture_publishes_one_keyed_change_per_message_snapshot_included(endpoints: Endpoints, campaign_db):
    dsn, name = campaign_db
    with pg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO recipients (email) SELECT 'r' || n || '@example.com' FROM generate_series(1, %s) n",
                     (RECORDS,))
    with running_capture(endpoints.bootstrap_servers, dsn, name) as service:
        wait_for(lambda: service._snapshot_done(), 60, "the snapshot's done-marker")
        with pg.connect(dsn, autocommit=True) as conn:
            new = conn.execute("INSERT INTO recipients (email) VALUES ('new@example.com') RETURNING id").fetchone()[0]
            conn.execute("UPDATE recipients SET city = 'Lyon' WHERE id = %s", (new,))
            gone = conn.execute("DELETE FROM recipients WHERE email = 'r1@example.com' RETURNING id").fetchone()[0]
        messages = read_topic(endpoints.bootstrap_servers, topics.changes("campaign", name, "recipients"),
                              RECORDS + 3)
    changes = checked(messages, "campaign", name, "recipients")
    snapshot = [c for c in changes if c["op"] == "r"]
    assert len(snapshot) == RECORDS and len({c["key"]["id"] for c in snapshot}) == RECORDS
    ops_by_record: dict[int, list[str]] = {}
    for change in changes:  # in order per record (a record's changes share a partition), not across records
        if change["op"] != "r":
            ops_by_record.setdefault(change["key"]["id"], []).append(change["op"])
    assert ops_by_record == {new: ["c", "u"], gone: ["d"]}


@pytest.fixture
def seeded_sandbox(tmp_path):
    running = launch(tmp_path / "salesforce", seed_contacts=RECORDS)
    yield running
    running.stop()


def test_poller_publishes_one_keyed_change_per_message_full_read_included(seeded_sandbox, endpoints: Endpoints,
                                                                          campaign_db, tmp_path):
    account = unique_name("keyed")
    client = make_client(seeded_sandbox, account)
    found = Endpoints(bootstrap_servers=endpoints.bootstrap_servers, campaign_dsn=campaign_db[0])
    p = poller.build(settings_for(account, client.account, tmp_path), found, account, ["Contact"], client=client)
    try:
        p.objects["Contact"].poll_once()
        assert p.objects["Contact"].snapshot_done
        edited = next(client.query_all_pages("SELECT Id FROM Contact ORDER BY Id LIMIT 1"))[0]["Id"]
        time.sleep(0.01)
        client.collections_update("Contact", [{"id": edited, "Title": "edited"}])
        p.objects["Contact"].poll_once()
    finally:
        p.close()
    messages = read_topic(endpoints.bootstrap_servers, topics.changes("crm", account, "Contact"), RECORDS + 1)
    changes = checked(messages, "crm", account, "Contact")
    full_read = [c for c in changes if c["op"] == "r"]
    assert len(full_read) == RECORDS and len({c["key"]["id"] for c in full_read}) == RECORDS
    assert [(c["op"], c["key"]["id"], c["after"]["Title"]) for c in changes if c["op"] != "r"] == [
        ("u", edited, "edited")]
