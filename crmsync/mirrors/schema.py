"""Schema generation: the stored schema description, the CRM enumerations and the PostgreSQL mirror tables.

Why mirror tables are migrated rather than re-created: they hold CRM data people query in SQL, so a re-run must
keep every row. Drift is found by comparing what the CRM describes now with the columns the mirror really has
(not with the last document), so a half-applied or hand-edited mirror is repaired too. Everything of one run
happens in one transaction: a failure leaves the previous schema and mirror untouched.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict
from typing import Any, Callable

from psycopg import sql

from crmsync import pg
from crmsync.connectors import MIRROR_PG_TYPES, Discovery, FieldSpec, TableSpec, UnsafeName, check_api_name

Log = Callable[[str], None]
log = logging.getLogger("crmsync.wizard")
MIRROR_TYPES = MIRROR_PG_TYPES  # the only SQL types mirror DDL is made of
REMOVED_SUFFIX = "__removed"


def mirror_schema(namespace: str, account: str) -> str:
    return f"{namespace}_{re.sub(r'[^a-z0-9_]', '_', account.lower())}"


def schema_name(namespace: str, account: str) -> str:
    return f"{namespace}:{namespace}Schema{account}"


def discover(discovery: Discovery, tables: list[str], log: Log) -> list[TableSpec]:
    """Describe each selected table, logging one line per table and one warning per skipped field type."""
    specs = []
    for name in tables:
        log(f"Discovering table structure '{name}'")
        spec = discovery.describe_table(name)
        for field, crm_type in spec.skipped:
            log(f"warning: unable to use type '{crm_type}' of field '{field}'")
        specs.append(spec)
    return specs


def key_field(element: dict[str, Any]) -> str:
    """The CRM's primary key field of a schema element (its `key`). Documents generated before the key was
    recorded have mirrors keyed by the column `id`: its field."""
    if element.get("key"):
        return element["key"]
    return next((f["name"] for f in element["fields"] if f["sqlName"] == "id"), "id")


def key_column(element: dict[str, Any]) -> str:
    """The mirror column of the element's primary key."""
    return key_field(element).lower()


def _with_key(spec: TableSpec) -> TableSpec:
    """`spec` with its key field first among the fields (as text) when the CRM's describe left it out."""
    if any(f.name == spec.key for f in spec.fields):
        return spec
    key = FieldSpec(check_api_name(spec.key, "key field", spec.name), spec.key, "id", "text", updateable=False)
    return TableSpec(spec.name, spec.label, [key, *spec.fields], spec.enumerations, spec.skipped, key=spec.key)


def build_document(discovery: Discovery, account: str, specs: list[TableSpec]) -> dict[str, Any]:
    """The schema description (Adobe's srcSchema, as data): one element per table, enumerations apart; an
    element's `key` names the CRM's primary key field (the mirror table's primary key)."""
    ns, target = discovery.namespace, mirror_schema(discovery.namespace, account)
    specs = [_with_key(s) for s in specs]
    return {
        "name": schema_name(ns, account), "namespace": ns, "mappingType": "sql", "account": account,
        "label": f"List of tables of connector '{discovery.connector_label}' linked to external account '{account}'",
        "mirrorSchema": target,
        "elements": [{"name": s.name, "label": s.label, "sqlTable": f"{target}.{s.name.lower()}", "key": s.key,
                      "fields": [{"name": f.name, "label": f.label, "type": f.crm_type, "sqlName": f.name.lower(),
                                  "sqlType": f.pg_type, "calculated": f.calculated,
                                  **({"enumeration": f.enumeration} if f.enumeration else {})} for f in s.fields],
                      "skipped": [{"name": n, "type": t} for n, t in s.skipped]} for s in specs],
        "enumerations": [{"basetype": "string", **asdict(e)} for s in specs for e in s.enumerations],
    }


def generate(discovery: Discovery, dsn: str, account: str, tables: list[str], log: Log) -> dict[str, Any]:
    """The whole wizard step 3: discover, store the document and enumerations, create or migrate mirrors."""
    specs = discover(discovery, tables, log)
    document = build_document(discovery, account, specs)
    log(f"Generating schema '{document['name']}'…")
    with pg.connect(dsn) as conn:
        store(conn, account, document)
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(document["mirrorSchema"])))
        for element in document["elements"]:
            for line in migrate_table(conn, account, document["mirrorSchema"], element):
                log(line)
    log(f"Schema '{document['name']}' generated")
    log("Finished retrieving the table definitions")
    return document


