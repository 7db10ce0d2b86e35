"""The rejects ledger: every record a stage could not process, kept in `crmsync.rejects` and retried.

Why a ledger: a bad record must never block the others, and must never be silently dropped. A writer records
its rejects in the same PostgreSQL transaction as the batch they came from, publishes them to
``topics.rejects(side, target)`` after the commit, and only then commits its Kafka offsets.

Life of a rejected apply command (`status`):

    pending    it failed (constraint, unknown column, row not found …); retried with exponential backoff
    waiting    it can not run yet: its parent row is missing (PARENT_NOT_FOUND), or an earlier command for the
               same record is still in the ledger (WAITING_FOR_EARLIER: commands of one record never overtake
               each other, even across retries)
    retrying   it was put back on its apply topic; the writer resolves it or records it again
    resolved   a retry succeeded
    abandoned  it failed `max_attempts` times, or retrying it cannot help (an unreadable message, a command
               for another target); still listed, and `crmsync rejects retry ID` can still requeue it

The `RetryLoop` does the automatic part: it requeues due rows (oldest first, one at a time per record) and
abandons the exhausted ones.
"""
from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import psycopg
from confluent_kafka import Producer
from prometheus_client import Counter
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from crmsync import kafka, pg, topics
from crmsync.retry import RetryPolicy  # noqa: F401 - the ledger's policy type
from crmsync.envelope import ApplyCommand, Change, Reject, dumps, record_key

log = logging.getLogger("crmsync.rejects")
RETRIED = Counter("crmsync_rejects_retried_total", "Rejects put back on their apply topic by the retry loop", ["stage"])
ABANDONED = Counter("crmsync_rejects_abandoned_total", "Rejects given up after the maximum attempts", ["stage"])

STATUSES = ("pending", "waiting", "retrying", "resolved", "abandoned")
OPEN_STATUSES = ("pending", "waiting", "retrying")  # the ledger still owes these records an outcome
PARENT_NOT_FOUND = "PARENT_NOT_FOUND"
MESSAGE_TOO_LARGE = "MESSAGE_TOO_LARGE"
WAITING_FOR_EARLIER = "WAITING_FOR_EARLIER"


# a failing record is retried after ~2 s, 4 s, … up to 10 min; abandoned after 8 requeues (≈ 8.5 min in all)
DEFAULT_POLICY = RetryPolicy(max_attempts=8, initial_wait=2.0, max_wait=600.0)


@dataclass
class Entry:
    """One row for the ledger: the reject plus what is needed to retry it."""

    reject: Reject
    command: ApplyCommand | None = None
    status: str = "pending"
    retry_in: float | None = None  # seconds until the automatic retry; None = only by hand
    record_key: str | None = None  # the record it concerns, e.g. "recipients|id=42" (keeps per-record order)


# -- writing ----------------------------------------------------------------------------------------------------
_UPSERT = """
INSERT INTO crmsync.rejects (id, stage, side, target, object, reason, error_code, record, attempts, status,
                             next_retry_at, command, apply_topic, command_id, record_key)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now() + %s * interval '1 second', %s, %s, %s, %s)
ON CONFLICT (id) DO UPDATE SET
    reason = excluded.reason, error_code = excluded.error_code, record = excluded.record,
    attempts = GREATEST(crmsync.rejects.attempts, excluded.attempts), status = excluded.status,
    next_retry_at = excluded.next_retry_at, command = excluded.command, apply_topic = excluded.apply_topic,
    command_id = excluded.command_id, record_key = excluded.record_key, updated_at = now()
"""


def record(conn: psycopg.Connection, reject: Reject, *, command: ApplyCommand | None, status: str = "pending",
           retry_in: float | None = None, record_key: str | None = None) -> None:
    """Insert or update one reject inside the caller's transaction (publish it after the commit)."""
    record_many(conn, [Entry(reject, command, status, retry_in, record_key)])


