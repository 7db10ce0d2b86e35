"""The CRM poller: any connector's change sources → the CRM change topics, each change published exactly once.

Per object of one account (`crmsync service poller --account NAME`), whenever it is due:

1. Ask the connector's ChangeSource for the changes since the stored cursor (crmsync/connectors.py), page by
   page. The source owns its cursor's content and its exactly-once rules (ties, lookback, deletes).
2. Publish each page's changes to ``topics.changes('crm', account, object)``, one message per change keyed by
   the record (snapshots too), wait until the broker acknowledged every one, and only then store the page's
   cursor in ``crmsync.checkpoints`` (Debezium's rule: the position is committed after the write it describes).
   A crash in between publishes that page again on restart, with the same change ids (consumers drop them). A
   change too large for a Kafka message goes to the rejects ledger instead, and the read goes on.
3. Record the object's fields and their kinds in ``crmsync.crm_fields`` (the streams compare values by them)
   whenever the describe changes — before the first change of the object is published.

The checkpoint (name from `crmsync.names.poller_checkpoint`)::

    {"v": 2, "snapshot_done": true, "source": <the change source's cursor>}

`snapshot_done` turns true when the source's first full read ends; the streams wait for it (and for their own
consumption of the topic to catch up) before they let Campaign-only records create CRM records.

When an object is due: a source the CRM pushes changes to (crmsync.connectors.PushSource, e.g. Salesforce
Change Data Capture) is read as soon as it signals changes, and every `interval` seconds otherwise (reading it
costs no API call while nothing happened). A polled object is read every `interval` seconds, or less often when
the account has a daily API budget: `budget.Pacer` spreads the budget over the polled objects (idle ones slow
down, busy ones speed up) so the projected calls per day stay under it, after what the push sources spent
(`crmsync_api_budget_per_day`, `crmsync_api_calls_projected_per_day`, `crmsync_poller_interval_seconds`).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter as Tally
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable

import psycopg
from confluent_kafka import Producer
from prometheus_client import Counter, Gauge
from psycopg.types.json import Jsonb

from crmsync import api_budget, connectors, kafka, names, pg, rejects, topics
from crmsync.config import Settings
from crmsync.connectors import ChangeSource, Client, Connector, PushSource
from crmsync.envelope import Change
from crmsync.field_types import store_crm_fields
from crmsync.infra import Endpoints
from crmsync.observability import progress
from crmsync.values import parse_timestamp
from services.crm_poller.budget import Pacer, daily_budget

log = logging.getLogger("crmsync.crm_poller")

CHECKPOINT_VERSION = 2
STAGE = "poller"
FIELDS_EVERY_SECONDS = 60.0

RECORDS = Counter("crmsync_poller_records_total", "Changes published by the CRM pollers",
                  ["crm", "account", "object", "op"])
CURSOR_AGE = Gauge("crmsync_poller_cursor_age_seconds",
                   "Now minus the modification time of the last change published", ["crm", "account", "object"])
BUDGET = Gauge("crmsync_api_budget_per_day", "API calls per day the poller may spend on the account (0: no budget)",
               ["account"])
PROJECTED = Gauge("crmsync_api_calls_projected_per_day",
                  "API calls per day the poller spends at its current pace (polls, plus push sources' fills)",
                  ["account"])
INTERVAL = Gauge("crmsync_poller_interval_seconds", "Seconds between two reads of a polled object (budget-paced)",
                 ["account", "object"])
MODE = Gauge("crmsync_poller_pushed", "1 when the CRM pushes the object's changes (no polling), 0 when polled",
             ["account", "object"])


def load_checkpoint(conn: psycopg.Connection, name: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT position FROM crmsync.checkpoints WHERE name = %s", (name,)).fetchone()
    return row[0] if row else None


def save_checkpoint(conn: psycopg.Connection, name: str, position: dict[str, Any]) -> None:
    conn.execute("INSERT INTO crmsync.checkpoints (name, position, updated_at) VALUES (%s, %s, now()) "
                 "ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = now()",
                 (name, Jsonb(position)))


@dataclass
class PollResult:
    published: Tally = field(default_factory=Tally)  # per op
    pages: int = 0

    @property
    def total(self) -> int:
        return sum(self.published.values())


class ObjectPoller:
    """Publishes the changes of one object of one account to its change topic."""

    def __init__(self, crm: str, source: ChangeSource, account: str, producer: Producer,
                 tracker: kafka.DeliveryTracker, conn: psycopg.Connection) -> None:
        self.crm = crm
        self.source = source
        self.account = account
        self.obj = source.obj
        self.producer = producer
        self.tracker = tracker
        self.conn = conn
        self.topic = topics.changes("crm", account, self.obj)
        self.name = names.poller_checkpoint(account, self.obj)
        self.checkpoint = self._load()
        self.newest: datetime | None = None
        self.pushed = isinstance(source, PushSource)
        self.next_due = 0.0  # time.monotonic() when this object is read next
        self._fields_at = 0.0
        self._fields: dict[str, tuple[str, str]] = {}

    def _load(self) -> dict[str, Any]:
        found = load_checkpoint(self.conn, self.name) or {}
        if found and found.get("v") != CHECKPOINT_VERSION:
            log.warning("checkpoint %s has version %s (expected %s): the object is read again from the start",
                        self.name, found.get("v"), CHECKPOINT_VERSION)
            found = {}
        return {"v": CHECKPOINT_VERSION, "snapshot_done": bool(found.get("snapshot_done")),
                "source": found.get("source")}

    @property
    def snapshot_done(self) -> bool:
        return bool(self.checkpoint["snapshot_done"])

    def poll_once(self) -> PollResult:
        """Publish every change since the checkpoint; return what was published. Safe to call at any time."""
        result = PollResult()
        self._store_fields()
        pages = self.source.read(self.checkpoint["source"])
        try:
            for page in pages:
                result.pages += bool(page.changes)
                refused = self._publish(page.changes, result)
                kafka.flush_all(self.producer, self.tracker)  # every change of the page acknowledged (or refused…
                rejects.record_oversized(self.conn, self.producer, self.tracker, STAGE, refused)  # …in the ledger)…
                self.checkpoint = {"v": CHECKPOINT_VERSION, "source": page.cursor,
                                   "snapshot_done": self.snapshot_done or page.snapshot_done}
                save_checkpoint(self.conn, self.name, self.checkpoint)  # …then, only then, the position
        finally:
            getattr(pages, "close", lambda: None)()  # a read stopped half-way tells its source at once
        self._record_cursor_age()
        return result

    def reload(self) -> None:
        """After a failed read: continue from what is stored (nothing unconfirmed is assumed)."""
        self.checkpoint = self._load()

    def _publish(self, changes: list[Change], result: PollResult) -> list:
        """Queue the page's changes, one keyed message each; return those too large to publish."""
        refused = kafka.produce_changes(self.producer, self.tracker, self.topic, changes)
        for change in changes:
            result.published[change.op] += 1
            RECORDS.labels(self.crm, self.account, self.obj, change.op).inc()
            moment = parse_timestamp(change.position.get("ts"))
            if moment and (self.newest is None or moment > self.newest):
                self.newest = moment
        self.producer.poll(0)
        return refused

    def _store_fields(self) -> None:
        """The object's field kinds into crmsync.crm_fields, before any change that uses them is published."""
        if time.monotonic() - self._fields_at < FIELDS_EVERY_SECONDS and self._fields:
            return
        described = {name: (spec.kind, spec.crm_type) for name, spec in self.source.fields().items()}
        if described != self._fields:
            store_crm_fields(self.conn, self.account, self.obj, described)
            self._fields = described
        self._fields_at = time.monotonic()

    def _record_cursor_age(self) -> None:
        if self.newest is not None:
            age = (datetime.now(timezone.utc) - self.newest).total_seconds()
            CURSOR_AGE.labels(self.crm, self.account, self.obj).set(max(0.0, age))


