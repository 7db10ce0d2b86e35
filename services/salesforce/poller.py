"""Salesforce change poller: one object at a time, SystemModstamp-ordered, every change published exactly once.

How a cycle works (per object):

1. Describe the object (cached for one full-window period: it picks up new or removed fields). All fields are
   read except compound address/location fields (their components are read) and base64 fields (Salesforce
   serves those one record at a time only).
2. Query ``SELECT <fields> FROM <obj> WHERE SystemModstamp >= <cursor> ORDER BY SystemModstamp, Id`` through
   ``queryAll`` (soft-deleted rows come back too, with ``IsDeleted = true``), page by page. Every
   ``full_window_every`` seconds (60) the query starts at ``cursor - lookback`` instead, to catch rows that
   committed late with an older SystemModstamp.
3. Skip every row already published: the checkpoint remembers, for each record published within the lookback
   window, the SystemModstamp it was published with. A row is published again only if its SystemModstamp
   moved. So rows that share one timestamp are never missed (the query is inclusive, ``>=``), late commits
   with an older timestamp are caught (the lookback), and nothing is re-published as a new change.
4. After each page: flush the producer (every event acknowledged by the broker), *then* store the checkpoint.
   A crash between the two re-publishes that page on restart with the same event ids (consumers drop them).
5. Hard deletes (records removed from the recycle bin, Bulk hardDelete) never show up in queryAll; the
   ``sobjects/<obj>/deleted`` resource reports them, so it is read on every full-window pass.

Which op (consumers rely on this rule):
- ``r`` - the initial snapshot (no checkpoint yet, until the first full pass finished): a read, not a change.
- ``d`` - a row with IsDeleted = true, or an id reported by the deleted resource. ``after`` is None; ``before``
  holds the row when queryAll returned it.
- ``c`` - a live row seen for the first time whose CreatedDate is inside the current window (it did not exist
  at the previous poll), or a row that comes back after we published its delete (undelete).
- ``u`` - every other live row: it was published before (it is in the lookback memory, or it was created
  before the window and therefore already existed at an earlier poll).

Checkpoint (``crmsync.checkpoints``, name ``poller:salesforce:<account>:<object>``)::

    {"v": 1, "snapshot_done": true,
     "cursor": {"modstamp": "2024-05-01T10:20:30.000+0000", "id": "0035g0000000001AAA"},
     "lookback_seconds": 300,
     "seen": {"2024-05-01T10:20:30.000+0000": ["0035g...", ...], ...},   # published within the window
     "deleted": ["0035g...", ...]}                                       # ids in `seen` last published as 'd'
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter as Tally
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

import psycopg
from confluent_kafka import Producer
from prometheus_client import Counter, Gauge
from psycopg.types.json import Jsonb
from simple_salesforce.exceptions import SalesforceError

from crmsync import kafka, pg, topics
from crmsync.config import Settings
from crmsync.envelope import Change
from crmsync.field_types import store_crm_fields
from crmsync.infra import Endpoints
from crmsync.observability import progress
from services.salesforce.client import SalesforceClient, account_settings, retry_reason
from services.salesforce.soql import soql_datetime
from services.salesforce.types import kind_of

log = logging.getLogger("crmsync.salesforce.poller")

CHECKPOINT_VERSION = 1
DEFAULT_LOOKBACK_SECONDS = 300.0
SKIPPED_FIELD_TYPES = frozenset({"address", "location", "base64"})
REQUIRED_FIELDS = ("Id", "SystemModstamp", "CreatedDate", "IsDeleted")

RECORDS = Counter("crmsync_salesforce_poller_records_total", "Changes published by the Salesforce poller",
                  ["account", "object", "op"])
CURSOR_AGE = Gauge("crmsync_salesforce_poller_cursor_age_seconds",
                   "Now minus the SystemModstamp of the last confirmed change", ["account", "object"])


def parse_modstamp(text: str) -> datetime:
    """Salesforce datetimes (`2024-05-01T10:20:30.000+0000`, also `Z` / `+00:00`) as aware datetimes."""
    return datetime.fromisoformat(text)



def checkpoint_name(account_name: str, obj: str) -> str:
    return f"poller:salesforce:{account_name}:{obj}"


# -- checkpoint state --------------------------------------------------------------------------------------
@dataclass
class PollerState:
    """The cursor plus the memory of what was published inside the lookback window."""

    cursor_ts: str | None = None
    cursor_id: str | None = None
    seen: dict[str, str] = field(default_factory=dict)  # Id -> SystemModstamp it was last published with
    deleted: set[str] = field(default_factory=set)  # ids whose last published event was a delete
    snapshot_done: bool = False

    def to_json(self, lookback_seconds: float) -> dict[str, Any]:
        by_stamp: dict[str, list[str]] = {}
        for rid, stamp in self.seen.items():
            by_stamp.setdefault(stamp, []).append(rid)
        cursor = {"modstamp": self.cursor_ts, "id": self.cursor_id} if self.cursor_ts else None
        return {"v": CHECKPOINT_VERSION, "snapshot_done": self.snapshot_done, "cursor": cursor,
                "lookback_seconds": lookback_seconds, "seen": {k: sorted(v) for k, v in sorted(by_stamp.items())},
                "deleted": sorted(self.deleted & set(self.seen))}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> "PollerState":
        if not data:
            return cls()
        if data.get("v") != CHECKPOINT_VERSION:
            raise ValueError(f"poller checkpoint has version {data.get('v')!r}; expected {CHECKPOINT_VERSION}")
        cursor = data.get("cursor") or {}
        seen = {rid: stamp for stamp, ids in (data.get("seen") or {}).items() for rid in ids}
        return cls(cursor_ts=cursor.get("modstamp"), cursor_id=cursor.get("id"), seen=seen,
                   deleted=set(data.get("deleted") or ()), snapshot_done=bool(data.get("snapshot_done")))

    def window_start(self, lookback: timedelta) -> datetime | None:
        return parse_modstamp(self.cursor_ts) - lookback if self.cursor_ts else None

    def advance(self, stamp: str, rid: str) -> None:
        """Move the cursor forward to (stamp, rid) if that is later; it never goes back."""
        if self.cursor_ts is None or (parse_modstamp(stamp), rid) > (parse_modstamp(self.cursor_ts), self.cursor_id or ""):
            self.cursor_ts, self.cursor_id = stamp, rid

    def prune(self, lookback: timedelta) -> None:
        """Forget records published before the window: no future query can return them at that timestamp."""
        start = self.window_start(lookback)
        if start is None:
            return
        self.seen = {rid: s for rid, s in self.seen.items() if parse_modstamp(s) >= start}
        self.deleted &= set(self.seen)


def load_checkpoint(conn: psycopg.Connection, name: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT position FROM crmsync.checkpoints WHERE name = %s", (name,)).fetchone()
    return row[0] if row else None


def save_checkpoint(conn: psycopg.Connection, name: str, position: dict[str, Any]) -> None:
    conn.execute("INSERT INTO crmsync.checkpoints (name, position, updated_at) VALUES (%s, %s, now()) "
                 "ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = now()",
                 (name, Jsonb(position)))


# -- the poller --------------------------------------------------------------------------------------------
@dataclass
class PollResult:
    published: Tally = field(default_factory=Tally)  # per op
    skipped: int = 0
    pages: int = 0

    @property
    def total(self) -> int:
        return sum(self.published.values())


class ObjectPoller:
    """Polls one sObject of one account and publishes its changes to `topics.changes('crm', account, obj)`."""

    def __init__(self, client: SalesforceClient, producer: Producer, tracker: kafka.DeliveryTracker,
                 conn: psycopg.Connection, obj: str, *, lookback_seconds: float = DEFAULT_LOOKBACK_SECONDS,
                 batch_size: int = 2000, track_hard_deletes: bool = True,
                 full_window_every_seconds: float = 60.0) -> None:
        self.client = client
        self.account_name = client.account_name
        self.producer = producer
        self.tracker = tracker
        self.conn = conn
        self.obj = obj
        self.lookback = timedelta(seconds=lookback_seconds)
        self.lookback_seconds = lookback_seconds
        self.batch_size = batch_size
        self.track_hard_deletes = track_hard_deletes
        self.topic = topics.changes("crm", self.account_name, obj)
        self.name = checkpoint_name(self.account_name, obj)
        self.state = PollerState.from_json(load_checkpoint(conn, self.name))
        # Most cycles read from the cursor on (ties at the cursor are in the `seen` memory); every
        # `full_window_every` seconds a cycle re-reads the whole lookback window (late commits with an older
        # SystemModstamp) and asks for hard deletes. Re-reading the window every cycle cost ~10x the API calls.
        self.full_window_every = full_window_every_seconds
        self.last_full_window = 0.0
        self._fields: list[str] = []
        self._fields_at = 0.0
        self.snapshot_buffer: list[Change] = []

    # -- one cycle -----------------------------------------------------------------------------------------
    def poll_once(self) -> PollResult:
        """Publish every change since the checkpoint; return what was published. Safe to call at any time."""
        result = PollResult()
        fields = self.fields()
        snapshot = not self.state.snapshot_done
        full_window = snapshot or time.monotonic() - self.last_full_window >= self.full_window_every
        window_start = self.state.window_start(self.lookback if full_window else timedelta(0))
        for page in self.client.query_all_pages(self._soql(fields, window_start),
                                                include_deleted=window_start is not None,
                                                batch_size=self.batch_size):
            result.pages += 1
            for record in page:
                self._consider(record, snapshot, window_start, result)
            self._commit()
        if full_window:
            self.last_full_window = time.monotonic()
            if not snapshot and self.track_hard_deletes and window_start is not None:
                self._hard_deletes(window_start, result)
                self._commit()
        if snapshot:
            self.state.snapshot_done = True
            self._commit()
        self._record_cursor_age()
        return result

    def fields(self) -> list[str]:
        """Every queryable field of the object's describe, compound and base64 fields excepted. Describe is
        re-read once per full-window pass, so fields added or removed in the CRM are picked up within it."""
        if self._fields and time.monotonic() - self._fields_at < self.full_window_every:
            return self._fields
        described = self.client.describe(self.obj)["fields"]
        store_crm_fields(self.conn, self.account_name, self.obj,
                         {f["name"]: (kind_of(f.get("type", "")), f.get("type", "")) for f in described})
        names = [f["name"] for f in described if f.get("type") not in SKIPPED_FIELD_TYPES]
        missing = [name for name in REQUIRED_FIELDS if name not in names]
        if missing:
            raise RuntimeError(f"{self.obj} has no {', '.join(missing)} field(s); the poller needs them to "
                               "find changes")
        self._fields, self._fields_at = names, time.monotonic()
        return names

    def _soql(self, fields: list[str], window_start: datetime | None) -> str:
        where = f" WHERE SystemModstamp >= {soql_datetime(window_start)}" if window_start else ""
        return f"SELECT {', '.join(fields)} FROM {self.obj}{where} ORDER BY SystemModstamp, Id"

    def _consider(self, record: dict[str, Any], snapshot: bool, window_start: datetime | None,
                  result: PollResult) -> None:
        row = {k: v for k, v in record.items() if k != "attributes"}
        rid, stamp = row["Id"], row["SystemModstamp"]
        self.state.advance(stamp, rid)
        published = self.state.seen.get(rid)
        if published is not None and parse_modstamp(published) >= parse_modstamp(stamp):
            result.skipped += 1
            return
        if row.get("IsDeleted"):
            if snapshot and published is None:
                result.skipped += 1  # deleted before anyone was told it existed
                return
            op = self._publish("d", rid, stamp, after=None, before=row)
        else:
            op = self._publish(self._op(row, snapshot, window_start), rid, stamp, after=row)
        result.published[op] += 1

    def _op(self, row: dict[str, Any], snapshot: bool, window_start: datetime | None) -> str:
        rid = row["Id"]
        if snapshot:
            return "r"
        if rid in self.state.deleted:
            return "c"  # undeleted: it comes back after consumers were told it was gone
        if rid in self.state.seen:
            return "u"
        created = row.get("CreatedDate")
        if window_start is None or (created and parse_modstamp(created) >= window_start):
            return "c"
        return "u"

    def _hard_deletes(self, window_start: datetime, result: PollResult) -> None:
        """Publish deletes that queryAll cannot see (purged from the recycle bin or hard-deleted).

        The resource works in whole minutes and wants at least one minute, so the request may start before
        the window; entries before the window are ignored (an earlier cycle's window covered them)."""
        now = datetime.now(timezone.utc)
        start = max(min(window_start, now - timedelta(minutes=2)), now - timedelta(days=14))
        try:
            answer = self.client.get_deleted(self.obj, start, now)
        except SalesforceError as exc:
            if retry_reason(exc) is not None:
                raise
            log.warning("cannot read deleted %s records of %s: %s", self.obj, self.account_name, exc)
            return
        for entry in answer.get("deletedRecords", []):
            rid, stamp = entry["id"], entry["deletedDate"]
            if parse_modstamp(stamp) < window_start or rid in self.state.deleted:
                continue
            published = self.state.seen.get(rid)
            if published is not None and parse_modstamp(published) >= parse_modstamp(stamp):
                continue
            result.published[self._publish("d", rid, stamp, after=None)] += 1

    def _publish(self, op: str, rid: str, stamp: str, *, after: dict[str, Any] | None,
                 before: dict[str, Any] | None = None) -> str:
        change = Change(
            id=f"crm:{self.account_name}:{self.obj}:{rid}:{stamp}", side="crm", source=self.account_name,
            object=self.obj, op=op, key={"Id": rid}, after=after, before=before,
            position={"modstamp": stamp, "id": rid}, source_ts=stamp,
        )
        if op == "r":  # the snapshot goes out in batch envelopes (see _commit): the streams' cost per record drops
            self.snapshot_buffer.append(change)
        else:
            while True:
                try:
                    self.producer.produce(self.topic, value=change.to_json(), key=change.kafka_key(),
                                          on_delivery=self.tracker)
                    break
                except BufferError:  # local queue full: let deliveries drain
                    self.producer.poll(0.1)
            self.producer.poll(0)
        self.state.seen[rid] = stamp
        if op == "d":
            self.state.deleted.add(rid)
        else:
            self.state.deleted.discard(rid)
        RECORDS.labels(self.account_name, self.obj, op).inc()
        return op

    def _commit(self) -> None:
        """Make everything published so far durable, then (only then) store the checkpoint."""
        if self.snapshot_buffer:
            kafka.produce_batches(self.producer, self.tracker, self.topic, self.snapshot_buffer)
            self.snapshot_buffer = []
        kafka.flush_all(self.producer, self.tracker)
        self.state.prune(self.lookback)
        save_checkpoint(self.conn, self.name, self.state.to_json(self.lookback_seconds))

    def _record_cursor_age(self) -> None:
        if self.state.cursor_ts:
            age = (datetime.now(timezone.utc) - parse_modstamp(self.state.cursor_ts)).total_seconds()
            CURSOR_AGE.labels(self.account_name, self.obj).set(max(0.0, age))


# -- the service loop --------------------------------------------------------------------------------------
@dataclass
class Poller:
    """All pollers of one account, sharing one API client, one producer and one database connection."""

    client: SalesforceClient
    producer: Producer
    tracker: kafka.DeliveryTracker
    conn: psycopg.Connection
    objects: dict[str, ObjectPoller]
    bootstrap_servers: str = ""  # the next three let it add pollers for newly mirrored objects
    settings: Settings | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def poll_once(self) -> dict[str, PollResult]:
        return {name: poller.poll_once() for name, poller in self.objects.items()}

    def follow_mirrors(self) -> list[str]:
        """Also poll the objects the wizard mirrors for this account (a wizard run needs no restart)."""
        from crmsync.wizard.schema import mirrored_objects

        names = {obj for _, obj, _ in mirrored_objects(self.conn, self.client.account_name)}
        added = sorted(n for n in names if n not in self.objects)
        if added and self.settings is not None:
            kafka.ensure_topics(self.bootstrap_servers, [topics.changes("crm", self.client.account_name, o)
                                                          for o in added],
                                self.settings.kafka.partitions, self.settings.kafka.replication_factor)
        for name in added:
            self.objects[name] = ObjectPoller(self.client, self.producer, self.tracker, self.conn, name,
                                              **self.options)
        return added

    def close(self) -> None:
        self.producer.flush(10)
        self.conn.close()


def build(settings: Settings, endpoints: Endpoints, account_name: str, objects: Iterable[str], *,
          client: SalesforceClient | None = None, lookback_seconds: float = DEFAULT_LOOKBACK_SECONDS,
          batch_size: int = 2000, track_hard_deletes: bool = True, full_window_every_seconds: float = 60.0) -> Poller:
    """Log in, migrate, create the topics, and load every object's checkpoint."""
    client = client or SalesforceClient(account_name, account_settings(settings, account_name))
    pg.migrate(endpoints.campaign_dsn)
    objects = list(objects)
    kafka.ensure_topics(endpoints.bootstrap_servers, [topics.changes("crm", account_name, o) for o in objects],
                        settings.kafka.partitions, settings.kafka.replication_factor)
    producer = kafka.producer(endpoints.bootstrap_servers)
    tracker = kafka.DeliveryTracker()
    conn = pg.connect(endpoints.campaign_dsn, autocommit=True, application=f"crmsync-poller-{account_name}")
    options = dict(lookback_seconds=lookback_seconds, batch_size=batch_size, track_hard_deletes=track_hard_deletes,
                   full_window_every_seconds=full_window_every_seconds)
    pollers = {o: ObjectPoller(client, producer, tracker, conn, o, **options) for o in objects}
    return Poller(client, producer, tracker, conn, pollers, endpoints.bootstrap_servers, settings, options)


def run(settings: Settings, endpoints: Endpoints, account_name: str, objects: Iterable[str], interval: float,
        stop: threading.Event | None = None, **options: Any) -> None:
    """Poll every `interval` seconds until `stop` is set. A failed cycle is logged and retried next interval
    (nothing is lost: the checkpoint only ever covers what the broker acknowledged)."""
    stop = stop or threading.Event()
    poller = build(settings, endpoints, account_name, objects, **options)
    log.info("polling %s for %s every %ss", account_name, ", ".join(poller.objects), interval)
    try:
        while not stop.is_set():
            started = time.monotonic()
            progress.tick()
            try:
                added = poller.follow_mirrors()
                if added:
                    log.info("%s: now also polling %s (mirrored by the wizard)", account_name, ", ".join(added))
            except Exception:
                log.exception("could not look up the mirrored objects of %s", account_name)
            for name, obj_poller in list(poller.objects.items()):
                if stop.is_set():
                    break
                try:
                    result = obj_poller.poll_once()
                    if result.total:
                        log.info("%s.%s: published %s", account_name, name, dict(result.published))
                except Exception:
                    log.exception("poll of %s.%s failed; retrying next cycle", account_name, name)
                    obj_poller.state = PollerState.from_json(load_checkpoint(poller.conn, obj_poller.name))
            stop.wait(max(0.0, interval - (time.monotonic() - started)))
    finally:
        poller.close()
