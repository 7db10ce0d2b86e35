"""The CRM writer: apply commands from Kafka → any connector's Sink, with rejects and offsets handled here.

Per batch of consumed `ApplyCommand`s (`crmsync service writer-crm --account NAME`):

1. Decode; an unreadable message becomes a reject of its own (never a stuck batch). A command for another
   account or side, or for an object this account does not sync, is refused (CRMSYNC_WRONG_TARGET) — the object a
   command names must be the one its topic is for.
2. Hand the commands to the connector's sink, which batches them into the CRM's bulk calls and answers one
   outcome per command (crmsync/connectors.py).
3. Every failure becomes a `Reject` with the CRM's code and message, published to ``topics.rejects('crm',
   account)`` and stored in ``crmsync.rejects`` with its command, so the retry loop puts it back with backoff.
   Every success calls the `on_applied` hook; fields left alone by compare-and-set are counted.
4. Only when the rejects are acknowledged and stored are the consumer offsets committed. A crash before that
   re-applies the batch: updates, upserts and deletes are idempotent (creates carry an external id).

While commands keep coming (the last batch filled a call), it gathers for `busy_linger` (ending early at a pause of
`busy_pause`), so a sustained flow goes out in bulk jobs; a trickle goes out within `max_linger`.
"""
from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Sequence

import psycopg
from confluent_kafka import Consumer, Message
from prometheus_client import Counter

from crmsync import api_budget, connectors, kafka, names, pg, topics
from crmsync import rejects as crm_rejects
from crmsync.config import Settings
from crmsync.connectors import Client, Connector, Sink, SinkOutcome
from crmsync.envelope import ApplyCommand, Reject
from crmsync.infra import Endpoints
from crmsync.observability import observe_freshness, progress

log = logging.getLogger("crmsync.crm_writer")

STAGE = "writer-crm"
# rejects that retrying the same command cannot fix: abandoned at once (still listed; `crmsync rejects retry`
# requeues one by hand), so the record's later commands do not wait behind them — with the connector's own
# `value_error_codes` (a value the CRM can never take as it is)
HOPELESS_CODES = frozenset({"CRMSYNC_WRONG_TARGET", "CRMSYNC_INVALID_VALUE"})
OnApplied = Callable[[ApplyCommand, str, bool], None]
BATCH_FILLS_A_CALL = 200  # a batch at least this large means a flow is on (gather longer)

APPLIED = Counter("crmsync_crm_writer_applied_total", "Apply commands carried out in the CRM",
                  ["crm", "account", "object", "action"])
REJECTED = Counter("crmsync_crm_writer_rejects_total", "Apply commands the CRM refused",
                   ["crm", "account", "object", "error_code"])
SUPERSEDED = Counter("crmsync_crm_writer_superseded_fields_total",
                     "Fields not written because the CRM holds a newer value than the decision saw (compare-and-set)",
                     ["crm", "account", "object"])


@dataclass(frozen=True)
class WriterOptions:
    max_batch: int = 5000  # commands consumed per batch
    poll_timeout: float = 0.1  # seconds to wait for the first commands of a batch
    linger: float = 0.05  # then keep collecting while more arrive within this many seconds…
    max_linger: float = 0.5  # …but never longer than this in all (a batch's latency stays bounded)
    busy_linger: float = 3.0  # while commands keep coming, gather this long: a sustained stream goes out in bulk
    busy_pause: float = 1.5  # …unless nothing new came for this long (longer than the streams' 1 s between takes)


@dataclass
class BatchResult:
    applied: int = 0
    rejected: int = 0
    rejects: list[Reject] = field(default_factory=list)
    superseded: int = 0


def _log_applied(command: ApplyCommand, crm_id: str, created: bool) -> None:
    if created:
        log.debug("created %s %s for command %s", command.object, crm_id, command.id)