@dataclass
class Poller:
    """Every object poller of one account, sharing one API client, one producer and one database connection."""

    connector: Connector
    client: Client
    producer: Producer
    tracker: kafka.DeliveryTracker
    conn: psycopg.Connection
    objects: dict[str, ObjectPoller]
    settings: Settings
    endpoints: Endpoints
    options: dict[str, Any] = field(default_factory=dict)
    interval: float = 2.0  # the fastest a polled object is read (and how often a push source is looked at)
    wake: threading.Event = field(default_factory=threading.Event)  # set by push sources with changes waiting
    pacer: Pacer | None = None

    def __post_init__(self) -> None:
        self.pacer = self.pacer or Pacer(self.interval)

    def poll_once(self) -> dict[str, PollResult]:
        try:
            return {name: poller.poll_once() for name, poller in self.objects.items()}
        finally:  # the budget the CRM reported, even after a failed cycle (e.g. the budget ran out)
            api_budget.report(self.client.account_name, self.client.usage())

    def add(self, obj: str) -> ObjectPoller:
        source = self.connector.change_source(self.client, obj, **self.options)
        poller = self.objects[obj] = ObjectPoller(self.connector.type, source, self.client.account_name,
                                                  self.producer, self.tracker, self.conn)
        account = self.client.account_name
        MODE.labels(account, obj).set(1 if poller.pushed else 0)
        if poller.pushed:
            source.wakeup(self.wake)
        else:
            self.pacer.add(obj)
        log.info("%s.%s: %s", account, obj, "changes pushed by the CRM" if poller.pushed else "polled")
        return poller

    # -- the schedule ----------------------------------------------------------------------------------------
    def cycle(self, stop: threading.Event) -> float:
        """Read every object that is due; return the seconds until the next one is (a push source with changes
        waiting is due at once)."""
        self._refresh_budget()
        woken = self.wake.is_set()
        self.wake.clear()
        for name, obj_poller in list(self.objects.items()):
            if stop.is_set():
                break
            if time.monotonic() >= obj_poller.next_due or (woken and obj_poller.pushed and obj_poller.source.pending()):
                self._read(name, obj_poller)
        self._export_pace()
        next_due = min((p.next_due for p in self.objects.values()), default=time.monotonic() + self.interval)
        return max(0.0, next_due - time.monotonic())

    def _read(self, name: str, obj_poller: ObjectPoller) -> None:
        first_read = not obj_poller.snapshot_done
        calls = self.client.usage().calls
        found = False
        try:
            result = obj_poller.poll_once()
            found = result.total > 0
            if result.total:
                log.info("%s.%s: published %s", self.client.account_name, name, dict(result.published))
        except Exception:
            log.exception("read of %s.%s failed; retrying next cycle", self.client.account_name, name)
            obj_poller.reload()
        spent = self.client.usage().calls - calls
        if obj_poller.pushed:
            if not first_read:  # a snapshot is paid once; the budget paces what recurs
                self.pacer.record_other(spent)
            obj_poller.next_due = time.monotonic() + self.interval
            if obj_poller.source.pending():  # the read ended with more waiting (it reads at most a few seconds)
                self.wake.set()
        elif first_read:
            obj_poller.next_due = time.monotonic() + self.interval
        else:
            obj_poller.next_due = time.monotonic() + self.pacer.record_poll(name, spent, found)

    def _refresh_budget(self) -> None:
        """The budget may become known (the CRM reports its limit with its answers) or change; published for the
        dashboard whatever the CRM (crmsync/api_budget.py)."""
        try:
            usage = self.client.usage()
        except Exception:  # noqa: BLE001 - a failed /limits read: keep the budget we had
            log.warning("could not read the API usage of %s", self.client.account_name, exc_info=True)
            return
        api_budget.report(self.client.account_name, usage)
        self.pacer.set_budget(daily_budget(self.settings.accounts[self.client.account_name], usage))

    def _export_pace(self) -> None:
        account = self.client.account_name
        BUDGET.labels(account).set(self.pacer.budget_per_day or 0)
        PROJECTED.labels(account).set(self.pacer.projected_per_day())
        for name in self.pacer.paces:
            INTERVAL.labels(account, name).set(self.pacer.interval(name))

    def serve(self, stop: threading.Event) -> None:
        """Read objects as they fall due until `stop` is set; the wizard's new mirrors are looked up every
        `interval`. A failed read is logged and retried later (the checkpoint only covers what the broker acked)."""
        mirrors_due = 0.0
        while not stop.is_set():
            progress.tick()
            if time.monotonic() >= mirrors_due:
                mirrors_due = time.monotonic() + self.interval
                try:
                    added = self.follow_mirrors()
                    if added:
                        log.info("%s: now also reading %s (mirrored by the wizard)", self.client.account_name,
                                 ", ".join(added))
                except Exception:
                    log.exception("could not look up the mirrored objects of %s", self.client.account_name)
            wait = self.cycle(stop)
            self.wake.wait(min(wait, 1.0))  # at least once a second: `stop`

    def follow_mirrors(self) -> list[str]:
        """Also poll the objects the wizard mirrors for this account (a wizard run needs no restart)."""
        from crmsync.mirrors.schema import mirrored_objects

        names = {obj for _, obj, _ in mirrored_objects(self.conn, self.client.account_name)}
        added = sorted(n for n in names if n not in self.objects)
        if added:
            kafka.ensure_topics(self.endpoints.bootstrap_servers,
                                [topics.changes("crm", self.client.account_name, o) for o in added],
                                self.settings.kafka.partitions, self.settings.kafka.replication_factor)
        for name in added:
            self.add(name)
        return added

    def close(self) -> None:
        for obj_poller in self.objects.values():
            if obj_poller.pushed:
                obj_poller.source.close()
        self.producer.flush(10)
        self.conn.close()
        self.client.close()


