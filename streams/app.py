"""The stream processors (faust-streaming): consume both sides' change topics, emit apply commands.

Two agents, one per side, each reading its change topics in batches (`stream.take`) so the per-message cost
of the stream layer is paid once per batch, not once per record. A batch is decided by the Reconciler inside
one PostgreSQL transaction that locks the batch's sync-state rows; its apply commands are produced and
acknowledged by the broker *before* that transaction commits, and faust commits the consumed offsets only
after the batch returns. A crash at any point replays the batch, which re-decides the same commands.
Scaling out = more partitions and more `crmsync service streams` workers in the same consumer group.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import faust
import psycopg
import psycopg.errors
from prometheus_client import Counter, Histogram

from crmsync import kafka, lag, pg, rejects, topics
from crmsync.config import Mapping, Settings
from crmsync.enums import StoredEnumerations
from crmsync.envelope import Change, Reject, changes_from_message, dumps, record_key
from crmsync.infra import Endpoints
from crmsync.observability import progress
from streams.reconcile import Outcome, Reconciler, match_index_sql, save_conflicts

log = logging.getLogger("crmsync.streams")
APP_ID = "crmsync-streams"
BATCH_SIZE = 2000
BATCH_WITHIN = 0.1
MAX_CHANGES_PER_TRANSACTION = 5000
LOCK_RETRIES = 5  # a batch that lost a deadlock is decided again, in place, this many times
ENUM_MAPS_MAX_AGE = 30.0  # seconds before the enumeration maps (`crmsync enums sync`) are read again

DECIDED = Counter("crmsync_streams_changes_total", "Changes decided by the stream processors", ["side", "result"])
COMMANDS = Counter("crmsync_streams_commands_total", "Apply commands emitted", ["side", "object"])
CONFLICTS = Counter("crmsync_streams_conflicts_total", "Conflicts recorded", ["mapping"])
BATCH_SECONDS = Histogram("crmsync_streams_batch_seconds", "Time to decide and publish one batch", ["side"])
RETRIED = Counter("crmsync_streams_batch_retries_total", "Batches decided again after a deadlock or serialization "
                  "failure", ["side", "error"])


class CrmReadiness:
    """Campaign-only records may create CRM records only once the CRM's first full read has been *decided*
    by the streams: otherwise a person who exists on both sides would be created twice instead of matched.
    Ready = the poller finished its snapshot (checkpoint), and afterwards this consumer group had consumed
    its CRM change topic to the end. Once ready, a mapping stays ready."""

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
        row = self.conn.execute("SELECT position FROM crmsync.checkpoints WHERE name = %s",
                                (f"poller:salesforce:{mapping.account}:{mapping.crm_object}",)).fetchone()
        if not (row and (row[0] or {}).get("snapshot_done")):
            return False
        topic = topics.changes("crm", mapping.account, mapping.crm_object)
        _, behind = lag.total(lag.group_lag(self.bootstrap_servers, APP_ID, [topic]))
        if behind == 0:
            self.ready.add(mapping.name)
        return behind == 0


class BatchHandler:
    """Runs in a worker thread (blocking PostgreSQL and producer calls stay off faust's event loop)."""

    def __init__(self, settings: Settings, found: Endpoints, side: str) -> None:
        self.settings = settings
        self.side = side
        self.conn = pg.connect(found.campaign_dsn, application=f"crmsync-streams-{side}")
        self.producer = kafka.producer(found.bootstrap_servers)
        self.tracker = kafka.DeliveryTracker()
        self.reconciler = Reconciler(settings, settings.campaign.name,
                                     enums=StoredEnumerations(found.campaign_dsn, max_age=ENUM_MAPS_MAX_AGE),
                                     crm_ready=CrmReadiness(self.conn, found.bootstrap_servers))

    def handle(self, changes: list[Change]) -> Outcome:
        """Decide `changes` in one transaction (the agent hands them over in slices of about
        MAX_CHANGES_PER_TRANSACTION: bounded memory and lock time even for backfill messages). A deadlock or
        serialization failure is retried here, from scratch: nothing is published before the database work is
        done, so a rolled-back attempt has told nobody anything."""
        for attempt in range(1, LOCK_RETRIES + 1):
            try:
                return self._decide_and_publish(changes)
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure,
                    psycopg.errors.LockNotAvailable) as exc:
                if attempt == LOCK_RETRIES:
                    raise
                RETRIED.labels(self.side, type(exc).__name__).inc()
                log.warning("batch of %d %s changes: %s; deciding it again (attempt %d)", len(changes), self.side,
                            type(exc).__name__, attempt + 1)
                time.sleep(random.uniform(0.05, 0.25) * attempt)
        raise AssertionError("unreachable")

    def _decide_and_publish(self, changes: list[Change]) -> Outcome:
        with BATCH_SECONDS.labels(self.side).time(), self.conn.transaction():
            outcome = self.reconciler.process(self.conn, changes)
            found = [*self._duplicate_rejects(outcome), *self._invalid_value_rejects(outcome)]
            rejects.record_many(self.conn, [entry for entry in found])
            save_conflicts(self.conn, outcome.conflicts)
            self._defer(outcome)
            self._forget_deferred(changes, outcome)
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
        for conflict in outcome.conflicts:
            CONFLICTS.labels(conflict.mapping).inc()
        return outcome

    def _forget_deferred(self, changes: list[Change], outcome: Outcome) -> None:
        """Changes that came back from deferred_changes and were decided now leave it."""
        if self.conn.execute("SELECT NOT EXISTS (SELECT 1 FROM crmsync.deferred_changes)").fetchone()[0]:
            return
        waiting = {item.change.id for item in outcome.deferred}
        self.conn.execute("DELETE FROM crmsync.deferred_changes WHERE id = ANY(%s)",
                          ([c.id for c in changes if c.id not in waiting],))

    def _duplicate_rejects(self, outcome: Outcome) -> list[rejects.Entry]:
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

    def _invalid_value_rejects(self, outcome: Outcome) -> list[rejects.Entry]:
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

    def _defer(self, outcome: Outcome) -> None:
        """Changes that must wait are parked in the database and re-published later (never dropped)."""
        if not outcome.deferred:
            return
        rows = {item.change.id: {"id": item.change.id,
                                 "topic": topics.changes(item.change.side, item.change.source, item.change.object),
                                 "message_key": item.change.kafka_key().hex(), "payload": item.change.to_json().hex(),
                                 "reason": item.reason} for item in outcome.deferred}
        self.conn.execute(
            """INSERT INTO crmsync.deferred_changes (id, topic, message_key, payload, reason, next_retry_at)
               SELECT x.id, x.topic, decode(x.message_key, 'hex'), decode(x.payload, 'hex'), x.reason,
                      now() + interval '2 seconds'
               FROM jsonb_to_recordset(%s::jsonb) AS x(id text, topic text, message_key text, payload text, reason text)
               ON CONFLICT (id) DO UPDATE SET payload = excluded.payload, reason = excluded.reason,
                   attempts = crmsync.deferred_changes.attempts + 1,
                   next_retry_at = now() + least(interval '10 seconds',
                       interval '2 seconds' * power(2, crmsync.deferred_changes.attempts + 1))""",
            (dumps(list(rows.values())).decode(),))

    def republish_due(self, limit: int = 5000) -> int:
        """Put due deferred changes back on their topic; delete them only once the broker has them."""
        with self.conn.transaction():
            rows = self.conn.execute(
                """SELECT id, topic, message_key, payload FROM crmsync.deferred_changes
                   WHERE next_retry_at <= now() ORDER BY next_retry_at LIMIT %s FOR UPDATE SKIP LOCKED""",
                (limit,)).fetchall()
            for _id, topic, key, payload in rows:
                self.producer.produce(topic, value=bytes(payload), key=bytes(key) if key else None,
                                      on_delivery=self.tracker)
            kafka.flush_all(self.producer, self.tracker)
            # they come back through the stream; if they still cannot proceed they are parked again
            self.conn.execute("UPDATE crmsync.deferred_changes SET next_retry_at = 'infinity' WHERE id = ANY(%s)",
                              ([r[0] for r in rows],))
        return len(rows)


