"""Change Data Capture: every write to a selected object leaves a change event in the sandbox's SQLite store.

Followed: Change Data Capture Developer Guide (https://developer.salesforce.com/docs/atlas.en-us.
change_data_capture.meta/change_data_capture/): "ChangeEventHeader Fields" (cdc_event_fields_header.htm),
"Change Event Body Fields" (cdc_event_fields_body.htm), "Select Objects for Change Notifications"
(cdc_select_objects.htm), "Gap Events" and "Overflow Events" (cdc_other_events_gap.htm,
cdc_other_events_overflow.htm), and the Pub/Sub API's "Event Message Durability" (72-hour retention).

How events are made:
* `Store` calls `ChangeLog.record()` after each record write (create, update, soft/hard delete with cascades,
  undelete). Events go into `_cdc_events` through the store's own connection, inside the write's savepoint, so a
  rolled-back record (allOrNone, a failed Bulk row) leaves no event behind and events commit with their data.
* One API call is one transaction (`ChangeLog.transaction`, opened by the HTTP layer): its events share
  `transactionKey`, `commitTimestamp`, `commitNumber` and `changeOrigin`, and number `sequenceNumber` 1, 2, 3…
  in the order the records changed. When the same change hits several records of one object in a transaction
  (a mass delete, the same values written), the events merge into one with several `recordIds`, as documented.
* Past `overflow_limit` changes (100,000, Salesforce's) a transaction emits one GAP_OVERFLOW event per object
  instead of further change events. As "Overflow Events" counts them: a create, delete or undelete is one change
  per record, an update one per changed field per record; the change that reaches the limit still has its event
  (the docs do not say which side of the limit it falls on).
* Writes outside an API call (admin undelete) form their own transaction with an empty changeOrigin; the
  `--seed-contacts` bulk seeding produces no events (it stands for data that predates CDC).
* Only objects selected for CDC produce events (default Contact, Account, Opportunity, Lead; `--cdc-objects`,
  `POST /__sandbox/cdc`); the selection is kept in the store, like Setup's.
* Events older than the retention (72 hours; `--cdc-retention SECONDS`) are purged. Replay ids are the
  AUTOINCREMENT key: they only grow, are never reused, and survive restarts.
"""
from __future__ import annotations

import json
import sqlite3
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

from .encoding import parse_datetime
from .events import CHANGE_TYPES, EventLayout, StoredEvent, epoch_millis
from .model import Model, ObjectDef
from .settings import DEFAULT_RETENTION_SECONDS

if TYPE_CHECKING:
    from .store import Store

DEFAULT_OBJECTS = ("Contact", "Account", "Opportunity", "Lead")
ALL_CHANGES = "/data/ChangeEvents"
OVERFLOW_LIMIT = 100_000
GAP_TYPES = ("GAP_CREATE", "GAP_UPDATE", "GAP_DELETE", "GAP_UNDELETE", "GAP_OVERFLOW")
_COMMIT_BASE = 10_729_887_640  # commit numbers look like Salesforce's system change numbers
_COLUMNS = ("replay_id, entity, change_type, record_ids, origin, tx_key, seq, commit_ts, commit_number, "
            "commit_user, schema_id, changed, nulled, vals")


@dataclass
class _Transaction:
    origin: str
    user_id: str
    key: str = field(default_factory=lambda: str(uuid.uuid4()))
    commit_ts: int = 0
    commit_number: int = 0
    last: tuple[int, tuple[Any, ...]] | None = None  # (replay id, merge signature) of the latest event
    overflowed: set[str] = field(default_factory=set)
    changes: int = 0  # toward the overflow threshold (a rolled-back record's changes still count: rare, harmless)
    first_commit_ts: int = 0  # the commit_ts the first event was written with
    events: int = 0  # events it holds, as of inserting `newest` (see ChangeLog._events_so_far)
    newest: int | None = None  # replay id of the event inserted last


