"""PostgreSQL helpers: connections and the versioned, idempotent migrations of the Campaign database.

Migrations are the numbered `*.sql` files in crmsync/campaign/migrations/, applied in order, each once, inside
one transaction under an advisory lock, so any number of services can start at the same time.
"""
from __future__ import annotations

import hashlib
import uuid
from datetime import date, datetime
from decimal import Decimal
from importlib import resources
from typing import Any

import orjson
import psycopg
from psycopg import postgres, sql
from psycopg.adapt import Loader
from psycopg.pq import Format
from psycopg.rows import dict_row
from psycopg.types.json import set_json_loads

# jsonb values (sync state, rejects) are decoded by orjson: the standard json module was a visible cost of
# the stream processors' batch reads.
set_json_loads(orjson.loads)


class _TemporalOrText(Loader):
    """A date or timestamp PostgreSQL holds but Python cannot ('99999-01-01', 'infinity', dates BC) is read as its
    text instead of failing the whole query: one such row used to stop drift repair and the capture snapshot of
    its table. Values Python can hold load through psycopg's own (C) loader, as before."""

    fast: type

    def __init__(self, oid: int, context: Any = None) -> None:
        super().__init__(oid, context)
        self._fast = self.fast(oid, context)

    def load(self, data: Any) -> Any:
        try:
            return self._fast.load(data)
        except psycopg.DataError:
            return bytes(data).decode()


for _name in ("date", "timestamp", "timestamptz"):
    _oid = postgres.types[_name].oid
    psycopg.adapters.register_loader(_oid, type(f"{_name.title()}OrText", (_TemporalOrText,),
                                                {"fast": psycopg.adapters.get_loader(_oid, Format.TEXT)}))

MIGRATIONS_PACKAGE = "crmsync.campaign.migrations"
_MIGRATION_LOCK = 7_400_551  # arbitrary advisory-lock id owned by crmsync


def connect(dsn: str, *, autocommit: bool = False, application: str = "crmsync", **kwargs: Any) -> psycopg.Connection:
    """Open a connection that names itself in pg_stat_activity."""
    return psycopg.connect(dsn, autocommit=autocommit, application_name=application, **kwargs)


def masked_dsn(dsn: str) -> str:
    """`dsn` fit for printing: its password (URL user-info, `?password=` or `password=`) shown as ********."""
    try:
        parts = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(a DSN that does not parse)"
    if "password" not in parts:
        return dsn
    return psycopg.conninfo.make_conninfo(**{**parts, "password": "********"})


def table_identifier(name: str) -> sql.Identifier:
    """A table named in configuration or a stored document ("table" or "schema.table"), quoted for SQL: the
    name is never spliced into a statement, whatever characters it holds."""
    schema, _, table = name.rpartition(".")
    return sql.Identifier(schema, table) if schema else sql.Identifier(table)


def tag_origin(conn: psycopg.Connection, writer: str) -> None:
    """Mark the open transaction as written by crmsync's `writer`: change capture sets `origin` on its changes
    (a transactional logical-decoding message), which is how echoes are recognised exactly."""
    conn.execute("SELECT pg_logical_emit_message(true, 'crmsync.origin', %s)", (writer,))


ORIGIN_FILTERING_VERSION = 160000  # pgoutput's `origin = none` option: PostgreSQL 16


class WriterOrigin:
    """Marks a writer session's transactions with a replication origin (`pg_replication_origin_session_setup`),
    so change capture, asking pgoutput for `origin = none`, never decodes, publishes or reads them back: the
    sync's own writes cost nothing downstream. Used by the Campaign writer (its rows) and by the streams (the
    sync state: not published, but without an origin every peek of capture's slot decoded it again until the
    slot moved past it). Each session needs an origin of its own (PostgreSQL lets one
    session at a time use an origin), so it takes the first free one of `crmsync_writer_0 … _63`.

    Not available before PostgreSQL 16, or to a user who may not call the origin functions (superuser, or
    EXECUTE granted): then `usable` is False and the writer's transaction tag (`tag_origin`) does the job."""

    PREFIX = "crmsync_writer_"
    POOL = 64

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self.active = False
        self.name: str | None = None
        self.usable = conn.info.server_version >= ORIGIN_FILTERING_VERSION and self._claim()

    def _claim(self) -> bool:
        for index in range(self.POOL):
            name = f"{self.PREFIX}{index}"
            try:
                with self.conn.transaction():
                    if self.conn.execute("SELECT pg_replication_origin_oid(%s)", (name,)).fetchone()[0] is None:
                        self.conn.execute("SELECT pg_replication_origin_create(%s)", (name,))
                    self.conn.execute("SELECT pg_replication_origin_session_setup(%s)", (name,))
            except (psycopg.errors.ObjectInUse, psycopg.errors.UniqueViolation):
                continue  # another writer session holds it (or made it at the same moment)
            except (psycopg.errors.InsufficientPrivilege, psycopg.errors.ConfigurationLimitExceeded):
                return False  # not allowed, or max_active_replication_origins sessions use origins already
            self.name, self.active = name, True
            return True
        return False

    def mark(self, invisible: bool) -> None:
        """From now on, this session's transactions are (`invisible`) or are not decoded by change capture."""
        if not self.usable or invisible == self.active:
            return
        if invisible:
            self.conn.execute("SELECT pg_replication_origin_session_setup(%s)", (self.name,))
        else:
            self.conn.execute("SELECT pg_replication_origin_session_reset()")
        self.active = invisible


def dict_cursor(conn: psycopg.Connection) -> psycopg.Cursor:
    return conn.cursor(row_factory=dict_row)


def _migrations() -> list[tuple[int, str, str]]:
    found = []
    for entry in resources.files(MIGRATIONS_PACKAGE).iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text()))
    return sorted(found)


def migrate(dsn: str) -> list[str]:
    """Apply pending migrations; return the names applied now (empty when the schema is current)."""
    applied_now = []
    with connect(dsn, application="crmsync-migrate") as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute("CREATE SCHEMA IF NOT EXISTS crmsync")
        conn.execute(
            """CREATE TABLE IF NOT EXISTS crmsync.schema_migrations (
                   version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {row[0]: row[1] for row in conn.execute("SELECT version, checksum FROM crmsync.schema_migrations")}
        for version, name, sql in _migrations():
            checksum = hashlib.sha256(sql.encode()).hexdigest()
            if version in done:
                if done[version] != checksum:
                    raise RuntimeError(f"migration {name} changed after it was applied; add a new migration instead")
                continue
            conn.execute(sql)
            conn.execute("INSERT INTO crmsync.schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                         (version, name, checksum))
            applied_now.append(name)
    return applied_now


def json_ready(value: Any) -> Any:
    """A value read with psycopg in the form decoded WAL changes carry it (ISO text dates, float numerics), so
    snapshots, drift checks and change capture describe a row identically."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    return value


def fresh_database(server_dsn: str, prefix: str = "crmsync") -> tuple[str, str]:
    """Create and migrate a new database on the server of `server_dsn` (tests, benchmarks): (dsn, name)."""
    name = f"{prefix}{uuid.uuid4().hex[:10]}"
    with psycopg.connect(psycopg.conninfo.make_conninfo(server_dsn, dbname="postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = psycopg.conninfo.make_conninfo(server_dsn, dbname=name)
    migrate(dsn)
    return dsn, name
