"""`kafka.HeldPartitions` (the streams hold a Campaign table's changes until the CRM's first read is decided):
a held partition that a rebalance takes away and later gives back to the same consumer is still paused there
(librdkafka keeps the pause across the rebalance), so it must stay held until it can be resumed — forgetting it
while it was not assigned left it paused for good (found by tests/streams/test_scale_out.py: a worker killed
while both held the recipients' partitions; two of them were never consumed again)."""
from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer

from crmsync import kafka

PER_PARTITION = 10


def _take_until(consumers: list[Consumer], done, what: str, timeout: float = 60) -> list:
    """Poll every consumer (each must poll to take part in a rebalance) until `done(taken)`; returns `taken`, the
    first consumer's messages."""
    taken: list = []
    deadline = time.monotonic() + timeout
    while not done(taken):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        for c in consumers:
            got = c.consume(100, 0.2)
            assert all(m.error() is None for m in got), [m.error() for m in got]
            if c is consumers[0]:
                taken.extend(got)
    return taken


def _assigned(c: Consumer) -> set[int]:
    return {tp.partition for tp in c.assignment()}


def test_a_held_partition_given_back_by_a_rebalance_is_resumed_not_forgotten(endpoints):
    bootstrap, topic = endpoints.bootstrap_servers, f"test-held-{uuid.uuid4().hex[:8]}"
    kafka.ensure_topics(bootstrap, [topic], partitions=2)
    producer = kafka.producer(bootstrap)
    for p in (0, 1):
        for i in range(PER_PARTITION):
            producer.produce(topic, value=f"{p}:{i}".encode(), key=f"{p}:{i}".encode(), partition=p)
    assert producer.flush(30) == 0

    first, second = kafka.consumer(bootstrap, topic), kafka.consumer(bootstrap, topic)
    first.subscribe([topic])
    try:
        taken = _take_until([first], lambda taken: len({m.partition() for m in taken}) == 2, "both partitions")
        held = kafka.HeldPartitions()
        held.hold(first, taken)  # both paused and set back to their first message; nothing committed
        assert held.partitions == {(topic, 0), (topic, 1)}

        second.subscribe([topic])  # the group splits the two partitions between them
        _take_until([first, second], lambda _: len(_assigned(first)) == 1 and len(_assigned(second)) == 1,
                    "the group to split the partitions")
        mine, theirs = _assigned(first).pop(), _assigned(second).pop()
        assert held.release(first, {topic}) == 1  # the one assigned to it now is resumed…
        assert held.partitions == {(topic, theirs)}  # …the other stays held: it may come back paused
        second.close()

        again = _take_until([first], lambda _: _assigned(first) == {0, 1}, "the partitions back at the first")
        quiet = time.monotonic() + 2
        again += _take_until([first], lambda _: time.monotonic() > quiet, "a quiet moment")
        assert {m.partition() for m in again} <= {mine}, "the partition given back is still paused (librdkafka)"
        assert held.release(first, {topic}) == 1 and not held

        again += _take_until([first], lambda taken: len({m.value() for m in again + taken}) == 2 * PER_PARTITION,
                             "every message of both partitions, from the first (nothing was committed)", timeout=30)
    finally:
        first.close()
    assert {m.value() for m in again} == {f"{p}:{i}".encode() for p in (0, 1) for i in range(PER_PARTITION)}
