"""Lag in seconds against the real broker: it is the timestamp of the first unconsumed message, read, not guessed."""
from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition

from crmsync import burrow, kafka, lag


def _commit(bootstrap: str, group: str, topic: str, offset: int) -> None:
    committer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        committer.commit(offsets=[TopicPartition(topic, 0, offset)], asynchronous=False)
    finally:
        committer.close()


def test_lag_seconds_is_the_age_of_the_first_unconsumed_message(endpoints):
    bootstrap = endpoints.bootstrap_servers
    topic, group = f"crmsync.test.lag.{uuid.uuid4().hex[:8]}", f"test-lag-{uuid.uuid4().hex[:8]}"
    kafka.ensure_topics(bootstrap, [topic], 1, 1)
    producer = Producer({"bootstrap.servers": bootstrap})
    first = int(time.time() * 1000) - 600_000  # ten minutes ago, one message a second
    for n in range(20):
        producer.produce(topic, value=b"x", partition=0, timestamp=first + n * 1000)
    producer.flush(30)

    _commit(bootstrap, group, topic, 5)
    lags = lag.group_lag(bootstrap, group, [topic])
    assert [(l.committed, l.end, l.lag) for l in lags] == [(5, 20, 15)]
    stamps = lag.first_unconsumed_timestamps(bootstrap, lags)
    assert stamps == {(topic, 0): (first + 5000) / 1000}  # exactly message 5's timestamp
    now = time.time()
    assert abs(lag.lag_seconds(lags, stamps, now)[(topic, 0)] - (now - (first + 5000) / 1000)) < 1e-6

    _commit(bootstrap, group, topic, 20)
    caught_up = lag.group_lag(bootstrap, group, [topic])
    assert lag.lag_seconds(caught_up, lag.first_unconsumed_timestamps(bootstrap, caught_up)) == {(topic, 0): 0.0}


def test_burrow_verdicts_from_real_offsets(endpoints):
    """A group that consumes while the lag shrinks is OK; the same group frozen with lag is STOP (no member)."""
    bootstrap = endpoints.bootstrap_servers
    topic, group = f"crmsync.test.burrow.{uuid.uuid4().hex[:8]}", f"test-burrow-{uuid.uuid4().hex[:8]}"
    kafka.ensure_topics(bootstrap, [topic], 1, 1)
    producer = Producer({"bootstrap.servers": bootstrap})
    for _ in range(50):
        producer.produce(topic, value=b"x", partition=0)
    producer.flush(30)
    moving, frozen = burrow.PartitionWindow(size=4), burrow.PartitionWindow(size=4)
    for step in range(4):
        _commit(bootstrap, group, topic, 10 * (step + 1))
        (item,) = lag.group_lag(bootstrap, group, [topic])
        moving.add(burrow.Sample(time.time(), item.committed, item.end))
        frozen.add(burrow.Sample(time.time(), 10, item.end))
    state = lag.group_state(bootstrap, group)
    assert state in ("empty", "unknown")  # nobody is subscribed; "unknown" only if the broker cannot say
    assert burrow.evaluate(moving, state).status == burrow.OK and burrow.evaluate(moving, state).lag == 10
    assert burrow.evaluate(frozen, "empty").status == burrow.STOP
