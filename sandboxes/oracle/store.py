"""SQLite storage for the Oracle CRM On Demand sandbox: records, row ids, deleted items, integration events and
the sandbox clock.

One table per record type (named like it), one column per stored field, values in the encodings of values.py.
REST and Web Services both write through `insert` / `update` / `delete`, so the server-side rules hold whatever
API is used: required fields, unique user keys (ExternalSystemId, IntegrationId), references that must exist,
audit fields maintained by the server (CreatedDate, ModifiedDate, CreatedById, ModifiedById).

Deleting moves the row to `_deleted_items` (the Deleted Items area that DeletedItemQueryPage reads, sorted by
DeletedDate); rows older than the retention period are purged as the sandbox clock advances.

Invariants:
- `now()` is the sandbox clock: real UTC time plus an admin-set offset that is stored in `_meta`, so the clock
  (and therefore every ModifiedDate) never jumps back when the sandbox restarts.
- All access happens on the server's event-loop thread through one connection in autocommit mode; `atomic()`
  nests as SAVEPOINTs, so a Web Services batch is all-or-nothing as Oracle documents.
- Row ids come from one persisted counter, so a fresh sandbox hands out the same ids in the same order.
"""
from __future__ import annotations

import json
import sqlite3
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from .errors import DUPLICATE, NO_RECORD, NO_REFERENCE, REQUIRED, OracleError
from .model import DELETED_ITEM, RECORD_TYPES, USER, Field, RecordType
from .query import Comparison, Junction, Node
from .values import utc_text

DB_FILE = "oracle.sqlite3"
ID_PREFIX = "1SBX"
_ID_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_ID_BASE = 36 ** 5  # ids start at 100000 in base 36, so they always have six characters after the dash
_INDEXED = ("ModifiedDate", "ExternalSystemId", "IntegrationId", "AccountId", "ContactId", "OpportunityId")
_SQL_TYPES = {"boolean": "INTEGER", "integer": "INTEGER", "number": "REAL", "currency": "REAL"}


def q(name: str) -> str:
    return f'"{name}"'


def format_id(number: int) -> str:
    digits, n = "", number + _ID_BASE
    while n:
        n, rem = divmod(n, 36)
        digits = _ID_ALPHABET[rem] + digits
    return f"{ID_PREFIX}-{digits}"


