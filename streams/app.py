"""The stream processors: consume both sides' change topics, decide, emit apply commands.

One confluent-kafka consumer per worker process, in consumer group `crmsync-streams`, takes up to TAKE change
messages at once (one message = one keyed record change) and hands each side's changes to that side's
BatchHandler; the two sides are decided in parallel, each in its own thread and PostgreSQL connection. A batch is
decided by the Reconciler inside one PostgreSQL transaction that locks the batch's sync-state rows; its apply
commands are produced and acknowledged by the broker *before* that transaction commits, and the consumed offsets
are committed only after both sides' transactions committed. A crash at any point replays the batch, which
re-decides the same commands (or finds them decided: stale changes are skipped).

faust-streaming hosts the worker (the design card's stream processor): `crmsync service streams` runs a faust
worker — process lifecycle, signals, logging, timers — whose app starts the hot path as a service of its own
(`HotPath`: StreamsWorker's take-decide-commit loop in a thread). The hot path does not go through faust
agents: an agent costs Python work per event (its stream, its acking, aiokafka's decoding) — measured ~3,700
events/s per worker, below every other stage — while librdkafka fetches and decompresses in C and hands over a
whole take in one call. The faust app opens no Kafka client of
its own (`HostApp`: `producer_only`, producer off): it joins no consumer group, so it cannot mix its assignor
into `crmsync-streams`; its timers and services start at once instead of waiting for a table recovery that never
comes; and all Kafka traffic goes through crmsync/kafka.py with the configured security settings. See
docs/architecture.md and docs/benchmarks.md.

Scaling out = more partitions and more `crmsync service streams` workers in the same consumer group (or
`crmsync run --workers N`). A record's changes are keyed by the record, so they are on one partition, which one
worker owns at a time; offsets are committed between takes (a revocation finds nothing in flight); the two sides
of one record meet only in the database, where the rows are locked in a stable order.

Deferred changes (a parent not in the CRM yet, the CRM's first read not decided yet, an echo ahead of its link)
wait in ``crmsync.deferred_changes`` with the partition they were consumed from. Between takes, the worker that
owns that partition decides the due ones again, straight from the table, in the same kind of transaction as a
take (deleted when decided, parked again with a longer wait otherwise; a change waiting for a parent is due as
soon as a batch links that parent to its CRM record, one waiting for the CRM's first read as soon as that read has
been decided). They are never published again on the
change topic: a subscriber reads each record version once, and a deferral costs no message. (Rows parked before
the partition was recorded are put back on their topic once by a faust timer, `republish_unowned`.)

The Campaign snapshot of a first run usually arrives before the CRM's first read has been decided, and none of its
new rows could be decided before (matching needs that read). Its partitions are *held* instead (paused, set back
to the first held change, nothing of them committed) until that read is decided, then consumed as any change: a
backfill no longer parks the whole snapshot in deferred_changes to decide it a second time (`_hold_unready`).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

import faust
from faust.app.base import BootStrategy
import mode
import psycopg
import psycopg.errors
from confluent_kafka import Consumer, Message
from prometheus_client import Counter, Histogram

from crmsync import kafka, lag, names, pg, rejects, topics
from crmsync.config import Mapping, Settings
from crmsync.enums import StoredEnumerations
from crmsync.envelope import Change, Reject, changes_from_message, dumps, record_key
from crmsync.infra import Endpoints
from crmsync.observability import progress
from streams.reconcile import FIRST_READ, Decisions, Reconciler, match_index_sql, save_conflicts

log = logging.getLogger("crmsync.streams")
APP_ID = names.STREAMS_GROUP
TAKE = 5000  # change messages consumed at once
TAKE_WITHIN = 0.1  # seconds a take waits to fill (the latency a trickle of changes pays)
MAX_CHANGES_PER_TRANSACTION = 5000
DEFERRED_EVERY = 1.0  # seconds between two looks of the hot path at the due deferred changes it owns
REPUBLISH_EVERY = 2.0  # seconds between looks at deferred changes parked without their partition
PREFETCH_KBYTES = 16384  # librdkafka's fetch queue per consumer (its 64 MB default made the worker's RSS grow)
LOCK_RETRIES = 5  # a batch that lost a deadlock is decided again, in place, this many times
ENUM_MAPS_MAX_AGE = 30.0  # seconds before the enumeration maps (`crmsync enums sync`) are read again

DECIDED = Counter("crmsync_streams_changes_total", "Changes decided by the stream processors", ["side", "result"])
COMMANDS = Counter("crmsync_streams_commands_total", "Apply commands emitted", ["side", "object"])
CONFLICTS = Counter("crmsync_streams_conflicts_total", "Conflicts recorded", ["mapping"])
BATCH_SECONDS = Histogram("crmsync_streams_batch_seconds", "Time to decide and publish one batch", ["side"])
FAST = Counter("crmsync_streams_fast_path_total", "Changes decided by the fast path (streams/fast.py)", ["side", "case"])
RETRIED = Counter("crmsync_streams_batch_retries_total", "Batches decided again after a deadlock or serialization "
                  "failure", ["side", "error"])


class CrmReadiness:
    """Campaign-only records may create CRM records only once the CRM's first full read has been *decided*
    by the streams: otherwise a person who exists on both sides would be created twice instead of matched.
    Ready = the poller finished its snapshot (checkpoint), and afterwards this consumer group had consumed
    its CRM change topic to the end. Once ready, a mapping stays ready — across restarts too, while the
    poller's checkpoint says its snapshot is done (`names.first_read_decided`, stored with the decision): a
    worker restarted under steady CRM traffic, whose group is rarely caught up to the last message, must not
    wait for that again. Call it inside a transaction of `conn`."""

    def __init__(self, conn, bootstrap_servers: str) -> None:
        self.conn = conn
        self.bootstrap_servers = bootstrap_servers
        self.ready: set[str] = set()
        self.checked_at: dict[str, float] = {}

    def __call__(self, mapping: Mapping) -> bool:
        if mapping.name in self.ready:
            return True
        if time.monotonic() - self.checked_at.get(mapping.name, 0.0) < 2.0:
            return False
        self.checked_at[mapping.name] = time.monotonic()
        poller = names.poller_checkpoint(mapping.account, mapping.crm_object)
        decided = names.first_read_decided(mapping.name)
        stored = dict(self.conn.execute("SELECT name, position FROM crmsync.checkpoints WHERE name = ANY(%s)",
                                        ([poller, decided],)).fetchall())
        if not (stored.get(poller) or {}).get("snapshot_done"):  # (again, if it reads the object from scratch)
            if decided in stored:
                self.conn.execute("DELETE FROM crmsync.checkpoints WHERE name = %s", (decided,))
            return False
        if decided not in stored:
            topic = topics.changes("crm", mapping.account, mapping.crm_object)
            _, behind = lag.total(lag.group_lag(self.bootstrap_servers, APP_ID, [topic]))
            if behind:
                return False
            self.conn.execute("INSERT INTO crmsync.checkpoints (name, position) VALUES (%s, '{\"v\": 1}') "
                              "ON CONFLICT (name) DO NOTHING", (decided,))
        self.ready.add(mapping.name)
        return True


class BatchHandler:
    """Decides one side's changes: its own PostgreSQL connection and producer (runs in that side's thread)."""

    def __init__(self, settings: Settings, found: Endpoints, side: str) -> None:
        self.settings = settings
        self.side = side
        self.conn = pg.connect(found.campaign_dsn, application=f"crmsync-streams-{side}")
        # the sync state written here is nothing change capture publishes: never decoded (see pg.WriterOrigin)
        pg.WriterOrigin(self.conn).mark(True)
        self.producer = kafka.producer(found.bootstrap_servers)
        self.tracker = kafka.DeliveryTracker()
        self.readiness = CrmReadiness(self.conn, found.bootstrap_servers)
        self.reconciler = Reconciler(settings, settings.campaign.name,
                                     enums=StoredEnumerations(found.campaign_dsn, max_age=ENUM_MAPS_MAX_AGE),
                                     crm_ready=self.readiness)

    def handle(self, changes: list[Change], partitions: dict[str, int] | None = None) -> Decisions:
        """Decide `changes` in one transaction (the agent hands them over in slices of about
        MAX_CHANGES_PER_TRANSACTION: bounded memory and lock time even for backfill messages). `partitions`:
        the change topic partition each change (by id) was consumed from, kept with the changes it defers. A
        deadlock or serialization failure is retried here, from scratch: nothing is published before the
        database work is done, so a rolled-back attempt has told nobody anything."""
        for attempt in range(1, LOCK_RETRIES + 1):
            try:
                return self._decide_and_publish(changes, partitions or {})
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure,
                    psycopg.errors.LockNotAvailable) as exc:
                if attempt == LOCK_RETRIES:
                    raise
                RETRIED.labels(self.side, type(exc).__name__).inc()
                log.warning("batch of %d %s changes: %s; deciding it again (attempt %d)", len(changes), self.side,
                            type(exc).__name__, attempt + 1)
                time.sleep(random.uniform(0.05, 0.25) * attempt)
        raise AssertionError("unreachable")

    def _decide_and_publish(self, changes: list[Change], partitions: dict[str, int]) -> Decisions:
        with BATCH_SECONDS.labels(self.side).time(), self.conn.transaction():
            outcome = self.reconciler.process(self.conn, changes)
            found = [*self._duplicate_rejects(outcome), *self._invalid_value_rejects(outcome)]
            rejects.record_many(self.conn, [entry for entry in found])
            save_conflicts(self.conn, outcome.conflicts)
            self._defer(outcome, partitions)
            if outcome.deferred or self._anything_deferred():  # (one look per batch: usually nothing waits)
                self._forget_deferred(changes, outcome)
                self._wake_children(outcome)
            # last step before the commit: the writers may apply these commands from now on, and an echo of
            # them must find this batch's state committed (or it waits in deferred_changes)
            for command in outcome.commands:
                message_key = record_key(command.key or command.match or {"cause": command.cause})
                kafka.produce(self.producer, self.tracker, topics.apply(command.side, command.target, command.object),
                              command.to_json(), message_key)
                COMMANDS.labels(command.side, command.object).inc()
            for entry in found:
                rejects.publish(self.producer, self.tracker, entry.reject)
            kafka.flush_all(self.producer, self.tracker)
        DECIDED.labels(self.side, "applied").inc(len(outcome.commands))
        DECIDED.labels(self.side, "skipped").inc(outcome.skipped)
        for case, count in outcome.fast.items():
            FAST.labels(self.side, case).inc(count)
        for conflict in outcome.conflicts:
            CONFLICTS.labels(conflict.mapping).inc()
        return outcome

    def _anything_deferred(self) -> bool:
        return self.conn.execute("SELECT EXISTS (SELECT 1 FROM crmsync.deferred_changes)").fetchone()[0]

    def _forget_deferred(self, changes: list[Change], outcome: Decisions) -> None:
        """Changes that came back from deferred_changes and were decided now leave it."""
        waiting = {item.change.id for item in outcome.deferred}
        self.conn.execute("DELETE FROM crmsync.deferred_changes WHERE id = ANY(%s)",
                          ([c.id for c in changes if c.id not in waiting],))

    def _duplicate_rejects(self, outcome: Decisions) -> list[rejects.Entry]:
        """A new record that duplicates a linked one is not exported; it is reported, never dropped."""
        found = []
        for duplicate in outcome.duplicates:
            change, twin, mapping = duplicate.change, duplicate.twin, duplicate.mapping
            reject = Reject(
                id=f"duplicate:{mapping.name}:{change.key['id']}", stage="streams", side="crm",
                target=mapping.account, object=mapping.crm_object, error_code="DUPLICATE_MATCH_KEY",
                reason=(f"{mapping.campaign_table} {change.key['id']} has the same {mapping.match[0].campaign} as "
                        f"{mapping.campaign_table} {twin.campaign_key}, already linked to {mapping.crm_object} "
                        f"{twin.crm_id}; not exported, to avoid a duplicate in the CRM. Merge the two rows or change "
                        f"the {mapping.match[0].campaign}."),
                record={"change": json.loads(change.to_json())})
            found.append(rejects.Entry(reject, None, "pending", None))
        return found

    def _invalid_value_rejects(self, outcome: Decisions) -> list[rejects.Entry]:
        """A value that cannot have its field's kind was left out of the decision (the rest of the record
        was synced): reported with what to fix. Nothing to retry automatically — the fix is a new value."""
        found = []
        for invalid in outcome.invalid:
            change, mapping = invalid.change, invalid.mapping
            source = mapping.crm_object if change.side == "crm" else mapping.campaign_table
            target_side = "campaign" if change.side == "crm" else "crm"
            reject = Reject(
                id=f"invalid:{mapping.name}:{change.id}:{invalid.field}", stage="streams", side=target_side,
                target=self.settings.campaign.name if target_side == "campaign" else mapping.account,
                object=mapping.campaign_table if target_side == "campaign" else mapping.crm_object,
                error_code="INVALID_VALUE",
                reason=(f"{source} {_record_name(change)}: {invalid.reason}. The field was not synced (the record's "
                        f"other fields were); correct the value in {'the CRM' if change.side == 'crm' else 'Campaign'}"
                        " and the next change carries it."),
                record={"change": json.loads(change.to_json())})
            found.append(rejects.Entry(reject, None, "abandoned", None))
        return found

    def _wake_children(self, outcome: Decisions) -> None:
        """Changes waiting for a parent this batch linked to its CRM record, or sent to the CRM (a child may go
        with its parent's external id), are due now (decided again between the next takes), not after their
        backoff: a Campaign → CRM backfill follows the CRM writes, not a timer."""
        if outcome.linked or outcome.sent:
            self._wake([*outcome.linked, *outcome.sent])

    def _wake_after_first_reads(self) -> None:
        """Changes waiting for the CRM's first read of their mapping are due once that read has been decided,
        not at the end of their backoff (a Campaign → CRM backfill into an empty CRM started 10 s late)."""
        mappings = {m.name: m for m in self.settings.mappings}
        with self.conn.transaction():
            waiting = [name for (name,) in self.conn.execute(
                "SELECT DISTINCT substr(parent, %s) FROM crmsync.deferred_parents WHERE starts_with(parent, %s)",
                (len(FIRST_READ) + 1, FIRST_READ)).fetchall()]
            ready = [FIRST_READ + name for name in waiting if name in mappings and self.readiness(mappings[name])]
            if ready:
                self._wake(ready)

    def _wake(self, waited_for: list[str]) -> None:
        self.conn.execute("UPDATE crmsync.deferred_changes d SET next_retry_at = now() "
                          "FROM crmsync.deferred_parents p WHERE p.parent = ANY(%s::text[]) "
                          "AND d.id = p.change_id AND d.next_retry_at > now()", (waited_for,))

    def _defer(self, outcome: Decisions, partitions: dict[str, int]) -> None:
        """Changes that must wait are parked in the database with their partition, and decided again later by
        the partition's owner (never dropped, never published again)."""
        if not outcome.deferred:
            return
        rows = {item.change.id: {"id": item.change.id,
                                 "topic": topics.changes(item.change.side, item.change.source, item.change.object),
                                 "kafka_partition": partitions.get(item.change.id),
                                 "message_key": item.change.kafka_key().hex(), "payload": item.change.to_json().hex(),
                                 "reason": item.reason} for item in outcome.deferred}
        waits = {(parent, item.change.id) for item in outcome.deferred for parent in item.waiting_for}
        self.conn.execute(
            """INSERT INTO crmsync.deferred_changes (id, topic, kafka_partition, message_key, payload, reason,
                                                     next_retry_at)
               SELECT x.id, x.topic, x.kafka_partition, decode(x.message_key, 'hex'), decode(x.payload, 'hex'),
                      x.reason, now() + interval '2 seconds'
               FROM jsonb_to_recordset(%s::jsonb)
                    AS x(id text, topic text, kafka_partition int, message_key text, payload text, reason text)
               ON CONFLICT (id) DO UPDATE SET payload = excluded.payload, reason = excluded.reason,
                   kafka_partition = coalesce(excluded.kafka_partition, crmsync.deferred_changes.kafka_partition),
                   attempts = crmsync.deferred_changes.attempts + 1,
                   next_retry_at = now() + least(interval '10 seconds',
                       interval '2 seconds' * power(2, crmsync.deferred_changes.attempts + 1))""",
            (dumps(list(rows.values())).decode(),))
        # what each waits for now replaces what it waited for before (a change first waiting for the CRM's
        # first read, then for its parent, must not be woken again by that read, every second)
        self.conn.execute("DELETE FROM crmsync.deferred_parents WHERE change_id = ANY(%s)", (list(rows),))
        if waits:
            self.conn.execute("INSERT INTO crmsync.deferred_parents (parent, change_id) SELECT * FROM "
                              "unnest(%s::text[], %s::text[]) ON CONFLICT DO NOTHING",
                              ([parent for parent, _ in waits], [change_id for _, change_id in waits]))

    def decide_due_deferred(self, owned: list[tuple[str, int]], limit: int = MAX_CHANGES_PER_TRANSACTION) -> int:
        """Decide again the due deferred changes of the partitions this worker owns (`owned`: this side's
        (topic, partition) pairs of the consumer's assignment). Returns how many were looked at."""
        if not owned:
            return 0
        self._wake_after_first_reads()
        with self.conn.transaction():
            rows = self.conn.execute(
                """SELECT d.kafka_partition, d.payload FROM crmsync.deferred_changes d
                   JOIN unnest(%s::text[], %s::int[]) AS owned(topic, kafka_partition) USING (topic, kafka_partition)
                   WHERE d.next_retry_at <= now() ORDER BY d.next_retry_at LIMIT %s""",
                ([t for t, _ in owned], [p for _, p in owned], limit)).fetchall()
        changes, partitions = [], {}
        for partition, payload in rows:
            for change in changes_from_message(bytes(payload)):
                changes.append(change)
                partitions[change.id] = partition
        if changes:
            self.handle(changes, partitions)
        return len(rows)

    def republish_unowned(self, limit: int = 5000) -> int:
        """Put due deferred changes parked without their partition (before it was recorded) back on their topic,
        once; delete them only once the broker has them. They come back with their partition."""
        with self.conn.transaction():
            rows = self.conn.execute(
                """SELECT id, topic, message_key, payload FROM crmsync.deferred_changes
                   WHERE kafka_partition IS NULL AND next_retry_at <= now() ORDER BY next_retry_at LIMIT %s
                   FOR UPDATE SKIP LOCKED""",
                (limit,)).fetchall()
            for _id, topic, key, payload in rows:
                kafka.produce(self.producer, self.tracker, topic, bytes(payload), bytes(key) if key else None)
            kafka.flush_all(self.producer, self.tracker)
            # they come back through the stream; if they still cannot proceed they are parked again
            self.conn.execute("UPDATE crmsync.deferred_changes SET next_retry_at = 'infinity' WHERE id = ANY(%s)",
                              ([r[0] for r in rows],))
        return len(rows)

    def record_unreadable(self, found: list[Reject]) -> None:
        """Messages that are not changes: kept in the ledger for people (nothing to retry), never a stuck take."""
        with self.conn.transaction():
            rejects.record_many(self.conn, [rejects.Entry(reject, None, "abandoned", None) for reject in found])
        for reject in found:
            rejects.publish(self.producer, self.tracker, reject)
        kafka.flush_all(self.producer, self.tracker)

    def close(self) -> None:
        self.producer.flush(10)
        self.conn.close()


def _record_name(change: Change) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(change.key.items()))


