"""SQLite storage for the Dynamics sandbox: records, row versions, deletions for change tracking, org identity.

Everything Dataverse does around a write happens here, so single requests, `$batch` parts and the *Multiple
actions behave the same: audit columns (createdon/modifiedon/createdby/modifiedby), the owner, statecode and
statuscode defaults, derived columns (fullname), alternate-key uniqueness, and the row version.

Invariants:
  * `versionnumber` comes from one org-wide counter and grows with every write; a record's ETag is
    `W/"<versionnumber>"`. Change tracking reads "everything with a version above the token's version".
  * A delete removes the row and records `(entity, id, versionnumber, deletedon)` in `_deleted`, so a record
    created and deleted between two syncs still shows up as deleted.
  * Alternate keys are unique case-insensitively among non-null values (Dataverse's unique index, SQL Server's
    case-insensitive collation).

All access happens on the server's event-loop thread (one connection, autocommit); `atomic()` nests as
SAVEPOINTs so a `$batch` change set or an *Multiple action rolls back as a whole.
"""
from __future__ import annotations

import sqlite3
import uuid
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from .errors import DUPLICATE_RECORD, DataverseError
from .model import ENTITIES, Attribute, Entity, NUMBER_TYPES, INTEGER_TYPES
from .odata import format_datetime
from .settings import OrgSettings

DB_FILE = "dynamics.sqlite3"


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sql_type(attr: Attribute) -> str:
    if attr.type in INTEGER_TYPES or attr.type == "Boolean":
        return "INTEGER"
    if attr.type in NUMBER_TYPES:
        return "REAL"
    return "TEXT"


def columns_of(entity: Entity) -> list[str]:
    """Storage columns of an entity in table order (polymorphic lookups add `<name>__type`)."""
    columns = []
    for attr in entity.stored():
        columns.append(attr.name)
        if attr.polymorphic:
            columns.append(f"{attr.name}__type")
    return columns


