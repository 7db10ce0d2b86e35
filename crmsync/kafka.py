"""Kafka helpers shared by every service: clients with crmsync's safe defaults, and topic creation.

Producers are idempotent with acks=all, so a retry never reorders or duplicates a message within a partition;
services commit their own source position only after `flush()` reports every delivery acknowledged.

One message is one record change (or one apply command), keyed by its record: throughput comes from the
producer batching many messages per request (`linger.ms`, `batch.size`) and compressing each batch (lz4 by default: the
cheapest codec per byte on CPU, which is what a 2-core machine runs out of first; `kafka.compression` chooses), never from packing several
records into one message. A single message over `message.max.bytes` can never be sent: `produce` raises
`MessageTooLarge` at once (librdkafka checks the size before queueing), and a broker that refuses one later
(its own limit is lower) is told through `DeliveryTracker.too_large`; the caller records the record in the
rejects ledger and moves on (crmsync/rejects.py `oversized`).

Security: `use_security(settings.kafka)` (the CLI calls it once the configuration is loaded) makes every client
built here — and through `client_config`, the lag probes and the dashboard's readers — speak the configured
security.protocol with its sasl.* and ssl.* properties. TLS verification keeps librdkafka's defaults (the
certificate chain and the host name are checked); nothing here turns it off.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Iterable

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from crmsync.config import KafkaSettings

log = logging.getLogger("crmsync.kafka")


_security: dict[str, str] = {}  # librdkafka properties of the configured security protocol (secrets revealed)


def use_security(settings: KafkaSettings) -> None:
    """Every client made from now on in this process uses `settings`' security protocol and credentials."""
    global _security
    properties = {"security.protocol": settings.security_protocol, "sasl.mechanism": settings.sasl_mechanism,
                  "sasl.username": settings.sasl_username, "ssl.ca.location": settings.ssl_ca_location,
                  "ssl.certificate.location": settings.ssl_certificate_location,
                  "ssl.key.location": settings.ssl_key_location,
                  "sasl.password": settings.sasl_password.get_secret_value() if settings.sasl_password else None,
                  "ssl.key.password": settings.ssl_key_password.get_secret_value() if settings.ssl_key_password else None}
    _security = {} if settings.security_protocol == "PLAINTEXT" else \
        {name: str(value) for name, value in properties.items() if value is not None}


def client_config(bootstrap_servers: str, properties: dict[str, Any] | None = None) -> dict[str, Any]:
    """librdkafka properties for any client: the broker, the security settings, then `properties`."""
    return {"bootstrap.servers": bootstrap_servers, **_security, **(properties or {})}


MAX_MESSAGE_BYTES = 1_000_000  # librdkafka's message.max.bytes default, and about Apache Kafka's broker default
COMPRESSION = "lz4"  # accepted by Apache Kafka and by Tansu (the embedded broker); measured in docs/benchmarks.md
_compression = COMPRESSION


def use_compression(settings: KafkaSettings) -> None:
    """Every producer made from now on in this process compresses as `settings.compression` says."""
    global _compression
    _compression = settings.compression


def producer(bootstrap_servers: str, **overrides: Any) -> Producer:
    config = {
        **client_config(bootstrap_servers),
        "enable.idempotence": True,
        "acks": "all",
        # a request carries up to 1 MB of compressed messages; a message waits at most 10 ms for its batch
        "linger.ms": 10,
        "batch.size": 1_000_000,
        "batch.num.messages": 10000,
        "compression.type": _compression,
        "message.max.bytes": MAX_MESSAGE_BYTES,
        "queue.buffering.max.messages": 500000,
        "message.timeout.ms": 120000,
    }
    config.update(overrides)
    return Producer(config)


class MessageTooLarge(Exception):
    """One message bigger than a Kafka message may be: it cannot be published as it is, however often it is
    tried. The caller records what it was in the rejects ledger and goes on with the next one."""

    def __init__(self, topic: str, key: bytes | None, size: int, limit: int = MAX_MESSAGE_BYTES,
                 value: bytes | None = None) -> None:
        super().__init__(f"a message of {size:,} bytes for {topic} is over the {limit:,}-byte limit of a Kafka "
                         "message (message.max.bytes)")
        self.topic, self.key, self.size, self.limit = topic, key, size, limit
        self.value = value  # the refused message, when the broker refused it after it was queued