def record_many(conn: psycopg.Connection, entries: Sequence[Entry]) -> None:
    """`record` for a whole batch in one round trip."""
    if not entries:
        return
    for entry in entries:
        if entry.status not in ("pending", "waiting", "abandoned"):
            raise ValueError(f"a new reject is pending, waiting or abandoned, not {entry.status!r}")
    with conn.cursor() as cur:
        cur.executemany(_UPSERT, [_row(e) for e in entries])
    for entry in entries:  # one line per refused record, carrying its id (not its values)
        log.info("%s %s reject of %s: %s", entry.status, entry.reject.error_code or "unknown", entry.reject.object,
                 entry.reject.reason, extra={"record_id": record_id(entry.reject), "object": entry.reject.object})


def record_id(reject: Reject) -> str:
    """The refused record's identity for logs and screens: its key fields, else its matching fields (a new
    record has no key yet: its external id and matching key, e.g. Campaign_Key__c and Email, identify it)."""
    source = reject.record if isinstance(reject.record, dict) else {}
    identity = source.get("key") or source.get("match") or {}
    return ",".join(f"{name}={value}" for name, value in sorted(identity.items())) or reject.id


# -- showing ------------------------------------------------------------------------------------------------------
HIDDEN_VALUE = "[value]"
_RECORD_PARTS = ("values", "match", "key", "after", "before")  # where a command or change carries field values
_IDENTIFIER = re.compile(r"(?i)^(id|.*_id|.*Id|.*_key(__c)?)$")  # ids and keys identify, they are kept
_DATABASE_VALUES = [  # PostgreSQL's DETAIL lines quote whole rows and key values
    (re.compile(r"(Failing row contains )\((?:[^()]|\([^()]*\))*\)"), r"\g<1>(" + HIDDEN_VALUE + ")"),
    (re.compile(r"(Key \([^)]*\)=)\(.*?\)(?= |$|\.)", re.S), r"\g<1>(" + HIDDEN_VALUE + ")"),
]


def without_values(text: str, record: Any) -> str:
    """`text` (a reject reason) with the record's field values — personal data, often — replaced by [value].
    Identifiers stay (they are how one finds the record); so do field names and error codes."""
    for pattern, replacement in _DATABASE_VALUES:
        text = pattern.sub(replacement, text)
    for value in sorted(set(_field_values(record)), key=len, reverse=True):  # longest first: "a b" before "a"
        text = re.sub(rf"(?<!\w){re.escape(value)}(?!\w)", HIDDEN_VALUE, text)
    return text


def _field_values(record: Any, depth: int = 0) -> Iterable[str]:
    if not isinstance(record, dict) or depth > 3:
        return
    for part in _RECORD_PARTS:
        for name, value in (record.get(part) or {}).items() if isinstance(record.get(part), dict) else ():
            if not _IDENTIFIER.match(str(name)):
                yield from _leaves(value)
    yield from _field_values(record.get("change"), depth + 1)


def _leaves(value: Any) -> Iterable[str]:
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from _leaves(item)
    elif value is not None and not isinstance(value, (bool, dict)) and len(str(value)) >= 2:
        yield str(value)


def _row(entry: Entry) -> tuple:
    r, command = entry.reject, entry.command
    topic = topics.apply(command.side, command.target, command.object) if command else None
    return (r.id, r.stage, r.side, r.target, r.object, r.reason, r.error_code, Jsonb(r.record), r.attempt,
            entry.status, entry.retry_in, Jsonb(json.loads(command.to_json())) if command else None, topic,
            command.id if command else None, entry.record_key)


def publish(producer: Producer, tracker: kafka.DeliveryTracker, reject: Reject) -> None:
    """Put `reject` on its rejects topic (call `kafka.flush_all` before committing anything that depends on it).
    A reject whose record is too large for a Kafka message goes out with its record's identity only (the
    ledger row keeps the whole record)."""
    source = reject.record if isinstance(reject.record, dict) else {}
    identity = source.get("key") or source.get("match") or (source.get("change") or {}).get("key")
    key = record_key(identity or {"id": reject.id})
    topic = topics.rejects(reject.side, reject.target)
    try:
        kafka.produce(producer, tracker, topic, reject.to_json(), key)
    except kafka.MessageTooLarge:
        trimmed = Reject(**{**{name: getattr(reject, name) for name in reject.__slots__},
                            "record": {"trimmed": "the whole record is in crmsync.rejects", "key": identity}})
        kafka.produce(producer, tracker, topic, trimmed.to_json(), key)


