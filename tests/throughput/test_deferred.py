"""A change the streams must defer is decided again later without being published again: every change topic
holds each record version once, deferrals included (issue 16: the Campaign → CRM backfill's change topics
carried each recipient 4 times and each purchase 5 times, all but one of them the streams' re-publications).

Campaign holds 300 recipients, the CRM 20 contacts. Capture and the streams start first, without the poller:
the CRM's first read has not been decided, so the streams defer every recipient (matching needs that read) and
come back to them on their backoff, deferring them again — the test waits until they did at least once. Then
the poller and the writers start; the pipeline converges; and a plain consumer reads the recipients' change
topic back: one message per change id, exactly the snapshot's 300 reads."""
from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from crmsync import pg, topics
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


def deferred_again(dsn: str) -> int:
    """Deferred changes that were looked at again and had to wait once more."""
    with pg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM crmsync.deferred_changes WHERE attempts >= 1").fetchone()[0]


def test_a_deferred_change_is_decided_again_without_a_second_message(tmp_path: Path):
    with contacts_pipeline(tmp_path / "state", contacts=20, recipients=RECIPIENTS, shared=0) as world:
        specs = plan(world.settings)
        first = [s for s in specs if s.name in ("capture", "streams")]
        waiting = Supervisor(first, world.found, world.config_file, world.state / "logs-first")
        world.supervisor.specs = [s for s in specs if s not in first]
        try:
            waiting.start()
            wait_for(lambda: deferred_again(world.found.campaign_dsn) >= RECIPIENTS, 120,
                     "every recipient deferred a second time", waiting)
            world.supervisor.start()
            wait_for(lambda: world.converged(), 240, "convergence", world.supervisor, every=3)
        finally:
            waiting.stop()
        topic = topics.changes("campaign", world.settings.campaign.name, "recipients")
        messages = every_message(world.found.bootstrap_servers, topic)
    ids = Counter(json.loads(value)["id"] for value in messages)
    assert [change_id for change_id, count in ids.items() if count > 1] == []
    assert len(ids) == RECIPIENTS
