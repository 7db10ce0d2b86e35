"""Filling the mirror tables (`wizard load`) and refreshing formula fields (`wizard refresh-formulas`).

Why a separate formula refresh: a CRM (Salesforce) does not bump a record's modification stamps when only a formula's
inputs elsewhere change (a parent record, today's date), so change polling never sees it. Re-reading just Id +
formula fields per object is cheap, and the mirror is updated only where a value really differs.
"""
from __future__ import annotations

from typing import Any, Iterable

from psycopg import sql

from crmsync import pg
from crmsync.connectors import Discovery, FieldSpec
from crmsync.values import split_multi
from crmsync.mirrors.schema import key_column, key_field, load_document

# Transactions that write mirror rows with the CRM's own values carry this origin tag, so the mirror service
# does not send them back to the CRM as edits (services/mirror).
MIRROR_ORIGIN = "mirror"


def _specs(element: dict[str, Any], only: Iterable[str] | None = None) -> list[FieldSpec]:
    wanted = set(only) if only is not None else None
    return [FieldSpec(f["name"], f["label"], f["type"], f["sqlType"], f["calculated"], f.get("enumeration"))
            for f in element["fields"] if wanted is None or f["name"] in wanted]


def _table(element: dict[str, Any]) -> sql.Identifier:
    return sql.Identifier(*element["sqlTable"].split(".", 1))


def _elements(dsn: str, account: str, objects: Iterable[str] | None) -> list[dict[str, Any]]:
    document = load_document(dsn, account)
    if document is None:
        raise ValueError(f"account {account!r} is not configured: run `crmsync wizard {account}` first")
    chosen = {o.lower() for o in objects} if objects else None
    return [e for e in document["elements"] if chosen is None or e["name"].lower() in chosen]


def load(discovery: Discovery, dsn: str, account: str, objects: Iterable[str] | None = None) -> dict[str, int]:
    """Copy the CRM's current rows into the mirror tables (insert or update by the CRM's key); rows per object."""
    counts: dict[str, int] = {}
    for element in _elements(dsn, account, objects):
        fields = _specs(element)
        key = sql.Identifier(key_column(element))
        columns = [sql.Identifier(f.name.lower()) for f in fields]
        statement = sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) DO UPDATE SET {}").format(
            _table(element), sql.SQL(", ").join(columns), sql.SQL(", ").join(sql.Placeholder() * len(columns)), key,
            sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(c) for c in columns if c != key))
        counts[element["name"]] = 0
        with pg.connect(dsn) as conn:
            pg.tag_origin(conn, MIRROR_ORIGIN)
            for page in discovery.rows(element["name"], [f.name for f in fields]):
                conn.cursor().executemany(statement, [[crm_value(f, r.get(f.name)) for f in fields] for r in page])
                counts[element["name"]] += len(page)
    return counts


def refresh_formulas(discovery: Discovery, dsn: str, account: str,
                     objects: Iterable[str] | None = None) -> dict[str, int]:
    """Re-read formula fields of mirrored objects (one query per object: key + formulas); rows changed per object."""
    changed: dict[str, int] = {}
    for element in _elements(dsn, account, objects):
        formulas = [f for f in _specs(element) if f.calculated]
        if not formulas:
            continue
        fields = [*_specs(element, [key_field(element)]), *formulas]
        cols = [sql.Identifier(f.name.lower()) for f in fields]
        with pg.connect(dsn) as conn:
            pg.tag_origin(conn, MIRROR_ORIGIN)
            conn.execute(sql.SQL("CREATE TEMP TABLE formula_values ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA")
                         .format(sql.SQL(", ").join(cols), _table(element)))
            with conn.cursor().copy(sql.SQL("COPY formula_values ({}) FROM STDIN").format(
                    sql.SQL(", ").join(cols))) as copy:
                for page in discovery.rows(element["name"], [f.name for f in fields]):
                    for record in page:
                        copy.write_row([crm_value(f, record.get(f.name)) for f in fields])
            formula_cols = cols[1:]
            changed[element["name"]] = conn.execute(sql.SQL(
                "UPDATE {t} m SET {sets} FROM formula_values f WHERE m.{k} = f.{k} AND ({old}) IS DISTINCT FROM ({new})"
            ).format(t=_table(element), k=cols[0], sets=sql.SQL(", ").join(sql.SQL("{0} = f.{0}").format(c) for c in formula_cols),
                     old=sql.SQL(", ").join(sql.SQL("m.{}").format(c) for c in formula_cols),
                     new=sql.SQL(", ").join(sql.SQL("f.{}").format(c) for c in formula_cols))
            ).rowcount
    return changed


def crm_value(field: FieldSpec, value: Any, separator: str = ";") -> Any:
    """A CRM value in the form its mirror column takes (a multi-select 'a;b' -> ['a', 'b'])."""
    if field.pg_type == "text[]" and isinstance(value, str):
        return split_multi(value, separator)
    if field.pg_type == "jsonb" and value is not None:
        import json

        return json.dumps(value)
    return value
