"""Salesforce writer: apply commands from Kafka become sObject Collections (or Bulk API 2.0) calls.

Per batch of consumed `ApplyCommand`s:

1. Plan each command: ``key {'Id': ...}`` → update (PATCH); no key but ``match`` on an external-id field →
   upsert by that field (``PATCH composite/sobjects/<Type>/<Field>``); otherwise → create (POST);
   ``action 'delete'`` → ``DELETE composite/sobjects?ids=``.
2. Group the plan by (object, operation), 200 records per call, ``allOrNone=false`` so one bad record never
   blocks the others. Commands for the same record keep their order (a second command for a record flushes what
   is pending first). A group of at least ``bulk_threshold`` records goes through Bulk API 2.0 instead.
3. Every record's result becomes a success (the ``on_applied`` hook) or a `Reject` with Salesforce's
   statusCode and message, published to ``topics.rejects('crm', account)`` and stored in ``crmsync.rejects``.
4. Only when the rejects are acknowledged and stored are the consumer offsets committed. A crash before that
   re-applies the batch: updates, upserts and deletes are idempotent; see below for creates.

Duplicates on retry. The API client retries transient failures (REQUEST_LIMIT_EXCEEDED, 5xx, timeouts, expired
sessions), and a failed batch is consumed again after a restart. A retried upsert/update/delete cannot create a
duplicate, and a delete of an already deleted record (ENTITY_IS_DELETED) counts as done. A *create* without an
external id can: if Salesforce applied a POST whose answer was lost, the retry creates the records again. Such
creates are therefore at-least-once. The two-way sync avoids them altogether by always minting a
``Campaign_Key__c`` external id for a new record and sending it in ``match``, which turns every create into an
idempotent upsert.
"""
from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal

from confluent_kafka import Consumer, Message
from prometheus_client import Counter
from simple_salesforce.exceptions import SalesforceError

from crmsync import kafka, pg, topics
from crmsync import rejects as crm_rejects
from crmsync.config import Settings
from crmsync.envelope import ApplyCommand, Reject
from crmsync.field_types import FieldTypes
from crmsync.infra import Endpoints
from crmsync.values import canonical
from crmsync.observability import observe_freshness, progress
from services.salesforce import soql
from services.salesforce.client import (COLLECTION_LIMIT, Bulk2Result, SalesforceClient, account_settings,
                                        csv_value, error_code, error_message, retry_reason)

log = logging.getLogger("crmsync.salesforce.writer")

STAGE = "writer-salesforce"
Kind = Literal["create", "update", "upsert", "delete"]
OnApplied = Callable[[ApplyCommand, str, bool], None]
IDEMPOTENT_DELETE_CODES = frozenset({"ENTITY_IS_DELETED"})

APPLIED = Counter("crmsync_salesforce_writer_applied_total", "Apply commands carried out in Salesforce",
                  ["account", "object", "kind"])
REJECTED = Counter("crmsync_salesforce_writer_rejects_total", "Apply commands Salesforce refused",
                   ["account", "object", "error_code"])
SUPERSEDED = Counter("crmsync_salesforce_writer_superseded_fields_total",
                     "Fields not written because Salesforce holds a newer value than the decision saw "
                     "(compare-and-set)", ["account", "object"])


@dataclass(frozen=True)
class WriterOptions:
    auto_assign: str = "FALSE"  # Sforce-Auto-Assign: FALSE (default), TRUE, or an AssignmentRule id
    bulk_threshold: int = 2000  # a group this large goes through Bulk API 2.0
    max_batch: int = 5000  # commands consumed per batch
    poll_timeout: float = 0.1  # seconds to wait for the first commands of a batch
    linger: float = 0.05  # then keep collecting while more arrive within this many seconds…
    max_linger: float = 0.5  # …but never longer than this in all (a batch's latency stays bounded)
    busy_linger: float = 3.0  # while commands keep coming (the last batch filled a call), gather this long:
    #                           a sustained flow then goes out in Bulk jobs (~7 calls per job of thousands)
    bulk_poll_interval: float = 0.5


@dataclass
class Planned:
    """One command, turned into the record body of the Salesforce call that carries it out."""

    command: ApplyCommand
    kind: Kind
    record: dict[str, Any]
    ext_field: str | None = None
    identity: tuple | None = None  # same identity = same Salesforce record (keeps per-record order)
    superseded: list[str] = field(default_factory=list)  # fields left out: changed in Salesforce since the decision


@dataclass
class Outcome:
    planned: Planned
    ok: bool
    crm_id: str | None = None
    created: bool = False
    code: str | None = None
    message: str | None = None


