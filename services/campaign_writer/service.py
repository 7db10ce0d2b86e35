"""Campaign writer: apply commands from Kafka → the Campaign database, one PostgreSQL transaction per batch.

Per batch (up to 2,000 commands from ``topics.apply('campaign', <campaign>, <table>)``):

1. Plan every command (services/campaign_writer/plan.py): check table, columns, key and match against the real
   schema; a command that cannot run becomes a reject right away. Parent tables go first (a stable sort, so
   the commands of one record keep their order).
2. One transaction per run of commands that agree on the mapping per table (`_echo_groups`: one unless two
   mappings — two CRMs — write one table in one batch), marked as the sync's own. It starts with
   ``pg_logical_emit_message(true, 'crmsync.origin', <echo tag>)``: change capture tags everything it writes as
   the sync's own, and the tag names, per table, the mapping the rows were written for
   (crmsync.envelope.echo_tag), so the streams skip them for that mapping and decide them for a sibling mapping.
   Where that cannot matter the transaction is not even decoded: the session carries a replication origin
   (crmsync/pg.py `WriterOrigin`, PostgreSQL ≥ 16) and change capture asks pgoutput for `origin = none`. That
   holds for a run whose tables no other mapping syncs (`sibling_tables`, from the loaded configuration) and
   which inserts no row whose key the streams do not know yet (a keyless upsert by CRM link: a table without a
   key sequence; the streams learn that key from capture).
3. Fast path: chunks of commands, each chunk pipelined as a few prepared ``executemany`` calls inside a
   savepoint. If PostgreSQL refuses one command, that chunk is redone with a savepoint per command, so the bad
   command becomes a reject (error_code = SQLSTATE name, reason = PostgreSQL's message and the column) and the
   others land. A command whose ``$ref`` parent is missing *waits* (status 'waiting', PARENT_NOT_FOUND).
4. The rejects ledger is written in the same transaction; commands of a record that still has an open reject
   wait behind it (WAITING_FOR_EARLIER), so a record's commands never overtake each other, even across retries.
   A value its column cannot hold (a data exception, SQLSTATE class 22: too long, out of range, not a date; or
   a number with more decimals than the column keeps, which PostgreSQL would round silently) is the value's
   fault, not the record's: the command is applied without that column, the column becomes a reject of its own
   (`<id>#refused`, CRMSYNC_INVALID_VALUE), and such rejects are abandoned at once — the same value fails the
   same way until someone fixes it or the schema (then `crmsync rejects retry`) — so they never hold back the
   record's later commands.
5. Commit; publish the rejects and wait for the broker; only then does `run` commit the Kafka offsets. A crash
   anywhere replays the batch, and replaying changes nothing (every statement writes only what differs).

Between batches the `RetryLoop` puts due rejects back on their apply topics (exponential backoff + jitter).
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import re
import signal
import threading
import time
from collections import Counter as Tally
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any, Callable, Collection, Iterator, Sequence

import psycopg
import psycopg.errors
from confluent_kafka import Consumer, Message
from prometheus_client import Counter, Histogram

from crmsync import envelope, kafka, names, pg, rejects, topics
from crmsync.config import Settings
from crmsync.envelope import ApplyCommand, Reject
from crmsync.infra import Endpoints
from crmsync.rejects import PARENT_NOT_FOUND, WAITING_FOR_EARLIER, RetryLoop, RetryPolicy, decode_commands
from crmsync.catalog import Catalog
from services.campaign_writer.plan import (LINK_COLUMNS, Invalid, Planned, Planner, command_record_key,
                                           describe_value)

log = logging.getLogger("crmsync.campaign_writer")

STAGE = "writer-campaign"
INVALID_VALUE = "CRMSYNC_INVALID_VALUE"  # the columns of a command that were left out (code shared with the CRM writer)
PARENT_MISSING_SQLSTATE = "CS404"  # raised by crmsync.missing_parent (migration 003)
# Not the record's fault, so the whole batch is tried again instead of rejecting anything: connection trouble,
# deadlocks, serialization failures, shutdowns, resource limits, and statement errors (class 42: a schema that
# changed under us, a missing migration, a missing privilege). Data errors (22, 23) are the record's.
SYSTEMIC_SQLSTATE_CLASSES = ("08", "40", "42", "53", "55", "57", "58", "XX")
NOT_RETRYABLE = frozenset({"CRMSYNC_BAD_COMMAND", "CRMSYNC_WRONG_TARGET", "CRMSYNC_BAD_TABLE", INVALID_VALUE})
DATA_EXCEPTION_CLASS = "22"  # a value the column cannot hold: retrying the same value cannot help
_NUMERIC_SCALE = re.compile(r"numeric\(\s*\d+\s*,\s*(\d+)\s*\)")
_SEPARATOR = chr(31)  # ASCII unit separator: never part of a command id or record key

APPLIED = Counter("crmsync_writer_applied_total", "Apply commands carried out", ["writer", "table", "action"])
REJECTED = Counter("crmsync_writer_rejects_total", "Apply commands rejected or parked", ["writer", "table", "code"])
SUPERSEDED = Counter("crmsync_writer_superseded_fields_total",
                     "Fields not written because the target changed after the decision (compare-and-set)",
                     ["writer", "table"])
BATCH_SECONDS = Histogram("crmsync_writer_batch_seconds", "Time to apply one batch, commit and publish its rejects",
                          buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
from crmsync.observability import freshness_histogram, freshness_last, progress, source_age  # noqa: E402 - shared by the writers

OnApplied = Callable[[ApplyCommand, "int | None", bool], None]


@functools.lru_cache(maxsize=None)
def _numeric_scale(full_type: str) -> int | None:
    """The scale of a `numeric(p, s)` column type; None for any other type (asked for every value written)."""
    match = _NUMERIC_SCALE.fullmatch(full_type)
    return int(match[1]) if match else None


@dataclass(frozen=True)
class WriterOptions:
    batch_size: int = 2000  # commands consumed per batch
    poll_timeout: float = 0.1  # seconds to wait for a batch to fill
    chunk_size: int = 500  # commands per savepoint on the fast path (a bad one costs a redo of its chunk only)
    retry_interval: float = 1.0  # seconds between retry-loop passes


@dataclass
class Applied:
    command: ApplyCommand
    campaign_key: int | None  # the row's primary key (None for a delete of a row that was not there)
    created: bool
    superseded: list[str] = field(default_factory=list)  # left alone: the row no longer held the expected value


@dataclass
class BatchResult:
    applied: list[Applied] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)  # failed: status 'pending', retried with backoff
    waiting: list[Reject] = field(default_factory=list)  # parked: status 'waiting' (parent / earlier command)
    duplicates: list[str] = field(default_factory=list)  # command ids the ledger had already settled
    seconds: float = 0.0


@dataclass
class Outcome:
    """What happened to one command in this batch."""

    command: ApplyCommand
    record_key: str | None
    campaign_key: int | None = None
    created: bool = False
    code: str | None = None  # None: applied
    reason: str = ""
    status: str = "pending"  # for a reject: 'pending', 'waiting', or 'abandoned' (retrying cannot help)
    duplicate: bool = False
    superseded: list[str] = field(default_factory=list)  # compare-and-set columns a user changed meanwhile
    refused: dict[str, str] = field(default_factory=dict)  # columns left out of the applied command -> why
    sent: ApplyCommand | None = None  # the command as it came, when columns were left out

    @property
    def ok(self) -> bool:
        return self.code is None


class RecordQueues:
    """The open rejects of this batch's records, oldest first. A command may run only when no other open
    command of its record is ahead of it; otherwise it joins the queue (WAITING_FOR_EARLIER)."""

    def __init__(self, rows: Sequence[tuple[str, str | None, str]] = ()) -> None:
        self.queues: dict[str, list[str]] = {}
        self.settled: set[str] = set()  # resolved or abandoned: a message of theirs is a replay to skip
        self.had_open_row: set[str] = set()  # succeeding now resolves their ledger row
        for command_id, record_key, status in rows:
            if status in rejects.OPEN_STATUSES:
                self.had_open_row.add(command_id)
                self.enqueue(record_key or "", command_id)
            else:
                self.settled.add(command_id)

    def blocker(self, record_key: str, command_id: str) -> str | None:
        queue = self.queues.get(record_key, [])
        ahead = queue[:queue.index(command_id)] if command_id in queue else queue
        return ahead[0] if ahead else None

    def enqueue(self, record_key: str, command_id: str) -> None:
        queue = self.queues.setdefault(record_key, [])
        if command_id not in queue:
            queue.append(command_id)

    def done(self, record_key: str, command_id: str) -> None:
        queue = self.queues.get(record_key)
        if queue and command_id in queue:
            queue.remove(command_id)

    def copy(self) -> "RecordQueues":
        twin = RecordQueues()
        twin.queues = {k: list(v) for k, v in self.queues.items()}
        twin.settled, twin.had_open_row = self.settled, self.had_open_row
        return twin


def _sqlstate_name(state: str | None) -> str:
    """'23514' → 'check_violation' (PostgreSQL's condition name, which users can look up)."""
    try:
        name = psycopg.errors.lookup(state or "").__name__
    except KeyError:
        return state or "unknown_error"
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _systemic(exc: psycopg.Error) -> bool:
    state = exc.sqlstate
    return state is None or state[:2] in SYSTEMIC_SQLSTATE_CLASSES


def _echo_groups(items: list[Planned | Invalid]) -> list[tuple[list[Planned | Invalid], dict[str, str | None]]]:
    """Consecutive runs of `items` in which each table is written for one mapping only, with that mapping per
    table: each run is one transaction whose echo tag says, per table, which mapping its rows are echoes for
    (crmsync.envelope.echo_tag). One run unless two mappings (two CRMs) write the same table in one batch."""
    runs: list[tuple[list[Planned | Invalid], dict[str, str | None]]] = []
    for item in items:
        table, mapping = item.command.object, item.command.mapping
        if not runs or runs[-1][1].get(table, mapping) != mapping:
            runs.append(([], {}))
        runs[-1][0].append(item)
        runs[-1][1][table] = mapping
    return runs


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _groups(plans: list[Planned]) -> list[tuple[tuple, list[int]]]:
    """Group plans by statement shape, one command per record per group (so a set-based statement never touches
    a row twice), without letting two commands of one record swap places: a second command for a record starts
    a new round of groups, run after the current round."""
    rounds: list[dict[tuple, list[int]]] = [{}]
    seen: set[str] = set()
    for index, plan in enumerate(plans):
        if not seen.isdisjoint(plan.identities):
            rounds.append({})
            seen = set()
        seen.update(plan.identities)
        rounds[-1].setdefault(plan.shape, []).append(index)
    return [(shape, members) for round_ in rounds for shape, members in round_.items()]


def _payload(plans: list[Planned]) -> str:
    """The statement's one parameter: its input rows as a JSON array, `n` = position in it."""
    return envelope.dumps([{"n": n, **plan.row} for n, plan in enumerate(plans)]).decode()


class CampaignWriter:
    """Applies batches of campaign-side ApplyCommands. `apply_batch` works on its own (tests, the workflow
    engine); `run` adds the Kafka consumer, offset commits and the retry loop."""

    def __init__(self, dsn: str, bootstrap_servers: str, campaign_name: str, *, tables: Sequence[str] = (),
                 policy: RetryPolicy = rejects.DEFAULT_POLICY, options: WriterOptions | None = None,
                 on_applied: OnApplied | None = None, partitions: int = 4, replication_factor: int = 1,
                 sibling_tables: Collection[str] = ()) -> None:
        self.dsn = dsn
        self.sibling_tables = frozenset(sibling_tables)  # synced by several mappings: their writes stay decoded
        self.bootstrap_servers = bootstrap_servers
        self.name = campaign_name
        self.tables = list(tables)
        self.policy = policy
        self.options = options or WriterOptions()
        self.on_applied = on_applied
        self.rejects_topic = topics.rejects("campaign", campaign_name)
        kafka.ensure_topics(bootstrap_servers, [self.rejects_topic, *self.apply_topics], partitions,
                            replication_factor)
        self.producer = kafka.producer(bootstrap_servers)
        self.tracker = kafka.DeliveryTracker()
        self.retry_loop = RetryLoop(dsn, self.producer, policy=policy, stage=STAGE, target=campaign_name,
                                    interval=self.options.retry_interval)
        self.conn = self._connect()

    @property
    def apply_topics(self) -> list[str]:
        return [topics.apply("campaign", self.name, table) for table in self.tables]

    @property
    def group_id(self) -> str:
        return names.campaign_writer_group(self.name)

    def _connect(self) -> psycopg.Connection:
        conn = pg.connect(self.dsn, autocommit=True, application=f"crmsync-{STAGE}")
        conn.prepare_threshold = 0  # every statement shape is prepared once and reused for the whole run
        self.origin = pg.WriterOrigin(conn)
        self.catalog = Catalog(conn)
        self.planner = Planner(self.catalog)
        return conn

    # -- one batch ------------------------------------------------------------------------------------------
    def apply_batch(self, commands: Sequence[ApplyCommand], extra_rejects: Sequence[Reject] = ()) -> BatchResult:
        """Apply `commands` in one transaction, record and publish the rejects. Kafka offsets are the caller's."""
        started = time.perf_counter()
        self.planner.new_batch()
        malformed = [self._malformed_reject(c, why) for c in commands if (why := malformed_because(c))]
        if malformed:  # never let one odd message fail (and so replay) the whole batch forever
            commands = [c for c in commands if not malformed_because(c)]
            extra_rejects = [*extra_rejects, *malformed]
        if not commands and not extra_rejects:
            return BatchResult()
        items = [self._plan(c) for c in self._parents_first(commands)]
        result = BatchResult()
        for group, mappings_by_table in _echo_groups(items):
            self.origin.mark(invisible=self._invisible(group, mappings_by_table))
            with self.conn.transaction():
                pg.tag_origin(self.conn, envelope.echo_tag(STAGE, mappings_by_table))
                queues = self._load_queues(group)
                outcomes: list[Outcome] = []
                for chunk in _chunks(group, self.options.chunk_size):
                    outcomes += self._apply_chunk(chunk, queues)
                settled = self._settle(outcomes, queues, extra_rejects)
            extra_rejects = ()
            for name in ("applied", "rejects", "waiting", "duplicates"):
                getattr(result, name).extend(getattr(settled, name))
        for reject in [*result.rejects, *result.waiting]:
            rejects.publish(self.producer, self.tracker, reject)
        kafka.flush_all(self.producer, self.tracker)
        result.seconds = time.perf_counter() - started
        self._observe(result)
        if self.on_applied:
            for applied in result.applied:
                self.on_applied(applied.command, applied.campaign_key, applied.created)
        return result

    def _invisible(self, group: list[Planned | Invalid], mappings_by_table: dict[str, str | None]) -> bool:
        """Whether capture may skip this transaction entirely (origin = none): no sibling mapping must see its
        rows, and it inserts no row the streams only learn the key of from capture."""
        if not self.sibling_tables.isdisjoint(mappings_by_table):
            return False
        return not any(isinstance(item, Planned) and item.kind == "upsert" for item in group)

    def _parents_first(self, commands: Sequence[ApplyCommand]) -> list[ApplyCommand]:
        """Stable sort by table depth: a batch creating a parent and its child works whatever the topic order."""
        ranks: dict[str, int] = {}
        for command in commands:
            if command.object not in ranks:
                ranks[command.object] = self.catalog.rank(command.object)
        return sorted(commands, key=lambda c: ranks[c.object])

    def _plan(self, command: ApplyCommand) -> Planned | Invalid:
        try:
            if command.side != "campaign" or command.target != self.name:
                return Invalid(command, command_record_key(command), "CRMSYNC_WRONG_TARGET",
                               f"command for {command.side}/{command.target} reached the Campaign writer of "
                               f"{self.name}")
            planned = self.planner.plan(command)
            inexact = self._inexact_numbers(planned) if isinstance(planned, Planned) else {}
            if not inexact:
                return planned
            return self._without(planned, inexact) or Invalid(
                command, planned.record_key, INVALID_VALUE,
                "; ".join(f'column "{c}": {why}' for c, why in inexact.items()))
        except (AttributeError, TypeError, ValueError) as exc:  # e.g. `values` that is not an object
            return Invalid(command, f"{command.object}|id|{command.id}", "CRMSYNC_BAD_COMMAND",
                           f"malformed apply command: {exc}")

    def _load_queues(self, items: list[Planned | Invalid]) -> RecordQueues:
        """The ledger's open rejects for this batch's records, and what it already settled of its commands.
        (Lists travel as one separator-joined string: much cheaper to send than two arrays of 2,000 texts.)"""
        keys = _SEPARATOR.join({i.record_key for i in items})
        ids = _SEPARATOR.join(i.command.id for i in items)
        rows = self.conn.execute(
            """SELECT command_id, record_key, status FROM crmsync.rejects
               WHERE stage = %s AND target = %s
                 AND ((record_key = ANY(string_to_array(%s, chr(31)))
                       AND status IN ('pending', 'waiting', 'retrying'))
                      OR command_id = ANY(string_to_array(%s, chr(31))))
               ORDER BY seq""", (STAGE, self.name, keys, ids)).fetchall()
        return RecordQueues(rows)

    def _admit(self, item: Planned | Invalid, queues: RecordQueues) -> Outcome | None:
        """The outcome a command gets without running (replay, invalid, waiting its turn); None = run it."""
        command = item.command
        if command.id in queues.settled:
            return Outcome(command, item.record_key, duplicate=True)
        if isinstance(item, Invalid):
            queues.enqueue(item.record_key, command.id)
            return Outcome(command, item.record_key, code=item.code, reason=item.reason)
        blocker = queues.blocker(item.record_key, command.id)
        if blocker is not None:
            queues.enqueue(item.record_key, command.id)
            return Outcome(command, item.record_key, code=WAITING_FOR_EARLIER, status="waiting",
                           reason=f"waits for the earlier command {blocker} of this record, which is in the "
                                  "rejects ledger; commands of one record are applied in order")
        return None

    def _apply_chunk(self, chunk: list[Planned | Invalid], queues: RecordQueues) -> list[Outcome]:
        """Fast path: run the chunk pipelined in one savepoint, assuming success. If PostgreSQL refuses any
        command, redo the chunk one command per savepoint."""
        trial = queues.copy()
        decided: dict[int, Outcome] = {}
        runnable: list[tuple[int, Planned]] = []
        for index, item in enumerate(chunk):
            outcome = self._admit(item, trial)
            if outcome is None:
                runnable.append((index, item))  # type: ignore[arg-type]
                trial.done(item.record_key, item.command.id)
            else:
                decided[index] = outcome
        rows = self._run_pipelined([plan for _, plan in runnable])
        if rows is None:
            return self._apply_one_by_one(chunk, queues)
        for (index, plan), row in zip(runnable, rows):
            decided[index] = self._outcome(plan, row)
            if not decided[index].ok:
                trial.enqueue(plan.record_key, plan.command.id)
        queues.queues = trial.queues
        return [decided[i] for i in range(len(chunk))]

    def _run_pipelined(self, plans: list[Planned]) -> list[tuple | None] | None:
        """`(campaign_key, created)` per plan (None: no such row), or None when the savepoint was rolled back
        because PostgreSQL refused something. One statement per shape, all sent in one pipeline."""
        if not plans:
            return []
        rows: list[tuple | None] = [None] * len(plans)
        try:
            with self.conn.transaction():
                waiting: list[tuple[list[Planned], list[int]]] = []  # groups for the next pipeline
                for _shape, members in _groups(plans):
                    group = [plans[i] for i in members]
                    if group[0].kind == "create":
                        self._pipelined(waiting, rows)  # the groups before it first (COPY cannot be pipelined)
                        waiting = []
                        self._created(group, members, rows)
                    else:
                        waiting.append((group, members))
                self._pipelined(waiting, rows)
        except psycopg.Error as exc:
            if _systemic(exc):
                raise
            return None
        return rows

    def _pipelined(self, groups: list[tuple[list[Planned], list[int]]], rows: list[tuple | None]) -> None:
        """One statement per group, all sent in one pipeline (one round trip)."""
        if not groups:
            return
        failure: psycopg.Error | None = None
        with self.conn.pipeline() as pipeline:
            cursors = []
            for group, members in groups:
                cursor = self.conn.cursor()
                cursor.execute(self.planner.sql(group[0]), (_payload(group),))
                cursors.append((cursor, members))
            try:
                pipeline.sync()
            except psycopg.Error as exc:  # raised after the block, which then closes cleanly
                failure = exc
        if failure is not None:
            raise failure
        for cursor, members in cursors:
            for row in cursor.fetchall():
                rows[members[row[0]]] = row[1:4]

    def _created(self, group: list[Planned], members: list[int], rows: list[tuple | None]) -> None:
        """A group of creates: first insert the rows that are not there (all of them, in a backfill: a plain
        INSERT, twice as fast as the create statement), then the rest (a replay) by the create statement. (COPY
        into a staging table was measured too, and was slower: docs/benchmarks.md.)"""
        with self.conn.cursor() as cursor:
            inserted = cursor.execute(self.planner.inserting(group[0]), (_payload(group),)).fetchall()
            for row in inserted:
                rows[members[row[0]]] = row[1:4]
            done = {row[0] for row in inserted}
            rest = [n for n in range(len(group)) if n not in done]
            if rest:
                for row in cursor.execute(self.planner.sql(group[0]), (_payload([group[n] for n in rest]),)):
                    rows[members[rest[row[0]]]] = row[1:4]

    def _apply_one_by_one(self, chunk: list[Planned | Invalid], queues: RecordQueues) -> list[Outcome]:
        outcomes = []
        for item in chunk:
            outcome = self._admit(item, queues)
            if outcome is None:
                outcome = self._run_one(item)  # type: ignore[arg-type]
                if outcome.ok:
                    queues.done(item.record_key, item.command.id)
                else:
                    queues.enqueue(item.record_key, item.command.id)
            outcomes.append(outcome)
        return outcomes

    def _run_one(self, plan: Planned) -> Outcome:
        try:
            with self.conn.transaction():
                row = self.conn.execute(self.planner.sql(plan), (_payload([plan]),)).fetchone()
        except psycopg.Error as exc:
            if _systemic(exc):
                raise
            if (exc.sqlstate or "").startswith(DATA_EXCEPTION_CLASS):
                bad = [exc.diag.column_name] if exc.diag.column_name else self._columns_with_bad_input(plan)
                why = f"{_sqlstate_name(exc.sqlstate)}: {exc.diag.message_primary or str(exc).strip()}"
                rest = self._without(plan, {c: why for c in bad if c in (plan.command.values or {})})
                if rest is not None:
                    return self._run_one(rest)  # fewer columns each time: ends
            return self._failure(plan, exc)
        return self._outcome(plan, row[1:4] if row else None)

    def _without(self, plan: Planned, refused: dict[str, str]) -> Planned | None:
        """The plan of `plan`'s command without the `refused` columns (kept on the plan, with the command as
        sent); None when nothing would be left to write or the rest cannot run."""
        values = plan.command.values or {}
        rest = {c: v for c, v in values.items() if c not in refused}
        if not refused or not rest or rest.keys() <= set(LINK_COLUMNS):
            return None
        expect = {c: v for c, v in (plan.command.expect or {}).items() if c not in refused} or None
        planned = self.planner.plan(replace(plan.command, values=rest, expect=expect))
        if not isinstance(planned, Planned):
            return None
        planned.refused = {**plan.refused, **refused}
        planned.sent = plan.sent or plan.command
        return planned

    def _inexact_numbers(self, plan: Planned) -> dict[str, str]:
        """Columns given a number with more decimals than their numeric(p, s) keeps (PostgreSQL would round it
        and the two sides would differ for good) -> why."""
        table = self.catalog.table(plan.table)
        found = {}
        for column, value in (plan.command.values or {}).items():
            scale = _numeric_scale(table.full_types.get(column, "")) if table else None
            if scale is None or isinstance(value, bool) or not isinstance(value, (int, float, str)):
                continue
            try:
                number = Decimal(str(value))
            except InvalidOperation:
                continue  # not a number at all: PostgreSQL says so (a data exception)
            if number.is_finite() and number != number.quantize(Decimal(1).scaleb(-scale), ROUND_HALF_EVEN):
                found[column] = (f"{describe_value(value)} has more decimals than {table.full_types[column]} keeps "
                                 f"({scale}); it would be rounded: round it at the source or widen the column")
        return found

    def _outcome(self, plan: Planned, row: tuple | None) -> Outcome:
        command = plan.command
        if row is not None:
            return Outcome(command, plan.record_key, campaign_key=row[0], created=bool(row[1]),
                           superseded=list(row[2] or ()), refused=plan.refused, sent=plan.sent)
        if plan.kind == "delete":  # already gone: deleting is idempotent
            return Outcome(command, plan.record_key, campaign_key=plan.row.get("k"))
        return Outcome(command, plan.record_key, code="NOT_FOUND",
                       reason=f"no row in {plan.table} with key {describe_value(command.key)}")

    def _failure(self, plan: Planned, exc: psycopg.Error) -> Outcome:
        if exc.sqlstate == PARENT_MISSING_SQLSTATE:
            return Outcome(plan.command, plan.record_key, code=PARENT_NOT_FOUND, status="waiting",
                           reason=exc.diag.message_primary or str(exc))
        sent = plan.sent or plan.command
        refused = "".join(f'; column "{c}" left out before: {why}' for c, why in plan.refused.items())
        return Outcome(sent, plan.record_key, code=_sqlstate_name(exc.sqlstate),
                       reason=self._reason(plan, exc) + refused,
                       status="abandoned" if (exc.sqlstate or "").startswith(DATA_EXCEPTION_CLASS) else "pending")

    def _reason(self, plan: Planned, exc: psycopg.Error) -> str:
        """PostgreSQL's message, plus the column(s) and value(s) it is about when PostgreSQL does not say."""
        diag = exc.diag
        reason = diag.message_primary or str(exc).strip()
        state = exc.sqlstate or ""
        if state.startswith("23") and diag.message_detail and not diag.message_detail.startswith("Failing row"):
            reason += f": {diag.message_detail}"  # e.g. Key (organisation_id)=(42) is not present in table …
        columns = [diag.column_name] if diag.column_name else []
        if not columns and diag.constraint_name and diag.table_name:
            table = f"{diag.schema_name}.{diag.table_name}" if diag.schema_name else diag.table_name
            columns = self.catalog.constraint_columns(table, diag.constraint_name)
        if not columns and state.startswith("22"):
            columns = self._columns_with_bad_input(plan)
        values = plan.command.values or {}
        about = [f'column "{c}" = {describe_value(values[c])}' for c in columns if c in values]
        return f"{reason} ({'; '.join(about)})" if about else reason

    def _columns_with_bad_input(self, plan: Planned) -> list[str]:
        """Which values PostgreSQL cannot read as their column's type (it does not say for parameters)."""
        table = self.catalog.table(plan.table)
        checks = [(c, describe_value(v) if isinstance(v, (dict, list)) else
                   ("true" if v is True else "false" if v is False else str(v)), table.full_types[c])
                  for c, v in (plan.command.values or {}).items()
                  if table and c in table.full_types and v is not None
                  and not (isinstance(v, dict) and "$ref" in v)]
        if not checks:
            return []
        try:
            with self.conn.transaction():
                rows = self.conn.execute(
                    "SELECT c FROM unnest(%s::text[], %s::text[], %s::text[]) AS u(c, v, t) "
                    "WHERE NOT pg_input_is_valid(v, t)", [list(x) for x in zip(*checks)]).fetchall()
        except psycopg.Error as exc:  # pg_input_is_valid needs PostgreSQL 16
            if _systemic(exc):
                raise
            return []
        return [r[0] for r in rows]

    def _settle(self, outcomes: list[Outcome], queues: RecordQueues, extra: Sequence[Reject]) -> BatchResult:
        """Write the batch's rejects and resolutions into the ledger (same transaction as the changes)."""
        result = BatchResult()
        entries: list[rejects.Entry] = []
        resolved: list[str] = []
        for outcome in outcomes:
            command = outcome.command
            if outcome.duplicate:
                result.duplicates.append(command.id)
            elif outcome.ok:
                result.applied.append(Applied(command, outcome.campaign_key, outcome.created, outcome.superseded))
                if outcome.superseded:
                    log.info("command %s for %s %s: %s changed since the decision; left as they are",
                             command.id, command.object, outcome.campaign_key, ", ".join(outcome.superseded))
                if command.id in queues.had_open_row:
                    resolved.append(command.id)
                if outcome.refused:
                    left_out, reject = self._refused_columns(outcome)
                    result.rejects.append(reject)
                    entries.append(rejects.Entry(reject, left_out, "abandoned", None, outcome.record_key))
            else:
                reject = self._reject(outcome)
                (result.waiting if outcome.status == "waiting" else result.rejects).append(reject)
                entries.append(self._ledger_entry(outcome, reject))
                log.info("command %s for %s: %s", command.id, command.object, outcome.code)
        for reject in extra:  # unreadable messages: kept for people, never retried automatically
            result.rejects.append(reject)
            entries.append(rejects.Entry(reject, status="abandoned"))
        rejects.record_many(self.conn, entries)
        rejects.resolve(self.conn, resolved)
        return result

    def _ledger_entry(self, outcome: Outcome, reject: Reject) -> rejects.Entry:
        """How the ledger keeps a reject: waiting its turn (due as soon as it is first of its record), retried
        with backoff, or — when retrying the same command cannot help — abandoned at once (still listed, and
        `rejects retry` can still requeue it). Only open rows hold back the later commands of their record."""
        command = outcome.command
        if outcome.code in NOT_RETRYABLE or outcome.status == "abandoned":
            return rejects.Entry(reject, command, "abandoned", None, outcome.record_key)
        retry_in = 0.0 if outcome.code == WAITING_FOR_EARLIER else self.policy.delay(command.attempt)
        return rejects.Entry(reject, command, outcome.status, retry_in, outcome.record_key)

    def _refused_columns(self, outcome: Outcome) -> tuple[ApplyCommand, Reject]:
        """The columns left out of an applied command, as a command of their own (abandoned: fixed by a person,
        then `crmsync rejects retry`)."""
        sent = outcome.sent or outcome.command
        command = replace(sent, id=f"{sent.id}#refused",
                          values={c: v for c, v in (sent.values or {}).items() if c in outcome.refused},
                          expect={c: v for c, v in (sent.expect or {}).items() if c in outcome.refused} or None)
        reason = "; ".join(f'column "{c}": {why}' for c, why in outcome.refused.items())
        log.info("command %s for %s: written without %s", sent.id, sent.object, ", ".join(outcome.refused))
        return command, self._reject(Outcome(command, outcome.record_key, code=INVALID_VALUE, reason=reason))

    def _reject(self, outcome: Outcome) -> Reject:
        command = outcome.command
        return Reject(id=f"{STAGE}:{self.name}:{command.id}", stage=STAGE, side="campaign", target=self.name,
                      object=str(command.object), reason=outcome.reason, error_code=outcome.code,
                      record=_as_record(command), attempt=command.attempt)

    def _observe(self, result: BatchResult) -> None:
        BATCH_SECONDS.observe(result.seconds)
        now = datetime.now(timezone.utc)
        actions: Tally[tuple[str, str]] = Tally()
        freshness: dict[str, Any] = {}  # table -> histogram child (a label lookup per record is costly)
        newest: dict[str, float] = {}  # table -> freshness of its newest record in this batch
        for applied in result.applied:
            command = applied.command
            action = "delete" if command.action == "delete" else "insert" if applied.created else "update"
            actions[(command.object, action)] += 1
            age = source_age(command.source_ts, now)
            if age is not None:
                if command.object not in freshness:
                    freshness[command.object] = freshness_histogram(STAGE, command.object)
                freshness[command.object].observe(age)
                newest[command.object] = min(age, newest.get(command.object, age))
        for table, age in newest.items():
            freshness_last(STAGE, table).set(age)
        for (table, action), count in actions.items():
            APPLIED.labels(STAGE, table, action).inc(count)
        for applied in result.applied:
            if applied.superseded:
                SUPERSEDED.labels(STAGE, applied.command.object).inc(len(applied.superseded))
        codes = Tally((r.object, r.error_code or "unknown") for r in [*result.rejects, *result.waiting])
        for (table, code), count in codes.items():
            REJECTED.labels(STAGE, table, code).inc(count)

    # -- Kafka ----------------------------------------------------------------------------------------------
    def process_messages(self, messages: Sequence[Message]) -> BatchResult:
        commands, unreadable = decode_commands(messages, stage=STAGE, side="campaign", target=self.name)
        return self.apply_batch(commands, extra_rejects=unreadable)

    def _malformed_reject(self, command: ApplyCommand, why: str) -> Reject:
        return Reject(id=f"{STAGE}:{self.name}:malformed:{command.id}", stage=STAGE, side="campaign",
                      target=self.name, object=str(command.object), reason=f"malformed apply command: {why}",
                      error_code="CRMSYNC_BAD_MESSAGE", record=json.loads(json.dumps(
                          {f: getattr(command, f, None) for f in command.__slots__}, default=str)))

    def run(self, stop: threading.Event) -> None:
        """Consume, apply, commit offsets, retry — until `stop` is set; then finish the batch in hand and exit.
        A failed batch is consumed again from the last committed offsets (replays change nothing)."""
        consumer: Consumer | None = None
        backoff = 1.0
        log.info("writing %s to Campaign database %s (group %s)", ", ".join(self.tables), self.name, self.group_id)
        try:
            while not stop.is_set():
                try:
                    if consumer is None:
                        # a smaller prefetch than librdkafka's 64 MB default keeps the writer's memory flat
                        consumer = kafka.consumer(self.bootstrap_servers, self.group_id,
                                                  **{"queued.max.messages.kbytes": 16384})
                        kafka.subscribe(consumer, self.apply_topics)
                    messages = kafka.without_errors(
                        consumer.consume(self.options.batch_size, self.options.poll_timeout), log)
                    progress.tick()
                    if messages:
                        self.process_messages(messages)
                        consumer.commit(offsets=kafka.next_offsets(messages), asynchronous=False)
                    self.retry_loop.maybe_tick()
                    backoff = 1.0
                except Exception:
                    log.exception("batch failed; it will be consumed again from the committed offsets")
                    if consumer is not None and not kafka.rewind(consumer):  # consumed again, still in the group
                        consumer = _close(consumer)
                    if self.conn.closed or self.conn.broken:
                        self.conn = self._connect()
                    else:  # the schema may have changed under us: read it again
                        self.catalog = Catalog(self.conn)
                        self.planner = Planner(self.catalog)
                    stop.wait(backoff)
                    backoff = min(backoff * 2, 30.0)
        finally:
            _close(consumer)
            self.close()

    def close(self) -> None:
        self.producer.flush(10)
        self.retry_loop.close()
        self.conn.close()


def malformed_because(command: ApplyCommand) -> str | None:
    """Why a command's fields do not have the envelope's types (JSON allows anything), or None."""
    for name in ("id", "side", "target", "object", "action"):
        if not isinstance(getattr(command, name), str) or not getattr(command, name):
            return f"{name} must be a non-empty string, got {getattr(command, name)!r}"
    for name in ("key", "match", "expect"):
        if getattr(command, name) is not None and not isinstance(getattr(command, name), dict):
            return f"{name} must be an object or null, got {getattr(command, name)!r}"
    if not isinstance(command.values, dict):
        return f"values must be an object, got {command.values!r}"
    if not isinstance(command.attempt, int):
        return f"attempt must be an integer, got {command.attempt!r}"
    return None


def _as_record(command: ApplyCommand) -> dict[str, Any]:
    return json.loads(command.to_json())


def _close(consumer: Consumer | None) -> None:
    if consumer is not None:
        try:
            consumer.close()
        except Exception:  # noqa: BLE001 - closing after a failure; nothing more to do
            log.debug("consumer close failed", exc_info=True)
    return None


def run(settings: Settings, endpoints: Endpoints, tables: list[str], *, stop: threading.Event | None = None,
        policy: RetryPolicy = rejects.DEFAULT_POLICY, options: WriterOptions | None = None,
        on_applied: OnApplied | None = None) -> None:
    """The service: migrate, then write `tables` until SIGTERM/SIGINT (or `stop`), finishing the current batch."""
    pg.migrate(endpoints.campaign_dsn)
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
    writer = CampaignWriter(endpoints.campaign_dsn, endpoints.bootstrap_servers, settings.campaign.name,
                            tables=tables, policy=policy, options=options, on_applied=on_applied,
                            partitions=settings.kafka.partitions,
                            replication_factor=settings.kafka.replication_factor,
                            sibling_tables=sibling_tables(settings))
    writer.run(stop)


def sibling_tables(settings: Settings) -> set[str]:
    """Campaign tables that more than one mapping syncs (two CRMs, or two objects of one): a write for one of
    them is news for the others, so it must stay visible to change capture."""
    counts = Tally(m.campaign_table for m in settings.mappings)
    return {table for table, count in counts.items() if count > 1}


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m services.campaign_writer [--config crmsync.yaml] [--tables a,b]` (until the CLI mounts it)."""
    from crmsync import config, infra, logs

    parser = argparse.ArgumentParser(prog="campaign-writer", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="crmsync.yaml to use")
    parser.add_argument("--tables", default=None, help="comma-separated tables (default: campaign.capture_tables)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logs.setup("campaign-writer", args.log_level)
    settings = config.load(args.config)
    tables = args.tables.split(",") if args.tables else list(settings.campaign.capture_tables)
    run(settings, infra.up(settings), tables)
