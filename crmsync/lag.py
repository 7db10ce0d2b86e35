"""Consumer lag, read from the broker: committed offsets of a group versus the partitions' end offsets.

Used by the demo's status table, the dashboard and the metrics. Lag in messages only here; lag in seconds
comes from message timestamps (see observability docs) where needed.
"""
from __future__ import annotations

from dataclasses import dataclass

import time

from confluent_kafka import Consumer, KafkaError, TopicPartition


@dataclass
class PartitionLag:
    topic: str
    partition: int
    committed: int  # -1 when the group never committed on this partition
    end: int

    @property
    def lag(self) -> int:
        return max(0, self.end - max(self.committed, 0))


def end_offsets(bootstrap_servers: str, partitions: list[TopicPartition], timeout: float = 5.0) -> dict:
    """The offset after the last message of each partition.

    Read from the log itself rather than trusted from the high watermark: the embedded broker (Tansu 0.6)
    reports the watermark as the *base* offset of the last record batch + 1, which undercounts by up to a
    batch. So we seek just before the reported watermark and read what follows."""
    reader = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": "crmsync-lag-probe",
                       "enable.auto.commit": False, "enable.partition.eof": True})
    ends: dict[tuple[str, int], int] = {}
    try:
        starts = []
        for tp in partitions:
            low, high = reader.get_watermark_offsets(tp, timeout=timeout, cached=False)
            ends[(tp.topic, tp.partition)] = high
            if high > low:
                starts.append(TopicPartition(tp.topic, tp.partition, high - 1))
        if starts:
            reader.assign(starts)
            open_partitions = {(tp.topic, tp.partition) for tp in starts}
            deadline = time.monotonic() + timeout
            while open_partitions and time.monotonic() < deadline:
                for message in reader.consume(1000, 0.2):
                    where = (message.topic(), message.partition())
                    if message.error() is None:
                        ends[where] = max(ends[where], message.offset() + 1)
                    elif message.error().code() == KafkaError._PARTITION_EOF:
                        open_partitions.discard(where)
        return ends
    finally:
        reader.close()


def group_lag(bootstrap_servers: str, group: str, topic_names: list[str], timeout: float = 5.0) -> list[PartitionLag]:
    """Per-partition lag of `group` on `topic_names` (topics that do not exist yet are skipped)."""
    probe = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": group, "enable.auto.commit": False})
    try:
        metadata = probe.list_topics(timeout=timeout)
        partitions = [TopicPartition(t, p) for t in topic_names if t in metadata.topics
                      for p in metadata.topics[t].partitions]
        if not partitions:
            return []
        committed = {(tp.topic, tp.partition): tp.offset for tp in probe.committed(partitions, timeout=timeout)}
    finally:
        probe.close()
    ends = end_offsets(bootstrap_servers, partitions, timeout)
    return [PartitionLag(tp.topic, tp.partition, committed.get((tp.topic, tp.partition), -1),
                         ends[(tp.topic, tp.partition)]) for tp in partitions]


def total(lags: list[PartitionLag]) -> tuple[int, int]:
    """(messages produced, messages not yet consumed) over all partitions."""
    return sum(l.end for l in lags), sum(l.lag for l in lags)