def decoded_in_slices(messages: list[Message], limit: int, unreadable: list[Reject],
                      partitions: dict[str, int]) -> Iterator[list[Change]]:
    """The changes of a take, a slice of about `limit` changes at a time (bounded memory and lock time); the
    partition of each change (by id) into `partitions`. A message that is not a change envelope becomes a reject
    in `unreadable` (it must never stop the stream)."""
    changes: list[Change] = []
    for message in messages:
        try:
            for change in changes_from_message(message.value()):
                changes.append(change)
                partitions[change.id] = message.partition()
        except (ValueError, TypeError) as exc:
            unreadable.append(_unreadable(message, exc))
        if len(changes) >= limit:
            yield changes
            changes = []
    if changes:
        yield changes


def _unreadable(message: Message, exc: Exception) -> Reject:
    parts = topics.parse(message.topic())
    return Reject(id=f"streams:{message.topic()}:{message.partition()}:{message.offset()}", stage="streams",
                  side=parts["side"], target=parts["source"], object=parts["object"], error_code="CRMSYNC_BAD_MESSAGE",
                  reason=f"unreadable change message: {exc}",
                  record={"raw": (message.value() or b"").decode("utf-8", "replace")[:10_000],
                          "topic": message.topic(), "partition": message.partition(), "offset": message.offset()})


