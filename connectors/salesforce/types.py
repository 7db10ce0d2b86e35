"""Salesforce field types (describe `type`) in crmsync's neutral kinds (crmsync/values.py).

Salesforce normalises what it stores — a datetime written as '2021-06-01T00:30:00+01:00' reads back as
'2021-05-31T23:30:00.000+0000' — so values are compared in the kind Salesforce declares for the field.
Types not listed (address, location, base64, anyType, complexvalue) pass through as json.
"""
from __future__ import annotations

from crmsync.values import Kind

_KINDS: dict[str, Kind] = {
    "id": "text", "reference": "text", "string": "text", "textarea": "text", "email": "text", "phone": "text",
    "url": "text", "picklist": "text", "multipicklist": "text", "combobox": "text", "encryptedstring": "text",
    "int": "integer", "long": "integer",
    "double": "number", "currency": "number", "percent": "number",
    "boolean": "boolean",
    "date": "date",
    "datetime": "datetime",
    "time": "time",
}


def kind_of(salesforce_type: str) -> Kind:
    return _KINDS.get(salesforce_type, "json")