@dataclass(frozen=True)
class GroupTuning:
    """How a consumer lives in its group: what decides how soon a restarted service works again.

    A killed member's partitions stay with it until its session times out, so a restarted service waits about
    a session timeout before it gets them back. On the embedded broker (Tansu) a group join also takes about a
    session timeout, so both stay short there (1 s, heartbeats every 0.3 s from librdkafka's own thread):
    measured, a service killed with SIGKILL consumes again ~1.1 s after its restart (6 s sessions: ~11 s). An
    Apache Kafka broker refuses sessions under group.min.session.timeout.ms (6 s by default): there each member
    gets a stable `group.instance.id` (static membership), so a restarted member takes its partitions back at
    once, without waiting for the old session to expire.

    `fetch_wait_ms` bounds how long a fetch waits at the broker when there is nothing new. Apache Kafka answers a
    waiting fetch as soon as data comes, so there the wait only bounds idle fetches: 500 ms (librdkafka's
    default). The embedded Tansu does not wake every waiting fetch at once (three groups on one topic, measured:
    ~150 ms a hop at 500, ~25 ms at 100, ~15 ms at 20), while short waits cost it CPU for every idle consumer
    (8 of them: 35 % of a core at 20 ms, 22 % at 100, 5 % at 500): 100 ms there (docs/benchmarks.md)."""

    session_timeout_ms: int = 6000
    heartbeat_interval_ms: int = 1500
    instance_id: str | None = None  # static membership: one per replica, stable across restarts
    fetch_wait_ms: int = 100

    def config(self, group_id: str) -> dict[str, Any]:
        found = {"session.timeout.ms": self.session_timeout_ms, "heartbeat.interval.ms": self.heartbeat_interval_ms,
                 "fetch.wait.max.ms": self.fetch_wait_ms}
        if self.instance_id:
            found["group.instance.id"] = f"{group_id}-{self.instance_id}"
        return found


EMBEDDED_TUNING = GroupTuning(1000, 300, fetch_wait_ms=100)
CONFIGURED_FETCH_WAIT_MS = 500  # a configured (Apache Kafka) broker's
_tuning = GroupTuning()