def change_topics(settings: Settings, side: str) -> list[str]:
    if side == "crm":
        return sorted({topics.changes("crm", m.account, m.crm_object) for m in settings.mappings})
    return sorted({topics.changes("campaign", settings.campaign.name, m.campaign_table) for m in settings.mappings})


def apply_topics(settings: Settings) -> list[str]:
    return sorted({topics.apply("crm", m.account, m.crm_object) for m in settings.mappings}
                  | {topics.apply("campaign", settings.campaign.name, m.campaign_table) for m in settings.mappings})


def _side_of(topic: str) -> str:
    return topic.split(".", 2)[1]  # crmsync.<side>.<source>.<object> (crmsync/topics.py)


class StreamsWorker:
    """The hot path of one worker process: one consumer, one BatchHandler per side, deciding the sides of a take
    in parallel. Runs in HotPath's thread until `stop` is set."""

    def __init__(self, settings: Settings, found: Endpoints, stop: threading.Event) -> None:
        self.settings = settings
        self.found = found
        self.stop = stop
        self.topics = [*change_topics(settings, "crm"), *change_topics(settings, "campaign")]
        kafka.ensure_topics(found.bootstrap_servers, [*self.topics, *apply_topics(settings)],
                            settings.kafka.partitions, settings.kafka.replication_factor)
        self.handlers = {side: BatchHandler(settings, found, side) for side in ("crm", "campaign")}
        self.sides = ThreadPoolExecutor(2, thread_name_prefix="streams")
        self.consumer: Consumer | None = None
        self.deferred_due = 0.0  # time.monotonic() of the next look at the due deferred changes
        # Campaign change topic -> the mappings on its table that may create CRM records (they need the CRM's
        # first read decided before a new row is decided), and the partitions held for them meanwhile
        self.first_read_needed: dict[str, list[Mapping]] = {}
        for m in settings.mappings:
            needed = self.first_read_needed.setdefault(
                topics.changes("campaign", settings.campaign.name, m.campaign_table), [])
            if m.direction != "import":
                needed.append(m)
        self.held = kafka.HeldPartitions()
        # a child table's changes wait while this worker has changes of its parent tables to take
        name = settings.campaign.name
        self.parents_first = kafka.ParentsFirst(
            {topics.changes("campaign", name, table): {topics.changes("campaign", name, p) for p in parents}
             for table, parents in settings.parents("campaign").items()})
        self.held_for_first_read: set[str] = set()  # (for the log: a user waits for that one)

    def run(self) -> None:
        """Take, decide, commit — until `stop`; a failed take is taken again from the committed offsets."""
        backoff = 1.0
        try:
            while not self.stop.is_set():
                try:
                    self.run_once()
                    self.decide_deferred()
                    backoff = 1.0
                except Exception:
                    log.exception("a take of changes failed; it is taken again from the committed offsets")
                    self._rewind()
                    self._reconnect_broken()
                    self.stop.wait(backoff)
                    backoff = min(backoff * 2, 30.0)
        finally:
            self.close()

    def run_once(self) -> int:
        """One take: decide it and commit its offsets. Returns the number of messages taken."""
        if self.consumer is None:
            self.consumer = kafka.consumer(self.found.bootstrap_servers, APP_ID,
                                           **{"queued.max.messages.kbytes": PREFETCH_KBYTES})
            kafka.subscribe(self.consumer, self.topics)
        self._release_ready()
        messages = kafka.without_errors(self.consumer.consume(TAKE, TAKE_WITHIN), log)
        progress.tick()
        messages = self._hold_unready(messages)
        if not messages:
            return 0
        self.decide(messages)
        self.consumer.commit(offsets=kafka.next_offsets(messages), asynchronous=False)
        return len(messages)

    # -- Campaign changes held until the CRM's first read is decided and their parents' changes are taken ------
    def _waits_for_first_read(self, topic: str) -> bool:
        """Whether a Campaign change topic's table has a mapping whose CRM first read is not decided yet."""
        needed = self.first_read_needed.get(topic)
        handler = self.handlers["campaign"]  # not deciding now: its connection is free between takes
        if not needed or all(m.name in handler.readiness.ready for m in needed):
            return False  # (the usual case, answered without a round trip: once ready, a mapping stays ready)
        with handler.conn.transaction():
            return not all([handler.readiness(m) for m in needed])

    def _hold_reason(self, topic: str) -> str | None:
        """Why `topic`'s changes wait in Kafka now, if they do: the CRM's first read (matching needs it), or
        changes of its parent tables this worker still has to take (a backfill's organisations behind its
        recipients: a child decided before its parent would be parked, and decided again once it is sent)."""
        if self._waits_for_first_read(topic):
            return "the CRM's first read"
        waits = self.consumer is not None and self.parents_first.waits(self.consumer, topic)
        return "their parents" if waits else None

    def _hold_unready(self, messages: list[Message]) -> list[Message]:
        """A Campaign snapshot usually arrives before the CRM's first read is decided, and its new rows could not be
        decided yet (matching needs that read); a child table's changes may come before its parents'. Rather
        than decide each one into deferred_changes and again later, their partitions are paused and set back to
        the first of them, uncommitted — the changes stay in Kafka until `_release_ready`. Returns the messages
        to decide now. A rebalance meanwhile is harmless: nothing of a held partition was committed, so its next
        owner starts from the held change (and one that comes back to this consumer is still paused: it stays
        held until released, kafka.HeldPartitions)."""
        reasons = {topic: self._hold_reason(topic) for topic in {m.topic() for m in messages}}
        waiting = {topic for topic, reason in reasons.items() if reason}
        if not waiting:
            return messages
        first_reads = {topic for topic in waiting if reasons[topic] == "the CRM's first read"}
        if first_reads - self.held_for_first_read:
            log.info("holding the Campaign changes of %s until the CRM's first read is decided", sorted(first_reads))
        self.held_for_first_read |= first_reads
        log.debug("holding the Campaign changes of %s until their parents' changes are taken",
                  sorted(waiting - first_reads))
        return self.held.set_aside(self.consumer, messages, waiting)

    def _release_ready(self) -> None:
        """Held partitions whose CRM first reads are decided, and whose parents' changes are taken, are consumed
        again, from the held change."""
        if not self.held:
            return
        ready = {t for t in self.held.topics if not self._hold_reason(t)}
        if ready and self.held.release(self.consumer, ready) and self.held_for_first_read & ready:
            self.held_for_first_read -= ready
            log.info("the CRM's first reads are decided: the Campaign changes are decided again")

    def decide_deferred(self) -> None:
        """Between takes, at most every DEFERRED_EVERY seconds: the due deferred changes of the partitions this
        worker owns now (they cannot be decided by another worker meanwhile: it does not own them), both sides
        in parallel."""
        if self.consumer is None or time.monotonic() < self.deferred_due:
            return
        self.deferred_due = time.monotonic() + DEFERRED_EVERY
        owned: dict[str, list[tuple[str, int]]] = {}
        for tp in self.consumer.assignment():
            owned.setdefault(_side_of(tp.topic), []).append((tp.topic, tp.partition))
        started = time.time()
        futures = {side: self.sides.submit(self.handlers[side].decide_due_deferred, pairs)
                   for side, pairs in owned.items()}
        looked = [future.result() for future in futures.values()]
        if any(n >= MAX_CHANGES_PER_TRANSACTION for n in looked):
            self.deferred_due = 0.0  # more are due (a backfill's children woken by their parents): look again
            # right after the next take, not a second later
        looked_at = sum(looked)
        if looked_at and log.isEnabledFor(logging.DEBUG):  # as a take's line: tests/streams/test_scale_out.py
            log.debug("decided %s", dumps({
                "partitions": {f"{t}:{p}": ["deferred"] for pairs in owned.values() for t, p in pairs},
                "started": started, "finished": time.time()}).decode())

    def decide(self, messages: list[Message]) -> None:
        """Both sides of a take, in parallel; raises the first failure (nothing is committed then)."""
        by_side: dict[str, list[Message]] = {}
        for message in messages:
            by_side.setdefault(_side_of(message.topic()), []).append(message)
        started = time.time()
        futures = [self.sides.submit(self._decide_side, side, members) for side, members in by_side.items()]
        for future in futures:
            future.result()
        if log.isEnabledFor(logging.DEBUG):  # what this worker decided, when (tests/streams/test_scale_out.py)
            log.debug("decided %s", dumps({
                "partitions": {f"{t}:{p}": [lo, hi] for (t, p), (lo, hi) in _offset_ranges(messages).items()},
                "started": started, "finished": time.time()}).decode())

    def _decide_side(self, side: str, messages: list[Message]) -> None:
        handler = self.handlers[side]
        unreadable: list[Reject] = []
        partitions: dict[str, int] = {}
        for changes in decoded_in_slices(messages, MAX_CHANGES_PER_TRANSACTION, unreadable, partitions):
            handler.handle(changes, partitions)
        if unreadable:
            handler.record_unreadable(unreadable)

    def _rewind(self) -> None:
        """The failed take is taken again from the committed offsets, the consumer staying in its group
        (kafka.rewind); only if that fails is it closed and a new one made."""
        if self.consumer is not None and not kafka.rewind(self.consumer):
            self._close_consumer()

    def _reconnect_broken(self) -> None:
        """A side whose database connection broke (PostgreSQL restarted) gets a new handler, so the next take
        can succeed without restarting the process."""
        for side, handler in list(self.handlers.items()):
            if handler.conn.closed or handler.conn.broken:
                try:
                    replacement = BatchHandler(self.settings, self.found, side)
                except Exception as exc:  # noqa: BLE001 - still down: tried again after the next failed take
                    log.warning("the %s side cannot reconnect to the database yet: %s", side, exc)
                    continue
                try:
                    handler.close()
                except Exception:  # noqa: BLE001 - its connection is gone anyway
                    log.debug("closing the broken %s handler failed", side, exc_info=True)
                self.handlers[side] = replacement

    def _close_consumer(self) -> None:
        self.held.clear()  # a new consumer starts with nothing paused (and from the committed offsets)
        self.parents_first.clear()
        self.held_for_first_read.clear()
        if self.consumer is not None:
            try:
                self.consumer.close()
            except Exception:  # noqa: BLE001 - closing after a failure; the next take starts a new consumer
                log.debug("consumer close failed", exc_info=True)
            self.consumer = None

    def close(self) -> None:
        self._close_consumer()
        self.sides.shutdown(wait=True)
        for handler in self.handlers.values():
            handler.close()