def oversized(stage: str, change: Change, why: kafka.MessageTooLarge) -> Entry:
    """A change too large for one Kafka message (e.g. a 1.1 MB street), for the ledger: the row keeps the whole
    change (nothing is lost), the reason names its largest fields and what to do. It is abandoned at once:
    publishing it again cannot help, a shorter value will come as a change of its own."""
    row = change.after or change.before or {}
    sizes = sorted(((len(dumps(value)), name) for name, value in row.items()), reverse=True)[:3]
    largest = ", ".join(f"{name} ({size:,} bytes)" for size, name in sizes if size > 1000) or "none over 1 KB"
    what = ", ".join(f"{name}={value}" for name, value in sorted(change.key.items()))
    reject = Reject(
        id=f"{stage}:{MESSAGE_TOO_LARGE}:{change.id}", stage=stage, side=change.side, target=change.source,
        object=change.object, error_code=MESSAGE_TOO_LARGE, record={"change": json.loads(change.to_json())},
        reason=(f"{change.object} {what}: this change is {why.size:,} bytes, over the {why.limit:,}-byte limit of a "
                f"Kafka message (message.max.bytes), so it was not published and the stream went on without it. "
                f"Largest fields: {largest}. Shorten the value at the source (the next change of the record is "
                "synced as usual), or raise the limit on the broker and in crmsync's clients."))
    return Entry(reject, None, "abandoned", None, f"{change.object}|{what}")


def record_oversized(conn: psycopg.Connection, producer: Producer, tracker: kafka.DeliveryTracker, stage: str,
                     refused: Sequence[tuple[Change, kafka.MessageTooLarge]]) -> None:
    """Put changes that could not be published into the ledger and on the rejects topic (acknowledged), before
    the caller moves its source position past them. Call it after `kafka.flush_all`: changes the broker refused
    for their size after they were queued (`tracker.too_large`) are recorded too."""
    refused = [*refused, *((Change.from_json(why.value), why) for why in tracker.take_too_large() if why.value)]
    if not refused:
        return
    entries = [oversized(stage, change, why) for change, why in refused]
    with conn.transaction():
        record_many(conn, entries)
    for entry in entries:
        publish(producer, tracker, entry.reject)
    kafka.flush_all(producer, tracker)


def resolve(conn: psycopg.Connection, command_ids: Iterable[str]) -> int:
    """Mark the open rejects of these commands resolved: a retry of theirs has just succeeded."""
    ids = list(command_ids)
    if not ids:
        return 0
    cur = conn.execute("UPDATE crmsync.rejects SET status = 'resolved', next_retry_at = NULL, updated_at = now() "
                       "WHERE command_id = ANY(%s) AND status <> 'resolved'", (ids,))
    return cur.rowcount


def abandon(conn: psycopg.Connection, ids: Iterable[str]) -> int:
    """Stop retrying these rejects automatically (they stay listed, and can be retried by hand)."""
    ids = list(ids)
    if not ids:
        return 0
    cur = conn.execute("UPDATE crmsync.rejects SET status = 'abandoned', next_retry_at = NULL, updated_at = now() "
                       "WHERE id = ANY(%s) AND status IN ('pending', 'waiting', 'retrying')", (ids,))
    return cur.rowcount


# -- retrying ---------------------------------------------------------------------------------------------------
def _filters(stage: str | None, target: str | None, alias: str = "r") -> tuple[str, list[Any]]:
    clauses, params = [], []
    if stage:
        clauses.append(f"{alias}.stage = %s")
        params.append(stage)
    if target:
        clauses.append(f"{alias}.target = %s")
        params.append(target)
    return "".join(f" AND {c}" for c in clauses), params


def due(conn: psycopg.Connection, limit: int = 500, *, stage: str | None = None,
        target: str | None = None) -> list[dict[str, Any]]:
    """Open rejects whose retry time has come, oldest first — only the oldest open one of each record, so a
    record's commands are retried in their original order."""
    extra, params = _filters(stage, target)
    with pg.dict_cursor(conn) as cur:
        return cur.execute(
            f"""SELECT r.id, r.attempts, r.status, r.error_code FROM crmsync.rejects r
                WHERE r.status IN ('pending', 'waiting', 'retrying') AND r.next_retry_at <= now()
                  AND r.command IS NOT NULL {extra}
                  AND NOT EXISTS (SELECT 1 FROM crmsync.rejects e
                                  WHERE e.record_key = r.record_key AND e.seq < r.seq
                                    AND e.status IN ('pending', 'waiting', 'retrying'))
                ORDER BY r.seq LIMIT %s""", [*params, limit]).fetchall()