class CrmWriter:
    def __init__(self, connector: Connector, sink: Sink, account_name: str, bootstrap_servers: str, dsn: str, *,
                 objects: Iterable[str] | None = None, options: WriterOptions | None = None,
                 on_applied: OnApplied | None = None, partitions: int = 4, replication_factor: int = 1,
                 owned_client: Any = None, client: Client | None = None,
                 parents: dict[str, set[str]] | None = None, mapped_objects: Iterable[str] = ()) -> None:
        """`parents`: CRM object -> the objects it references by external id (Settings.parents): their commands
        are taken before its own (`_hold_children`). `mapped_objects`: the objects the configuration maps for
        this account; their apply topics are created here, so a writer subscribed to every object of the
        account finds them at once (a topic created by someone else only shows at its next metadata refresh,
        up to 10 s: the head of every first backfill used to wait that long)."""
        self.connector = connector
        self.owned_client = owned_client  # closed with the writer (its CRM session logged off)
        self.client = client or owned_client  # the sink's client: its API budget is published after each batch
        self.crm = connector.type
        self.sink = sink
        self.account_name = account_name
        self.options = options or WriterOptions()
        self.on_applied = on_applied or _log_applied
        self.bootstrap_servers = bootstrap_servers
        self.objects = list(objects) if objects is not None else None
        self.rejects_topic = topics.rejects("crm", account_name)
        names = [self.rejects_topic] + [topics.apply("crm", account_name, o)
                                        for o in sorted({*(self.objects or []), *mapped_objects})]
        kafka.ensure_topics(bootstrap_servers, names, partitions, replication_factor)
        self.producer = kafka.producer(bootstrap_servers)
        self.tracker = kafka.DeliveryTracker()
        self.dsn = dsn
        self.conn = pg.connect(dsn, autocommit=True, application=f"crmsync-writer-{account_name}")
        self.retry_policy = crm_rejects.DEFAULT_POLICY
        self.retry_loop = crm_rejects.RetryLoop(dsn, self.producer, policy=self.retry_policy, stage=STAGE,
                                                target=account_name)
        self.consumer: Consumer | None = None
        self._last_batch_size = 0
        self.held = kafka.HeldPartitions()
        self.parents_first = kafka.ParentsFirst(
            {topics.apply("crm", account_name, o): {topics.apply("crm", account_name, p) for p in ps}
             for o, ps in (parents or {}).items()})

    @property
    def group_id(self) -> str:
        return names.crm_writer_group(self.account_name)

    # -- consuming -----------------------------------------------------------------------------------------
    def _subscribe(self) -> Consumer:
        consumer = kafka.consumer(self.bootstrap_servers, self.group_id,
                                  **{"topic.metadata.refresh.interval.ms": 10000})
        if self.objects is not None:
            kafka.subscribe(consumer, [topics.apply("crm", self.account_name, o) for o in self.objects])
        else:  # every object of this account, including topics created later
            prefix = topics.apply("crm", self.account_name, "x")[:-1]
            kafka.subscribe(consumer, [f"^{re.escape(prefix)}[a-z0-9_-]+$"])
        return consumer

    def connect(self, timeout: float = 30) -> None:
        """Subscribe and wait until the group has assigned partitions (before timing a run, or in tests)."""
        if self.consumer is None:
            self.consumer = self._subscribe()
        deadline = time.monotonic() + timeout
        while not self.consumer.assignment():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no partitions assigned to {self.group_id} after {timeout}s")
            for message in self.consumer.consume(1, 0.2):  # joins the group; nothing should be waiting yet
                raise RuntimeError(f"connect() found a command already waiting on {message.topic()}")

    def run_once(self) -> BatchResult:
        """Consume one batch, apply it, make the results durable, then commit the offsets."""
        if self.consumer is None:
            self.consumer = self._subscribe()
        self._release_ready()
        messages = self._hold_children(kafka.without_errors(self._consume_batch(), log))
        if not messages:
            return BatchResult()
        result = self.process_messages(messages)
        self.consumer.commit(offsets=kafka.next_offsets(messages), asynchronous=False)
        return result

    def _consume_batch(self) -> list[Message]:
        """Wait up to poll_timeout for commands, then keep taking what is already there (up to max_batch).
        While a flow is on, keep gathering up to busy_linger — but not past a pause of busy_pause with nothing
        new: the flow (a burst, one level of a backfill's parents) has ended, and its tail should not wait."""
        assert self.consumer is not None
        batch = self.consumer.consume(self.options.max_batch, self.options.poll_timeout)
        busy = self._last_batch_size >= BATCH_FILLS_A_CALL
        deadline = time.monotonic() + (self.options.busy_linger if busy else self.options.max_linger)
        last_arrival = time.monotonic()
        while batch and len(batch) < self.options.max_batch and time.monotonic() < deadline:
            more = self.consumer.consume(self.options.max_batch - len(batch), self.options.linger)
            if more:
                last_arrival = time.monotonic()
            elif not busy or time.monotonic() - last_arrival >= self.options.busy_pause:
                break
            batch += more
        self._last_batch_size = len(batch)
        return batch

    def _hold_children(self, messages: list[Message]) -> list[Message]:
        """Commands that reference their parent by its external id (the CRM resolves it when it writes the
        record) must reach the CRM after their parent's create: while this writer still has commands of the
        parent objects to take, a child object's partitions are held (paused, set back, nothing committed;
        kafka.ParentsFirst, at most kafka.PARENTS_HOLD_MAX s in a row). In a batch the sink writes parents first."""
        assert self.consumer is not None
        waiting = {topic for topic in {m.topic() for m in messages} if self.parents_first.waits(self.consumer, topic)}
        return self.held.set_aside(self.consumer, messages, waiting)

    def _release_ready(self) -> None:
        if self.held and self.consumer is not None:
            self.held.release(self.consumer, {t for t in self.held.topics
                                              if not self.parents_first.waits(self.consumer, t)})

    def run(self, stop: threading.Event) -> None:
        """Apply batches until `stop` is set. A failed batch is consumed again from the committed offsets."""
        backoff = 1.0
        while not stop.is_set():
            try:
                self.run_once()
                progress.tick()
                self.retry_loop.maybe_tick()
                backoff = 1.0
            except Exception:
                log.exception("batch for %s failed; it will be consumed again", self.account_name)
                self._rewind()
                self._reconnect_if_lost()
                stop.wait(backoff)
                backoff = min(backoff * 2, 60.0)
        self.close()

    def _reconnect_if_lost(self) -> None:
        """A database connection lost (PostgreSQL restarted, the connection cut) is made again; retrying on the
        dead one would fail every batch forever. If the server is still away, the next failure tries again."""
        if not (self.conn.closed or self.conn.broken):
            return
        try:
            self.conn = pg.connect(self.dsn, autocommit=True, application=f"crmsync-writer-{self.account_name}")
        except psycopg.OperationalError as exc:
            log.warning("the database is not reachable yet (%s); trying again with the next batch", exc)

    def _rewind(self) -> None:
        """The failed batch is consumed again from the committed offsets, the consumer staying in its group
        (kafka.rewind); only if that fails is it closed, so the next one resumes from them."""
        if self.consumer is not None and not kafka.rewind(self.consumer):
            self._close_consumer()

    def _close_consumer(self) -> None:
        self.held.clear()  # a new consumer starts with nothing paused (and from the committed offsets)
        self.parents_first.clear()
        if self.consumer is not None:
            try:
                self.consumer.close()
            finally:
                self.consumer = None

    def close(self) -> None:
        self._close_consumer()
        self.producer.flush(10)
        self.conn.close()
        if self.owned_client is not None:
            self.owned_client.close()

    # -- one batch -----------------------------------------------------------------------------------------
    def process_messages(self, messages: list[Message]) -> BatchResult:
        decoded, unreadable = crm_rejects.decode_with_topics(messages, stage=STAGE, side="crm",
                                                             target=self.account_name)
        allowed, refused = [], []
        for command, topic in decoded:
            why = self._wrong_target(command, topic)
            if why:
                refused.append(SinkOutcome(command, False, code="CRMSYNC_WRONG_TARGET", message=why))
            else:
                allowed.append(command)
        return self.process(allowed, unreadable, refused=refused)

    def _wrong_target(self, command: ApplyCommand, topic: str | None) -> str | None:
        """Why this writer must not carry out `command` (None: it may)."""
        if command.side != "crm" or command.target != self.account_name:
            return f"command for {command.side}/{command.target} reached the CRM writer of {self.account_name}"
        if self.objects is not None and command.object not in self.objects:
            return f"{command.object} is not an object this writer syncs for {self.account_name}"
        if topic is not None and topic != topics.apply("crm", self.account_name, command.object):
            return f"command for {command.object} came on topic {topic}"
        return None

    def process(self, commands: Sequence[ApplyCommand], extra_rejects: Sequence[Reject] = (),
                refused: Sequence[SinkOutcome] = ()) -> BatchResult:
        """Apply `commands` through the sink and make every outcome durable. Offsets are the caller's business."""
        try:
            outcomes = [*refused, *(self.sink.apply(list(commands)) if commands else [])]
        finally:
            if commands and self.client is not None:
                api_budget.report(self.account_name, self.client.usage())
        return self._settle(outcomes, list(extra_rejects))

    # -- making outcomes durable ---------------------------------------------------------------------------
    def _settle(self, outcomes: list[SinkOutcome], rejects: list[Reject]) -> BatchResult:
        result = BatchResult(rejects=rejects)
        applied_sources: dict[str, list[str | None]] = {}  # object -> source times of what was applied
        for outcome in outcomes:
            command = outcome.command
            if outcome.superseded:
                result.superseded += len(outcome.superseded)
                SUPERSEDED.labels(self.crm, self.account_name, command.object).inc(len(outcome.superseded))
            if outcome.ok:
                result.applied += 1
                action = "delete" if command.action == "delete" else "create" if outcome.created else "update"
                APPLIED.labels(self.crm, self.account_name, command.object, action).inc()
                applied_sources.setdefault(command.object, []).append(command.source_ts)
                self.on_applied(command, outcome.crm_id or "", outcome.created)
                if outcome.refused_fields:
                    result.rejects.append(self._refused_fields(outcome))
            else:
                result.rejects.append(self._reject(command, outcome.code, outcome.message))
        for obj, source_times in applied_sources.items():
            observe_freshness(STAGE, obj, source_times)  # end-to-end: Campaign commit → applied in the CRM
        result.rejected = len(result.rejects)
        if result.rejects:
            self._store_rejects(result.rejects)
        retried = [o.command.id for o in outcomes if o.ok and o.command.attempt > 0]
        if retried:
            crm_rejects.resolve(self.conn, retried)
        return result

    def _refused_fields(self, outcome: SinkOutcome) -> Reject:
        """The fields the CRM could not take, as a command of their own (retried like any reject, e.g. once the
        picklist or the enumeration map is fixed); the rest of the record was written."""
        command, refused = outcome.command, outcome.refused_fields
        rest = replace(command, id=f"{command.id}#refused", values={f: command.values[f] for f in refused},
                       expect={f: v for f, v in (command.expect or {}).items() if f in refused} or None,
                       key={"id": outcome.crm_id} if outcome.crm_id else command.key)
        return self._reject(rest, "CRMSYNC_INVALID_VALUE", "; ".join(f"{f}: {why}" for f, why in refused.items()))

    def _reject(self, command: ApplyCommand, code: str | None, message: str) -> Reject:
        REJECTED.labels(self.crm, self.account_name, command.object, code or "unknown").inc()
        log.info("%s refused %s for %s: %s %s", self.connector.label, command.id, command.object, code, message)
        return Reject(id=f"{STAGE}:{self.account_name}:{command.id}", stage=STAGE, side="crm",
                      target=self.account_name, object=command.object, reason=message, error_code=code,
                      record=json.loads(command.to_json()), attempt=command.attempt)

    def _store_rejects(self, rejects: list[Reject]) -> None:
        """Publish the rejects (acknowledged), then record them in the shared ledger with their command, so the
        retry loop puts them back on their apply topic with backoff (crmsync/rejects.py)."""
        for reject in rejects:
            crm_rejects.publish(self.producer, self.tracker, reject)
        kafka.flush_all(self.producer, self.tracker)
        entries = []
        for reject in rejects:
            command = crm_rejects.command_of(reject)
            hopeless = reject.error_code in HOPELESS_CODES or reject.error_code in self.connector.value_error_codes
            retry_in = self.retry_policy.delay(reject.attempt) if command and not hopeless else None
            status = "pending" if retry_in is not None else "abandoned"
            entries.append(crm_rejects.Entry(reject, command, status, retry_in))
        with self.conn.transaction():
            crm_rejects.record_many(self.conn, entries)