def _offset_ranges(messages: list[Message]) -> dict[tuple[str, int], tuple[int, int]]:
    ranges: dict[tuple[str, int], tuple[int, int]] = {}
    for m in messages:
        key = (m.topic(), m.partition())
        low, high = ranges.get(key, (m.offset(), m.offset()))
        ranges[key] = (min(low, m.offset()), max(high, m.offset()))
    return ranges


def ensure_match_indexes(settings: Settings, dsn: str) -> None:
    """Matching by key must be an index lookup, whatever table and column a mapping matches on."""
    with pg.connect(dsn, autocommit=True) as conn:
        for mapping in settings.mappings:
            for key in mapping.match[:1]:
                conn.execute(match_index_sql(mapping.campaign_table, key.campaign))


class HotPath(mode.Service):
    """The streams' hot path as a service of the faust app: StreamsWorker's loop in a thread of its own, started
    with the app and stopped with it (a stop finishes the take in hand, then commits its offsets). If the loop
    ends without being asked to, the process exits, so its supervisor starts it again."""

    def __init__(self, make_worker: Callable[[threading.Event], StreamsWorker], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.make_worker = make_worker
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    async def on_start(self) -> None:
        worker = await asyncio.get_running_loop().run_in_executor(None, self.make_worker, self.stopping)
        self.thread = threading.Thread(target=self._run, args=(worker,), name="streams-hot-path", daemon=True)
        self.thread.start()

    def _run(self, worker: StreamsWorker) -> None:
        try:
            worker.run()
        except BaseException:  # noqa: BLE001 - logged; the process ends below so it is restarted
            log.exception("the streams hot path failed")
        if not self.stopping.is_set():
            os._exit(70)

    async def on_stop(self) -> None:
        self.stopping.set()
        if self.thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.thread.join)


