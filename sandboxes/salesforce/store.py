"""SQLite storage for the Salesforce sandbox: records, ids, server-side rules, recycle bin, daily counters.

One table per sObject, one column per stored field, values encoded as `model.py` says; the SOQL engine reads
these tables directly. Everything Salesforce does *around* a write happens here, so REST, composite and Bulk
calls behave the same: field-level checks (unknown, read-only, type, length, restricted picklist, email,
references), required fields, derived fields (Contact.Name...), the assignment rule, validation rules,
external-id uniqueness, server-maintained audit fields, cascade deletes and the 15-day recycle bin.

Ids are real 18-character Salesforce ids (see encoding.py) numbered from persisted per-prefix counters, so a
fresh sandbox always hands out the same ids in the same order.

All access happens on the server's event-loop thread (one connection, autocommit mode); `atomic()` nests as
SAVEPOINTs so a multi-record call can roll back as a whole (allOrNone) or record by record.
"""
from __future__ import annotations

import random
import re
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from . import seed
from .cdc import ChangeLog
from .encoding import STRING_TYPES, coerce, format_datetime, make_id, normalize_id, parse_datetime, utcnow
from .errors import SalesforceError, entity_is_deleted, not_found
from .model import FieldDef, Model, ObjectDef
from .objects import child_references, derived_fields
from .settings import SALES_OWNERS, SandboxSettings

DB_FILE = "salesforce.sqlite3"
_SQL_TYPES = {"boolean": "INTEGER", "int": "INTEGER", "double": "REAL", "currency": "REAL", "percent": "REAL"}
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_SEED = 20240501
_UNINDEXED = {"CreatedById", "LastModifiedById"}  # every row points at the API user: an index would not help

# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class WriteResult:
    id: str
    created: bool
    assigned_owner: str | None = None  # the OwnerId the assignment rule set, if it ran and matched


class Transaction:
    def __init__(self) -> None:
        self.rollback_requested = False

    def rollback(self) -> None:
        """Undo everything done inside this `atomic()` block when it ends, without raising."""
        self.rollback_requested = True


