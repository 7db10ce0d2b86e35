"""What the writer knows about the Campaign tables: columns and their types, primary key, parents.

Why: the writer checks every command against the real schema before running it (an unknown column becomes a
reject naming the column, not a failed batch), casts each value to its column's type in SQL, and applies parent
tables before child tables within a batch so a child can reference a parent created by the same batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql


@dataclass(frozen=True)
class Table:
    name: str  # as commands name it: "recipients" or "schema.table"
    ident: sql.Composable  # the quoted, qualified identifier for SQL
    columns: dict[str, str]  # column -> type to cast values to, e.g. "pg_catalog.date"
    full_types: dict[str, str]  # column -> declared type with its modifier, e.g. "character(3)"
    primary_key: str | None  # the single primary-key column (None when there is none, or several)
    parents: tuple[str, ...]  # tables this one references with foreign keys
    key_sequence: str | None = None  # the sequence numbering the primary key (serial / identity), if any

    @property
    def has_crm_link(self) -> bool:
        return "crm_account" in self.columns and "crm_id" in self.columns


def _split(name: str) -> tuple[str | None, str]:
    schema, _, table = name.rpartition(".")
    return (schema or None), table


def _regclass_text(name: str) -> str:
    schema, table = _split(name)
    quote = lambda part: '"' + part.replace('"', '""') + '"'  # noqa: E731
    return f"{quote(schema)}.{quote(table)}" if schema else quote(table)


class Catalog:
    """Table metadata, read once per table from pg_catalog and cached (`forget` re-reads after a schema change)."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self._tables: dict[str, Table] = {}
        self._ranks: dict[str, int] = {}
        self._constraints: dict[tuple[str, str], list[str]] = {}

    def table(self, name: str) -> Table | None:
        """The table, or None when it does not exist (not cached: it may be created later)."""
        if name not in self._tables:
            found = self._load(name)
            if found is None:
                return None
            self._tables[name] = found
        return self._tables[name]

    def forget(self, name: str) -> None:
        self._tables.pop(name, None)
        self._ranks.clear()

    def _load(self, name: str) -> Table | None:
        oid = self.conn.execute("SELECT to_regclass(%s)::oid", (_regclass_text(name),)).fetchone()[0]
        if oid is None:
            return None
        rows = self.conn.execute(
            """SELECT a.attname, format('%%I.%%I', tn.nspname, t.typname), format_type(a.atttypid, a.atttypmod)
               FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
               JOIN pg_namespace tn ON tn.oid = t.typnamespace
               WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
               ORDER BY a.attnum""", (oid,)).fetchall()
        columns = {name: cast for name, cast, _ in rows}
        full_types = {name: declared for name, _, declared in rows}
        keys = [r[0] for r in self.conn.execute(
            """SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid
                                                                  AND a.attnum = ANY(i.indkey)
               WHERE i.indrelid = %s AND i.indisprimary""", (oid,))]
        parents = tuple(r[0] for r in self.conn.execute(
            """SELECT DISTINCT c.confrelid::regclass::text FROM pg_constraint c
               WHERE c.conrelid = %s AND c.contype = 'f' AND c.confrelid <> c.conrelid""", (oid,)))
        schema, table = _split(name)
        ident = sql.Identifier(schema, table) if schema else sql.Identifier(table)
        key = keys[0] if len(keys) == 1 else None
        sequence = self.conn.execute("SELECT pg_get_serial_sequence(%s, %s)",
                                     (_regclass_text(name), key)).fetchone()[0] if key else None
        return Table(name, ident, columns, full_types, key, parents, sequence)

    def rank(self, name: str, _seen: frozenset[str] = frozenset()) -> int:
        """0 for a table without parents, else 1 + its deepest parent's rank: apply order within a batch."""
        if name in self._ranks:
            return self._ranks[name]
        table = self.table(name)
        parents = [p for p in (table.parents if table else ()) if p not in _seen]
        rank = 1 + max((self.rank(p, _seen | {name}) for p in parents), default=-1)
        self._ranks[name] = rank
        return rank

    def constraint_columns(self, table: str, constraint: str) -> list[str]:
        """The columns a constraint covers, to tell the user which column a CHECK failure is about."""
        key = (table, constraint)
        if key not in self._constraints:
            rows = self.conn.execute(
                """SELECT a.attname FROM pg_constraint c
                   JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey)
                   WHERE c.conrelid = to_regclass(%s) AND c.conname = %s ORDER BY a.attnum""",
                (_regclass_text(table), constraint)).fetchall()
            self._constraints[key] = [r[0] for r in rows]
        return self._constraints[key]
