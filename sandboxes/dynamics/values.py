"""Records between JSON and storage: reading request bodies into column values, rendering rows as Web API JSON.

Writing (learn.microsoft.com/power-apps/developer/data-platform/webapi/create-entity-web-api,
update-delete-entities-using-web-api, associate-disassociate-entities-using-web-api):
  * columns by logical name, typed as the metadata says; lookups only through `<navigation>@odata.bind`
    ("/contacts(<id>)", "contacts(<id>)", an absolute URL, or an alternate key "/contacts(key='v')"), or null
    to clear; `_x_value` and a bare lookup name are refused like Dataverse refuses them
  * columns that are not valid for create/update (createdon, fullname, versionnumber...) are ignored, as the
    service ignores them; unknown properties are a 400
  * statuscode alone sets the matching statecode; statecode alone takes that state's default status

Reading (webapi/query/select-columns, compose-http-requests-handle-errors#include-additional-details):
  * every row carries `@odata.etag` W/"<versionnumber>"; lookups appear as `_x_value`
  * annotations only when `Prefer: odata.include-annotations` asks: FormattedValue (choices, booleans, money,
    dates, lookups), Microsoft.Dynamics.CRM.lookuplogicalname and associatednavigationproperty
"""
from __future__ import annotations

import re
import uuid
from datetime import date
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import unquote, urlsplit

from .context import Call, Prefer
from .errors import (INVALID_PROPERTY, PAYLOAD, PICKLIST_OUT_OF_RANGE, VALIDATION, DataverseError, bad_request,
                     no_property, not_found)
from .model import BY_ENTITY_SET, CHOICE_TYPES, ENTITIES, Attribute, Entity, INTEGER_TYPES, NUMBER_TYPES
from .odata import format_datetime, normalize_multiselect, parse_datetime

FORMATTED = "OData.Community.Display.V1.FormattedValue"
LOOKUP_LOGICAL_NAME = "Microsoft.Dynamics.CRM.lookuplogicalname"
NAVIGATION_PROPERTY = "Microsoft.Dynamics.CRM.associatednavigationproperty"
_IGNORED_KEYS = {"@odata.type", "@odata.etag", "@odata.context", "@odata.id"}
_BOOLEAN_LABELS = ("No", "Yes")
_KEY_PART = re.compile(r"\s*(\w+)\s*=\s*('(?:[^']|'')*'|[^,]+)\s*(?:,|$)")


# ---------------------------------------------------------------- addressing records

def parse_key(entity: Entity, segment: str) -> tuple[str | None, dict[str, str] | None]:
    """`(<guid>)` -> (id, None); `(crmsync_campaignkey='42')` -> (None, {column: value}); else a 400."""
    text = segment.strip()
    try:
        return str(uuid.UUID(text.strip("{}"))), None
    except ValueError:
        pass
    parts = _KEY_PART.findall(text)
    if not parts or "".join(f"{k}={v}," for k, v in parts).replace(" ", "").rstrip(",") != \
            text.replace(" ", "").rstrip(","):
        raise bad_request(f"Bad Request - Error in query syntax: the key '{segment}' is neither a GUID nor "
                          "name='value' pairs.", INVALID_PROPERTY)
    key = {name.lower(): (raw[1:-1].replace("''", "'") if raw.startswith("'") else raw.strip())
           for name, raw in parts}
    if entity.primary_id in key and len(key) == 1:
        return parse_key(entity, key[entity.primary_id])
    if not any(set(k.attributes) == set(key) for k in entity.keys):
        raise bad_request(f"The key used to identify the {entity.name} isn't defined as an alternate key: "
                          f"{', '.join(sorted(key))}.", INVALID_PROPERTY)
    return None, key


def resolve(call: Call, entity: Entity, segment: str) -> tuple[str | None, dict[str, str] | None]:
    """(existing id or None, alternate key or None) for a key segment."""
    record_id, key = parse_key(entity, segment)
    if record_id is not None:
        return (record_id if call.sandbox.store.get(entity, record_id) else None), None
    return call.sandbox.store.find_by_key(entity, key or {}), key


