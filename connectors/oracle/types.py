"""Oracle CRM On Demand field types: what the REST describe says, crmsync's neutral kinds, mirror column types, and
values both ways (API form ⇄ canonical form of crmsync/values.py).

The describe ("Describe Field Attributes", REST API Developer's Guide, OnDemRestAPI_Ref32.html) gives each
field a `type` (string, boolean, number, integer, date, dateTime) and hints: `currencyCode` marks currency, a
drop-down `controlType` marks a picklist, whose values the sandbox lists in `lov` (docs/oracle.md: Oracle
documents no REST picklist resource). OOD's own type names are kept for people (`crm_type`).

| OOD type  | kind     | mirror column              | on the wire                                                    |
|-----------|----------|----------------------------|----------------------------------------------------------------|
| string/id | text     | text                       | text; OOD does not tell an empty value from none: "" is None   |
| picklist  | text     | text (+ enumeration)       | the language-independent code (LIC), the default mode          |
| boolean   | boolean  | boolean                    | JSON true/false (REST), "true"/"false" (WS); a check box is    |
|           |          |                            | never empty in OOD: no value reads as false                    |
| integer   | integer  | integer                    | number / text                                                  |
| number    | number   | numeric                    | number / text; kept exactly (numeric, not float, in the mirror)|
| currency  | number   | numeric                    | as number                                                      |
| date      | date     | date                       | YYYY-MM-DD: no time, no zone, never shifted                    |
| datetime  | datetime | timestamp with time zone   | REST: the user's wall clock + literal Z; WS: XSD UTC           |

Datetimes are the one place a value changes form: REST shows the user's wall-clock time (timezone.py turns it into
UTC), Web Services v2.0 show UTC. Canonical datetimes are UTC with milliseconds and 'Z'; OOD keeps seconds, so
values compare at the second.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from crmsync.connectors import Enumeration, FieldSpec
from crmsync.values import Kind, canonical, iso_utc, parse_timestamp

from .timezone import UserClock

KINDS: dict[str, Kind] = {"id": "text", "string": "text", "picklist": "text", "boolean": "boolean",
                          "integer": "integer", "number": "number", "currency": "number", "date": "date",
                          "datetime": "datetime"}
PG_TYPES = {"id": "text", "string": "text", "picklist": "text", "boolean": "boolean", "integer": "integer",
            "number": "numeric", "currency": "numeric", "date": "date", "datetime": "timestamp with time zone"}
SEARCH_FIELD_PREFIX = "CI_"  # upper-cased search copies (REST Ref25): derived, read-only, never synced


@dataclass(frozen=True)
class OodField:
    name: str  # integration tag
    title: str
    crm_type: str  # one of KINDS' keys
    updatable: bool = True
    mandatory: bool = False
    values: tuple[tuple[str, str], ...] = ()  # picklist (code, display value)

    @property
    def kind(self) -> Kind:
        return KINDS[self.crm_type]

    @property
    def pg_type(self) -> str:
        return PG_TYPES[self.crm_type]

    @property
    def search_copy(self) -> bool:
        return self.name.startswith(SEARCH_FIELD_PREFIX)


def fields_of(resource: Mapping[str, Any]) -> dict[str, OodField]:
    """The fields of one resource's describe (`{"attributes": [...]}`), by integration tag."""
    return {a["name"]: _field(a) for a in resource.get("attributes", [])}


def _field(attribute: Mapping[str, Any]) -> OodField:
    name, wire = attribute["name"], str(attribute.get("type", "string"))
    if wire == "dateTime":
        crm_type = "datetime"
    elif wire == "number" and attribute.get("currencyCode"):
        crm_type = "currency"
    elif wire == "string" and (attribute.get("lov") or attribute.get("controlType") == "drop-down list"):
        crm_type = "picklist"
    elif wire == "string" and (name == "Id" or (name.endswith("Id") and attribute.get("maxLength") == 15)):
        crm_type = "id"
    else:
        crm_type = wire if wire in KINDS else "string"
    values = tuple((str(v["code"]), str(v.get("value", v["code"]))) for v in attribute.get("lov") or ())
    return OodField(name, str(attribute.get("title") or name), crm_type, bool(attribute.get("updatable", True)),
                    bool(attribute.get("mandatory", False)), values)


def field_spec(field: OodField, table: str) -> FieldSpec:
    enumeration = f"{table}_{field.name}" if field.values else None
    return FieldSpec(field.name, field.title, field.crm_type, field.pg_type, calculated=False,
                     enumeration=enumeration, kind=field.kind, updateable=field.updatable,
                     external_id=field.name == "ExternalSystemId")


def enumeration(field: OodField, table: str) -> Enumeration:
    """A picklist as the wizard's enumeration: values by their language-independent code, labelled."""
    return Enumeration(f"{table}_{field.name}", f"List of '{field.title}' from '{table}'", False,
                       [{"name": code, "label": label or code, "value": code} for code, label in field.values])


# ---------------------------------------------------------------- values


def from_rest(field: OodField | None, value: Any, clock: UserClock) -> Any:
    """A REST value in canonical form (datetimes: the user's wall clock to UTC)."""
    if value is None or value == "":
        return _empty(field)
    if field is not None and field.crm_type == "datetime" and isinstance(value, str):
        return iso_utc(clock.parse_rest(value))
    return _canonical(value, field)


def from_ws(field: OodField | None, text: Any) -> Any:
    """A Web Services value (always text; datetimes XSD UTC) in canonical form."""
    if text is None or text == "":
        return _empty(field)
    return _canonical(text, field)


def to_ws(field: OodField | None, value: Any) -> Any:
    """A canonical value as the Web Services writer takes it (webservices._text renders it): aware datetimes,
    ISO dates, booleans, numbers; None clears the field."""
    if value is None or field is None:
        return value
    if field.crm_type == "datetime":
        return parse_timestamp(value)
    return canonical(value, field.kind)


def comparable(field: OodField | None, value: Any) -> Any:
    """A value in the form two readings of one OOD field compare equal in (datetimes to the second)."""
    if value in (None, ""):
        return None
    try:
        value = canonical(value, field.kind if field else None)
    except ValueError:
        return value
    if field is not None and field.crm_type == "datetime":
        return value[:19]
    return value


def _empty(field: OodField | None) -> Any:
    """What an absent value means: None, except for a check box, which is unchecked (false)."""
    return False if field is not None and field.crm_type == "boolean" else None


def _canonical(value: Any, field: OodField | None) -> Any:
    try:
        return canonical(value, field.kind if field else None)
    except ValueError:
        return value  # OOD sent something its declared type does not allow: pass it on as sent