class ChangeLog:
    """Records, keeps and reads back change events. Used from the store thread only (see context.py)."""

    def __init__(self, store: "Store", model: Model, *, retention_seconds: int = DEFAULT_RETENTION_SECONDS,
                 objects: Iterable[str] | None = None) -> None:
        self.store, self.model = store, model
        self.conn: sqlite3.Connection = store.conn
        self.retention_seconds = retention_seconds
        self.overflow_limit = OVERFLOW_LIMIT
        self.default_user = ""  # commitUser of writes outside an API call (the API user, set by the app)
        self._tx: _Transaction | None = None
        self._layouts: dict[tuple[str, int], EventLayout] = {}
        self._migrate()
        stored = store.meta("cdc_objects")
        if objects is not None:
            self.select(objects)
        else:
            self.selected = set(json.loads(stored)) if stored else set(DEFAULT_OBJECTS)
        self.head = self.last_replay_id()

    def _migrate(self) -> None:
        self.conn.execute("CREATE TABLE IF NOT EXISTS _cdc_events (replay_id INTEGER PRIMARY KEY AUTOINCREMENT, "
                          "entity TEXT NOT NULL, change_type TEXT NOT NULL, record_ids TEXT NOT NULL, origin TEXT, "
                          "tx_key TEXT NOT NULL, seq INTEGER NOT NULL, commit_ts INTEGER NOT NULL, "
                          "commit_number INTEGER NOT NULL, commit_user TEXT NOT NULL, schema_id TEXT NOT NULL, "
                          "changed TEXT, nulled TEXT, vals TEXT)")
        self.conn.execute("CREATE INDEX IF NOT EXISTS ix_cdc_tx ON _cdc_events (tx_key)")
        self.conn.execute("CREATE TABLE IF NOT EXISTS _cdc_schemas (schema_id TEXT PRIMARY KEY, entity TEXT, "
                          "schema_json TEXT NOT NULL)")

    # ------------------------------------------------------------ selection and schemas

    def select(self, objects: Iterable[str]) -> list[str]:
        """Replace the set of objects selected for change notifications (names are checked, case-insensitive)."""
        chosen = []
        for name in objects:
            obj = self.model.object(name.strip())
            if obj is None:
                raise ValueError(f"unknown object {name!r} for change data capture; known: "
                                 f"{sorted(self.model.objects)}")
            chosen.append(obj.name)
        self.selected = set(chosen)
        self.store.set_meta("cdc_objects", json.dumps(sorted(self.selected)))
        return sorted(self.selected)

    def layout(self, obj: ObjectDef) -> EventLayout:
        key = (obj.name, len(obj.fields))
        layout = self._layouts.get(key)
        if layout is None:
            layout = self._layouts[key] = EventLayout(obj)
            self.conn.execute("INSERT OR IGNORE INTO _cdc_schemas (schema_id, entity, schema_json) VALUES (?, ?, ?)",
                              (layout.schema_id, obj.name, layout.schema_json))
        return layout

    def schema_json(self, schema_id: str) -> str | None:
        row = self.conn.execute("SELECT schema_json FROM _cdc_schemas WHERE schema_id = ?", (schema_id,)).fetchone()
        return row[0] if row else None

    def layout_for(self, event: StoredEvent) -> EventLayout:
        """The layout an event was written with (the current one, or rebuilt from its stored schema)."""
        obj = self.model.object(event.entity)
        if obj is not None:
            current = self.layout(obj)
            if current.schema_id == event.schema_id:
                return current
        return _historic_layout(self.schema_json(event.schema_id) or "", obj)

    # ------------------------------------------------------------ recording

    @contextmanager
    def transaction(self, origin: str, user_id: str) -> Iterator[None]:
        """Group the events of one API call; nested calls (composite/batch sub-requests) join the outer one."""
        if self._tx is not None:
            yield
            return
        self._tx = tx = _Transaction(origin, user_id)
        try:
            yield
        finally:
            self._tx = None
            self._commit(tx)
            self.head = self.last_replay_id()

    def _commit(self, tx: _Transaction) -> None:
        """Every event of the transaction carries its commitTimestamp: the newest SystemModstamp it wrote (in
        Salesforce's own examples commitTimestamp equals the records' LastModifiedDate)."""
        if tx.commit_number and tx.commit_ts > tx.first_commit_ts:
            self.conn.execute("UPDATE _cdc_events SET commit_ts = ? WHERE tx_key = ?", (tx.commit_ts, tx.key))

    def record(self, obj: ObjectDef, change_type: str, record_id: str, old: Mapping[str, Any] | None,
               new: Mapping[str, Any] | None) -> None:
        """Note one record change (called by the store inside the write's savepoint)."""
        if obj.name not in self.selected:
            return
        if self._tx is None:
            with self.transaction("", self.default_user):
                self.record(obj, change_type, record_id, old, new)
            return
        layout = self.layout(obj)
        changed, values = _change(layout, change_type, old or {}, new or {})
        if change_type == "UPDATE" and not changed:
            return
        nulled = [name for name in changed if values.get(name) is None]
        stamp = (new or {}).get("SystemModstamp")  # a delete: the write clock (its stamp was the newest)
        self._emit(obj, layout, change_type, [record_id], changed, nulled, values,
                   stamp=epoch_millis(parse_datetime(stamp)) if stamp else None)

    def inject_gap(self, object_name: str, change_type: str, record_ids: list[str], user_id: str) -> StoredEvent:
        """Admin lever: emit a GAP_* (or GAP_OVERFLOW) event, header only, as its own transaction."""
        obj = self.model.object(object_name)
        if obj is None:
            raise ValueError(f"unknown object {object_name!r}")
        if change_type not in GAP_TYPES:
            raise ValueError(f"change_type must be one of {list(GAP_TYPES)}, not {change_type!r}")
        with self.transaction("", user_id):
            replay_id = self._emit(obj, self.layout(obj), change_type,
                                   [] if change_type == "GAP_OVERFLOW" else list(record_ids), [], [], {},
                                   force=True)
        event = self.event(replay_id)
        assert event is not None
        return event

    def _emit(self, obj: ObjectDef, layout: EventLayout, change_type: str, record_ids: list[str],
              changed: list[str], nulled: list[str], values: dict[str, Any], force: bool = False,
              stamp: int | None = None) -> int:
        tx = self._tx
        assert tx is not None and change_type in CHANGE_TYPES
        if not tx.commit_number:
            tx.commit_ts = tx.first_commit_ts = stamp or epoch_millis(self.store.clock())
            tx.commit_number = _COMMIT_BASE + self._next_commit()
        elif stamp and stamp > tx.commit_ts:
            tx.commit_ts = stamp
        count = self._events_so_far(tx)
        if not force and tx.changes >= self.overflow_limit:
            if obj.name in tx.overflowed:
                return tx.last[0] if tx.last else 0
            tx.overflowed.add(obj.name)
            change_type, record_ids, changed, nulled, values = "GAP_OVERFLOW", [], [], [], {}
        elif not force:
            tx.changes += len(record_ids) * (len(changed) if change_type == "UPDATE" else 1)
        values_json = json.dumps(values, sort_keys=True, default=str)  # (once: the signature and the stored event)
        signature = (obj.name, change_type, tuple(changed), values_json)
        if tx.last is not None and tx.last[1] == signature and change_type not in ("GAP_OVERFLOW",):
            merged = self._merge(tx.last[0], record_ids)
            if merged:
                return tx.last[0]
        cursor = self.conn.execute(
            f"INSERT INTO _cdc_events ({_COLUMNS.split(', ', 1)[1]}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (obj.name, change_type, json.dumps(record_ids), tx.origin, tx.key, count + 1, tx.commit_ts,
             tx.commit_number, tx.user_id, layout.schema_id, json.dumps(changed), json.dumps(nulled), values_json))
        replay_id = int(cursor.lastrowid or 0)
        tx.last = (replay_id, signature)
        tx.events, tx.newest = count + 1, replay_id
        return replay_id

    def _events_so_far(self, tx: _Transaction) -> int:
        """How many events the transaction holds (the next one's sequence number follows). Kept as events are
        inserted, and counted again only when a rolled-back savepoint took the newest one with its record (ids
        are never reused, and a rollback always takes the newest events): counting per event made a 5,000-record
        Bulk job quadratic."""
        if tx.newest is not None and self.conn.execute("SELECT 1 FROM _cdc_events WHERE replay_id = ?",
                                                       (tx.newest,)).fetchone() is not None:
            return tx.events
        return self.conn.execute("SELECT count(*) FROM _cdc_events WHERE tx_key = ?", (tx.key,)).fetchone()[0]

    def _merge(self, replay_id: int, record_ids: list[str]) -> bool:
        row = self.conn.execute("SELECT record_ids FROM _cdc_events WHERE replay_id = ?", (replay_id,)).fetchone()
        if row is None:  # the event was rolled back with its record
            return False
        self.conn.execute("UPDATE _cdc_events SET record_ids = ? WHERE replay_id = ?",
                          (json.dumps(json.loads(row[0]) + record_ids), replay_id))
        return True

    def _next_commit(self) -> int:
        row = self.conn.execute("INSERT INTO _counters (prefix, n) VALUES ('cdc_commit', 1) ON CONFLICT (prefix) "
                                "DO UPDATE SET n = n + 1 RETURNING n").fetchone()
        return int(row[0])

    # ------------------------------------------------------------ retention

    def purge(self) -> int:
        """Drop events older than the retention period; remember the newest replay id dropped."""
        cutoff = epoch_millis(self.store.now() - timedelta(seconds=self.retention_seconds))
        row = self.conn.execute("SELECT count(*), max(replay_id) FROM _cdc_events WHERE commit_ts < ?",
                                (cutoff,)).fetchone()
        if row[0]:
            self.conn.execute("DELETE FROM _cdc_events WHERE commit_ts < ?", (cutoff,))
            self.store.set_meta("cdc_purged_through", str(row[1]))
        return int(row[0])

    # ------------------------------------------------------------ reading

    def last_replay_id(self) -> int:
        """The newest replay id ever assigned (0 before the first event), purged or not."""
        row = self.conn.execute("SELECT seq FROM sqlite_sequence WHERE name = '_cdc_events'").fetchone()
        return int(row[0]) if row else 0

    def purged_through(self) -> int:
        return int(self.store.meta("cdc_purged_through") or 0)

    def replay_state(self, replay_id: int) -> str:
        """'ok' when events after `replay_id` can be replayed, 'expired' when some were purged, 'unknown' when
        the id was never assigned."""
        if replay_id > self.last_replay_id() or replay_id < 0:
            return "unknown"
        return "expired" if replay_id < self.purged_through() else "ok"

    def events_after(self, replay_id: int, entities: set[str] | None, limit: int) -> tuple[list[StoredEvent], int]:
        """Up to `limit` events after `replay_id` (of `entities`, or all), and how far the scan got."""
        where, params = "replay_id > ?", [replay_id]
        if entities is not None:
            where += f" AND entity IN ({','.join('?' * len(entities))})"
            params += sorted(entities)
        rows = self.conn.execute(f"SELECT {_COLUMNS} FROM _cdc_events WHERE {where} ORDER BY replay_id LIMIT ?",
                                 [*params, limit]).fetchall()
        events = [_event(row) for row in rows]
        scanned = events[-1].replay_id if len(events) == limit else max(replay_id, self.last_replay_id())
        return events, scanned

    def event(self, replay_id: int) -> StoredEvent | None:
        row = self.conn.execute(f"SELECT {_COLUMNS} FROM _cdc_events WHERE replay_id = ?", (replay_id,)).fetchone()
        return _event(row) if row else None

    def earliest_replay_id(self) -> int:
        """The replay id to start after for EARLIEST: just before the oldest retained event."""
        row = self.conn.execute("SELECT min(replay_id) FROM _cdc_events").fetchone()
        return int(row[0]) - 1 if row and row[0] else self.last_replay_id()