class Store:
    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / DB_FILE
        self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "case_sensitive_like=ON"):
            self.conn.execute(f"PRAGMA {pragma}")
        self._depth = 0
        self._migrate()
        self.clock_offset = timedelta(seconds=float(self.meta("clock_offset") or 0))

    def close(self) -> None:
        self.conn.close()

    # ------------------------------------------------------------ schema and metadata

    def _migrate(self) -> None:
        """Create missing tables, columns and indexes; never drops anything, so state survives upgrades."""
        self.conn.execute("CREATE TABLE IF NOT EXISTS _meta (key TEXT PRIMARY KEY, value TEXT)")
        self.conn.execute("CREATE TABLE IF NOT EXISTS _deleted_items (DeletedItemId TEXT PRIMARY KEY, "
                          "Type TEXT NOT NULL, ObjectId TEXT NOT NULL, Name TEXT, ExternalSystemId TEXT, "
                          "DeletedById TEXT, DeletedBy TEXT, DeletedDate TEXT NOT NULL, Row TEXT NOT NULL)")
        self.conn.execute("CREATE INDEX IF NOT EXISTS _deleted_items_date ON _deleted_items (DeletedDate, "
                          "DeletedItemId)")
        self.conn.execute("CREATE TABLE IF NOT EXISTS _events (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                          "Type TEXT, ObjectId TEXT, Operation TEXT, Api TEXT, Created TEXT)")
        for rt in RECORD_TYPES.values():
            columns = ", ".join(f"{q(f.name)} {_SQL_TYPES.get(f.type, 'TEXT')}" +
                                (" PRIMARY KEY" if f.name == "Id" else "") for f in rt.stored_fields())
            self.conn.execute(f"CREATE TABLE IF NOT EXISTS {q(rt.name)} ({columns})")
            existing = {row[1] for row in self.conn.execute(f"PRAGMA table_info({q(rt.name)})")}
            for f in rt.stored_fields():
                if f.name not in existing:
                    self.conn.execute(f"ALTER TABLE {q(rt.name)} ADD COLUMN {q(f.name)} "
                                      f"{_SQL_TYPES.get(f.type, 'TEXT')}")
            for name in _INDEXED:
                if name in rt.fields:
                    index_columns = f"{q(name)}, {q('Id')}" if name == "ModifiedDate" else q(name)
                    self.conn.execute(f"CREATE INDEX IF NOT EXISTS {q(rt.name + '_' + name)} ON {q(rt.name)} "
                                      f"({index_columns})")

    def meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM _meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT INTO _meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET "
                          "value = excluded.value", (key, value))

    @contextmanager
    def atomic(self) -> Iterator[None]:
        """A transaction (outermost) or savepoint (nested); any exception rolls it back and propagates."""
        name = f"sp{self._depth}"
        self.conn.execute("BEGIN" if self._depth == 0 else f"SAVEPOINT {name}")
        self._depth += 1
        try:
            yield
        except BaseException:
            self._depth -= 1
            self.conn.execute("ROLLBACK" if self._depth == 0 else f"ROLLBACK TO {name}")
            if self._depth:
                self.conn.execute(f"RELEASE {name}")
            raise
        self._depth -= 1
        self.conn.execute("COMMIT" if self._depth == 0 else f"RELEASE {name}")

    # ------------------------------------------------------------ the sandbox clock

    def now(self) -> datetime:
        return datetime.now(timezone.utc) + self.clock_offset

    def stamp(self) -> str:
        return utc_text(self.now())

    def set_clock(self, *, offset_seconds: float | None = None, at: datetime | None = None) -> datetime:
        """Run the clock `offset_seconds` ahead of real time, or make it read `at` now (and run on from there)."""
        if at is not None:
            offset = at - datetime.now(timezone.utc)
        else:
            offset = timedelta(seconds=float(offset_seconds or 0))
        self.clock_offset = offset
        self.set_meta("clock_offset", str(offset.total_seconds()))
        return self.now()

    # ------------------------------------------------------------ ids

    def next_ids(self, count: int = 1) -> list[str]:
        first = int(self.meta("next_id") or 0)
        self.set_meta("next_id", str(first + count))
        return [format_id(n) for n in range(first, first + count)]

    # ------------------------------------------------------------ reads

    def select(self, rt: RecordType, fields: Sequence[Field], where: Node | None = None,
               order: Sequence[tuple[str, bool]] = (), offset: int = 0, limit: int | None = None) \
            -> list[dict[str, Any]]:
        """Rows of `rt` matching `where`, as {field name: stored value}, sorted by `order` [(field, descending)]
        and then by Id so pages never overlap."""
        columns = ", ".join(f"{self.expression(rt, f)} AS {q(f.name)}" for f in fields) or "t.Id"
        sql, params = f"SELECT {columns} FROM {q(rt.name)} t", []
        if where is not None:
            clause, params = self._where(rt, where)
            sql += f" WHERE {clause}"
        keys = [f"{self.expression(rt, rt.fields[name])} {'DESC' if desc else 'ASC'}" for name, desc in order]
        if not any(name == "Id" for name, _ in order):
            keys.append("t.Id ASC")
        sql += " ORDER BY " + ", ".join(keys)
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            params += [limit, offset]
        cursor = self.conn.execute(sql, params)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor]

    def count(self, rt: RecordType, where: Node | None = None) -> int:
        sql, params = f"SELECT count(*) FROM {q(rt.name)} t", []
        if where is not None:
            clause, params = self._where(rt, where)
            sql += f" WHERE {clause}"
        return int(self.conn.execute(sql, params).fetchone()[0])

    def get(self, rt: RecordType, record_id: str) -> dict[str, Any] | None:
        rows = self.select(rt, rt.stored_fields(), Comparison("Id", "=", record_id))
        return rows[0] if rows else None

    def ids_by(self, rt: RecordType, field: str, value: Any) -> list[str]:
        return [r[0] for r in self.conn.execute(f"SELECT Id FROM {q(rt.name)} WHERE {q(field)} = ? LIMIT 2",
                                                (value,))]

    @staticmethod
    def expression(rt: RecordType, field: Field) -> str:
        """SQL for a field of `rt` (table alias t): a column, an upper-cased CI_ copy or a joined value."""
        if field.ci_of:
            return f"UPPER(t.{q(field.ci_of)})"
        if field.joined:
            id_field, target_field = field.joined
            target = RECORD_TYPES[rt.fields[id_field].references or ""]
            return f"(SELECT j.{q(target_field)} FROM {q(target.name)} j WHERE j.Id = t.{q(id_field)})"
        return f"t.{q(field.name)}"

    def _where(self, rt: RecordType, node: Node) -> tuple[str, list[Any]]:
        if isinstance(node, Junction):
            parts = [self._where(rt, item) for item in node.items]
            sql = f" {node.op} ".join(f"({p})" for p, _ in parts)
            return sql, [value for _, values in parts for value in values]
        column = self.expression(rt, rt.fields[node.field])
        if node.op in ("IS NULL", "IS NOT NULL"):
            return f"({column} {node.op} OR {column} = '')" if node.op == "IS NULL" else \
                f"({column} IS NOT NULL AND {column} <> '')", []
        value = node.value
        if node.case_insensitive and isinstance(value, str):
            column, value = f"UPPER({column})", value.upper()
        if node.op == "LIKE":
            return f"{column} LIKE ? ESCAPE '\\'", [value]
        return f"{column} {node.op} ?", [value]

    # ------------------------------------------------------------ writes

    def insert(self, rt: RecordType, values: Mapping[str, Any], *, user_id: str, api: str = "rest",
               echo: bool = True) -> str:
        """Create a record from storage-encoded `values`; returns its row id."""
        record_id = self.next_ids()[0]
        stamp = self.stamp()
        row = {f.name: None for f in rt.stored_fields()}
        row.update({k: v for k, v in values.items() if k != "Id"})
        if "OwnerId" in row and row["OwnerId"] is None:
            row["OwnerId"] = user_id
        row.update(Id=record_id, CreatedDate=stamp, ModifiedDate=stamp, CreatedById=user_id, ModifiedById=user_id)
        row = {k: v for k, v in row.items() if k in rt.fields and rt.fields[k].stored}
        self._check(rt, row, record_id)
        self._insert_rows(rt, [row])
        self._event(rt, record_id, "insert", api, echo)
        return record_id

    def update(self, rt: RecordType, record_id: str, values: Mapping[str, Any], *, user_id: str,
               api: str = "rest", echo: bool = True) -> None:
        current = self.get(rt, record_id)
        if current is None:
            raise OracleError(NO_RECORD, rt.name, "Id", record_id)
        changes = {k: v for k, v in values.items() if k != "Id"}
        row = {**current, **changes, "ModifiedDate": self.stamp(), "ModifiedById": user_id}
        self._check(rt, row, record_id, changed=set(changes))
        assignments = ", ".join(f"{q(k)} = ?" for k in (*changes, "ModifiedDate", "ModifiedById"))
        self.conn.execute(f"UPDATE {q(rt.name)} SET {assignments} WHERE Id = ?",
                          [*changes.values(), row["ModifiedDate"], user_id, record_id])
        self._event(rt, record_id, "update", api, echo)

    def delete(self, rt: RecordType, record_id: str, *, user_id: str, api: str = "rest", echo: bool = True) -> None:
        """Move a record to the Deleted Items area."""
        row = self.get(rt, record_id)
        if row is None:
            raise OracleError(NO_RECORD, rt.name, "Id", record_id)
        name = " ".join(str(row.get(f) or "") for f in rt.name_fields).strip()
        deleter = self.get(USER, user_id) or {}
        self.conn.execute("INSERT INTO _deleted_items VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (
            self.next_ids()[0], rt.name, record_id, name, row.get("ExternalSystemId"), user_id,
            f"{deleter.get('FirstName', '')} {deleter.get('LastName', '')}".strip(), self.stamp(), json.dumps(row)))
        self.conn.execute(f"DELETE FROM {q(rt.name)} WHERE Id = ?", (record_id,))
        self._event(rt, record_id, "delete", api, echo)

    def undelete(self, deleted_item_id: str) -> tuple[str, str]:
        """Restore a deleted item; returns (record type, row id)."""
        found = self.conn.execute("SELECT Type, Row FROM _deleted_items WHERE DeletedItemId = ? OR ObjectId = ?",
                                  (deleted_item_id, deleted_item_id)).fetchone()
        if found is None:
            raise ValueError(f"no deleted item {deleted_item_id!r}")
        rt, row = RECORD_TYPES[found[0]], json.loads(found[1])
        with self.atomic():
            self._check(rt, row, row["Id"])
            self._insert_rows(rt, [row])
            self.conn.execute("DELETE FROM _deleted_items WHERE ObjectId = ?", (row["Id"],))
        return rt.name, row["Id"]

    def purge_deleted(self, retention_days: int) -> int:
        cutoff = utc_text(self.now() - timedelta(days=retention_days))
        return self.conn.execute("DELETE FROM _deleted_items WHERE DeletedDate < ?", (cutoff,)).rowcount

    def deleted_items(self, where: Node | None, offset: int, limit: int) -> list[dict[str, Any]]:
        """Deleted items matching `where` (fields of model.DELETED_ITEM), sorted by DeletedDate as Oracle does."""
        names = list(DELETED_ITEM.fields)
        sql, params = f"SELECT {', '.join(names)} FROM _deleted_items t", []
        if where is not None:
            clause, params = self._where(DELETED_ITEM, where)
            sql += f" WHERE {clause}"
        cursor = self.conn.execute(sql + " ORDER BY DeletedDate, DeletedItemId LIMIT ? OFFSET ?",
                                   [*params, limit, offset])
        return [dict(zip(names, row)) for row in cursor]

    def event_counts(self) -> dict[str, int]:
        return {f"{t} {op}": n for t, op, n in self.conn.execute(
            "SELECT Type, Operation, count(*) FROM _events GROUP BY Type, Operation")}

    def _event(self, rt: RecordType, record_id: str, operation: str, api: str, echo: bool) -> None:
        """Record an integration event unless the Web Services caller sent Echo=Off (The Echo Argument)."""
        if echo:
            self.conn.execute("INSERT INTO _events (Type, ObjectId, Operation, Api, Created) VALUES (?, ?, ?, ?, ?)",
                              (rt.name, record_id, operation, api, self.stamp()))

    def _insert_rows(self, rt: RecordType, rows: Sequence[Mapping[str, Any]]) -> None:
        names = [f.name for f in rt.stored_fields()]
        self.conn.executemany(f"INSERT INTO {q(rt.name)} ({', '.join(q(n) for n in names)}) VALUES "
                              f"({', '.join('?' * len(names))})", [[r.get(n) for n in names] for r in rows])

    def _check(self, rt: RecordType, row: Mapping[str, Any], record_id: str,
               changed: set[str] | None = None) -> None:
        """Server-side rules for a record as it would be saved; uniqueness and references are checked for the
        `changed` fields only (all fields when None), so a record pointing at a since-deleted account can still
        be updated."""
        for f in rt.stored_fields():
            value = row.get(f.name)
            if f.mandatory and value in (None, ""):
                raise OracleError(REQUIRED, f.title)
            if value in (None, "") or (changed is not None and f.name not in changed):
                continue
            if f.unique and any(i != record_id for i in self.ids_by(rt, f.name, value)):
                raise OracleError(DUPLICATE, f.title)
            if f.references and f.updatable and not self.ids_by(RECORD_TYPES[f.references], "Id", value):
                raise OracleError(NO_REFERENCE, value, f.name)

    # ------------------------------------------------------------ users and seeding

    def ensure_users(self, login: str, zone_name: str, time_zone_label: str) -> str:
        """Create the API user (once) and keep its sign-in id and time zone current; returns its row id."""
        user_id = self.meta("api_user_id")
        stamp = self.stamp()
        with self.atomic():
            if user_id is None:
                user_id = self.next_ids()[0]
                self.set_meta("api_user_id", user_id)
                self._insert_rows(USER, [{"Id": user_id, "FirstName": "Integration", "LastName": "User",
                                          "Alias": "integration", "EmailAddr": "integration@crmsync.example",
                                          "Role": "Administrator", "Status": "Active", "CreatedDate": stamp,
                                          "ModifiedDate": stamp}])
            self.conn.execute('UPDATE "User" SET UserLoginId = ?, TimeZoneName = ? WHERE Id = ?',
                              (login, time_zone_label, user_id))
        self.set_meta("user_timezone", zone_name)
        return user_id

    def signed_in(self, user_id: str) -> str | None:
        """Stamp the user's LastLoggedIn; returns the previous value."""
        previous = self.conn.execute('SELECT LastLoggedIn FROM "User" WHERE Id = ?', (user_id,)).fetchone()
        self.conn.execute('UPDATE "User" SET LastLoggedIn = ? WHERE Id = ?', (self.stamp(), user_id))
        return previous[0] if previous else None

    def bulk_insert(self, rt: RecordType, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert prepared rows without per-row checks (seeding only)."""
        self._insert_rows(rt, rows)