@dataclass
class BatchResult:
    applied: int = 0
    rejected: int = 0
    rejects: list[Reject] = field(default_factory=list)


def _log_applied(command: ApplyCommand, crm_id: str, created: bool) -> None:
    """Default hook. The two-way sync replaces it to write the new CRM id back to Campaign."""
    if created:
        log.debug("created %s %s for command %s", command.object, crm_id, command.id)


class SalesforceWriter:
    def __init__(self, client: SalesforceClient, bootstrap_servers: str, dsn: str, *,
                 options: WriterOptions | None = None, on_applied: OnApplied | None = None,
                 objects: Iterable[str] | None = None, partitions: int = 4, replication_factor: int = 1) -> None:
        self.client = client
        self.account_name = client.account_name
        self.options = options or WriterOptions()
        self.on_applied = on_applied or _log_applied
        self.bootstrap_servers = bootstrap_servers
        self.objects = list(objects) if objects is not None else None
        self.rejects_topic = topics.rejects("crm", self.account_name)
        names = [self.rejects_topic] + [topics.apply("crm", self.account_name, o) for o in self.objects or []]
        kafka.ensure_topics(bootstrap_servers, names, partitions, replication_factor)
        self.producer = kafka.producer(bootstrap_servers)
        self.tracker = kafka.DeliveryTracker()
        self.conn = pg.connect(dsn, autocommit=True, application=f"crmsync-writer-{self.account_name}")
        self.retry_policy = crm_rejects.DEFAULT_POLICY
        self.retry_loop = crm_rejects.RetryLoop(dsn, self.producer, policy=self.retry_policy, stage=STAGE,
                                                target=self.account_name)
        self.consumer: Consumer | None = None
        self._last_batch_size = 0
        self._ext_fields: dict[str, set[str]] = {}
        self.field_types = FieldTypes(self.conn)

    # -- consuming -----------------------------------------------------------------------------------------
    @property
    def group_id(self) -> str:
        return f"crmsync-writer-salesforce-{self.account_name}"

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
        messages = kafka.without_errors(self._consume_batch(), log)
        if not messages:
            return BatchResult()
        result = self.process_messages(messages)
        self.consumer.commit(offsets=kafka.next_offsets(messages), asynchronous=False)
        return result

    def _consume_batch(self) -> list[Message]:
        """Wait up to poll_timeout for commands, then keep taking what is already there (up to max_batch), so
        a backlog is applied in full 200-record calls rather than in whatever slices the fetches returned. While
        a flow lasts (the last batch filled at least one call) it gathers for `busy_linger`, so a sustained
        stream of edits costs a few Bulk calls per thousands of records instead of one call per 200; a trickle
        (the 200 changes/s of the freshness benchmark) still goes out within `max_linger`."""
        assert self.consumer is not None
        batch = self.consumer.consume(self.options.max_batch, self.options.poll_timeout)
        busy = self._last_batch_size >= COLLECTION_LIMIT
        deadline = time.monotonic() + (self.options.busy_linger if busy else self.options.max_linger)
        while batch and len(batch) < self.options.max_batch and time.monotonic() < deadline:
            more = self.consumer.consume(self.options.max_batch - len(batch), self.options.linger)
            if not more and not busy:
                break
            batch += more
        self._last_batch_size = len(batch)
        return batch

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
                stop.wait(backoff)
                backoff = min(backoff * 2, 60.0)
        self.close()

    def _rewind(self) -> None:
        """Drop the consumer so the next one resumes from the last committed offsets."""
        if self.consumer is not None:
            try:
                self.consumer.close()
            finally:
                self.consumer = None

    def close(self) -> None:
        self._rewind()
        self.producer.flush(10)
        self.conn.close()

    # -- one batch -----------------------------------------------------------------------------------------
    def process_messages(self, messages: list[Message]) -> BatchResult:
        commands, unreadable = crm_rejects.decode_commands(messages, stage=STAGE, side="crm",
                                                           target=self.account_name)
        return self.process(commands, extra_rejects=unreadable)

    def process(self, commands: list[ApplyCommand], extra_rejects: list[Reject] | None = None) -> BatchResult:
        """Apply `commands` in Salesforce and make every outcome durable. Offsets are the caller's business."""
        outcomes: list[Outcome] = []
        pending: list[list[Planned]] = []  # open groups, in the order they were opened
        identities: set[tuple] = set()
        plans = [self._plan(command) for command in commands]
        settled = self._compare_and_set([p for p in plans if isinstance(p, Planned)])
        for planned in plans:
            if isinstance(planned, Outcome) or id(planned) in settled:
                outcomes.append(planned if isinstance(planned, Outcome) else settled[id(planned)])
                continue
            if planned.identity is not None and planned.identity in identities:
                outcomes += self._flush(pending)  # an earlier command for this record must land first
                pending, identities = [], set()
            group = next((g for g in pending if _group_key(g[0]) == _group_key(planned)), None)
            if group is None:
                pending.append(group := [])
            group.append(planned)
            if planned.identity is not None:
                identities.add(planned.identity)
        outcomes += self._flush(pending)
        return self._settle(outcomes, extra_rejects or [])

    def _plan(self, command: ApplyCommand) -> Planned | Outcome:
        if command.side != "crm" or command.target != self.account_name:
            return Outcome(Planned(command, "create", {}), False, code="CRMSYNC_WRONG_TARGET",
                           message=f"command for {command.side}/{command.target} reached the Salesforce writer "
                                   f"of {self.account_name}")
        record_id = (command.key or {}).get("Id")
        values = {k: v for k, v in command.values.items() if k not in ("Id", "id", "attributes")}
        if command.action == "delete":
            if not record_id:
                return Outcome(Planned(command, "delete", {}), False, code="CRMSYNC_NO_KEY",
                               message="a delete needs the record's Salesforce Id in `key`")
            return Planned(command, "delete", {"id": record_id}, identity=("id", record_id[:15]))
        if record_id:
            return Planned(command, "update", {**values, "id": record_id}, identity=("id", record_id[:15]))
        ext_field = self._external_id_in(command)
        if ext_field:
            value = command.match[ext_field]
            return Planned(command, "upsert", {**values, ext_field: value}, ext_field,
                           identity=("ext", command.object, ext_field, str(value).lower()))
        return Planned(command, "create", values)

    def _compare_and_set(self, plans: list[Planned]) -> dict[int, Outcome]:
        """Leave out of each update the fields Salesforce no longer holds as the decision expected (a user
        edited them since: that edit is news the poller brings to the streams). One SOQL read of the expected
        fields per 800 records; Salesforce values and expectations compare in canonical form by the fields'
        declared kinds. Returns the outcomes of updates left with nothing to write (by id of the plan)."""
        checked: dict[str, list[Planned]] = {}
        for planned in plans:
            if planned.kind == "update" and planned.command.expect:
                checked.setdefault(planned.command.object, []).append(planned)
        settled: dict[int, Outcome] = {}
        for obj, group in checked.items():
            fields = sorted({f for p in group for f in p.command.expect or {} if f in p.record})
            current = self._current_values(obj, fields, [p.record["id"] for p in group]) if fields else {}
            for planned in group:
                row = current.get(planned.record["id"][:15])
                if row is None:
                    continue  # gone or unreadable: the write itself reports it
                self._drop_superseded(planned, row)
                if planned.superseded and not set(planned.record) - {"id", *(planned.command.match or {})}:
                    settled[id(planned)] = Outcome(planned, True, crm_id=planned.record["id"])
        return settled

    def _drop_superseded(self, planned: Planned, row: dict[str, Any]) -> None:
        obj = planned.command.object
        for name, expected in (planned.command.expect or {}).items():
            if name not in planned.record:
                continue
            kind = self.field_types.crm_kind(self.account_name, obj, name)
            now = _comparable(row.get(name), kind)
            if now != _comparable(expected, kind) and now != _comparable(planned.record[name], kind):
                del planned.record[name]
                planned.superseded.append(name)
        if planned.superseded:
            SUPERSEDED.labels(self.account_name, obj).inc(len(planned.superseded))
            log.info("command %s for %s %s: %s changed in Salesforce since the decision; left as they are",
                     planned.command.id, obj, planned.record["id"], ", ".join(planned.superseded))

    def _current_values(self, obj: str, fields: list[str], ids: list[str]) -> dict[str, dict[str, Any]]:
        """Salesforce's current values of `fields` for the records `ids`, by 15-character id."""
        rows: dict[str, dict[str, Any]] = {}
        for clause in soql.id_lists(ids):
            for page in self.client.query_all_pages(f"SELECT Id, {', '.join(fields)} FROM {obj} WHERE {clause}"):
                for record in page:
                    rows[str(record["Id"])[:15]] = record
        return rows

    def _external_id_in(self, command: ApplyCommand) -> str | None:
        """The first `match` field that is an external id of the object (from describe, cached)."""
        if not command.match:
            return None
        if command.object not in self._ext_fields:
            try:
                fields = self.client.describe(command.object)["fields"]
            except SalesforceError as exc:
                if retry_reason(exc) is not None:
                    raise
                fields = []  # e.g. no such object: the write itself will be refused, with Salesforce's reason
            self._ext_fields[command.object] = {f["name"] for f in fields if f.get("externalId")}
        external = self._ext_fields[command.object]
        return next((name for name, value in command.match.items() if name in external and value not in (None, "")),
                    None)

    # -- carrying out groups -------------------------------------------------------------------------------
    def _flush(self, groups: list[list[Planned]]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for group in groups:
            if len(group) >= self.options.bulk_threshold:
                outcomes += self._bulk(group)
            else:
                for start in range(0, len(group), COLLECTION_LIMIT):
                    outcomes += self._collections(group[start:start + COLLECTION_LIMIT])
        return outcomes

    def _collections(self, chunk: list[Planned]) -> list[Outcome]:
        first = chunk[0]
        obj, kind = first.command.object, first.kind
        headers = {"Sforce-Auto-Assign": self.options.auto_assign}
        records = [p.record for p in chunk]
        try:
            if kind == "create":
                results = self.client.collections_create(obj, records, headers=headers)
            elif kind == "update":
                results = self.client.collections_update(obj, records, headers=headers)
            elif kind == "upsert":
                results = self.client.collections_upsert(obj, first.ext_field or "", records, headers=headers)
            else:
                results = self.client.collections_delete([r["id"] for r in records])
        except Exception as exc:
            if retry_reason(exc) is not None or not hasattr(exc, "status"):
                raise  # transient and out of retries, or not Salesforce's answer: retry the whole batch later
            code, message = error_code(exc) or f"HTTP_{exc.status}", error_message(exc)
            return [Outcome(p, False, code=code, message=message) for p in chunk]
        return [self._outcome(p, r) for p, r in zip(chunk, results)]

    @staticmethod
    def _outcome(planned: Planned, result: dict[str, Any]) -> Outcome:
        if result.get("success"):
            created = planned.kind == "create" or bool(result.get("created"))
            return Outcome(planned, True, crm_id=result.get("id") or planned.record.get("id"), created=created)
        errors = result.get("errors") or [{}]
        code, message = errors[0].get("statusCode"), errors[0].get("message", "rejected by Salesforce")
        if planned.kind == "delete" and code in IDEMPOTENT_DELETE_CODES:
            return Outcome(planned, True, crm_id=planned.record["id"])
        return Outcome(planned, False, code=code, message=message)

    def _bulk(self, group: list[Planned]) -> list[Outcome]:
        first = group[0]
        operation = {"create": "insert", "update": "update", "upsert": "upsert", "delete": "delete"}[first.kind]
        records = [({"Id": p.record["id"]} if p.kind == "delete" else
                    {("Id" if k == "id" else k): v for k, v in p.record.items()}) for p in group]
        result = self.client.bulk2_ingest(first.command.object, operation, records, ext_field=first.ext_field,
                                          poll_interval=self.options.bulk_poll_interval)
        if result.state != "JobComplete":
            message = f"Bulk API 2.0 job {result.job_id} ended {result.state}: {result.error_message}"
            return [Outcome(p, False, code="BULK_JOB_FAILED", message=message) for p in group]
        return _match_bulk_rows(group, records, result)

    # -- making outcomes durable ---------------------------------------------------------------------------
    def _settle(self, outcomes: list[Outcome], rejects: list[Reject]) -> BatchResult:
        result = BatchResult(rejects=list(rejects))
        applied_sources: dict[str, list[str | None]] = {}  # object -> source times of what was applied
        for outcome in outcomes:
            command = outcome.planned.command
            if outcome.ok:
                result.applied += 1
                APPLIED.labels(self.account_name, command.object, outcome.planned.kind).inc()
                applied_sources.setdefault(command.object, []).append(command.source_ts)
                self.on_applied(command, outcome.crm_id or "", outcome.created)
            else:
                result.rejects.append(self._reject(command, outcome.code, outcome.message or ""))
        for obj, source_times in applied_sources.items():
            observe_freshness(STAGE, obj, source_times)  # end-to-end: Campaign commit → applied in the CRM
        result.rejected = len(result.rejects)
        if result.rejects:
            self._store_rejects(result.rejects)
        retried = [o.planned.command.id for o in outcomes if o.ok and o.planned.command.attempt > 0]
        if retried:
            crm_rejects.resolve(self.conn, retried)
        return result

    def _reject(self, command: ApplyCommand, code: str | None, message: str) -> Reject:
        REJECTED.labels(self.account_name, command.object, code or "unknown").inc()
        log.info("Salesforce refused %s for %s: %s %s", command.id, command.object, code, message)
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
            command = _command_of(reject)
            retry_in = self.retry_policy.delay(reject.attempt) if command else None
            entries.append(crm_rejects.Entry(reject, command, "pending" if command else "abandoned", retry_in))
        with self.conn.transaction():
            crm_rejects.record_many(self.conn, entries)


def _comparable(value: Any, kind: Any) -> Any:
    try:
        return canonical(value, kind)
    except ValueError:
        return value


def _command_of(reject: Reject) -> ApplyCommand | None:
    try:
        return ApplyCommand.from_json(json.dumps(reject.record))
    except (TypeError, ValueError):
        return None  # an unreadable message: kept for a person to look at, nothing to retry


def _group_key(planned: Planned) -> tuple:
    return planned.command.object, planned.kind, planned.ext_field


def _bulk_row_key(kind: Kind, ext_field: str | None, row: dict[str, Any]) -> tuple:
    """How a Bulk result row is matched back to its command (result rows come in no particular order)."""
    if kind in ("update", "delete"):
        return ("id", str(row.get("Id", ""))[:15])
    if kind == "upsert":
        return ("ext", str(row.get(ext_field or "", "")).lower())
    return ("row",) + tuple(sorted((k, v) for k, v in row.items() if not k.startswith("sf__")))


def _match_bulk_rows(group: list[Planned], records: list[dict[str, Any]], result: Bulk2Result) -> list[Outcome]:
    kind, ext_field = group[0].kind, group[0].ext_field
    columns = list(dict.fromkeys(k for r in records for k in r))
    waiting: dict[tuple, list[Planned]] = {}
    for planned, record in zip(group, records):
        as_sent = {c: csv_value(record[c]) if c in record else "" for c in columns}  # the CSV row we uploaded
        waiting.setdefault(_bulk_row_key(kind, ext_field, as_sent), []).append(planned)
    outcomes: list[Outcome] = []
    for row in result.successes:
        for planned in waiting.get(_bulk_row_key(kind, ext_field, row), [])[:1]:
            waiting[_bulk_row_key(kind, ext_field, row)].remove(planned)
            outcomes.append(Outcome(planned, True, crm_id=row.get("sf__Id") or planned.record.get("id"),
                                    created=str(row.get("sf__Created", "")).lower() == "true"))
    for row in result.failures:
        for planned in waiting.get(_bulk_row_key(kind, ext_field, row), [])[:1]:
            waiting[_bulk_row_key(kind, ext_field, row)].remove(planned)
            code, _, message = str(row.get("sf__Error", "")).partition(":")
            message = message.rsplit(":", 1)[0] if message.count(":") else message
            if kind == "delete" and code in IDEMPOTENT_DELETE_CODES:
                outcomes.append(Outcome(planned, True, crm_id=planned.record["id"]))
            else:
                outcomes.append(Outcome(planned, False, code=code or "BULK_ERROR", message=message.strip()))
    for leftovers in waiting.values():
        outcomes += [Outcome(p, False, code="BULK_UNPROCESSED", message=f"no result for this record in Bulk API "
                             f"2.0 job {result.job_id}") for p in leftovers]
    return outcomes


def build(settings: Settings, endpoints: Endpoints, account_name: str, *, client: SalesforceClient | None = None,
          options: WriterOptions | None = None, on_applied: OnApplied | None = None,
          objects: Iterable[str] | None = None) -> SalesforceWriter:
    """Log in, migrate, create the topics; `objects=None` subscribes to every apply topic of the account."""
    account = account_settings(settings, account_name)
    client = client or SalesforceClient(account_name, account)
    pg.migrate(endpoints.campaign_dsn)
    options = options or WriterOptions(auto_assign=str(getattr(account, "auto_assign", "FALSE")))
    return SalesforceWriter(client, endpoints.bootstrap_servers, endpoints.campaign_dsn, options=options,
                            on_applied=on_applied, objects=objects, partitions=settings.kafka.partitions,
                            replication_factor=settings.kafka.replication_factor)


def run(settings: Settings, endpoints: Endpoints, account_name: str, stop: threading.Event | None = None,
        **kwargs: Any) -> None:
    stop = stop or threading.Event()
    writer = build(settings, endpoints, account_name, **kwargs)
    log.info("writing to Salesforce account %s (group %s)", account_name, writer.group_id)
    writer.run(stop)