def _stored_command(row: dict[str, Any]) -> ApplyCommand | None:
    """The command to put back: the stored one, or the reject's record when that is an apply command (rejects
    recorded by writers that predate the `command` column)."""
    for candidate in (row.get("command"), row.get("record")):
        if isinstance(candidate, dict):
            try:
                return ApplyCommand(**candidate)
            except TypeError:
                continue
    return None


def requeue(conn: psycopg.Connection, producer: Producer, ids: Sequence[str] | None, *,
            tracker: kafka.DeliveryTracker | None = None, policy: RetryPolicy = DEFAULT_POLICY,
            only_due: bool = False) -> list[str]:
    """Publish the stored commands of these rejects again (attempt + 1) and mark them 'retrying'.

    ``ids=None`` means every reject that is not resolved (abandoned ones included). Rows without an apply
    command (e.g. unreadable messages) cannot be requeued and are skipped. Returns the ids requeued.
    The rows stay locked until the broker acknowledged every message, so two loops never requeue the same row.
    """
    tracker = tracker or kafka.DeliveryTracker()
    where = "status <> 'resolved'" + ("" if ids is None else " AND id = ANY(%s)")
    if only_due:
        where += " AND status IN ('pending', 'waiting', 'retrying') AND next_retry_at <= now()"
    params = [] if ids is None else [list(ids)]
    sent: list[str] = []
    with conn.transaction(), pg.dict_cursor(conn) as cur:
        rows = cur.execute(f"SELECT id, command, record, apply_topic, attempts FROM crmsync.rejects WHERE {where} "
                           "ORDER BY seq FOR UPDATE SKIP LOCKED", params).fetchall()
        for row in rows:
            command = _stored_command(row)
            if command is None:
                log.info("reject %s holds no apply command; it can not be requeued", row["id"])
                continue
            command.attempt = row["attempts"] + 1
            topic = row["apply_topic"] or topics.apply(command.side, command.target, command.object)
            kafka.produce(producer, tracker, topic, command.to_json(),
                          record_key(command.match or command.key or {"id": command.id}))
            sent.append(row["id"])
        if sent:
            kafka.flush_all(producer, tracker)
            cur.execute("UPDATE crmsync.rejects SET status = 'retrying', attempts = attempts + 1, "
                        "next_retry_at = now() + %s * interval '1 second', updated_at = now() WHERE id = ANY(%s)",
                        (policy.retrying_timeout, sent))
    return sent


@dataclass
class TickResult:
    requeued: list[str] = field(default_factory=list)
    abandoned: list[str] = field(default_factory=list)


class RetryLoop:
    """Automatic retries: requeue what is due, abandon what failed `policy.max_attempts` times.

    A writer calls `maybe_tick()` between batches (same thread, its own connection here), or `start()` runs it
    in a background thread. `stage` / `target` limit it to the rejects of one writer."""

    def __init__(self, dsn: str, producer: Producer, *, tracker: kafka.DeliveryTracker | None = None,
                 policy: RetryPolicy = DEFAULT_POLICY, stage: str | None = None, target: str | None = None,
                 interval: float = 1.0, batch: int = 500) -> None:
        self.dsn = dsn
        self.producer = producer
        self.tracker = tracker or kafka.DeliveryTracker()
        self.policy = policy
        self.stage = stage
        self.target = target
        self.interval = interval
        self.batch = batch
        self._conn: psycopg.Connection | None = None
        self._last = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = pg.connect(self.dsn, autocommit=True, application="crmsync-retry")
        return self._conn

    def tick(self) -> TickResult:
        conn = self._connection()
        rows = due(conn, self.batch, stage=self.stage, target=self.target)
        exhausted = [r["id"] for r in rows
                     if r["attempts"] >= self.policy.max_attempts and r["error_code"] != WAITING_FOR_EARLIER]
        result = TickResult(abandoned=exhausted)
        if exhausted:
            abandon(conn, exhausted)
            ABANDONED.labels(self.stage or "any").inc(len(exhausted))
            log.warning("abandoned %d rejects after %d attempts", len(exhausted), self.policy.max_attempts)
        ready = [r["id"] for r in rows if r["id"] not in exhausted]
        if ready:
            result.requeued = requeue(conn, self.producer, ready, tracker=self.tracker, policy=self.policy,
                                      only_due=True)
            RETRIED.labels(self.stage or "any").inc(len(result.requeued))
        return result

    def maybe_tick(self) -> TickResult | None:
        """`tick()` if `interval` seconds passed since the last one. Errors are logged, never raised: retrying
        is a background duty and must not stop the writer."""
        now = time.monotonic()
        if now - self._last < self.interval:
            return None
        self._last = now
        try:
            return self.tick()
        except Exception as exc:  # noqa: BLE001 - logged, and tried again next tick
            log.warning("retry loop tick failed (%s); trying again in %.0fs", type(exc).__name__, self.interval)
            self.close()
            return None

    def start(self) -> "RetryLoop":
        self._thread = threading.Thread(target=self._run, name="crmsync-retry", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval / 4):
            self.maybe_tick()
        self.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# -- reading ----------------------------------------------------------------------------------------------------
