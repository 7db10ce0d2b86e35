"""The Campaign snapshot that arrives before the CRM's first read is decided waits in Kafka, not in the database,
and every change topic holds each record version once (issue 16: the Campaign → CRM backfill's change topics
carried each recipient 4 times and each purchase 5 times, all but one of them the streams' re-publications; then
the streams parked the whole snapshot in deferred_changes and decided it a second time).

Campaign holds 300 recipients (10 of them with the email of a CRM contact), the CRM 20 contacts. Capture and the
streams start first, without the poller: the CRM's first read has not been decided, so none of the recipients
may be decided (matching needs that read). The streams hold them: nothing is parked in deferred_changes, nothing
of the recipients' topic is committed, no command goes out. Then the poller and the writers start; the pipeline
converges (the 10 shared recipients matched, not created twice); and a plain consumer reads the recipients'
change topic back: one message per change id, exactly the snapshot's 300 reads."""
from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from crmsync import lag, names, pg, topics
from crmsync.run import Supervisor, plan
from tests.pipeline import contacts_pipeline
from tests.waiting import wait_for

RECIPIENTS = 300


def every_message(bootstrap: str, topic: str, timeout: float = 60) -> list[bytes]:
    """The value of every message of `topic`, read from the beginning of each partition to its end."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"test-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    values: list[bytes] = []
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        open_partitions, deadline = set(partitions), time.monotonic() + timeout
        while open_partitions and time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.5):
                if message.error() is not None and message.error().code() == KafkaError._PARTITION_EOF:
                    open_partitions.discard(message.partition())
                else:
                    assert message.error() is None, message.error()
                    values.append(message.value())
        assert not open_partitions, f"{topic}: partitions {sorted(open_partitions)} not read to their end"
    finally:
        consumer.close()
    return values


def parked(dsn: str) -> int:
    with pg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM crmsync.deferred_changes").fetchone()[0]


def test_the_campaign_snapshot_waits_in_kafka_for_the_crms_first_read_and_is_published_once(tmp_path: Path):
    with contacts_pipeline(tmp_path / "state", contacts=20, recipients=RECIPIENTS, shared=10) as world:
        specs = plan(world.settings)
        first = [s for s in specs if s.name in ("capture", "streams")]
        waiting = Supervisor(first, world.found, world.config_file, world.state / "logs-first")
        world.supervisor.specs = [s for s in specs if s not in first]
        topic = topics.changes("campaign", world.settings.campaign.name, "recipients")
        commands = topics.apply("crm", world.settings.mappings[0].account, world.settings.mappings[0].crm_object)
        bootstrap = world.found.bootstrap_servers
        try:
            waiting.start()
            wait_for(lambda: lag.total(lag.group_lag(bootstrap, names.STREAMS_GROUP, [topic]))[0] >= RECIPIENTS,
                     60, "the recipients' snapshot published", waiting)
            wait_for(lambda: "holding the Campaign changes" in _log(world.state / "logs-first"), 60,
                     "the streams holding the recipients", waiting)
            time.sleep(3)  # longer than a take, a look at the due deferred changes and a readiness check
            assert lag.total(lag.group_lag(bootstrap, names.STREAMS_GROUP, [topic])) == (RECIPIENTS, RECIPIENTS)
            assert parked(world.found.campaign_dsn) == 0
            assert lag.total(lag.group_lag(bootstrap, names.STREAMS_GROUP, [commands]))[0] == 0
            world.supervisor.start()
            wait_for(lambda: world.converged(), 240, "convergence", world.supervisor, every=3)
            assert "the CRM's first reads are decided" in _log(world.state / "logs-first")
            assert parked(world.found.campaign_dsn) == 0
        finally:
            waiting.stop()
        messages = every_message(bootstrap, topic)
        contacts = sum(len(page) for page in world.client.query_all_pages("SELECT Id FROM Contact"))
        assert contacts == 20 + RECIPIENTS - 10  # the 10 shared recipients were matched, not created again
    ids = Counter(json.loads(value)["id"] for value in messages)
    assert [change_id for change_id, count in ids.items() if count > 1] == []
    assert len(ids) == RECIPIENTS


def _log(folder: Path) -> str:
    return "".join(path.read_text(errors="replace") for path in folder.glob("*.log"))