def _record_name(change: Change) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(change.key.items()))


def decoded_in_slices(messages: list[bytes], limit: int) -> Iterator[list[Change]]:
    """The changes of a take() of messages, decoded a slice of about `limit` changes at a time: a backfill
    message holds hundreds of changes, and decoding a whole take at once held them all in memory."""
    changes: list[Change] = []
    for raw in messages:
        changes.extend(changes_from_message(raw))
        if len(changes) >= limit:
            yield changes
            changes = []
    if changes:
        yield changes


def change_topics(settings: Settings, side: str) -> list[str]:
    if side == "crm":
        names = {topics.changes("crm", m.account, m.crm_object) for m in settings.mappings}
    else:
        names = {topics.changes("campaign", settings.campaign.name, m.campaign_table) for m in settings.mappings}
    return sorted(names)


def apply_topics(settings: Settings) -> list[str]:
    names = set()
    for m in settings.mappings:
        names.add(topics.apply("crm", m.account, m.crm_object))
        names.add(topics.apply("campaign", settings.campaign.name, m.campaign_table))
    return sorted(names)


def _low_latency_fetches(wait_ms: int = 20, group_instance_id: str | None = None) -> None:
    """faust-streaming builds its aiokafka consumer with fetch_max_wait_ms=1500 hard-coded, so with light
    traffic every batch waited up to 1.5 s in the broker (measured: p95 1.2 s of the stream stage). The broker
    answers as soon as data is there; we only shorten how long it may hold an empty fetch."""
    import aiokafka

    if getattr(aiokafka.AIOKafkaConsumer, "crmsync_low_latency", False):
        return

    class LowLatencyConsumer(aiokafka.AIOKafkaConsumer):
        crmsync_low_latency = True

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["fetch_max_wait_ms"] = wait_ms
            if group_instance_id and kwargs.get("group_id"):  # static membership (kafka.GroupTuning)
                kwargs.setdefault("group_instance_id", group_instance_id)
            super().__init__(*args, **kwargs)

    aiokafka.AIOKafkaConsumer = LowLatencyConsumer


