"""Enumeration sync: each CRM picklist -> a Campaign enumeration (new or existing), Adobe's "Synchronizing
enumerations…" dialog as a command.

Replace = no adds the CRM values the Campaign enumeration lacks; Replace = yes makes the Campaign enumeration
exactly the CRM list (values no longer in the CRM are removed, kept ones take the CRM label and order). A CRM value
matches a Campaign value by value, then name, then label (case-insensitively), so an existing enumeration such as
`industry` with its own codes is reused instead of duplicated; the resulting CRM -> Campaign value map is stored
and is what `StoredEnumerations` (the streams' `EnumerationMap` hook) translates with.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from crmsync import pg
from crmsync.values import join_multi, split_multi
from crmsync.mirrors.schema import load_document


@dataclass
class EnumPlan:
    crm_enumeration: str
    crm_label: str
    campaign: str
    new: bool
    replace: bool
    added: list[dict[str, Any]] = field(default_factory=list)
    removed: list[dict[str, Any]] = field(default_factory=list)
    kept: list[dict[str, Any]] = field(default_factory=list)
    value_map: dict[str, str] = field(default_factory=dict)


def _existing(conn: Any, name: str) -> list[dict[str, Any]] | None:
    row = conn.execute("SELECT id FROM enumerations WHERE name = %s", (name,)).fetchone()
    if row is None:
        return None
    return [dict(zip(("id", "name", "label", "value"), r)) for r in conn.execute(
        "SELECT id, name, label, value FROM enumeration_values WHERE enumeration_id = %s ORDER BY position, id",
        (row[0],))]


def _match(value: dict[str, str], rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    for key, theirs in (("value", "value"), ("value", "name"), ("label", "label")):
        for row in rows:
            if str(row[theirs]).casefold() == str(value[key]).casefold():
                return row
    return None


def plan(dsn: str, account: str, maps: dict[str, str] | None = None, replace: set[str] | None = None,
         replace_all: bool = False, only: set[str] | None = None) -> list[EnumPlan]:
    """What a sync would change, per CRM enumeration, without changing anything."""
    document = load_document(dsn, account)
    if document is None:
        raise ValueError(f"account {account!r} is not configured: run `crmsync wizard {account}` first")
    maps, replace = maps or {}, replace or set()
    known = {e["name"] for e in document["enumerations"]}
    unknown = (set(maps) | replace | (only or set())) - known
    if unknown:
        raise ValueError(f"unknown CRM enumeration(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    plans = []
    with pg.connect(dsn) as conn:
        stored = dict(conn.execute("""SELECT m.crm_enumeration, e.name FROM crmsync.enumeration_maps m
                                      JOIN enumerations e ON e.id = m.enumeration_id WHERE m.account = %s""",
                                   (account,)).fetchall())
        for enum in document["enumerations"]:
            if only and enum["name"] not in only:
                continue
            target = maps.get(enum["name"]) or stored.get(enum["name"]) or enum["name"]
            rows = _existing(conn, target)
            p = EnumPlan(enum["name"], enum["label"], target, rows is None, replace_all or enum["name"] in replace)
            matched: set[int] = set()
            for value in enum["values"]:
                row = _match(value, rows or [])
                if row is None:
                    p.added.append(value)
                    p.value_map[value["value"]] = value["value"]
                else:
                    matched.add(row["id"])
                    p.kept.append(row)
                    p.value_map[value["value"]] = row["value"]
            if p.replace:
                p.removed = [r for r in rows or [] if r["id"] not in matched]
            plans.append(p)
    return plans


def apply(dsn: str, account: str, plans: list[EnumPlan]) -> None:
    """Carry out the plans in one transaction and remember each map (and its value translation)."""
    with pg.connect(dsn) as conn:
        for p in plans:
            enum_id = conn.execute(
                """INSERT INTO enumerations (name, label, open) VALUES (%s, %s, true)
                   ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id""",
                (p.campaign, p.crm_label)).fetchone()[0]
            if p.removed:
                conn.execute("DELETE FROM enumeration_values WHERE id = ANY(%s)", ([r["id"] for r in p.removed],))
            start = conn.execute("SELECT coalesce(max(position) + 1, 0) FROM enumeration_values "
                                 "WHERE enumeration_id = %s", (enum_id,)).fetchone()[0]
            for i, v in enumerate(p.added):
                conn.execute("""INSERT INTO enumeration_values (enumeration_id, name, label, value, position)
                                VALUES (%s, %s, %s, %s, %s) ON CONFLICT (enumeration_id, name) DO NOTHING""",
                             (enum_id, v["name"], v["label"], v["value"], start + i))
            conn.execute("""INSERT INTO crmsync.enumeration_maps (account, crm_enumeration, enumeration_id, replace,
                            value_map) VALUES (%s, %s, %s, %s, %s) ON CONFLICT (account, crm_enumeration) DO UPDATE
                            SET enumeration_id = EXCLUDED.enumeration_id, replace = EXCLUDED.replace,
                            value_map = EXCLUDED.value_map, synced_at = now()""",
                         (account, p.crm_enumeration, enum_id, p.replace, json.dumps(p.value_map)))


class StoredEnumerations:
    """The streams' `EnumerationMap` hook (crmsync/values.py) backed by the stored maps; read-only.

    `enumeration` is the Campaign enumeration name a mapping field names. Unknown values pass through unchanged,
    like `IdentityEnumerations`; multi-select values (lists or 'a;b') are translated element by element. The maps
    are re-read when older than `max_age` seconds, so an `enums sync` reaches running stream processors without
    a restart."""

    def __init__(self, dsn: str, account: str | None = None, *, max_age: float | None = None) -> None:
        self.dsn, self.account, self.max_age = dsn, account, max_age
        self._load()

    def _load(self) -> None:
        to_campaign: dict[str, dict[str, str]] = {}
        with pg.connect(self.dsn) as conn:
            rows = conn.execute("""SELECT e.name, m.value_map FROM crmsync.enumeration_maps m
                                   JOIN enumerations e ON e.id = m.enumeration_id
                                   WHERE %(a)s::text IS NULL OR m.account = %(a)s""", {"a": self.account}).fetchall()
        for name, value_map in rows:
            to_campaign.setdefault(name, {}).update(value_map)
        self._to_campaign = to_campaign
        self._to_crm = {n: {c: k for k, c in m.items()} for n, m in to_campaign.items()}
        self._loaded_at = time.monotonic()

    def _fresh(self) -> None:
        if self.max_age is not None and time.monotonic() - self._loaded_at > self.max_age:
            self._load()

    @staticmethod
    def _translate(table: dict[str, str], value: Any) -> Any:
        if isinstance(value, list):
            return [table.get(v, v) for v in value]
        if isinstance(value, str) and ";" in value and value not in table:
            return join_multi([table.get(v, v) for v in split_multi(value)])
        if isinstance(value, (int, float)) and not isinstance(value, bool):  # a choice's integer value
            return table.get(str(value), value)
        return table.get(value, value) if isinstance(value, str) else value

    def to_campaign(self, enumeration: str, value: Any) -> Any:
        self._fresh()
        return self._translate(self._to_campaign.get(enumeration, {}), value)

    def to_crm(self, enumeration: str, value: Any) -> Any:
        self._fresh()
        return self._translate(self._to_crm.get(enumeration, {}), value)