def reference(call: Call, url: str) -> tuple[Entity, str]:
    """Resolve an @odata.bind / @odata.id value to (table, existing id); 400/404 when it is malformed/absent."""
    path = unquote(urlsplit(url).path) if url.startswith("http") else url
    match = re.search(r"(?:^|/)(\w+)\((.+)\)$", path.strip())
    entity = BY_ENTITY_SET.get(match.group(1)) if match else None
    if match is None or entity is None:
        raise bad_request(f"The reference '{url}' is not a valid entity reference: use /<entityset>(<id>).",
                          INVALID_PROPERTY)
    record_id, key = resolve(call, entity, match.group(2))
    if record_id is None:
        raise not_found(entity.name, match.group(2) if key is None else str(key))
    return entity, record_id


# ---------------------------------------------------------------- request body -> storage

def to_storage(call: Call, entity: Entity, body: Mapping[str, Any], *, creating: bool) -> dict[str, Any]:
    """Column values (storage form) from a create/update body; raises DataverseError for what the service refuses."""
    values: dict[str, Any] = {}
    for key, value in body.items():
        if key in _IGNORED_KEYS or (key.startswith("@") and "@" not in key[1:]):
            continue
        if key.endswith("@odata.bind"):
            _bind(call, entity, key[: -len("@odata.bind")], value, values)
            continue
        if "@" in key:
            continue  # instance annotations on a property (FormattedValue...) are ignored on writes
        attr = entity.attribute(key)
        if attr is None or key.startswith("_"):
            raise no_property(key, entity.name)
        if attr.is_lookup:
            raise bad_request(f"An undeclared property '{key}' which only has property annotations in the payload "
                              "but no property value was found in the payload. In OData, only declared navigation "
                              "properties and declared named streams can be represented as properties without "
                              "values.", INVALID_PROPERTY)
        if attr.name == entity.primary_id:
            if creating and value is not None:
                values[attr.name] = _guid(attr, value, entity)
            continue
        if not (attr.create if creating else attr.update):
            continue  # read-only columns are ignored, as Dataverse does
        values[attr.name] = convert(attr, value, entity)
    _settle_state(entity, values)
    return values


def _bind(call: Call, entity: Entity, navigation: str, value: Any, values: dict[str, Any]) -> None:
    target = entity.navigation(navigation)
    if target is None:
        raise bad_request(f"An undeclared property '{navigation}' which only has property annotations in the "
                          "payload but no property value was found in the payload.", INVALID_PROPERTY)
    attr, target_name = target
    if value is None:
        values[attr.name] = None
        if attr.polymorphic:
            values[f"{attr.name}__type"] = None
        return
    if not isinstance(value, str):
        raise bad_request(f"The value of '{navigation}@odata.bind' must be a reference like /contacts(<id>).",
                          PAYLOAD)
    referenced, record_id = reference(call, value)
    if referenced.name != target_name:
        raise bad_request(f"The navigation property '{navigation}' points to {target_name}, not to "
                          f"{referenced.entity_set}.", INVALID_PROPERTY)
    values[attr.name] = record_id
    if attr.polymorphic:
        values[f"{attr.name}__type"] = target_name


def convert(attr: Attribute, value: Any, entity: Entity) -> Any:
    """One JSON value -> its storage form, with Dataverse's errors for wrong types, lengths and choices."""
    if value is None:
        return None
    if attr.type in ("String", "Memo"):
        if not isinstance(value, str):
            raise _cannot_convert(value, "Edm.String", entity)
        if attr.max_length and len(value) > attr.max_length:
            raise DataverseError(400, VALIDATION, f"A validation error occurred.  The length of the '{attr.name}' "
                                 f"attribute of the '{entity.name}' entity exceeded the maximum allowed length of "
                                 f"'{attr.max_length}'.")
        return value
    if attr.type == "Boolean":
        if not isinstance(value, bool):
            raise _cannot_convert(value, "Edm.Boolean", entity)
        return int(value)
    if attr.type in INTEGER_TYPES:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _cannot_convert(value, "Edm.Int64" if attr.type == "BigInt" else "Edm.Int32", entity)
        if attr.type in CHOICE_TYPES:
            return _choice(attr, value, entity)
        _range(attr, value, entity)
        return value
    if attr.type in NUMBER_TYPES:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _cannot_convert(value, "Edm.Double" if attr.type == "Double" else "Edm.Decimal", entity)
        _range(attr, value, entity)
        return float(value)
    if attr.type == "DateTime":
        return _moment(attr, value, entity)
    if attr.is_multiselect:
        return _multiselect(attr, value, entity)
    if attr.type == "Uniqueidentifier":
        return _guid(attr, value, entity)
    raise _cannot_convert(value, "Edm.String", entity)


