"""Salesforce metadata for the wizard and the change source: describeGlobal and describe, in neutral terms.

Every Salesforce field type has a mirror column type (as PostgreSQL's format_type() prints it, so the wizard's
drift detection can compare) and a kind (crmsync/values.py: what the streams compare values in). Compound
fields (address, location) are not mirrored: their components are.
"""
from __future__ import annotations

from typing import Any, Iterator

from connectors.salesforce.client import SalesforceClient
from connectors.salesforce.types import kind_of
from crmsync.connectors import Enumeration, FieldSpec, TableInfo, TableSpec, check_api_name

# Salesforce type -> PostgreSQL type of its mirror column. None = not mirrored (its components are).
PG_TYPES: dict[str, str | None] = {
    "id": "text", "reference": "text", "string": "text", "textarea": "text", "phone": "text", "url": "text",
    "email": "text", "combobox": "text", "encryptedstring": "text", "picklist": "text", "multipicklist": "text[]",
    "boolean": "boolean", "int": "integer", "long": "bigint", "double": "double precision", "currency": "numeric",
    "percent": "numeric", "date": "date", "datetime": "timestamp with time zone", "time": "time without time zone",
    "base64": "text", "anyType": "text", "json": "jsonb",
    "address": None, "location": None, "complexvalue": None,
}


def field_spec(described: dict[str, Any], table: str = "") -> FieldSpec:
    """One field of a describe, neutrally (its picklist, if any, is named `<table>_<field>`)."""
    crm_type = described.get("type", "")
    enumeration = (f"{table}_{described['name']}" if crm_type in ("picklist", "multipicklist")
                   and described.get("picklistValues") else None)
    return FieldSpec(described["name"], described.get("label", described["name"]), crm_type,
                     PG_TYPES.get(crm_type) or "text", bool(described.get("calculated")), enumeration,
                     kind_of(crm_type), bool(described.get("updateable", True)), bool(described.get("externalId")))


class SalesforceDiscovery:
    namespace = "sfdc"
    connector_label = "Salesforce"

    def __init__(self, client: SalesforceClient) -> None:
        self.client = client

    def list_tables(self) -> list[TableInfo]:
        found = self.client.call("describe_global", lambda sf: sf.describe())
        return sorted((TableInfo(o["name"], o["label"]) for o in found["sobjects"]
                       if o.get("queryable") and o.get("retrieveable", True)), key=lambda t: t.name)

    def describe_table(self, name: str) -> TableSpec:
        described = self.client.describe(check_api_name(name, "table"))
        spec = TableSpec(check_api_name(described["name"], "table"), described["label"], [], key="Id")
        for f in described["fields"]:
            check_api_name(f["name"], "field", spec.name)
            if PG_TYPES.get(f["type"]) is None:
                spec.skipped.append((f["name"], f["type"]))
                continue
            found = field_spec(f, spec.name)
            if found.enumeration:
                spec.enumerations.append(Enumeration(
                    found.enumeration, f"List of '{f['label']}' from '{spec.name}'", f["type"] == "multipicklist",
                    [{"name": v["value"], "label": v["label"] or v["value"], "value": v["value"]}
                     for v in f["picklistValues"] if v.get("active", True)]))
            spec.fields.append(found)
        return spec

    def rows(self, table: str, fields: list[str]) -> Iterator[list[dict[str, Any]]]:
        soql = f"SELECT {', '.join(fields)} FROM {table}"
        for page in self.client.query_all_pages(soql):
            yield [{k: v for k, v in r.items() if k != "attributes"} for r in page]