def topic_entities(model: Model, topic: str) -> set[str] | None:
    """The objects a change event channel carries: None for /data/ChangeEvents (every selected object), one
    object for /data/<Object>ChangeEvent (custom objects: /data/Thing__ChangeEvent). LookupError otherwise."""
    if topic == ALL_CHANGES:
        return None
    name = topic.removeprefix("/data/")
    if topic.startswith("/data/") and name.endswith("ChangeEvent"):
        base = name[:-len("ChangeEvent")]
        obj = model.object(base[:-2] + "__c" if base.endswith("__") else base)
        if obj is not None:
            return {obj.name}
    raise LookupError(topic)


def _historic_layout(schema_json: str, obj: ObjectDef | None) -> EventLayout:
    """The layout of an event written before a custom field was added at runtime: the object without the
    custom fields its stored schema does not name."""
    if obj is None or not schema_json:
        raise LookupError("the schema of this event is no longer known")
    names = {f["name"] for f in json.loads(schema_json)["fields"]}
    kept = {k: v for k, v in obj.fields.items() if k in names or not k.endswith("__c")}
    return EventLayout(ObjectDef(obj.name, obj.label, obj.label_plural, obj.key_prefix, kept))


def _change(layout: EventLayout, change_type: str, old: Mapping[str, Any], new: Mapping[str, Any]) \
        -> tuple[list[str], dict[str, Any]]:
    """(changed model fields, carried values) of one record change, per the documented body rules."""
    carried = [name for name in layout.object.fields if layout.carries(name)]
    if change_type == "UPDATE":
        changed = [name for name in carried if old.get(name) != new.get(name)]
        return changed, {name: new.get(name) for name in changed}
    if change_type in ("CREATE", "UNDELETE"):
        return [], {name: new[name] for name in carried if new.get(name) is not None}
    return [], {}


def _event(row: tuple[Any, ...]) -> StoredEvent:
    (replay_id, entity, change_type, record_ids, origin, tx_key, seq, commit_ts, commit_number, commit_user,
     schema_id, changed, nulled, vals) = row
    return StoredEvent(replay_id=replay_id, entity=entity, change_type=change_type,
                       record_ids=json.loads(record_ids), origin=origin or "", transaction_key=tx_key, sequence=seq,
                       commit_timestamp=commit_ts, commit_number=commit_number, commit_user=commit_user,
                       schema_id=schema_id, changed=json.loads(changed or "[]"), nulled=json.loads(nulled or "[]"),
                       values=json.loads(vals or "{}"))
