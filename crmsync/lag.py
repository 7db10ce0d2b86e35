"""Consumer lag, read from the broker: committed offsets of a group versus the partitions' end offsets.

Used by the demo's status table, the dashboard and the metrics. Lag in seconds is read, not guessed: the
timestamp of the first message the group has not consumed yet, compared with now (kafka-lag-exporter
interpolates it from offset history; reading the message is exact and costs one fetch per lagging partition).
The verdict over time (OK / WARN / STALL / STOP) is crmsync/burrow.py's.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient

from crmsync import kafka, topics
from crmsync.config import Settings

STREAMS_GROUP = "crmsync-streams"


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
    reader = Consumer(kafka.client_config(bootstrap_servers, {
        "group.id": "crmsync-lag-probe", "enable.auto.commit": False, "enable.partition.eof": True}))
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
    probe = Consumer(kafka.client_config(bootstrap_servers, {"group.id": group, "enable.auto.commit": False}))
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


@dataclass(frozen=True)
class GroupSpec:
    """One consumer group crmsync runs: who it is, what it reads, and which way its records flow."""

    group: str
    service: str
    topics: tuple[str, ...]
    direction: str  # "crm→campaign", "campaign→crm", or "both" (the streams decide both ways)
    account: str | None = None  # the CRM account of a CRM writer


def consumer_groups(settings: Settings) -> list[GroupSpec]:
    """The consumer groups of the configured mappings (group names as the services build them)."""
    mappings = settings.mappings
    changes = sorted({topics.changes("crm", m.account, m.crm_object) for m in mappings}
                     | {topics.changes("campaign", settings.campaign.name, m.campaign_table) for m in mappings})
    specs = [GroupSpec(STREAMS_GROUP, "streams", tuple(changes), "both"),
             GroupSpec(f"crmsync-writer-campaign-{settings.campaign.name}", "writer-campaign",
                       tuple(sorted({topics.apply("campaign", settings.campaign.name, m.campaign_table)
                                     for m in mappings})), "crm→campaign")]
    for account in sorted({m.account for m in mappings}):
        specs.append(GroupSpec(f"crmsync-writer-salesforce-{account}", "writer-salesforce",
                               tuple(sorted({topics.apply("crm", account, m.crm_object) for m in mappings
                                             if m.account == account})), "campaign→crm", account))
    return specs


@functools.lru_cache(maxsize=8)
def admin(bootstrap_servers: str) -> AdminClient:
    """One admin client per cluster for the life of the process: they are thread-safe, and creating one per
    probe costs a connection and a log line every few seconds."""
    return AdminClient(kafka.client_config(bootstrap_servers))


def group_state(bootstrap_servers: str, group: str, timeout: float = 5.0) -> str:
    """The broker's view of a group: "stable", "empty", "preparing_rebalance", … ("unknown" if it cannot say).
    An empty group has no live member: nobody consumes, whatever its lag."""
    try:
        futures = admin(bootstrap_servers).describe_consumer_groups([group], request_timeout=timeout)
        description = futures[group].result(timeout)
    except Exception:  # noqa: BLE001 - a broker without DescribeGroups (or down) gives no state
        return "unknown"
    return description.state.name.lower()


def first_unconsumed_timestamps(bootstrap_servers: str, lags: list[PartitionLag],
                                timeout: float = 5.0) -> dict[tuple[str, int], float]:
    """Epoch seconds of the first message not consumed yet, per lagging partition (assign + seek + read one).
    Partitions without lag are left out: their lag in seconds is 0."""
    wanted = [l for l in lags if l.lag > 0]
    if not wanted:
        return {}
    reader = Consumer(kafka.client_config(bootstrap_servers, {
        "group.id": "crmsync-lag-probe", "enable.auto.commit": False, "auto.offset.reset": "earliest"}))
    found: dict[tuple[str, int], float] = {}
    try:
        reader.assign([TopicPartition(l.topic, l.partition, max(l.committed, 0)) for l in wanted])
        deadline = time.monotonic() + timeout
        while len(found) < len(wanted) and time.monotonic() < deadline:
            for message in reader.consume(len(wanted) * 10, 0.2):
                where = (message.topic(), message.partition())
                if message.error() is None and where not in found:
                    found[where] = message.timestamp()[1] / 1000
        return found
    finally:
        reader.close()


def lag_seconds(lags: list[PartitionLag], timestamps: dict[tuple[str, int], float],
                now: float | None = None) -> dict[tuple[str, int], float | None]:
    """Seconds the oldest unconsumed message of each partition has waited: 0 without lag, None when its
    timestamp could not be read (never a guess)."""
    now = time.time() if now is None else now
    return {(l.topic, l.partition): 0.0 if l.lag == 0 else
            (max(0.0, now - timestamps[(l.topic, l.partition)]) if (l.topic, l.partition) in timestamps else None)
            for l in lags}