def tune_groups(settings: Any) -> GroupTuning:
    """Set how this process's consumers join their groups, from crmsync.yaml's `kafka:` (a service calls it
    once, at start). `crmsync run` writes the embedded broker's values into the services' configuration."""
    global _tuning
    cfg = settings.kafka
    embedded = settings.uses_embedded_broker
    session = cfg.session_timeout_ms or (EMBEDDED_TUNING.session_timeout_ms if embedded else 10000)
    static = cfg.static_membership if cfg.static_membership is not None else not embedded
    instance = (os.environ.get("CRMSYNC_INSTANCE_ID") or socket.gethostname()) if static else None
    fetch_wait = cfg.fetch_wait_ms or (EMBEDDED_TUNING.fetch_wait_ms if embedded else CONFIGURED_FETCH_WAIT_MS)
    _tuning = GroupTuning(session, max(100, session * 3 // 10), instance, fetch_wait)
    return _tuning


def group_tuning() -> GroupTuning:
    return _tuning


def consumer(bootstrap_servers: str, group_id: str, **overrides: Any) -> Consumer:
    config = {
        **client_config(bootstrap_servers),
        "group.id": group_id,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
        **_tuning.config(group_id),
    }
    config.update(overrides)
    return Consumer(config)


def subscribe(c: Consumer, topic_names: list[str]) -> None:
    """Subscribe, telling this process's readiness when the group assigns (or takes back) partitions."""
    from crmsync.observability import progress

    c.subscribe(topic_names, on_assign=progress.joined, on_revoke=progress.left, on_lost=progress.left)


class HeldPartitions:
    """Partitions a consumer sets aside for a while: paused, and set back to their first held message, with
    nothing of them committed, so they are consumed again from that message once released (or, if the group
    gives them to another consumer meanwhile, from the committed offset, by that consumer).

    Invariant: a partition stays here until it is resumed while assigned. librdkafka keeps a paused partition
    paused across a rebalance that assigns it back to the same consumer, and resumes only partitions assigned
    at that moment; forgetting a held partition that is not assigned right now (a rebalance in progress) would
    leave it paused for good when it comes back. A new consumer starts with nothing held (`clear`)."""

    def __init__(self) -> None:
        self.partitions: set[tuple[str, int]] = set()

    def __bool__(self) -> bool:
        return bool(self.partitions)

    @property
    def topics(self) -> set[str]:
        return {t for t, _ in self.partitions}

    def hold(self, c: Consumer, messages: list) -> None:
        """Pause the partitions of `messages` and set each back to its first message among them."""
        first: dict[tuple[str, int], int] = {}
        for m in messages:
            key = (m.topic(), m.partition())
            first[key] = min(first.get(key, m.offset()), m.offset())
        c.pause([TopicPartition(t, p) for t, p in first])
        for (t, p), offset in first.items():
            c.seek(TopicPartition(t, p, offset))
        self.partitions |= set(first)

    def set_aside(self, c: Consumer, messages: list, topics: set[str]) -> list:
        """Hold the messages of `topics` (`hold`); returns the others, to be processed now."""
        if topics:
            self.hold(c, [m for m in messages if m.topic() in topics])
        return [m for m in messages if m.topic() not in topics]

    def release(self, c: Consumer, topics: set[str]) -> int:
        """Resume the held partitions of `topics` that are assigned to `c` now; returns how many."""
        assigned = {(tp.topic, tp.partition) for tp in c.assignment()}
        resumed = {(t, p) for t, p in self.partitions if t in topics} & assigned
        if resumed:
            c.resume([TopicPartition(t, p) for t, p in resumed])
            self.partitions -= resumed
        return len(resumed)

    def clear(self) -> None:
        self.partitions = set()


PARENTS_HOLD_MAX = 10.0  # seconds a child topic's messages wait at most for its parents' (then taken anyway)


class ParentsFirst:
    """A consumer's wait of a child topic's messages for its parent topics' (a backfill's recipients for their
    organisations, the CRM writer's opportunities for their contacts): whether the consumer should hold a
    topic's partitions (HeldPartitions) because it still has messages of the parent topics' partitions it owns
    to take. At most `max_hold` seconds in a row, so steady parent traffic never starves the children (they are
    then taken as they come). Partitions another consumer owns are not known here, and not waited for."""

    def __init__(self, parent_topics: dict[str, set[str]], max_hold: float = PARENTS_HOLD_MAX) -> None:
        self.parent_topics = parent_topics
        self.max_hold = max_hold
        self.since: dict[str, float] = {}  # topic -> when its wait began (time.monotonic())

    def waits(self, c: Consumer, topic: str) -> bool:
        parents = self.parent_topics.get(topic)
        if not parents:
            return False
        since = self.since.setdefault(topic, time.monotonic())
        if time.monotonic() - since > self.max_hold:
            return False
        if not behind(c, [tp for tp in c.assignment() if tp.topic in parents]):
            del self.since[topic]
            return False
        return True

    def clear(self) -> None:
        self.since.clear()


def behind(c: Consumer, partitions: list[TopicPartition], timeout: float = 5.0) -> bool:
    """Whether `c` has messages of `partitions` still to take: its position (or, before its first message there,
    its group's committed offset) is below the partition's end. Watermarks as of the consumer's last fetch,
    asked of the broker when it has not fetched the partition yet."""
    if not partitions:
        return False
    positions = c.position(partitions)
    unknown = [tp for tp in positions if tp.offset < 0]
    committed = {(tp.topic, tp.partition): tp.offset for tp in c.committed(unknown, timeout=timeout)} if unknown else {}
    for tp in positions:
        low, high = c.get_watermark_offsets(tp, cached=True)
        if high < 0:
            low, high = c.get_watermark_offsets(tp, timeout=timeout)
        offset = tp.offset if tp.offset >= 0 else committed.get((tp.topic, tp.partition), -1)
        if max(offset, low) < high:
            return True
    return False


def ensure_topics(bootstrap_servers: str, names: Iterable[str], partitions: int = 4,
                  replication_factor: int = 1, timeout: float = 30) -> None:
    """Create the topics that do not exist yet. The embedded broker forgets topics on restart, so every
    service calls this on start instead of relying on an install step."""
    admin = AdminClient(client_config(bootstrap_servers))
    wanted = set(names)
    deadline = time.monotonic() + timeout
    while True:
        existing = set(admin.list_topics(timeout=10).topics)
        missing = sorted(wanted - existing)
        if not missing:
            return
        futures = admin.create_topics([NewTopic(n, partitions, replication_factor) for n in missing])
        for name, future in futures.items():
            try:
                future.result()
            except KafkaException as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc) and time.monotonic() > deadline:
                    raise RuntimeError(f"could not create topic {name}: {exc}") from exc
        if time.monotonic() > deadline:
            raise RuntimeError(f"topics still missing after {timeout}s: {missing}")


def rewind(c: Consumer) -> bool:
    """Take a failed batch again: every assigned partition back to its committed offset (none committed: the
    beginning, as auto.offset.reset says). The consumer stays in its group — closing it and joining again costs
    a rebalance, and the embedded broker strands a group that a member leaves during one
    (crmsync.run.Supervisor._unstick_groups). False if it could not: then close the consumer and make another."""
    try:
        for tp in c.committed(c.assignment(), timeout=10):
            tp.offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            c.seek(tp)
        return True
    except KafkaException as exc:
        log.warning("could not rewind to the committed offsets (%s)", exc)
        return False


def delete_group(bootstrap_servers: str, group: str, timeout: float = 10) -> None:
    """Delete a consumer group and its committed offsets (the supervisor's cure for a group the embedded
    broker left stuck: crmsync.run.Supervisor._unstick_groups)."""
    admin = AdminClient(client_config(bootstrap_servers))
    admin.delete_consumer_groups([group], request_timeout=timeout)[group].result(timeout)


class DeliveryTracker:
    """Counts acknowledgements and remembers the first delivery error, so a caller can `flush()` and then
    know whether *everything* it produced is durable before it commits its source position. Messages the
    broker refused for their size are not errors of the stream: they wait in `too_large` for the caller."""

    def __init__(self) -> None:
        self.acked = 0
        self.error: Exception | None = None
        self.too_large: list[MessageTooLarge] = []

    def __call__(self, err: Any, msg: Any) -> None:
        if err is not None and err.code() == KafkaError.MSG_SIZE_TOO_LARGE:
            value = msg.value() or b""
            self.too_large.append(MessageTooLarge(msg.topic(), msg.key(), len(value), value=value))
        elif err is not None:
            self.error = self.error or KafkaException(err)
        else:
            self.acked += 1

    def take_too_large(self) -> list[MessageTooLarge]:
        found, self.too_large = self.too_large, []
        return found

    def raise_if_failed(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error


def produce(p: Producer, tracker: DeliveryTracker, topic: str, value: bytes, key: bytes | None,
            partition: int | None = None) -> None:
    """Queue one message, waiting for deliveries to drain while librdkafka's local queue is full (the one
    place that handles BufferError). Acknowledgements arrive through `tracker`; see `flush_all`. Raises
    `MessageTooLarge` for a message over message.max.bytes (nothing was queued)."""
    where = {} if partition is None else {"partition": partition}
    while True:
        try:
            p.produce(topic, value=value, key=key, on_delivery=tracker, **where)
            return
        except BufferError:
            p.poll(0.1)
        except KafkaException as exc:
            if exc.args and exc.args[0].code() == KafkaError.MSG_SIZE_TOO_LARGE:
                raise MessageTooLarge(topic, key, len(value)) from None
            raise


def produce_changes(p: Producer, tracker: DeliveryTracker, topic: str, changes: Iterable[Any]) -> list[tuple[Any, MessageTooLarge]]:
    """Publish each Change as its own message keyed by its record (Debezium's convention: compacted topics,
    per-key order and every Kafka tool expect one event per record change). Returns the changes too large to
    publish, with why; every other one is queued (see `flush_all`)."""
    refused = []
    for change in changes:
        try:
            produce(p, tracker, topic, change.to_json(), change.kafka_key())
        except MessageTooLarge as exc:
            refused.append((change, exc))
    return refused


def flush_all(p: Producer, tracker: DeliveryTracker, timeout: float = 120) -> None:
    """Wait until every produced message is acknowledged; raise if any failed or the wait timed out (messages
    refused for their size are left in `tracker.too_large`)."""
    remaining = p.flush(timeout)
    if remaining:
        raise RuntimeError(f"{remaining} messages still unacknowledged after {timeout}s")
    tracker.raise_if_failed()


def without_errors(messages: list, log: Any) -> list:
    """The messages of a consume() call that carry data; errors (e.g. a topic not created yet) are logged."""
    good = []
    for message in messages:
        if message.error() is not None:
            log.warning("consumer error: %s", message.error())
        else:
            good.append(message)
    return good


def next_offsets(messages: list) -> list[TopicPartition]:
    """Offsets to commit after `messages` were processed: one past the highest per partition."""
    highest: dict[tuple[str, int], int] = {}
    for m in messages:
        key = (m.topic(), m.partition())
        highest[key] = max(highest.get(key, -1), m.offset())
    return [TopicPartition(t, p, o + 1) for (t, p), o in highest.items()]
