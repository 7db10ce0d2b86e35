"""The shape of a Change Data Capture event: its Avro schema, and its two wire forms (Pub/Sub Avro, CometD JSON).

Followed: Change Data Capture Developer Guide, "Change Event Message Structure", "ChangeEventHeader Fields",
"Change Event Body Fields", "Get Compound Fields in Change Events"
(https://developer.salesforce.com/docs/atlas.en-us.change_data_capture.meta/change_data_capture/
cdc_message_structure.htm, cdc_event_fields_header.htm, cdc_event_fields_body.htm,
cdc_subscribe_compound_fields.htm); Pub/Sub API Developer Guide, "Event Deserialization Considerations"
(https://developer.salesforce.com/docs/platform/pub-sub-api/guide/event-deserialization-considerations.html);
Streaming API Developer Guide, "Differences Between Change Events Received with Streaming API vs. Pub/Sub API"
(https://developer.salesforce.com/docs/atlas.en-us.api_streaming.meta/api_streaming/cdc_event_diff_pubsub_cometd.htm).

Layout (`EventLayout`) of `<Object>ChangeEvent`: field 0 is the `ChangeEventHeader` record, then the object's
fields in model order, except those change events leave out (Id, IsDeleted, SystemModstamp, formula fields).
Compound fields are nested records: a person name (`Name`: Salutation, FirstName, LastName, MiddleName,
InformalName, Suffix) on objects whose Name is derived from FirstName/LastName, and addresses (`MailingAddress`:
Street, City, State, PostalCode, Country, Latitude, Longitude, GeocodeAccuracy); their component fields do not
appear at the top level. Every body field is a nullable union with default null.

An event is stored in a neutral form (`StoredEvent`: header values, changed / nulled field names as the model
spells them, values in the store's encoding) and rendered on delivery:

* Pub/Sub (Avro, `avro_record`): every schema field present; fields not carried are null. Datetimes are epoch
  milliseconds, dates epoch days. changedFields / nulledFields / diffFields are bitmaps: element 0 is
  '0x' + hex of the top-level positions (bit i = schema field i), then one '<parent position>-0x<hex>' element
  per compound field whose components are listed (bit j = component j of the nested record).
* CometD (JSON, `json_payload`): only non-null carried fields; datetimes as ISO-8601 with `Z`; changedFields as
  names (`Email`, `Name.LastName`, `MailingAddress.City`); no nulledFields / diffFields in the header.

Invariant: the schema id is a hash of the schema JSON, so it changes exactly when the layout changes (a custom
field added at runtime), and an event always names the schema it was written with.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any, Mapping

import fastavro

from .encoding import parse_datetime
from .model import FieldDef, ObjectDef

CHANGE_TYPES = ("CREATE", "UPDATE", "DELETE", "UNDELETE", "GAP_CREATE", "GAP_UPDATE", "GAP_DELETE",
                "GAP_UNDELETE", "GAP_OVERFLOW")
EXCLUDED = frozenset({"Id", "IsDeleted", "SystemModstamp"})
PERSON_NAME_PARTS = ("Salutation", "FirstName", "LastName", "MiddleName", "InformalName", "Suffix")
ADDRESS_PARTS = ("Street", "City", "State", "PostalCode", "Country", "Latitude", "Longitude", "GeocodeAccuracy")
_AVRO_TYPES = {"boolean": "boolean", "int": "int", "double": "double", "currency": "double", "percent": "double",
               "date": "int", "datetime": "long"}
_DOC_TYPES = {"boolean": "Boolean", "int": "Integer", "double": "Double", "currency": "Currency",
              "percent": "Percent", "date": "DateOnly", "datetime": "DateTime", "reference": "EntityId",
              "picklist": "DynamicEnum", "multipicklist": "MultiEnum", "email": "Email", "phone": "Phone",
              "url": "Url", "textarea": "MultiLineText"}
_EPOCH_DAY = date(1970, 1, 1)

_HEADER_SCHEMA: dict[str, Any] = {
    "type": "record", "name": "ChangeEventHeader", "namespace": "com.sforce.eventbus", "fields": [
        {"name": "entityName", "type": "string"},
        {"name": "recordIds", "type": {"type": "array", "items": "string"}},
        {"name": "changeType", "type": {"type": "enum", "name": "ChangeType", "namespace": "com.sforce.eventbus",
                                        "symbols": [*CHANGE_TYPES, "SNAPSHOT"]}},
        {"name": "changeOrigin", "type": "string"},
        {"name": "transactionKey", "type": "string"},
        {"name": "sequenceNumber", "type": "int"},
        {"name": "commitTimestamp", "type": "long"},
        {"name": "commitNumber", "type": "long"},
        {"name": "commitUser", "type": "string"},
        {"name": "nulledFields", "type": {"type": "array", "items": "string"}},
        {"name": "diffFields", "type": {"type": "array", "items": "string"}},
        {"name": "changedFields", "type": {"type": "array", "items": "string"}},
    ]}


@dataclass(frozen=True)
class EventField:
    """One top-level field of a change event: a plain field, or a compound with (component, model field) parts."""
    name: str
    source: FieldDef | None  # the model field of a plain field
    parts: tuple[tuple[str, FieldDef | None], ...] = ()  # compound: (nested name, model field or None)

    @property
    def compound(self) -> bool:
        return bool(self.parts)


@dataclass
class StoredEvent:
    """A change event as the sandbox keeps it; `values` and the field lists use model field names."""
    replay_id: int
    entity: str
    change_type: str
    record_ids: list[str]
    origin: str
    transaction_key: str
    sequence: int
    commit_timestamp: int
    commit_number: int
    commit_user: str
    schema_id: str
    changed: list[str] = field(default_factory=list)
    nulled: list[str] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)


class EventLayout:
    """Where each model field of an object sits in its change event, and the Avro schema that follows."""

    def __init__(self, obj: ObjectDef) -> None:
        self.object = obj
        self.fields = _event_fields(obj)
        self.schema = _schema(obj, self.fields)
        self.schema_json = json.dumps(self.schema, separators=(",", ":"))
        self.schema_id = schema_id(self.schema_json)
        self.parsed = fastavro.parse_schema(self.schema)
        self.position: dict[str, tuple[int, int | None]] = {}  # model field -> (top index, nested index)
        for index, event_field in enumerate(self.fields, start=1):
            if event_field.source is not None:
                self.position[event_field.source.name] = (index, None)
            for nested, (_, source) in enumerate(event_field.parts):
                if source is not None:
                    self.position[source.name] = (index, nested)

    def carries(self, model_field: str) -> bool:
        return model_field in self.position

    def display_name(self, model_field: str) -> str:
        """The CometD name of a changed field: 'Email', or 'MailingAddress.City' for a component."""
        top, nested = self.position[model_field]
        event_field = self.fields[top - 1]
        return event_field.name if nested is None else f"{event_field.name}.{event_field.parts[nested][0]}"

    def bitmap(self, model_fields: list[str]) -> list[str]:
        """The Pub/Sub bitmap form of a field list: ['0x…', '<parent>-0x…', …] (empty list for no fields)."""
        top_bits, nested_bits = 0, {}
        for name in model_fields:
            if name not in self.position:
                continue
            top, nested = self.position[name]
            if nested is None:
                top_bits |= 1 << top
            else:
                nested_bits[top] = nested_bits.get(top, 0) | 1 << nested
        if not top_bits and not nested_bits:
            return []
        return [_hex(top_bits)] + [f"{parent}-{_hex(bits)}" for parent, bits in sorted(nested_bits.items())]

    # ---- rendering

    def avro_record(self, event: StoredEvent) -> dict[str, Any]:
        record: dict[str, Any] = {"ChangeEventHeader": {
            **_header(event), "nulledFields": self.bitmap(event.nulled), "diffFields": [],
            "changedFields": self.bitmap(event.changed)}}
        for event_field in self.fields:
            record[event_field.name] = self._value(event_field, event.values, _avro_value)
        return record

    def avro_payload(self, event: StoredEvent) -> bytes:
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, self.parsed, self.avro_record(event))
        return buffer.getvalue()

    def json_payload(self, event: StoredEvent) -> dict[str, Any]:
        header = {**_header(event), "changedFields": [self.display_name(n) for n in event.changed
                                                      if self.carries(n)]}
        payload: dict[str, Any] = {"ChangeEventHeader": header}
        for event_field in self.fields:
            value = self._value(event_field, event.values, _json_value, skip_nulls=True)
            if value is not None:
                payload[event_field.name] = value
        return payload

    @staticmethod
    def _value(event_field: EventField, values: Mapping[str, Any], convert: Any, skip_nulls: bool = False) -> Any:
        if not event_field.compound:
            assert event_field.source is not None
            return convert(event_field.source, values.get(event_field.source.name))
        if not any(source is not None and source.name in values for _, source in event_field.parts):
            return None
        nested = {name: convert(source, values.get(source.name)) if source else None
                  for name, source in event_field.parts}
        return {k: v for k, v in nested.items() if v is not None} if skip_nulls else nested


def schema_id(schema_json: str) -> str:
    """A fingerprint of the schema JSON, in the 22-character base64url form Salesforce schema ids have."""
    return base64.urlsafe_b64encode(hashlib.md5(schema_json.encode()).digest()).decode().rstrip("=")


def _hex(bits: int) -> str:
    digits = f"{bits:X}"
    return "0x" + digits.rjust(len(digits) + len(digits) % 2, "0")


def _header(event: StoredEvent) -> dict[str, Any]:
    return {"entityName": event.entity, "recordIds": list(event.record_ids), "changeType": event.change_type,
            "changeOrigin": event.origin, "transactionKey": event.transaction_key,
            "sequenceNumber": event.sequence, "commitTimestamp": event.commit_timestamp,
            "commitNumber": event.commit_number, "commitUser": event.commit_user}


def _is_person_name(obj: ObjectDef) -> bool:
    name = obj.fields.get("Name")
    return bool(name and not name.createable and "FirstName" in obj.fields and "LastName" in obj.fields)


def _event_fields(obj: ObjectDef) -> list[EventField]:
    components = {c for f in obj.fields.values() for c in f.compound_of}
    person = _is_person_name(obj)
    if person:
        components |= {p for p in PERSON_NAME_PARTS if p in obj.fields}
    result = []
    for f in obj.fields.values():
        if f.name in EXCLUDED or f.calculated or f.name in components:
            continue
        if person and f.name == "Name":
            result.append(EventField("Name", None, tuple((p, obj.fields.get(p)) for p in PERSON_NAME_PARTS)))
        elif f.compound_of:
            prefix = f.name[:-len("Address")]
            result.append(EventField(f.name, None, tuple((p, obj.fields.get(prefix + p)) for p in ADDRESS_PARTS)))
        else:
            result.append(EventField(f.name, f))
    return result


def _nullable(avro_type: Any) -> list[Any]:
    return ["null", avro_type]


def _schema(obj: ObjectDef, fields: list[EventField]) -> dict[str, Any]:
    body = []
    for event_field in fields:
        if event_field.compound:
            record_name = "Switchable_PersonName" if event_field.name == "Name" else "Address"
            nested = {"type": "record", "name": record_name, "namespace": "com.sforce.eventbus", "fields": [
                {"name": name, "type": _nullable(_AVRO_TYPES.get(source.type, "string") if source else "string"),
                 "default": None} for name, source in event_field.parts]}
            body.append({"name": event_field.name, "type": _nullable(nested), "doc": f"Data:{record_name}",
                         "default": None})
            continue
        source = event_field.source
        assert source is not None
        avro_type: Any = _AVRO_TYPES.get(source.type, "string")
        doc = _DOC_TYPES.get(source.type, "Text")
        if source.name == "Name" and obj.name == "Account":  # a business account name, or a person account's
            person = {"type": "record", "name": "Switchable_PersonName", "namespace": "com.sforce.eventbus",
                      "fields": [{"name": p, "type": ["null", "string"], "default": None} for p in PERSON_NAME_PARTS]}
            body.append({"name": "Name", "type": ["null", "string", person], "doc": "Data:Switchable_PersonName",
                         "default": None})
            continue
        body.append({"name": source.name, "type": _nullable(avro_type), "doc": f"Data:{doc}", "default": None})
    return {"type": "record", "name": f"{obj.name}ChangeEvent", "namespace": "com.sforce.eventbus",
            "fields": [{"name": "ChangeEventHeader", "type": _HEADER_SCHEMA, "doc": "Data:ChangeEventHeader"},
                       *body]}


def _avro_value(f: FieldDef, value: Any) -> Any:
    if value is None:
        return None
    if f.type == "boolean":
        return bool(value)
    if f.type == "datetime":
        return int(parse_datetime(str(value)).timestamp() * 1000)
    if f.type == "date":
        return (date.fromisoformat(str(value)) - _EPOCH_DAY).days
    if f.type == "int":
        return int(value)
    if f.type in ("double", "currency", "percent"):
        return float(value)
    return str(value)


def _json_value(f: FieldDef, value: Any) -> Any:
    if value is None:
        return None
    if f.type == "boolean":
        return bool(value)
    if f.type == "datetime":
        moment = parse_datetime(str(value)).astimezone(timezone.utc)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return value


def epoch_millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)