def build(settings: Settings, endpoints: Endpoints, account_name: str, objects: Iterable[str], *,
          client: Client | None = None, interval: float = 2.0, **options: Any) -> Poller:
    """Log in, migrate, create the topics, and load every object's checkpoint. `options` go to the connector's
    change sources (e.g. Salesforce: mode, lookback_seconds, batch_size, track_hard_deletes,
    full_window_every_seconds)."""
    account = settings.accounts[account_name]
    connector = connectors.for_account(account)
    client = client or connector.client(account_name, account)
    pg.migrate(endpoints.campaign_dsn)
    objects = list(objects)
    kafka.ensure_topics(endpoints.bootstrap_servers, [topics.changes("crm", account_name, o) for o in objects],
                        settings.kafka.partitions, settings.kafka.replication_factor)
    poller = Poller(connector, client, kafka.producer(endpoints.bootstrap_servers), kafka.DeliveryTracker(),
                    pg.connect(endpoints.campaign_dsn, autocommit=True, application=f"crmsync-poller-{account_name}"),
                    {}, settings, endpoints, options, interval)
    for obj in objects:
        poller.add(obj)
    return poller


def run(settings: Settings, endpoints: Endpoints, account_name: str, objects: Iterable[str], interval: float,
        stop: threading.Event | None = None, **options: Any) -> None:
    """Read every object as it falls due (see the module docstring) until `stop` is set."""
    stop = stop or threading.Event()
    poller = build(settings, endpoints, account_name, objects, interval=interval, **options)
    log.info("reading %s (%s): %s; polled objects every %ss or as the API budget allows", account_name,
             poller.connector.label, ", ".join(poller.objects), interval)
    try:
        poller.serve(stop)
    finally:
        poller.close()
