"""Dataverse tables as the connector sees them: columns with their Web API names, neutral kinds and mirror types,
choices (local and global option sets), lookups with their navigation properties, alternate keys, and whether
change tracking is on. Read from the metadata API and cached, so every part of the connector (change source,
sink, discovery, query) agrees on one description of a table.

Sources: EntityDefinitions(LogicalName=...)?$expand=Attributes,Keys,ManyToOneRelationships and the typed
attribute casts with their OptionSet (learn.microsoft.com/power-apps/developer/data-platform/webapi/
query-metadata-web-api). A lookup's navigation property is the relationship's
ReferencingEntityNavigationPropertyName (`parentcustomerid_account` for a polymorphic lookup, the schema name for
custom ones), never guessed from the column name.

Type table (AttributeType → neutral kind, mirror column type):

    Uniqueidentifier, String, Memo, EntityName   text      text
    Lookup, Owner, Customer                      text      text          (the referenced record's GUID)
    Integer / BigInt                             integer   integer / bigint
    Picklist, State, Status                      integer   integer       (+ an enumeration of the option set)
    Virtual, MultiSelectPicklistType             json      text[]        (values as strings: ["1", "3"])
    Boolean                                      boolean   boolean
    DateTime (UserLocal, TimeZoneIndependent)    datetime  timestamp with time zone
    DateTime (DateOnly)                          date      date          (never shifted across time zones)
    Money, Decimal                               number    numeric
    Double                                       number    double precision

Other types (PartyList, CalendarRules, ManagedProperty, File, Image, other Virtual columns) and logical columns
(AttributeOf set, e.g. `owneridname`) are not read or mirrored; discovery lists them as skipped.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Mapping

from crmsync.values import Kind

from .client import DataverseApiError, DataverseClient, localized_label, option_label

LOOKUP_TYPES = frozenset({"Lookup", "Owner", "Customer"})
CHOICE_TYPES = frozenset({"Picklist", "State", "Status"})
MULTISELECT = "MultiSelectPicklistType"
_TYPES: dict[str, tuple[Kind, str]] = {
    "Uniqueidentifier": ("text", "text"), "String": ("text", "text"), "Memo": ("text", "text"),
    "EntityName": ("text", "text"), "Lookup": ("text", "text"), "Owner": ("text", "text"),
    "Customer": ("text", "text"), "Integer": ("integer", "integer"), "BigInt": ("integer", "bigint"),
    "Picklist": ("integer", "integer"), "State": ("integer", "integer"), "Status": ("integer", "integer"),
    "Boolean": ("boolean", "boolean"), "DateTime": ("datetime", "timestamp with time zone"),
    "Money": ("number", "numeric"), "Decimal": ("number", "numeric"), "Double": ("number", "double precision"),
}
DEFAULT_PRECISION = {"Money": 2, "Decimal": 2}


class UnknownTable(ValueError):
    """The environment has no such table (or the user cannot see it)."""


@dataclass(frozen=True)
class Choice:
    """An option set: local to one column, or global (shared by columns of several tables)."""

    name: str
    is_global: bool
    options: Mapping[int, str]  # value -> label

    def value_of(self, given: Any) -> int:
        """The option value for an integer, a numeric string or a label (case-insensitive); ValueError naming the
        allowed values otherwise."""
        if isinstance(given, bool):
            raise ValueError(f"{given!r} is not an option of {self.name}")
        text = str(given).strip()
        if isinstance(given, int) or text.lstrip("-").isdigit():
            if int(text) in self.options:
                return int(text)
        else:
            for value, label in self.options.items():
                if label.casefold() == text.casefold():
                    return value
        allowed = ", ".join(f"{v} ({label})" for v, label in self.options.items())
        raise ValueError(f"{given!r} is not an option of {self.name}; allowed: {allowed}")


@dataclass(frozen=True)
class Column:
    name: str  # logical name: how mappings, changes and commands name the column
    label: str
    type: str  # AttributeType
    type_name: str = ""  # AttributeTypeName.Value (MultiSelectPicklistType...)
    date_only: bool = False
    targets: tuple[str, ...] = ()  # lookups: referenced tables
    navigation: Mapping[str, str] = field(default_factory=dict)  # lookups: target table -> navigation property
    creatable: bool = True
    updatable: bool = True
    logical: bool = False  # AttributeOf set: a helper column of another (e.g. owneridname)
    precision: int | None = None
    choice: Choice | None = None

    @property
    def lookup(self) -> bool:
        return self.type in LOOKUP_TYPES

    @property
    def multiselect(self) -> bool:
        return self.type == "Virtual" and self.type_name == MULTISELECT

    @property
    def web_name(self) -> str:
        """The property that holds the column in Web API rows and filters (`_x_value` for lookups)."""
        return f"_{self.name}_value" if self.lookup else self.name

    @property
    def mirrored(self) -> bool:
        """Read by the change source and mirrored by the wizard (see the type table)."""
        return not self.logical and (self.multiselect or self.type in _TYPES)

    @property
    def kind(self) -> Kind:
        return self._types()[0]

    @property
    def pg_type(self) -> str:
        return self._types()[1]

    def _types(self) -> tuple[Kind, str]:
        """(neutral kind, mirror column type) from the type table in the module docstring."""
        if self.multiselect:
            return "json", "text[]"
        if self.type == "DateTime" and self.date_only:
            return "date", "date"
        return _TYPES.get(self.type, ("json", "jsonb"))

    @property
    def crm_type(self) -> str:
        """The type name shown to users: AttributeType, or the type name where AttributeType says too little."""
        if self.multiselect:
            return MULTISELECT
        return "DateOnly" if self.type == "DateTime" and self.date_only else self.type


@dataclass(frozen=True)
class Table:
    name: str  # logical name: the connector's object name ("contact")
    entity_set: str  # "contacts"
    label: str
    primary_id: str
    primary_name: str | None
    change_tracking: bool
    audit_enabled: bool
    columns: Mapping[str, Column]
    keys: tuple[tuple[str, ...], ...]  # alternate keys' columns

    def column(self, name: str) -> Column:
        """A column by logical name (any case); "id", as neutral changes name it, is the primary id."""
        name = self.primary_id if name == "id" else name
        found = self.columns.get(name) or self.columns.get(name.lower())
        if found is None:
            raise KeyError(f"{name!r} is not a column of {self.name} (columns are named by their logical name, "
                           f"e.g. {', '.join(sorted(self.columns)[:4])}...)")
        return found

    def mirrored(self) -> list[Column]:
        return [c for c in self.columns.values() if c.mirrored]

    @cached_property
    def readers(self) -> tuple[tuple[str, str, bool], ...]:
        """(logical name, Web API property, multi-select) of every mirrored column: what reading a row needs,
        worked out once per table (rows are read by the hundred thousand)."""
        return tuple((c.name, c.web_name, c.multiselect) for c in self.mirrored())

    def is_key(self, name: str) -> bool:
        """Whether `name` alone is an alternate key of the table (usable to upsert by)."""
        return (name,) in self.keys


class Catalog:
    """Table descriptions of one environment, read once and kept for `ttl_seconds` (columns added meanwhile are
    picked up at the next read)."""

    def __init__(self, client: DataverseClient, ttl_seconds: float = 300.0) -> None:
        self.client = client
        self.ttl = ttl_seconds
        self._tables: dict[str, tuple[float, Table]] = {}
        self._sets: dict[str, str] | None = None  # entity set -> logical name
        self._lock = threading.Lock()

    def table(self, name: str) -> Table:
        """A table by logical name ("contact") or entity set name ("contacts")."""
        logical = self._logical_name(name)
        with self._lock:
            cached = self._tables.get(logical)
            if cached is not None and time.monotonic() - cached[0] < self.ttl:
                return cached[1]
        table = self._read(logical)
        with self._lock:
            self._tables[logical] = (time.monotonic(), table)
        return table

    def forget(self) -> None:
        with self._lock:
            self._tables.clear()
            self._sets = None

    def list(self) -> list[dict[str, Any]]:
        """Every table the Web API serves: LogicalName, EntitySetName, DisplayName, ChangeTrackingEnabled."""
        body = self.client.request("GET", "EntityDefinitions", params={
            "$select": "LogicalName,EntitySetName,DisplayName,ChangeTrackingEnabled,IsValidForAdvancedFind"}).json()
        return [e for e in body.get("value", []) if e.get("EntitySetName")]

    def _logical_name(self, name: str) -> str:
        for fresh in (self._sets is None, True):  # a table made since the list was read: read it again, once
            if fresh:
                self._sets = {e["EntitySetName"]: e["LogicalName"] for e in self.list()}
            assert self._sets is not None
            if name in self._sets.values() or name.lower() in self._sets.values():
                return name.lower()
            if name in self._sets:
                return self._sets[name]
        raise UnknownTable(f"no table {name!r} in {self.client.account.url} (tables are named by logical name, "
                           f"e.g. contact, or entity set, e.g. contacts)")

    def _read(self, logical: str) -> Table:
        try:
            entity = self.client.entity(logical)
            choices = self.client.choice_columns(logical)
        except DataverseApiError as exc:
            if exc.status == 404:
                raise UnknownTable(f"no table {logical!r} in {self.client.account.url}") from None
            raise
        return table_from_metadata(entity, choices)


def table_from_metadata(entity: Mapping[str, Any], choices: list[Mapping[str, Any]]) -> Table:
    """A Table from EntityDefinitions (with Attributes, Keys, ManyToOneRelationships) and the choice casts."""
    option_sets = {c["LogicalName"]: _choice(c.get("OptionSet")) for c in choices if c.get("OptionSet")}
    navigation: dict[str, dict[str, str]] = {}
    for relationship in entity.get("ManyToOneRelationships") or []:
        navigation.setdefault(relationship["ReferencingAttribute"], {})[relationship["ReferencedEntity"]] = \
            relationship["ReferencingEntityNavigationPropertyName"]
    columns = {}
    for attribute in entity.get("Attributes") or []:
        name = attribute["LogicalName"]
        columns[name] = Column(
            name=name, label=localized_label(attribute.get("DisplayName")) or name,
            type=str(attribute.get("AttributeType")),
            type_name=str((attribute.get("AttributeTypeName") or {}).get("Value") or ""),
            date_only=((attribute.get("DateTimeBehavior") or {}).get("Value") == "DateOnly"
                       or attribute.get("Format") == "DateOnly"),
            targets=tuple(attribute.get("Targets") or ()), navigation=navigation.get(name, {}),
            creatable=bool(attribute.get("IsValidForCreate", True)),
            updatable=bool(attribute.get("IsValidForUpdate", True)),
            logical=bool(attribute.get("AttributeOf")) or attribute.get("IsValidODataAttribute") is False,
            precision=attribute.get("Precision", DEFAULT_PRECISION.get(str(attribute.get("AttributeType")))),
            choice=option_sets.get(name))
    keys = tuple(tuple(k.get("KeyAttributes") or ()) for k in entity.get("Keys") or [])
    audit = entity.get("IsAuditEnabled")
    return Table(name=entity["LogicalName"], entity_set=entity["EntitySetName"],
                 label=localized_label(entity.get("DisplayName")) or entity["LogicalName"],
                 primary_id=entity["PrimaryIdAttribute"], primary_name=entity.get("PrimaryNameAttribute"),
                 change_tracking=bool(entity.get("ChangeTrackingEnabled")),
                 audit_enabled=bool(audit.get("Value") if isinstance(audit, dict) else audit),
                 columns=columns, keys=keys)


def _choice(option_set: Mapping[str, Any] | None) -> Choice:
    option_set = option_set or {}
    return Choice(name=str(option_set.get("Name") or ""), is_global=bool(option_set.get("IsGlobal")),
                  options={int(o["Value"]): option_label(o) for o in option_set.get("Options") or []})