LIST_COLUMNS = ("id", "stage", "side", "target", "object", "error_code", "reason", "attempts", "status",
                "next_retry_at", "command_id", "created_at", "updated_at")


def list_rejects(dsn: str, status: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """The newest rejects first, optionally of one status (for `crmsync rejects list`)."""
    if status is not None and status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
    where = "WHERE status = %s" if status else ""
    params: list[Any] = [status] if status else []
    with pg.connect(dsn, autocommit=True, application="crmsync-rejects") as conn:
        cur = conn.cursor(row_factory=dict_row)
        return cur.execute(f"SELECT {', '.join(LIST_COLUMNS)} FROM crmsync.rejects {where} "
                           "ORDER BY seq DESC LIMIT %s", [*params, limit]).fetchall()


def retry_now(dsn: str, bootstrap_servers: str, ids: Sequence[str] | None) -> list[str]:
    """Requeue these rejects now (None = every reject not resolved), for `crmsync rejects retry`."""
    producer = kafka.producer(bootstrap_servers)
    try:
        with pg.connect(dsn, autocommit=True, application="crmsync-rejects") as conn:
            return requeue(conn, producer, ids)
    finally:
        del producer  # destroys the client now instead of whenever it is garbage-collected


def decode_commands(messages: Sequence[Any], *, stage: str, side: str, target: str) -> tuple[list[ApplyCommand], list[Reject]]:
    """Apply commands from consumed messages; an unreadable one becomes a reject that keeps its raw bytes and
    position, so a bad message never blocks a writer and is never silently dropped."""
    decoded, unreadable = decode_with_topics(messages, stage=stage, side=side, target=target)
    return [command for command, _ in decoded], unreadable


def decode_with_topics(messages: Sequence[Any], *, stage: str, side: str,
                       target: str) -> tuple[list[tuple[ApplyCommand, str]], list[Reject]]:
    """`decode_commands`, each command with the topic it came on (a writer checks they agree)."""
    decoded: list[tuple[ApplyCommand, str]] = []
    unreadable: list[Reject] = []
    for message in messages:
        try:
            decoded.append((ApplyCommand.from_json(message.value()), message.topic()))
        except (ValueError, TypeError) as exc:
            raw = message.value().decode("utf-8", "replace") if message.value() else ""
            unreadable.append(Reject(
                id=f"{stage}:{target}:{message.topic()}:{message.partition()}:{message.offset()}", stage=stage,
                side=side, target=target, object=topics.parse(message.topic()).get("object", "?"),
                reason=f"unreadable apply command: {exc}", error_code="CRMSYNC_BAD_MESSAGE",
                record={"raw": raw, "topic": message.topic(), "partition": message.partition(),
                        "offset": message.offset()}))
    return decoded, unreadable


def command_of(reject: Reject) -> ApplyCommand | None:
    """The apply command a reject keeps (None for an unreadable message: nothing to retry)."""
    try:
        return ApplyCommand.from_json(dumps(reject.record))
    except (TypeError, ValueError):
        return None