def _cannot_convert(value: Any, edm: str, entity: Entity) -> DataverseError:
    return DataverseError(400, PAYLOAD, f"Error identified in Payload provided by the user for Entity :"
                          f"'{entity.entity_set}', For more information on this error please follow this help link "
                          f"https://go.microsoft.com/fwlink/?linkid=2195293  ---->  InnerException : "
                          f"Microsoft.OData.ODataException: Cannot convert the literal '{value}' to the expected "
                          f"type '{edm}'.")


def _range(attr: Attribute, value: float, entity: Entity) -> None:
    if (attr.min_value is not None and value < attr.min_value) or \
            (attr.max_value is not None and value > attr.max_value):
        raise DataverseError(400, VALIDATION, f"A validation error occurred. The value {value} of '{attr.name}' on "
                             f"record of type '{entity.name}' is outside the valid range "
                             f"({attr.min_value} to {attr.max_value}).")


def _choice(attr: Attribute, value: int, entity: Entity) -> int:
    allowed = attr.option_set.values() if attr.option_set else []
    if value not in allowed:
        raise DataverseError(400, PICKLIST_OUT_OF_RANGE, f"A validation error occurred. The value {value} of "
                             f"'{attr.name}' on record of type '{entity.name}' is outside the valid range. "
                             f"Accepted Values: {','.join(map(str, allowed))}")
    return value


def _multiselect(attr: Attribute, value: Any, entity: Entity) -> str | None:
    if not isinstance(value, str):
        raise _cannot_convert(value, "Edm.String", entity)
    try:
        normalized = normalize_multiselect(value)
    except ValueError:
        raise _cannot_convert(value, "Edm.String", entity) from None
    for part in normalized.split(","):
        if part:
            _choice(attr, int(part), entity)
    return normalized or None


def _moment(attr: Attribute, value: Any, entity: Entity) -> str:
    edm = "Edm.Date" if attr.date_only else "Edm.DateTimeOffset"
    if not isinstance(value, str):
        raise _cannot_convert(value, edm, entity)
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            return day.isoformat() if attr.date_only else f"{day.isoformat()}T00:00:00Z"
        moment = parse_datetime(value)
    except ValueError:
        raise _cannot_convert(value, edm, entity) from None
    return moment.date().isoformat() if attr.date_only else format_datetime(moment)


def _guid(attr: Attribute, value: Any, entity: Entity) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise _cannot_convert(value, "Edm.Guid", entity) from None


def _settle_state(entity: Entity, values: dict[str, Any]) -> None:
    """Keep statecode and statuscode consistent, as Dataverse's SetState logic does."""
    status_attr = entity.attribute("statuscode")
    if status_attr is None or status_attr.option_set is None:
        return
    options = status_attr.option_set.options
    status, state = values.get("statuscode"), values.get("statecode")
    if status is not None and state is None:
        values["statecode"] = next(o.state for o in options if o.value == status)
    elif state is not None and status is None:
        values["statuscode"] = next(o.value for o in options if o.state == state)
    elif status is not None and state is not None and \
            next(o.state for o in options if o.value == status) != state:
        raise DataverseError(400, "0x80043b1d", f"{status} is not a valid status code for state code "
                                                f"{entity.label}State.{state} on {entity.name}.")


# ---------------------------------------------------------------- storage -> JSON

class LookupNames:
    """Primary names of referenced records, fetched once per table per response (for FormattedValue)."""

    def __init__(self, call: Call) -> None:
        self.call = call
        self.cache: dict[tuple[str, str], str | None] = {}

    def name(self, table: str, record_id: str) -> str | None:
        if (table, record_id) not in self.cache:
            entity = ENTITIES[table]
            row = self.call.sandbox.store.get(entity, record_id)
            self.cache[(table, record_id)] = row.get(entity.primary_name) if row else None
        return self.cache[(table, record_id)]


