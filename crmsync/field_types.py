"""The declared kind of every mapped field, on both sides: what crmsync/values.py canonicalises by.

Sources: the CRM side from `crmsync.crm_fields` (written by the change sources after each describe, so it is
there before the first change of an object is published), the Campaign side from the catalog (pg_catalog).

Which kind a mapped field compares in: the CRM's declared kind when known — the CRM normalises what it stores
(a datetime comes back as '…000+0000' whatever was written), so comparing in its kind is what makes an echo
equal to what was sent — else the Campaign column's. A text field on either side with a datetime on the other
still compares as a datetime: both sides' values are instants.
"""
from __future__ import annotations

import time
from typing import Iterable, Mapping as TypingMapping

import psycopg

from crmsync.catalog import Catalog
from crmsync.values import Kind, kind_of_pg_type

REFRESH_SECONDS = 30.0
MISS_REFRESH_SECONDS = 2.0  # a field not known yet is looked up again this soon


def store_crm_fields(conn: psycopg.Connection, account: str, obj: str,
                     fields: TypingMapping[str, tuple[Kind, str]]) -> None:
    """Record an object's fields (name → (kind, the CRM's own type name)); fields gone from the describe go."""
    names = sorted(fields)
    with conn.transaction():
        conn.execute(
            """INSERT INTO crmsync.crm_fields (account, object, field, kind, crm_type)
               SELECT %s, %s, f, k, t FROM unnest(%s::text[], %s::text[], %s::text[]) AS x(f, k, t)
               ON CONFLICT (account, object, field) DO UPDATE SET kind = excluded.kind, crm_type = excluded.crm_type,
                   updated_at = now()
               WHERE (crm_fields.kind, crm_fields.crm_type) IS DISTINCT FROM (excluded.kind, excluded.crm_type)""",
            (account, obj, names, [fields[n][0] for n in names], [fields[n][1] for n in names]))
        conn.execute("DELETE FROM crmsync.crm_fields WHERE account = %s AND object = %s AND NOT field = ANY(%s)",
                     (account, obj, names))


class FieldTypes:
    """Kinds of CRM fields and Campaign columns, cached and re-read every REFRESH_SECONDS (a field added in the
    CRM or a column retyped is followed without a restart)."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self.catalog = Catalog(conn)
        self._crm: dict[tuple[str, str], dict[str, Kind]] = {}
        self._read_at: dict[tuple[str, str], float] = {}

    def crm_kind(self, account: str, obj: str, field: str) -> Kind | None:
        key = (account.lower(), obj.lower())
        age = time.monotonic() - self._read_at.get(key, -1e9)
        fields = self._crm.get(key)
        if fields is None or age > REFRESH_SECONDS or (field not in fields and age > MISS_REFRESH_SECONDS):
            fields = self._crm[key] = self._read_crm(account, obj)
            self._read_at[key] = time.monotonic()
        return fields.get(field)

    def campaign_kind(self, table: str, column: str) -> Kind | None:
        found = self.catalog.table(table)
        if found is None or column not in found.full_types:
            self.catalog.forget(table)
            return None
        return kind_of_pg_type(found.full_types[column])

    def field_kind(self, account: str, obj: str, crm_field: str, table: str, column: str) -> Kind | None:
        """The kind a mapped field compares in (see the module docstring)."""
        return self.crm_kind(account, obj, crm_field) or self.campaign_kind(table, column)

    def forget(self, tables: Iterable[str] = ()) -> None:
        self._read_at.clear()
        for table in tables:
            self.catalog.forget(table)

    def _read_crm(self, account: str, obj: str) -> dict[str, Kind]:
        rows = self.conn.execute(
            "SELECT field, kind FROM crmsync.crm_fields WHERE lower(account) = lower(%s) AND lower(object) = lower(%s)",
            (account, obj)).fetchall()
        return {field: kind for field, kind in rows}
