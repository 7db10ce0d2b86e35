"""The Salesforce sandbox's data model: which objects exist, their fields and describe metadata.

This module is the contract between the sandbox's HTTP layer (records, describe, storage) and its SOQL engine
(`soql.py`). Storage is SQLite, one table per object, named like the object, one column per *stored* field
(named like the field, canonical case). Value encodings in SQLite:

- id, reference, string-like types (string, picklist, textarea, phone, url, email, combobox): TEXT
- multipicklist: TEXT, values joined by ';' (as Salesforce returns them)
- boolean: INTEGER 0/1
- int: INTEGER; double, currency, percent: REAL
- date: TEXT 'YYYY-MM-DD'
- datetime: TEXT 'YYYY-MM-DDTHH:MM:SS.fff+0000' in UTC (Salesforce's REST form, lexicographically sortable)

Fields that are not stored: formula fields (`formula_sql` holds a SQLite expression over the object's own
columns) and compound address fields (`compound_of` lists the component fields).
"""
from __future__ import annotations

from dataclasses import dataclass, field as dc_field


@dataclass(frozen=True)
class FieldDef:
    name: str
    type: str
    label: str
    length: int = 0
    nillable: bool = True
    createable: bool = True
    updateable: bool = True
    external_id: bool = False
    unique: bool = False
    id_lookup: bool = False
    reference_to: tuple[str, ...] = ()
    relationship_name: str | None = None
    picklist_values: tuple[str, ...] = ()
    restricted_picklist: bool = False
    default_value: object = None
    formula_sql: str | None = None
    compound_of: tuple[str, ...] = ()

    @property
    def calculated(self) -> bool:
        return self.formula_sql is not None

    @property
    def stored(self) -> bool:
        """True when the field is a column of the object's SQLite table."""
        return self.formula_sql is None and not self.compound_of


@dataclass
class ObjectDef:
    name: str
    label: str
    label_plural: str
    key_prefix: str
    fields: dict[str, FieldDef] = dc_field(default_factory=dict)
    createable: bool = True
    updateable: bool = True
    deletable: bool = True

    def field(self, name: str) -> FieldDef | None:
        """Case-insensitive lookup, as Salesforce resolves field names."""
        return self._by_lower().get(name.lower())

    def relationship(self, name: str) -> FieldDef | None:
        """The reference field whose relationshipName is `name` (case-insensitive), e.g. 'Account' -> AccountId."""
        lowered = name.lower()
        for f in self.fields.values():
            if f.relationship_name and f.relationship_name.lower() == lowered:
                return f
        return None

    def stored_fields(self) -> list[FieldDef]:
        return [f for f in self.fields.values() if f.stored]

    def _by_lower(self) -> dict[str, FieldDef]:
        cache = self.__dict__.get("_lower_cache")
        if cache is None or len(cache) != len(self.fields):
            cache = {k.lower(): v for k, v in self.fields.items()}
            self.__dict__["_lower_cache"] = cache
        return cache


@dataclass
class Model:
    objects: dict[str, ObjectDef] = dc_field(default_factory=dict)

    def object(self, name: str) -> ObjectDef | None:
        """Case-insensitive lookup, as Salesforce resolves sObject names."""
        for key, obj in self.objects.items():
            if key.lower() == name.lower():
                return obj
        return None