def render(entity: Entity, row: Mapping[str, Any], select: Sequence[str] | None, prefer: Prefer,
           names: LookupNames | None = None) -> dict[str, Any]:
    """A stored row as the Web API returns it, restricted to `select` (plus the primary id) when given."""
    out: dict[str, Any] = {"@odata.etag": etag(row)}
    attributes = [entity.by_value_property(p) for p in select] if select else entity.stored()
    if select and entity.attributes[entity.primary_id] not in attributes:
        attributes.append(entity.attributes[entity.primary_id])
    for attr in attributes:
        if attr is None:
            continue
        value = _json_value(attr, row.get(attr.name))
        prop = attr.value_property
        _annotate(out, entity, attr, row, value, prefer, names)
        out[prop] = value
    return out


def _json_value(attr: Attribute, stored: Any) -> Any:
    if stored is None:
        return None
    if attr.type == "Boolean":
        return bool(stored)
    if attr.type in INTEGER_TYPES:
        return int(stored)
    if attr.type in NUMBER_TYPES:
        return float(stored)
    return stored


def _annotate(out: dict[str, Any], entity: Entity, attr: Attribute, row: Mapping[str, Any], value: Any,
              prefer: Prefer, names: LookupNames | None) -> None:
    if value is None or not prefer.include_annotations:
        return
    prop = attr.value_property
    formatted = _formatted(attr, row, value, names)
    if formatted is not None and prefer.wants(FORMATTED):
        out[f"{prop}@{FORMATTED}"] = formatted
    if attr.is_lookup:
        target = row.get(f"{attr.name}__type") if attr.polymorphic else attr.targets[0]
        if prefer.wants(NAVIGATION_PROPERTY):
            nav = "owninguser" if attr.name == "ownerid" else attr.name if not attr.polymorphic else \
                f"{attr.name}_{target}"
            out[f"{prop}@{NAVIGATION_PROPERTY}"] = nav
        if prefer.wants(LOOKUP_LOGICAL_NAME):
            out[f"{prop}@{LOOKUP_LOGICAL_NAME}"] = target


def _formatted(attr: Attribute, row: Mapping[str, Any], value: Any, names: LookupNames | None) -> str | None:
    if attr.type in CHOICE_TYPES and attr.option_set:
        return attr.option_set.label(value)
    if attr.is_multiselect and attr.option_set:
        return "; ".join(attr.option_set.label(int(v)) or v for v in str(value).split(","))
    if attr.type == "Boolean":
        return _BOOLEAN_LABELS[int(value)]
    if attr.type == "Money":
        return f"${value:,.2f}"
    if attr.type in ("Integer", "BigInt"):
        return f"{value:,}"
    if attr.type == "DateTime":
        if attr.date_only:
            day = date.fromisoformat(value)
            return f"{day.month}/{day.day}/{day.year}"
        moment = parse_datetime(value)
        return f"{moment.month}/{moment.day}/{moment.year} {moment.strftime('%I:%M %p').lstrip('0')}"
    if attr.is_lookup and names is not None:
        target = row.get(f"{attr.name}__type") if attr.polymorphic else attr.targets[0]
        return names.name(str(target), value) if target else None
    return None


def etag(row: Mapping[str, Any]) -> str:
    return f'W/"{row.get("versionnumber")}"'


def expand(call: Call, entity: Entity, row: Mapping[str, Any], out: dict[str, Any],
           items: Sequence[tuple[str, dict[str, str]]], names: LookupNames, on_missing: Callable[[str], None]) \
        -> None:
    """Add single-valued navigation properties (`primarycontactid($select=fullname)`) to a rendered row."""
    from .odata import parse_select

    for navigation, options in items:
        target = entity.navigation(navigation)
        if target is None:
            on_missing(navigation)
            continue
        attr, target_name = target
        related_id = row.get(attr.name)
        if related_id is None or (attr.polymorphic and row.get(f"{attr.name}__type") != target_name):
            out[navigation] = None
            continue
        related_entity = ENTITIES[target_name]
        related = call.sandbox.store.get(related_entity, related_id)
        select = parse_select(options.get("$select"))
        for name in select or ():
            if related_entity.by_value_property(name) is None:
                raise no_property(name, related_entity.name)
        out[navigation] = render(related_entity, related, select, call.prefer, names) if related else None