def build(settings: Settings, endpoints: Endpoints, account_name: str, *, client: Any = None,
          options: WriterOptions | None = None, on_applied: OnApplied | None = None,
          objects: Iterable[str] | None = None, **sink_options: Any) -> CrmWriter:
    """Log in, migrate, create the topics; `objects=None` subscribes to every apply topic of the account.
    `sink_options` go to the connector's sink (e.g. Salesforce: bulk_threshold, bulk_poll_interval)."""
    account = settings.accounts[account_name]
    connector = connectors.for_account(account)
    owned = None if client else connector.client(account_name, account)
    sink = connector.sink(client or owned, **sink_options)
    pg.migrate(endpoints.campaign_dsn)
    return CrmWriter(connector, sink, account_name, endpoints.bootstrap_servers, endpoints.campaign_dsn,
                     objects=objects, options=options, on_applied=on_applied, partitions=settings.kafka.partitions,
                     replication_factor=settings.kafka.replication_factor, owned_client=owned, client=client,
                     parents=settings.parents("crm", account_name)
                     if connectors.references_by_external_id(connector) else None,  # (children before parents' ids)
                     mapped_objects={m.crm_object for m in settings.mappings if m.account == account_name})


def run(settings: Settings, endpoints: Endpoints, account_name: str, stop: threading.Event | None = None,
        **kwargs: Any) -> None:
    stop = stop or threading.Event()
    writer = build(settings, endpoints, account_name, **kwargs)
    log.info("writing to %s account %s (group %s)", writer.connector.label, account_name, writer.group_id)
    writer.run(stop)
