"""A child table's Campaign changes wait in Kafka while the streams worker still has its parents' changes to
take (issue 16): a backfill's recipients decided before their organisations were parked in
crmsync.deferred_changes and decided a second time once each organisation was sent — 44 % of the streams'
samples in the Campaign → CRM benchmark. Now the recipients' partitions are held (paused, nothing committed)
until the organisations' partitions are taken, so every recipient is decided once, finding its organisation
on its way to the CRM.

Real broker and PostgreSQL, the streams worker's own take loop (StreamsWorker.run_once), in a consumer group of
its own (the test's topics are its own too: a unique Campaign name)."""
from __future__ import annotations

import threading
import time
import uuid


import streams.app
from crmsync import config, kafka, names, pg, topics
from crmsync.defaults import default_mappings
from crmsync.envelope import Change
from crmsync.infra import Endpoints
from streams.app import StreamsWorker

ACCOUNT = "sf"
ORGANISATIONS, RECIPIENTS = 20000, 600


def _change(campaign_name: str, table: str, key: int, row: dict) -> Change:
    return Change(id=f"campaign:{table}:{key}", side="campaign", source=campaign_name, object=table, op="r",
                  key={"id": key}, after=row, before=None,
                  position={"lsn": "0/0", "lsn_int": key, "seq": -1, "snapshot": True},
                  source_ts="2026-01-04T10:00:00Z")


def _settings(campaign_name: str) -> config.Settings:
    return config.Settings.model_validate({
        "accounts": {ACCOUNT: {"type": "salesforce", "username": "u", "password": "p"}},
        "campaign": {"name": campaign_name},
        "mappings": [m.model_dump() for m in default_mappings(ACCOUNT) if m.name in ("accounts", "contacts")]})


def test_a_child_tables_changes_wait_for_their_parents_instead_of_being_parked(campaign_db, endpoints, monkeypatch):
    dsn, campaign_name = campaign_db
    settings = _settings(campaign_name)
    monkeypatch.setattr(streams.app, "APP_ID", f"test-streams-{uuid.uuid4().hex[:8]}")  # a group of its own
    with pg.connect(dsn, autocommit=True) as conn:  # the CRM's first read is done (an empty CRM)
        for obj in ("Account", "Contact"):
            conn.execute("INSERT INTO crmsync.checkpoints (name, position) VALUES (%s, '{\"snapshot_done\": true}')",
                         (names.poller_checkpoint(ACCOUNT, obj),))
    organisations = topics.changes("campaign", campaign_name, "organisations")
    recipients = topics.changes("campaign", campaign_name, "recipients")
    found = Endpoints(endpoints.bootstrap_servers, dsn)
    worker = StreamsWorker(settings, found, threading.Event())
    try:
        producer, tracker = kafka.producer(found.bootstrap_servers), kafka.DeliveryTracker()
        # the organisations first (as change capture's snapshot publishes them), more than the worker takes in
        # its first takes; each recipient points at one of the last (without the hold, the recipients of an
        # early take were parked: 4 runs of 4)
        for key in range(1, ORGANISATIONS + 1):
            change = _change(campaign_name, "organisations", key, {"id": key, "name": f"Org {key}"})
            kafka.produce(producer, tracker, organisations, change.to_json(), change.kafka_key())
        for key in range(1, RECIPIENTS + 1):
            change = _change(campaign_name, "recipients", key, {
                "id": key, "email": f"r{key}@example.com", "last_name": f"R{key}",
                "organisation_id": ORGANISATIONS - key % 50})
            kafka.produce(producer, tracker, recipients, change.to_json(), change.kafka_key())
        kafka.flush_all(producer, tracker)

        parked, deadline = 0, time.monotonic() + 120
        with pg.connect(dsn, autocommit=True) as conn:
            while True:
                worker.run_once()
                worker.decide_deferred()
                parked = max(parked, conn.execute("SELECT count(*) FROM crmsync.deferred_changes").fetchone()[0])
                done = conn.execute("SELECT count(*) FILTER (WHERE mapping = 'accounts'), count(*) FILTER "
                                    "(WHERE mapping = 'contacts') FROM crmsync.sync_state").fetchone()
                if done == (ORGANISATIONS, RECIPIENTS):
                    break
                assert time.monotonic() < deadline, f"decided {done} of {(ORGANISATIONS, RECIPIENTS)}"
            sent = conn.execute("SELECT count(*) FROM crmsync.sync_state WHERE mapping = 'contacts' "
                                "AND agreed->'organisation_id' ? 'campaign_key'").fetchone()[0]
        assert parked == 0  # no recipient waited in the database: each was decided once
        assert sent == RECIPIENTS  # each went with its organisation's external id (none is linked yet)
    finally:
        worker.close()