def store(conn: Any, account: str, document: dict[str, Any]) -> None:
    conn.execute("""INSERT INTO crmsync.crm_schemas (account, name, namespace, mirror_schema, document)
                    VALUES (%s, %s, %s, %s, %s) ON CONFLICT (account) DO UPDATE SET name = EXCLUDED.name,
                    namespace = EXCLUDED.namespace, mirror_schema = EXCLUDED.mirror_schema,
                    document = EXCLUDED.document, generated_at = now()""",
                 (account, document["name"], document["namespace"], document["mirrorSchema"], json.dumps(document)))
    for enum in document["enumerations"]:  # replaced per enumeration: the multi-select CHECKs follow at once
        conn.execute("DELETE FROM crmsync.crm_enumeration_values WHERE account = %s AND enumeration = %s",
                     (account, enum["name"]))
        conn.cursor().executemany(
            "INSERT INTO crmsync.crm_enumeration_values (account, enumeration, value, label, position) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            [(account, enum["name"], v["value"], v["label"], i) for i, v in enumerate(enum["values"])])


def load_document(dsn: str, account: str) -> dict[str, Any] | None:
    with pg.connect(dsn) as conn:
        row = conn.execute("SELECT document FROM crmsync.crm_schemas WHERE account = %s", (account,)).fetchone()
    return row[0] if row else None


def mirrored_elements(conn: Any, account: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(account, element) of every mirror table the wizard generated: what the poller, change capture and the
    mirror service follow, re-read while they run so a wizard run needs no restart. Documents are data in
    the database: an element whose object or field names no CRM API name can be is left out (logged)."""
    rows = conn.execute("SELECT account, document FROM crmsync.crm_schemas WHERE %(a)s::text IS NULL "
                        "OR account = %(a)s ORDER BY account", {"a": account}).fetchall()
    return [(name, element) for name, document in rows for element in document["elements"]
            if _safe(name, element["name"], *(f["name"] for f in element["fields"]))]


def mirrored_objects(conn: Any, account: str | None = None) -> list[tuple[str, str, str]]:
    """(account, CRM object, mirror table) of every mirror, without reading whole documents: the poller and
    change capture ask every few seconds. Unsafe object names are left out, as in mirrored_elements."""
    found = conn.execute("""SELECT s.account, e->>'name', e->>'sqlTable' FROM crmsync.crm_schemas s,
                                   jsonb_array_elements(s.document->'elements') e
                            WHERE %(a)s::text IS NULL OR s.account = %(a)s ORDER BY 1, 2""", {"a": account}).fetchall()
    return [row for row in found if _safe(row[0], row[1])]


def _safe(account: str, *names: str) -> bool:
    try:
        for name in names:
            check_api_name(name, "name")
    except UnsafeName as exc:
        log.error("account %s: a mirror in crmsync.crm_schemas is left out: %s", account, exc)
        return False
    return True


def _columns(conn: Any, schema: str, table: str) -> dict[str, str]:
    return dict(conn.execute(
        """SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
           JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped""",
        (schema, table)).fetchall())


def _enum_check(account: str, table: sql.Identifier, column: str, enumeration: str) -> sql.Composed:
    return sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK (crmsync.crm_enum_ok({}, {}, {}))").format(
        table, sql.Identifier(f"{column}_in_enumeration"), sql.Literal(account), sql.Literal(enumeration),
        sql.Identifier(column))


def _using(column: str, old: str, new: str) -> sql.Composed:
    col = sql.Identifier(column)
    if new == "text[]" and old != "text[]":
        return sql.SQL("string_to_array({}::text, ';')").format(col)
    if old == "text[]":
        return sql.SQL("array_to_string({}, ';')::{}").format(col, sql.SQL(new))
    return sql.SQL("{}::text::{}").format(col, sql.SQL(new))


def migrate_table(conn: Any, account: str, schema: str, element: dict[str, Any]) -> list[str]:
    """Create the mirror table, or bring it to the element's fields: add, retype, keep removed ones renamed.
    Names are quoted identifiers; column types are spliced, so only the type table's own types are accepted."""
    name = element["sqlTable"].split(".", 1)[1]
    table = sql.Identifier(schema, name)
    wanted = {f["sqlName"]: f for f in element["fields"]}
    for f in wanted.values():
        if f["sqlType"] not in MIRROR_TYPES:
            raise UnsafeName(f"field {f['name']!r} of {element['name']!r} has SQL type {f['sqlType']!r}, which is "
                             f"not one crmsync generates ({', '.join(sorted(MIRROR_TYPES))})")
    present = _columns(conn, schema, name)
    key = key_column(element)
    lines: list[str] = []
    if not present:
        columns = [sql.SQL("{} {}{}").format(sql.Identifier(c), sql.SQL(f["sqlType"]),
                                             sql.SQL(" PRIMARY KEY" if c == key else "")) for c, f in wanted.items()]
        conn.execute(sql.SQL("CREATE TABLE {} ({})").format(table, sql.SQL(", ").join(columns)))
        # change capture sends old rows too, so an edit made in SQL is sent to the CRM as just its changed fields
        conn.execute(sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(table))
        conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(table, sql.Literal(
            f"mirror of {element['name']} ({element['label']})")))
        present = {}
    for column, f in wanted.items():
        old = present.get(column)
        if old is None and present:
            conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
                table, sql.Identifier(column), sql.SQL(f["sqlType"])))
            lines.append(f"field '{f['name']}' added to '{element['name']}' ({f['sqlType']})")
        elif old is not None and old != f["sqlType"]:
            conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(
                table, sql.Identifier(f"{column}_in_enumeration")))
            conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} TYPE {} USING {}").format(
                table, sql.Identifier(column), sql.SQL(f["sqlType"]), _using(column, old, f["sqlType"])))
            lines.append(f"field '{f['name']}' of '{element['name']}' retyped {old} -> {f['sqlType']}")
        if f["sqlType"] == "text[]" and f.get("enumeration") and (old != "text[]"):
            conn.execute(_enum_check(account, table, column, f["enumeration"]))
    for column in present:
        if column not in wanted and not column.endswith(REMOVED_SUFFIX):
            kept = column + REMOVED_SUFFIX
            conn.execute(sql.SQL("ALTER TABLE {} DROP COLUMN IF EXISTS {}").format(table, sql.Identifier(kept)))
            conn.execute(sql.SQL("ALTER TABLE {} RENAME COLUMN {} TO {}").format(
                table, sql.Identifier(column), sql.Identifier(kept)))
            lines.append(f"field '{column}' removed from '{element['name']}': column kept as '{kept}'")
    return lines