def build_app(settings: Settings, found: Endpoints) -> faust.App:
    tuning = kafka.group_tuning()
    _low_latency_fetches(group_instance_id=tuning.config(APP_ID).get("group.instance.id"))
    kafka.ensure_topics(found.bootstrap_servers,
                        [*change_topics(settings, "crm"), *change_topics(settings, "campaign"), *apply_topics(settings)],
                        settings.kafka.partitions, settings.kafka.replication_factor)
    app = faust.App(
        APP_ID, broker=f"kafka://{found.bootstrap_servers}", value_serializer="raw", key_serializer="raw",
        store="memory://", web_enabled=False, topic_partitions=settings.kafka.partitions,
        broker_session_timeout=tuning.session_timeout_ms / 1000, broker_heartbeat_interval=tuning.heartbeat_interval_ms / 1000,
        consumer_auto_offset_reset="earliest",
        broker_commit_every=1000, broker_commit_interval=1.0, topic_allow_declare=False,
    )
    handlers: dict[str, BatchHandler] = {}
    executors = {side: ThreadPoolExecutor(1, thread_name_prefix=f"streams-{side}") for side in ("crm", "campaign")}

    def handler(side: str) -> BatchHandler:
        if side not in handlers:
            handlers[side] = BatchHandler(settings, found, side)
        return handlers[side]

    for side in ("crm", "campaign"):
        names = change_topics(settings, side)
        if not names:
            continue
        source = app.topic(*names, value_type=bytes, key_type=bytes)

        async def agent(stream: Any, side: str = side) -> None:
            loop = asyncio.get_running_loop()
            async for batch in stream.take(BATCH_SIZE, within=BATCH_WITHIN):
                for changes in decoded_in_slices(batch, MAX_CHANGES_PER_TRANSACTION):
                    try:
                        await loop.run_in_executor(executors[side], handler(side).handle, changes)
                    except Exception:  # never let faust ack a batch that was not decided: exit, replay on restart
                        log.exception("batch of %d %s changes failed; exiting so it is replayed", len(changes), side)
                        os._exit(70)

        app.agent(source, name=f"{side}-changes")(agent)

    @app.on_partitions_assigned.connect
    async def joined(app: Any, assigned: Any = None, **_: Any) -> None:
        progress.joined()

    @app.on_partitions_revoked.connect
    async def revoked(app: Any, revoked: Any = None, **_: Any) -> None:
        progress.left()

    @app.timer(interval=1.0)
    async def alive() -> None:
        progress.tick()  # the event loop runs (a batch in the worker thread does not stop it)

    @app.timer(interval=2.0)
    async def republish_deferred() -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(executors["campaign"], handler("campaign").republish_due)

    return app


def ensure_match_indexes(settings: Settings, dsn: str) -> None:
    """Matching by key must be an index lookup, whatever table and column a mapping matches on."""
    with pg.connect(dsn, autocommit=True) as conn:
        for mapping in settings.mappings:
            for key in mapping.match[:1]:
                conn.execute(match_index_sql(mapping.campaign_table, key.campaign))


def run(settings: Settings, found: Endpoints, log_level: str = "info") -> None:
    from faust.worker import Worker

    pg.migrate(found.campaign_dsn)
    ensure_match_indexes(settings, found.campaign_dsn)
    app = build_app(settings, found)
    Worker(app, loglevel=log_level, quiet=True).execute_from_commandline()