class Store:
    """The org's data. `now()` is the sandbox clock (real UTC time plus an admin-settable offset)."""

    def __init__(self, state_dir: Path, model: Model, settings: SandboxSettings) -> None:
        self.model = model
        self.settings = settings
        self.path = Path(state_dir) / DB_FILE
        self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.clock_offset = timedelta(0)
        self._last_stamp = ""
        self._depth = 0
        self._last_purge = 0.0
        self._stored = {o.name: o.stored_fields() for o in model.objects.values()}
        self._derived = {o.name: derived_fields(o) for o in model.objects.values()}
        self._defaults = {o.name: {f.name: _default(f) for f in o.stored_fields()} for o in model.objects.values()}
        self.changes: ChangeLog | None = None  # set by the app: records change events (cdc.py)
        self._migrate()

    def close(self) -> None:
        self.conn.close()

    # ------------------------------------------------------------ schema

    def _migrate(self) -> None:
        """Create missing tables, columns and indexes; never drops anything, so state survives upgrades."""
        ddl = [
            "CREATE TABLE IF NOT EXISTS _meta (key TEXT PRIMARY KEY, value TEXT)",
            "CREATE TABLE IF NOT EXISTS _counters (prefix TEXT PRIMARY KEY, n INTEGER NOT NULL)",
            "CREATE TABLE IF NOT EXISTS _daily (day TEXT, name TEXT, n INTEGER NOT NULL, PRIMARY KEY (day, name))",
            "CREATE TABLE IF NOT EXISTS _tombstones (object TEXT, Id TEXT PRIMARY KEY, deleted TEXT NOT NULL)",
        ]
        for stmt in ddl:
            self.conn.execute(stmt)
        for obj in self.model.objects.values():
            self._migrate_object(obj)
        if self.meta("created") is None:
            self.set_meta("created", format_datetime(self.now()))

    def _migrate_object(self, obj: ObjectDef) -> None:
        columns = [f"{_q(f.name)} {_SQL_TYPES.get(f.type, 'TEXT')}" + (" PRIMARY KEY" if f.name == "Id" else "")
                   for f in self._stored[obj.name]]
        self.conn.execute(f"CREATE TABLE IF NOT EXISTS {_q(obj.name)} ({', '.join(columns)})")
        present = {row[1] for row in self.conn.execute(f"PRAGMA table_info({_q(obj.name)})")}
        for f in self._stored[obj.name]:
            if f.name not in present:
                self.conn.execute(f"ALTER TABLE {_q(obj.name)} ADD COLUMN {_q(f.name)} "
                                  f"{_SQL_TYPES.get(f.type, 'TEXT')}")
        for f in self._stored[obj.name]:
            if f.name == "SystemModstamp" or (f.type == "reference" and f.name not in _UNINDEXED):
                self._index(obj, f.name, _q(f.name))
            elif f.external_id or f.unique:
                self._index(obj, f.name, f"lower({_q(f.name)})")

    def refresh_object(self, obj: ObjectDef) -> None:
        """Pick up fields added to `obj` at runtime (admin endpoint): new columns, defaults, stored list."""
        self._stored[obj.name] = obj.stored_fields()
        self._defaults[obj.name] = {f.name: _default(f) for f in obj.stored_fields()}
        self._migrate_object(obj)

    def _index(self, obj: ObjectDef, name: str, expression: str) -> None:
        self.conn.execute(f"CREATE INDEX IF NOT EXISTS {_q(f'ix_{obj.name}_{name}')} "
                          f"ON {_q(obj.name)} ({expression})")

    # ------------------------------------------------------------ small utilities

    def now(self) -> datetime:
        return utcnow() + self.clock_offset

    def clock(self) -> datetime:
        """The write clock: now, but never before the newest stamp already written (see `_stamp`)."""
        now = self.now()
        return max(now, parse_datetime(self._last_stamp)) if self._last_stamp else now

    def _stamp(self) -> str:
        """A write timestamp that never goes backwards, even if the wall clock does."""
        stamp = max(format_datetime(self.now()), self._last_stamp)
        self._last_stamp = stamp
        return stamp

    def meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM _meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT INTO _meta (key, value) VALUES (?, ?) "
                          "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    def next_ids(self, prefix: str, count: int = 1) -> list[str]:
        row = self.conn.execute("INSERT INTO _counters (prefix, n) VALUES (?, ?) ON CONFLICT (prefix) "
                                "DO UPDATE SET n = n + excluded.n RETURNING n", (prefix, count)).fetchone()
        return [make_id(prefix, n) for n in range(row[0] - count + 1, row[0] + 1)]

    def bump_daily(self, name: str, by: int = 1) -> int:
        """Increment and return today's (UTC) counter `name`, e.g. the API request count."""
        row = self.conn.execute("INSERT INTO _daily (day, name, n) VALUES (?, ?, ?) ON CONFLICT (day, name) "
                                "DO UPDATE SET n = n + excluded.n RETURNING n",
                                (self.now().date().isoformat(), name, by)).fetchone()
        return int(row[0])

    def daily(self, name: str) -> int:
        row = self.conn.execute("SELECT n FROM _daily WHERE day = ? AND name = ?",
                                (self.now().date().isoformat(), name)).fetchone()
        return int(row[0]) if row else 0

    def set_daily(self, name: str, value: int) -> None:
        self.bump_daily(name, 0)
        self.conn.execute("UPDATE _daily SET n = ? WHERE day = ? AND name = ?",
                          (value, self.now().date().isoformat(), name))

    @contextmanager
    def atomic(self) -> Iterator[Transaction]:
        """A (nested) transaction: rolled back on exception or `rollback()`, otherwise kept."""
        name = f"sp{self._depth}"
        self._depth += 1
        tx = Transaction()
        self.conn.execute(f"SAVEPOINT {name}")
        try:
            yield tx
        except BaseException:
            self.conn.execute(f"ROLLBACK TO {name}")
            self.conn.execute(f"RELEASE {name}")
            raise
        else:
            if tx.rollback_requested:
                self.conn.execute(f"ROLLBACK TO {name}")
            self.conn.execute(f"RELEASE {name}")
        finally:
            self._depth -= 1

    def object(self, name: str) -> ObjectDef:
        obj = self.model.object(name)
        if obj is None:
            raise SalesforceError("NOT_FOUND", "The requested resource does not exist", status=404)
        return obj

    # ------------------------------------------------------------ reads

    def row(self, obj: ObjectDef, record_id: str) -> dict[str, Any] | None:
        cur = self.conn.execute(f"SELECT * FROM {_q(obj.name)} WHERE Id = ?", (record_id,))
        values = cur.fetchone()
        return dict(zip((d[0] for d in cur.description), values)) if values else None

    def record_state(self, obj: ObjectDef, record_id: str) -> str | None:
        """'live', 'deleted' (in the recycle bin) or None."""
        row = self.conn.execute(f"SELECT IsDeleted FROM {_q(obj.name)} WHERE Id = ?", (record_id,)).fetchone()
        return None if row is None else ("deleted" if row[0] else "live")

    def require_live(self, obj: ObjectDef, record_id: Any) -> str:
        """The normalized id of a live record, else the 404 Salesforce gives for a missing or deleted one."""
        rid = normalize_id(record_id)
        if rid is None or not rid.startswith(obj.key_prefix):
            raise not_found()
        state = self.record_state(obj, rid)
        if state is None:
            raise not_found()
        if state == "deleted":
            raise entity_is_deleted()
        return rid

    def find(self, obj: ObjectDef, field: FieldDef, value: Any) -> list[str]:
        """Live records whose `field` equals `value` (case-insensitively, as external ids match)."""
        if field.name == "Id":
            rid = normalize_id(value)
            return [rid] if rid and self.record_state(obj, rid) == "live" else []
        rows = self.conn.execute(f"SELECT Id FROM {_q(obj.name)} WHERE lower({_q(field.name)}) = lower(?) "
                                 f"AND IsDeleted = 0 ORDER BY Id", (str(value),))
        return [r[0] for r in rows]

    def count(self, obj: ObjectDef, include_deleted: bool = False) -> int:
        where = "" if include_deleted else " WHERE IsDeleted = 0"
        return self.conn.execute(f"SELECT count(*) FROM {_q(obj.name)}{where}").fetchone()[0]

    def recent(self, obj: ObjectDef, limit: int = 10) -> list[dict[str, Any]]:
        name = "Name" if obj.field("Name") else "Id"
        rows = self.conn.execute(f"SELECT Id, {_q(name)} FROM {_q(obj.name)} WHERE IsDeleted = 0 "
                                 f"ORDER BY SystemModstamp DESC LIMIT ?", (limit,))
        return [{"Id": r[0], name: r[1]} for r in rows]

    def updated_ids(self, obj: ObjectDef, start: str, end: str) -> list[str]:
        rows = self.conn.execute(f"SELECT Id FROM {_q(obj.name)} WHERE IsDeleted = 0 AND SystemModstamp >= ? "
                                 f"AND SystemModstamp < ? ORDER BY SystemModstamp, Id", (start, end))
        return [r[0] for r in rows]

    def deleted_records(self, obj: ObjectDef, start: str, end: str) -> list[tuple[str, str]]:
        """(id, deletedDate) of records deleted in [start, end): those in the recycle bin and hard-deleted ones."""
        rows = self.conn.execute(
            f"SELECT Id, SystemModstamp FROM {_q(obj.name)} WHERE IsDeleted = 1 AND SystemModstamp >= ? "
            f"AND SystemModstamp < ? UNION ALL SELECT Id, deleted FROM _tombstones WHERE object = ? "
            f"AND deleted >= ? AND deleted < ? ORDER BY 2, 1", (start, end, obj.name, start, end))
        return [(r[0], r[1]) for r in rows]

    def earliest_deleted_available(self) -> str:
        return self.meta("purged_until") or self.meta("created") or format_datetime(self.now())

    def user_id(self, username: str) -> str | None:
        row = self.conn.execute('SELECT Id FROM "User" WHERE lower(Username) = lower(?) AND IsDeleted = 0',
                                (username,)).fetchone()
        return row[0] if row else None

    # ------------------------------------------------------------ writes

    def create(self, object_name: str, values: Mapping[str, Any], *, user_id: str, auto_assign: bool = False,
               csv: bool = False) -> WriteResult:
        obj = self.object(object_name)
        if not obj.createable:
            raise SalesforceError("INVALID_TYPE_FOR_OPERATION", f"entity type cannot be inserted: {obj.name}")
        fields = self._prepare(obj, values, insert=True, csv=csv)
        stamp = self._stamp()
        row: dict[str, Any] = dict(self._defaults[obj.name])
        row.update(IsDeleted=0, CreatedDate=stamp, CreatedById=user_id, LastModifiedDate=stamp,
                   LastModifiedById=user_id, SystemModstamp=stamp)
        if "OwnerId" in row:
            row["OwnerId"] = user_id
        row.update(fields)
        with self.atomic():
            owner = self._complete(obj, row, set(fields), auto_assign=auto_assign, record_id=None)
            row["Id"] = self.next_ids(obj.key_prefix)[0]
            self._insert(obj, [row])
            self._changed(obj, "CREATE", row["Id"], None, row)
        return WriteResult(row["Id"], True, owner)

    def update(self, object_name: str, record_id: Any, values: Mapping[str, Any], *, user_id: str,
               auto_assign: bool = False, csv: bool = False) -> WriteResult:
        obj = self.object(object_name)
        rid = self.require_live(obj, record_id)
        fields = self._prepare(obj, values, insert=False, csv=csv)
        stamp = self._stamp()
        row = self.row(obj, rid) or {}
        before = dict(row)
        row.update(fields)
        row.update(LastModifiedDate=stamp, LastModifiedById=user_id, SystemModstamp=stamp)
        with self.atomic():
            owner = self._complete(obj, row, set(fields), auto_assign=auto_assign, record_id=rid)
            names = [f.name for f in self._stored[obj.name] if f.name != "Id"]
            self.conn.execute(f"UPDATE {_q(obj.name)} SET {', '.join(f'{_q(n)} = ?' for n in names)} WHERE Id = ?",
                              [row[n] for n in names] + [rid])
            self._changed(obj, "UPDATE", rid, before, row)
        return WriteResult(rid, False, owner)

    def upsert(self, object_name: str, field_name: str, key: Any, values: Mapping[str, Any], *, user_id: str,
               auto_assign: bool = False, csv: bool = False, update_only: bool = False) -> WriteResult:
        """Update the one live record whose external id `field_name` equals `key`, or create it."""
        obj = self.object(object_name)
        field = self.external_id_field(obj, field_name)
        matches = self.find(obj, field, key) if key not in (None, "") else []
        if len(matches) > 1:
            raise MultipleMatches(field.name, key, matches)
        if matches:
            return self.update(obj.name, matches[0], values, user_id=user_id, auto_assign=auto_assign, csv=csv)
        if update_only or field.name == "Id":
            raise not_found()
        return self.create(obj.name, {**values, field.name: key}, user_id=user_id, auto_assign=auto_assign,
                           csv=csv)

    def external_id_field(self, obj: ObjectDef, field_name: str) -> FieldDef:
        field = obj.field(field_name)
        if field is None:
            raise SalesforceError("NOT_FOUND", "Provided external ID field does not exist or is not accessible: "
                                  f"{field_name}", status=404)
        if field.name != "Id" and not field.external_id:
            raise SalesforceError("INVALID_FIELD", f"Field {field.name} is not an External ID or indexed field "
                                  f"for {obj.name}", [field.name])
        return field

    def delete(self, object_name: str, record_id: Any, *, user_id: str) -> str:
        """Soft delete (to the recycle bin), cascading to children as Salesforce's master/lookup deletes do."""
        obj = self._deletable(object_name)
        rid = self.require_live(obj, record_id)
        stamp = self._stamp()
        with self.atomic():
            self._soft_delete(obj, [rid], stamp, user_id)
        return rid

    def hard_delete(self, object_name: str, record_id: Any) -> str:
        """Remove the record for good (also from the bin); `deleted/` still reports it for the bin period."""
        obj = self._deletable(object_name)
        rid = normalize_id(record_id)
        if rid is None or self.record_state(obj, rid) is None:
            raise not_found()
        with self.atomic():
            self._hard_delete(obj, [rid], self._stamp())
        return rid

    def undelete(self, object_name: str, record_id: Any, *, user_id: str) -> str:
        """Restore from the recycle bin, with the children that were deleted in the same operation."""
        obj = self.object(object_name)
        rid = normalize_id(record_id)
        state = self.record_state(obj, rid) if rid else None
        if state is None:
            raise SalesforceError("UNDELETE_FAILED", "Entity is not in the recycle bin", status=404)
        if state == "live":
            raise SalesforceError("UNDELETE_FAILED", "Entity is not in the recycle bin")
        with self.atomic():
            self._undelete(obj, [rid], self._stamp(), user_id)
        return rid

    def maybe_purge(self, every_seconds: float = 60) -> None:
        """Purge the recycle bin (and expired change events) if the last purge is older than `every_seconds`
        (cheap to call per request)."""
        if time.monotonic() - self._last_purge >= every_seconds:
            self.purge_recycle_bin()
            if self.changes is not None:
                self.changes.purge()

    def purge_recycle_bin(self) -> int:
        """Drop what has been in the bin (or deleted for good) longer than the retention period."""
        self._last_purge = time.monotonic()
        cutoff = format_datetime(self.now() - timedelta(days=self.settings.recycle_bin_days))
        purged, latest = 0, ""
        with self.atomic():
            for obj in self.model.objects.values():
                row = self.conn.execute(f"SELECT count(*), max(SystemModstamp) FROM {_q(obj.name)} "
                                        f"WHERE IsDeleted = 1 AND SystemModstamp < ?", (cutoff,)).fetchone()
                if row[0]:
                    self.conn.execute(f"DELETE FROM {_q(obj.name)} WHERE IsDeleted = 1 AND SystemModstamp < ?",
                                      (cutoff,))
                    purged, latest = purged + row[0], max(latest, row[1])
            row = self.conn.execute("SELECT count(*), max(deleted) FROM _tombstones WHERE deleted < ?",
                                    (cutoff,)).fetchone()
            if row[0]:
                self.conn.execute("DELETE FROM _tombstones WHERE deleted < ?", (cutoff,))
                purged, latest = purged + row[0], max(latest, row[1])
            if latest:
                self.set_meta("purged_until", latest)
        return purged

    # ------------------------------------------------------------ write internals

    def _deletable(self, object_name: str) -> ObjectDef:
        obj = self.object(object_name)
        if not obj.deletable:
            raise SalesforceError("INVALID_TYPE_FOR_OPERATION", f"entity type cannot be deleted: {obj.name}")
        return obj

    def _prepare(self, obj: ObjectDef, values: Mapping[str, Any], *, insert: bool, csv: bool) -> dict[str, Any]:
        """Map client keys to fields and client values to stored values, refusing what the API refuses."""
        prepared: dict[str, Any] = {}
        read_only: list[str] = []
        for key, value in values.items():
            if key == "attributes":
                continue
            if csv and value == "":
                continue  # Bulk CSV: an empty cell leaves the field alone; '#N/A' nulls it
            field, value = self._resolve_key(obj, key, value, csv)
            if field.name == "Id" and insert:
                raise SalesforceError("INVALID_FIELD_FOR_INSERT_UPDATE", "cannot specify Id in an insert call",
                                      ["Id"])
            if field.name == "Id":
                continue  # an update body may repeat the record's own Id
            if not (field.createable if insert else field.updateable) or not field.stored:
                read_only.append(field.name)
                continue
            prepared[field.name] = coerce(field, None if csv and value == "#N/A" else value, csv)
        if read_only:
            raise SalesforceError("INVALID_FIELD_FOR_INSERT_UPDATE",
                                  f"Unable to create/update fields: {', '.join(read_only)}. Please check the "
                                  "security settings of this field and verify that it is read/write for your "
                                  "profile or permission set.", read_only)
        return prepared

    def _resolve_key(self, obj: ObjectDef, key: str, value: Any, csv: bool) -> tuple[FieldDef, Any]:
        """A field name, or a relationship addressed by a parent's external id: `{"Account": {"Key__c": v}}`
        in JSON, an `Account.Key__c` column in CSV. The latter resolve to the reference field and parent id."""
        relationship, ext_field = (key.split(".", 1) + [""])[:2] if csv and "." in key else (key, "")
        if not csv and isinstance(value, dict):
            pairs = [(k, v) for k, v in value.items() if k != "attributes"]
            if len(pairs) == 1:
                ext_field, value = pairs[0]
        field = obj.field(key) if not ext_field else obj.relationship(relationship)
        if field is None:
            raise SalesforceError("INVALID_FIELD", f"No such column '{key}' on sobject of type {obj.name}")
        if not ext_field:
            return field, value
        parent = self.object(field.reference_to[0])
        matches = self.find(parent, self.external_id_field(parent, ext_field), value)
        if not matches:
            raise SalesforceError("INVALID_FIELD", f"Foreign key external ID: {value} not found for field "
                                  f"{ext_field} in entity {parent.name}", [field.name])
        if len(matches) > 1:
            raise MultipleMatches(ext_field, value, matches)
        return field, matches[0]

    def _complete(self, obj: ObjectDef, row: dict[str, Any], changed: set[str], *, auto_assign: bool,
                  record_id: str | None) -> str | None:
        """Run Salesforce's save order on the full row: field checks, derived fields, assignment rule,
        required fields, validation rules, uniqueness. Returns the owner the assignment rule chose."""
        for name in changed:
            self._check_value(obj, obj.fields[name], row[name])
        for name, derive in self._derived[obj.name]:
            value = derive(row)
            row[name] = int(value) if isinstance(value, bool) else value
        owner = self._assign(obj, row) if auto_assign else None
        missing = [f.name for f in self._stored[obj.name]
                   if not f.nillable and f.createable and f.type != "boolean" and row.get(f.name) is None]
        if missing:
            raise SalesforceError("REQUIRED_FIELD_MISSING", f"Required fields are missing: [{', '.join(missing)}]",
                                  missing)
        for rule in self.settings.rules_for(obj.name):
            if rule.fires(row):
                raise SalesforceError("FIELD_CUSTOM_VALIDATION_EXCEPTION", rule.message, [rule.field])
        for f in self._stored[obj.name]:
            if f.unique and row.get(f.name) is not None and (record_id is None or f.name in changed):
                others = [i for i in self.find(obj, f, row[f.name]) if i != record_id]
                if others:
                    raise SalesforceError("DUPLICATE_VALUE", f"duplicate value found: {f.name} duplicates value "
                                          f"on record with id: {others[0]}", [f.name])
        return owner

    def _check_value(self, obj: ObjectDef, f: FieldDef, value: Any) -> None:
        if value is None:
            if not f.nillable and f.type != "boolean":
                raise SalesforceError("REQUIRED_FIELD_MISSING", f"Required fields are missing: [{f.name}]", [f.name])
            return
        if f.type in STRING_TYPES and f.length and len(value) > f.length:
            raise SalesforceError("STRING_TOO_LONG", f"{f.label}: data value too large: {value[:50]} "
                                  f"(max length={f.length})", [f.name])
        if f.type == "picklist" and f.restricted_picklist and value not in f.picklist_values:
            raise SalesforceError("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                                  f"{f.label}: bad value for restricted picklist field: {value}", [f.name])
        if f.type == "multipicklist" and f.restricted_picklist:
            bad = [v for v in value.split(";") if v not in f.picklist_values]
            if bad:
                raise SalesforceError("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                                      f"{f.label}: bad value for restricted picklist field: {bad[0]}", [f.name])
        if f.type == "email" and not _EMAIL_RE.match(value):
            raise SalesforceError("INVALID_EMAIL_ADDRESS", f"{f.label}: invalid email address: {value}", [f.name])
        if f.type == "reference":
            self._check_reference(f, value)

    def _check_reference(self, f: FieldDef, value: str) -> None:
        rid = normalize_id(value)
        if rid is None:
            raise SalesforceError("MALFORMED_ID", f"{f.label}: id value of incorrect type: {value}", [f.name])
        target = next((o for o in map(self.model.object, f.reference_to) if o and rid.startswith(o.key_prefix)),
                      None)
        if target is None:
            raise SalesforceError("FIELD_INTEGRITY_EXCEPTION", f"{f.label}: id value of incorrect type: {value}",
                                  [f.name])
        state = self.record_state(target, rid)
        if state != "live":
            code, msg = ("ENTITY_IS_DELETED", "entity is deleted") if state else \
                ("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id")
            raise SalesforceError(code, msg, [f.name])

    def _assign(self, obj: ObjectDef, row: dict[str, Any]) -> str | None:
        rule = self.settings.assignment_rule(obj.name)
        username = rule.owner_for(row) if rule else None
        owner = self.user_id(username) if username else None
        if owner:
            row["OwnerId"] = owner
        return owner

    def _insert(self, obj: ObjectDef, rows: Iterable[Mapping[str, Any]]) -> None:
        names = [f.name for f in self._stored[obj.name]]
        self.conn.executemany(f"INSERT INTO {_q(obj.name)} ({', '.join(map(_q, names))}) "
                              f"VALUES ({', '.join('?' * len(names))})", ([r.get(n) for n in names] for r in rows))

    def _children(self, obj: ObjectDef, ids: list[str], *, deleted: bool) -> Iterator[tuple[ObjectDef, list[str]]]:
        for child, field, extra in child_references(self.model, obj.name):
            if not extra.cascade_delete:
                continue
            marks = ",".join("?" * len(ids))
            rows = self.conn.execute(f"SELECT Id FROM {_q(child.name)} WHERE {_q(field.name)} IN ({marks}) "
                                     f"AND IsDeleted = ?", [*ids, int(deleted)])
            child_ids = [r[0] for r in rows]
            if child_ids:
                yield child, child_ids

    def _soft_delete(self, obj: ObjectDef, ids: list[str], stamp: str, user_id: str) -> None:
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            self.conn.execute(f"UPDATE {_q(obj.name)} SET IsDeleted = 1, SystemModstamp = ?, LastModifiedDate = ?, "
                              f"LastModifiedById = ? WHERE Id IN ({marks})", [stamp, stamp, user_id, *chunk])
            for rid in chunk:
                self._changed(obj, "DELETE", rid, None, None)
            for child, child_ids in list(self._children(obj, chunk, deleted=False)):
                self._soft_delete(child, child_ids, stamp, user_id)

    def _hard_delete(self, obj: ObjectDef, ids: list[str], stamp: str) -> None:
        for chunk in _chunks(ids):
            for child, child_ids in list(self._children(obj, chunk, deleted=False)) + \
                    list(self._children(obj, chunk, deleted=True)):
                self._hard_delete(child, child_ids, stamp)
            marks = ",".join("?" * len(chunk))
            live = self.conn.execute(f"SELECT Id FROM {_q(obj.name)} WHERE Id IN ({marks}) AND IsDeleted = 0", chunk)
            for (rid,) in live.fetchall():
                self._changed(obj, "DELETE", rid, None, None)
            self.conn.execute(f"INSERT OR REPLACE INTO _tombstones (object, Id, deleted) SELECT ?, Id, "
                              f"CASE WHEN IsDeleted = 1 THEN SystemModstamp ELSE ? END FROM {_q(obj.name)} "
                              f"WHERE Id IN ({marks})", [obj.name, stamp, *chunk])
            self.conn.execute(f"DELETE FROM {_q(obj.name)} WHERE Id IN ({marks})", chunk)

    def _undelete(self, obj: ObjectDef, ids: list[str], stamp: str, user_id: str) -> None:
        for rid in ids:
            row = self.row(obj, rid) or {}
            deleted_at = row.get("SystemModstamp")
            for f in self._stored[obj.name]:
                if f.unique and row.get(f.name) and self.find(obj, f, row[f.name]):
                    raise SalesforceError("DUPLICATE_VALUE", f"duplicate value found: {f.name}", [f.name])
            children = [(c, [i for i in ids_ if self._deleted_at(c, i) == deleted_at])
                        for c, ids_ in self._children(obj, [rid], deleted=True)]
            self.conn.execute(f"UPDATE {_q(obj.name)} SET IsDeleted = 0, SystemModstamp = ?, LastModifiedDate = ?, "
                              f"LastModifiedById = ? WHERE Id = ?", (stamp, stamp, user_id, rid))
            self._changed(obj, "UNDELETE", rid, None, self.row(obj, rid))
            for child, child_ids in children:
                if child_ids:
                    self._undelete(child, child_ids, stamp, user_id)

    def _changed(self, obj: ObjectDef, change_type: str, rid: str, old: Mapping[str, Any] | None,
                 new: Mapping[str, Any] | None) -> None:
        if self.changes is not None:
            self.changes.record(obj, change_type, rid, old, new)

    def _deleted_at(self, obj: ObjectDef, rid: str) -> str | None:
        row = self.conn.execute(f"SELECT SystemModstamp FROM {_q(obj.name)} WHERE Id = ?", (rid,)).fetchone()
        return row[0] if row else None

    # ------------------------------------------------------------ org bootstrap and seeding

    def ensure_org(self, api_username: str) -> tuple[str, str]:
        """Create the Organization row, the API user and the sales users once; return (org id, API user id)."""
        org_id, user_id = self.meta("org_id"), self.meta("api_user_id")
        stamp = self._stamp()
        audit = dict(IsDeleted=0, CreatedDate=stamp, LastModifiedDate=stamp, SystemModstamp=stamp)
        with self.atomic():
            if user_id is None:
                user_id = self.next_ids("005")[0]
                self.set_meta("api_user_id", user_id)
                self._insert(self.model.objects["User"], [self._user_row(user_id, api_username, "Integration",
                                                                         "API User", None, audit)])
            self.conn.execute('UPDATE "User" SET Username = ? WHERE Id = ?', (api_username, user_id))
            if org_id is None:
                org_id = self.next_ids("00D")[0]
                self.set_meta("org_id", org_id)
                self._insert(self.model.objects["Organization"], [{
                    **audit, "Id": org_id, "OrganizationType": "Enterprise Edition", "InstanceName": "SBX1",
                    "Country": "United States", "DefaultLocaleSidKey": "en_US", "TimeZoneSidKey": "Europe/London",
                    "LanguageLocaleKey": "en_US", "CreatedById": user_id, "LastModifiedById": user_id}])
            self.conn.execute('UPDATE "Organization" SET Name = ?, IsSandbox = ? WHERE Id = ?',
                              (self.settings.org_name, int(self.settings.is_sandbox), org_id))
            for username, (first, last, country) in SALES_OWNERS.items():
                if self.user_id(username) is None:
                    uid = self.next_ids("005")[0]
                    self._insert(self.model.objects["User"], [self._user_row(uid, username, first, last, country,
                                                                             {**audit, "CreatedById": user_id,
                                                                              "LastModifiedById": user_id})])
        return org_id, user_id

    @staticmethod
    def _user_row(uid: str, username: str, first: str, last: str, country: str | None,
                  audit: Mapping[str, Any]) -> dict[str, Any]:
        return {"CreatedById": uid, "LastModifiedById": uid, **audit, "Id": uid, "Username": username,
                "FirstName": first, "LastName": last, "Name": f"{first} {last}", "Email": username,
                "Alias": (first[:1] + last)[:8].lower(), "IsActive": 1, "Country": country,
                "TimeZoneSidKey": "Europe/London", "LocaleSidKey": "en_US", "LanguageLocaleKey": "en_US",
                "EmailEncodingKey": "UTF-8"}

    def seed_contacts(self, n: int, *, user_id: str) -> int:
        """Insert n generated contacts and n/5 accounts in one transaction, once per store. Returns how many
        contacts were added (0 when the store already holds contacts or a seed)."""
        contact_obj, account_obj = self.model.objects["Contact"], self.model.objects["Account"]
        if n <= 0 or self.meta("seeded_contacts") is not None or self.count(contact_obj, include_deleted=True):
            return 0
        rng, now = random.Random(_SEED), self.now()
        owners = {country: self.user_id(u) for rule in self.settings.assignment_rules
                  for u, countries in rule.owners.items() for country in countries}
        account_count = max(1, n // 5)
        with self.atomic():
            account_ids = self.next_ids(account_obj.key_prefix, account_count)
            accounts = [self._seed_row(account_obj, a, account_ids[i], owners.get(a["BillingCountry"]) or user_id,
                                       user_id) for i, a in enumerate(seed.accounts(rng, account_count, now))]
            self._insert(account_obj, accounts)
            contact_ids = self.next_ids(contact_obj.key_prefix, n)
            rows = []
            for i, c in enumerate(seed.contacts(rng, n, account_count, now)):
                c["AccountId"] = account_ids[c["_account"]] if c["_account"] is not None else None
                rows.append(self._seed_row(contact_obj, c, contact_ids[i],
                                           owners.get(c["MailingCountry"]) or user_id, user_id))
            self._insert(contact_obj, rows)
            self.set_meta("seeded_contacts", str(n))
        return n

    def _seed_row(self, obj: ObjectDef, data: dict[str, Any], rid: str, owner: str, user_id: str) -> dict[str, Any]:
        created, modified = format_datetime(data.pop("_created")), format_datetime(data.pop("_modified"))
        data.pop("_account", None)
        row = {**self._defaults[obj.name], **data}
        row.update(Id=rid, IsDeleted=0, OwnerId=owner, CreatedDate=created, CreatedById=user_id,
                   LastModifiedDate=modified, LastModifiedById=user_id, SystemModstamp=modified)
        for name, derive in self._derived[obj.name]:
            row[name] = derive(row)
        return row


class MultipleMatches(SalesforceError):
    """More than one record has the external id: REST answers 300 with their URLs."""

    def __init__(self, field: str, value: Any, ids: list[str]) -> None:
        super().__init__("DUPLICATE_EXTERNAL_ID", f"{field}: more than one record found for external id field: "
                         f"{ids}", [field], status=300)
        self.ids = ids


def _q(name: str) -> str:
    return f'"{name}"'


def _chunks(ids: list[str], size: int = 500) -> Iterator[list[str]]:
    for i in range(0, len(ids), size):
        yield ids[i:i + size]


def _default(f: FieldDef) -> Any:
    if f.type == "boolean":
        return int(bool(f.default_value))
    return f.default_value