class _NoKafkaOfItsOwn(BootStrategy):
    """The host app starts no aiokafka client: all Kafka traffic is the hot path's (crmsync/kafka.py, which
    carries the configured TLS/SASL settings)."""

    enable_kafka = False
    enable_kafka_producer = False
    enable_kafka_consumer = False


class HostApp(faust.App):
    BootStrategy = _NoKafkaOfItsOwn


def build_app(settings: Settings, found: Endpoints) -> faust.App:
    """The faust app hosting one streams worker: the hot path (HotPath) and the timer that puts deferred changes
    parked without their partition back on their topic (BatchHandler.republish_unowned)."""
    app = HostApp(APP_ID, broker=f"kafka://{found.bootstrap_servers}", producer_only=True, web_enabled=False,
                  datadir=str(Path(settings.state_dir) / "streams"))
    app.add_dependency(HotPath(lambda stop: StreamsWorker(settings, found, stop), loop=app.loop, beacon=app.beacon))
    republishing = ThreadPoolExecutor(1, thread_name_prefix="streams-deferred")
    republisher: list[BatchHandler] = []  # its own connection: the hot path's are busy in their threads

    def republish_due() -> int:
        """Never fails the app: a crash here stopped the whole worker (its consumer leaving the group politely)
        each time PostgreSQL restarted; now the handler is made again at the next tick."""
        try:
            if not republisher:
                republisher.append(BatchHandler(settings, found, "campaign"))
            return republisher[0].republish_unowned()
        except Exception as exc:  # noqa: BLE001 - the database or the broker away: the next tick tries again
            log.warning("putting parked deferred changes back failed (%s); trying again in %.0f s",
                        type(exc).__name__, REPUBLISH_EVERY)
            if republisher:
                try:
                    republisher.pop().close()
                except Exception:  # noqa: BLE001 - its connection may be gone
                    pass
            return 0

    @app.timer(interval=REPUBLISH_EVERY)
    async def republish_deferred() -> None:
        await asyncio.get_running_loop().run_in_executor(republishing, republish_due)

    return app


def run(settings: Settings, found: Endpoints, log_level: str = "info") -> None:
    """The service: migrate, then a faust worker decides until SIGTERM/SIGINT, finishing the take in hand."""
    from faust.worker import Worker

    pg.migrate(found.campaign_dsn)
    ensure_match_indexes(settings, found.campaign_dsn)
    # override_logging=False: the service keeps crmsync's JSON log lines (crmsync/logs.py), faust's included
    worker = Worker(build_app(settings, found), loglevel=log_level, quiet=True, override_logging=False)
    worker.execute_from_commandline()