class Store:
    """The organization's data. `now()` is the sandbox clock: real UTC time plus an admin-settable offset, or a
    moment the admin API holds it at."""

    def __init__(self, state_dir: Path, settings: OrgSettings) -> None:
        self.settings = settings
        self.path = Path(state_dir) / DB_FILE
        self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.clock_offset = timedelta(0)
        self.frozen_at: datetime | None = None  # admin: the clock held at this moment (writes share their times)
        self._depth = 0
        self._columns = {name: columns_of(entity) for name, entity in ENTITIES.items()}
        self._migrate()

    def close(self) -> None:
        self.conn.close()

    # ------------------------------------------------------------ schema and identity

    def _migrate(self) -> None:
        """Create missing tables, columns and indexes; never drops anything, so state survives upgrades."""
        self.conn.execute("CREATE TABLE IF NOT EXISTS _meta (key TEXT PRIMARY KEY, value TEXT)")
        self.conn.execute("CREATE TABLE IF NOT EXISTS _deleted (entity TEXT NOT NULL, id TEXT NOT NULL, "
                          "versionnumber INTEGER NOT NULL, deletedon TEXT NOT NULL)")
        self.conn.execute("CREATE INDEX IF NOT EXISTS ix__deleted ON _deleted (entity, versionnumber)")
        for entity in ENTITIES.values():
            types = {a.name: _sql_type(a) for a in entity.stored()}
            columns = [f"{_q(c)} {types.get(c, 'TEXT')}" + (" PRIMARY KEY" if c == entity.primary_id else "")
                       for c in self._columns[entity.name]]
            self.conn.execute(f"CREATE TABLE IF NOT EXISTS {_q(entity.name)} ({', '.join(columns)})")
            present = {row[1] for row in self.conn.execute(f"PRAGMA table_info({_q(entity.name)})")}
            for column in self._columns[entity.name]:
                if column not in present:
                    self.conn.execute(f"ALTER TABLE {_q(entity.name)} ADD COLUMN {_q(column)} "
                                      f"{types.get(column, 'TEXT')}")
            self._index(entity, "versionnumber", '"versionnumber"')
            self._index(entity, "modifiedon", '"modifiedon"')
            for key in entity.keys:
                expr = ", ".join(f"lower({_q(a)})" for a in key.attributes)
                where = " AND ".join(f"{_q(a)} IS NOT NULL" for a in key.attributes)
                self.conn.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS {_q(f'ak_{entity.name}_{key.name}')} "
                                  f"ON {_q(entity.name)} ({expr}) WHERE {where}")
            for attr in entity.stored():
                if attr.is_lookup and attr.name not in ("createdby", "modifiedby"):
                    self._index(entity, attr.name, _q(attr.name))

    def _index(self, entity: Entity, name: str, expression: str) -> None:
        self.conn.execute(f"CREATE INDEX IF NOT EXISTS {_q(f'ix_{entity.name}_{name}')} "
                          f"ON {_q(entity.name)} ({expression})")

    def ensure_org(self, username: str, client_id: str) -> dict[str, str]:
        """The organization, business unit, API user and application user ids, created on first start."""
        ids = {k: self.meta(k) for k in ("organization_id", "business_unit_id", "user_id", "app_user_id")}
        if all(ids.values()):
            return ids  # type: ignore[return-value]
        ids = {k: v or str(uuid.uuid4()) for k, v in ids.items()}
        for key, value in ids.items():
            self.set_meta(key, value)  # type: ignore[arg-type]
        self.insert(ENTITIES["systemuser"], {"firstname": "Integration", "lastname": "User", "domainname": username,
                                             "internalemailaddress": username,
                                             "azureactivedirectoryobjectid": str(uuid.uuid4()), "isdisabled": 0},
                    user_id=ids["user_id"], record_id=ids["user_id"])  # type: ignore[arg-type]
        self.insert(ENTITIES["systemuser"], {"firstname": "# crmsync", "lastname": "Application",
                                             "domainname": f"{client_id}@crmsync.onmicrosoft.com",
                                             "applicationid": client_id, "isdisabled": 0},
                    user_id=ids["user_id"], record_id=ids["app_user_id"])  # type: ignore[arg-type]
        return ids  # type: ignore[return-value]

    # ------------------------------------------------------------ small utilities

    def now(self) -> datetime:
        return self.frozen_at or datetime.now(timezone.utc) + self.clock_offset

    def meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM _meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT INTO _meta (key, value) VALUES (?, ?) "
                          "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    def next_version(self, count: int = 1) -> int:
        """Reserve `count` row versions; returns the first one."""
        row = self.conn.execute("INSERT INTO _meta (key, value) VALUES ('version', ?) ON CONFLICT (key) DO UPDATE "
                                "SET value = CAST(value AS INTEGER) + ? RETURNING value",
                                (str(1000 + count), count)).fetchone()
        return int(row[0]) - count + 1

    def current_version(self) -> int:
        return int(self.meta("version") or 1000)

    @contextmanager
    def atomic(self) -> Iterator[None]:
        """A (nested) transaction: everything inside is rolled back when the block raises."""
        name = f"sp{self._depth}"
        self._depth += 1
        self.conn.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            self.conn.execute(f"ROLLBACK TO {name}")
            self.conn.execute(f"RELEASE {name}")
            raise
        else:
            self.conn.execute(f"RELEASE {name}")
        finally:
            self._depth -= 1

    # ------------------------------------------------------------ reads

    def get(self, entity: Entity, record_id: str) -> dict[str, Any] | None:
        cur = self.conn.execute(f"SELECT * FROM {_q(entity.name)} WHERE {_q(entity.primary_id)} = ?",
                                (record_id.lower(),))
        values = cur.fetchone()
        return dict(zip((d[0] for d in cur.description), values)) if values else None

    def find_by_key(self, entity: Entity, key: Mapping[str, Any]) -> str | None:
        """The id of the record whose alternate-key columns equal `key` (case-insensitively), or None."""
        # "IS NOT NULL" lets SQLite use the partial unique index of the key (ak_<entity>_<key>)
        where = " AND ".join(f"lower({_q(name)}) = lower(?) AND {_q(name)} IS NOT NULL" for name in key)
        row = self.conn.execute(f"SELECT {_q(entity.primary_id)} FROM {_q(entity.name)} WHERE {where}",
                                [str(v) for v in key.values()]).fetchone()
        return row[0] if row else None

    def select(self, entity: Entity, where: str = "", params: Sequence[Any] = (), order: str = "",
               limit: int | None = None) -> list[dict[str, Any]]:
        sql = f"SELECT * FROM {_q(entity.name)}" + (f" WHERE {where}" if where else "") + \
              (f" ORDER BY {order}" if order else "") + (f" LIMIT {int(limit)}" if limit is not None else "")
        cur = self.conn.execute(sql, list(params))
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]

    def count(self, entity: Entity, where: str = "", params: Sequence[Any] = ()) -> int:
        sql = f"SELECT count(*) FROM {_q(entity.name)}" + (f" WHERE {where}" if where else "")
        return int(self.conn.execute(sql, list(params)).fetchone()[0])

    def deletions(self, entity: Entity, after_version: int, up_to_version: int, limit: int) \
            -> list[tuple[str, int]]:
        rows = self.conn.execute("SELECT id, versionnumber FROM _deleted WHERE entity = ? AND versionnumber > ? "
                                 "AND versionnumber <= ? ORDER BY versionnumber LIMIT ?",
                                 (entity.name, after_version, up_to_version, limit))
        return [(r[0], int(r[1])) for r in rows]

    # ------------------------------------------------------------ writes

    def insert(self, entity: Entity, values: Mapping[str, Any], *, user_id: str, record_id: str | None = None) \
            -> str:
        """Create a record from storage-form `values`; returns its id. Raises 412 DuplicateRecord on a key clash."""
        record_id = (record_id or str(uuid.uuid4())).lower()
        stamp = format_datetime(self.now())
        row = {**self._defaults(entity, user_id), **values, entity.primary_id: record_id}
        row.update(createdon=values.get("overriddencreatedon") or stamp, modifiedon=stamp,
                   versionnumber=self.next_version())
        if "createdby" in entity.attributes:
            row.update(createdby=user_id, modifiedby=user_id)
        self._derive(entity, row)
        columns = [c for c in self._columns[entity.name] if c in row]
        try:
            self.conn.execute(f"INSERT INTO {_q(entity.name)} ({', '.join(map(_q, columns))}) "
                              f"VALUES ({', '.join('?' * len(columns))})", [row[c] for c in columns])
        except sqlite3.IntegrityError as exc:
            raise self._integrity(entity, exc, record_id) from None
        return record_id

    def update(self, entity: Entity, record_id: str, values: Mapping[str, Any], *, user_id: str) -> int:
        """Apply storage-form `values` to an existing record; returns its new version."""
        row = dict(values)
        row.update(modifiedon=format_datetime(self.now()), versionnumber=self.next_version())
        if "modifiedby" in entity.attributes:
            row["modifiedby"] = user_id
        if any(source in row for sources in entity.derived.values() for source in sources):
            current = self.get(entity, record_id) or {}
            self._derive(entity, row, current)
        assignments = ", ".join(f"{_q(c)} = ?" for c in row)
        try:
            self.conn.execute(f"UPDATE {_q(entity.name)} SET {assignments} WHERE {_q(entity.primary_id)} = ?",
                              [*row.values(), record_id])
        except sqlite3.IntegrityError as exc:
            raise self._integrity(entity, exc, record_id) from None
        return int(row["versionnumber"])

    def delete(self, entity: Entity, record_id: str, *, user_id: str) -> bool:
        """Remove a record; remember it for change tracking and, for an audited table, in the audit log."""
        cur = self.conn.execute(f"DELETE FROM {_q(entity.name)} WHERE {_q(entity.primary_id)} = ?", (record_id,))
        if cur.rowcount:
            stamp = format_datetime(self.now())
            self.conn.execute("INSERT INTO _deleted (entity, id, versionnumber, deletedon) VALUES (?, ?, ?, ?)",
                              (entity.name, record_id, self.next_version(), stamp))
            if entity.audited:
                self.insert(ENTITIES["audit"], {"operation": 3, "action": 3, "objecttypecode": entity.name,
                                                "objectid": record_id, "objectid__type": entity.name,
                                                "userid": user_id}, user_id=user_id)
        return cur.rowcount > 0

    def insert_many(self, entity: Entity, rows: Sequence[Mapping[str, Any]], *, user_id: str,
                    created: Sequence[str]) -> None:
        """Bulk insert for seeding: rows already carry ids; audit columns come from `created` (one per row)."""
        first = self.next_version(len(rows))
        defaults = self._defaults(entity, user_id)
        prepared = []
        for offset, (values, stamp) in enumerate(zip(rows, created)):
            row = {**defaults, **values, "createdon": stamp, "modifiedon": stamp, "versionnumber": first + offset,
                   "createdby": user_id, "modifiedby": user_id}
            self._derive(entity, row)
            prepared.append(row)
        columns = [c for c in self._columns[entity.name] if c in prepared[0]]
        self.conn.executemany(f"INSERT INTO {_q(entity.name)} ({', '.join(map(_q, columns))}) "
                              f"VALUES ({', '.join('?' * len(columns))})",
                              [[row.get(c) for c in columns] for row in prepared])

    def _defaults(self, entity: Entity, user_id: str) -> dict[str, Any]:
        defaults: dict[str, Any] = {}
        if "ownerid" in entity.attributes:
            defaults.update(ownerid=user_id, ownerid__type="systemuser")
        state = entity.attribute("statecode")
        status = entity.attribute("statuscode")
        if state is not None and status is not None and status.option_set is not None:
            defaults.update(statecode=0, statuscode=next(o.value for o in status.option_set.options if o.state == 0))
        for attr in entity.stored():
            if attr.type == "Boolean" and attr.name not in defaults:
                defaults[attr.name] = 0
        return defaults

    @staticmethod
    def _derive(entity: Entity, row: dict[str, Any], current: Mapping[str, Any] | None = None) -> None:
        for target, sources in entity.derived.items():
            parts = [row[s] if s in row else (current or {}).get(s) for s in sources]
            row[target] = " ".join(str(p) for p in parts if p) or None

    def _integrity(self, entity: Entity, exc: sqlite3.IntegrityError, record_id: str) -> DataverseError:
        text = str(exc)
        if "ak_" in text or any(f"{entity.name}.{a}" in text or f"lower({a})" in text
                                for key in entity.keys for a in key.attributes):
            key = entity.keys[0]
            return DataverseError(412, DUPLICATE_RECORD,
                                  f"A record that has the attribute values {key.label} already exists. The entity "
                                  f"key {key.label} requires that this set of attributes contains unique values. "
                                  f"Select unique values and try again.")
        return DataverseError(412, DUPLICATE_RECORD, f"Cannot insert duplicate key. A {entity.name} with id "
                                                     f"{record_id} already exists.")
