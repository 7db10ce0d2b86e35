"""Per-CRM metadata discovery: the only CRM-specific part of the wizard.

Why an interface: Dynamics 365 (namespace `mscrm`) and Oracle CRM On Demand (`ood`) plug in by implementing
`Discovery` with their own type table; schema generation, mirror tables, drift handling, enumerations and
formula refresh work from the neutral `TableSpec`/`FieldSpec` below and never see a CRM API.
"""
from __future__ import annotations

import re
from typing import Any, Iterator

from crmsync.connectors import Discovery, Enumeration, FieldSpec, TableInfo, TableSpec  # noqa: F401 - re-exported

# What a CRM API name can be (Salesforce: "letters, numbers, and underscores … must begin with a letter",
# https://help.salesforce.com/s/articleView?id=sf.custom_field_attributes.htm; Dynamics' logical names and
# Oracle's integration tags fit too). Names from a describe go into queries and mirror DDL: anything else is
# refused rather than trusted.
API_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,254}")


class UnsafeName(ValueError):
    """A describe named a table or field with something no CRM API name can be."""


def check_api_name(name: str, kind: str, table: str | None = None) -> str:
    """`name` when it is a possible CRM API name; else UnsafeName saying which and why it is refused."""
    if not isinstance(name, str) or not API_NAME.fullmatch(name):
        where = f" of {table!r}" if table else ""
        raise UnsafeName(f"the CRM described {kind} {name!r}{where}, which is not a CRM API name (letters, digits "
                         "and underscores, starting with a letter); crmsync does not put it into SQL or queries")
    return name

# CRM type -> PostgreSQL type (as format_type() prints it, so drift detection can compare). None = skipped.
SALESFORCE_TYPES: dict[str, str | None] = {
    "id": "text", "reference": "text", "string": "text", "textarea": "text", "phone": "text", "url": "text",
    "email": "text", "combobox": "text", "encryptedstring": "text", "picklist": "text", "multipicklist": "text[]",
    "boolean": "boolean", "int": "integer", "long": "bigint", "double": "double precision", "currency": "numeric",
    "percent": "numeric", "date": "date", "datetime": "timestamp with time zone", "time": "time without time zone",
    "base64": "text", "anyType": "text", "json": "jsonb",
    "address": None, "location": None, "complexvalue": None,  # compound fields: their components are mirrored
}


class SalesforceDiscovery:
    namespace = "sfdc"
    connector_label = "Salesforce"

    def __init__(self, client: Any) -> None:
        self.client = client

    def list_tables(self) -> list[TableInfo]:
        found = self.client.call("describe_global", lambda sf: sf.describe())
        return sorted((TableInfo(o["name"], o["label"]) for o in found["sobjects"]
                       if o.get("queryable") and o.get("retrieveable", True)), key=lambda t: t.name)

    def describe_table(self, name: str) -> TableSpec:
        described = self.client.describe(check_api_name(name, "table"))
        spec = TableSpec(check_api_name(described["name"], "table"), described["label"], [])
        for f in described["fields"]:
            check_api_name(f["name"], "field", spec.name)
            pg_type = SALESFORCE_TYPES.get(f["type"])
            if pg_type is None:
                spec.skipped.append((f["name"], f["type"]))
                continue
            enum = None
            if f["type"] in ("picklist", "multipicklist") and f.get("picklistValues"):
                enum = f"{spec.name}_{f['name']}"
                spec.enumerations.append(Enumeration(
                    enum, f"List of '{f['label']}' from '{spec.name}'", f["type"] == "multipicklist",
                    [{"name": v["value"], "label": v["label"] or v["value"], "value": v["value"]}
                     for v in f["picklistValues"] if v.get("active", True)]))
            spec.fields.append(FieldSpec(f["name"], f["label"], f["type"], pg_type, bool(f.get("calculated")), enum))
        return spec

    def rows(self, table: str, fields: list[str]) -> Iterator[list[dict[str, Any]]]:
        soql = f"SELECT {', '.join(fields)} FROM {table}"
        for page in self.client.query_all_pages(soql):
            yield [{k: v for k, v in r.items() if k != "attributes"} for r in page]


def discovery_for(name: str, account: Any) -> Discovery:
    """Log in to the account's CRM and return its discovery (the one place a new CRM type is added)."""
    if account.type == "salesforce":
        from services.salesforce.client import SalesforceClient

        return SalesforceDiscovery(SalesforceClient(name, account))
    raise ValueError(f"no discovery for CRM type {account.type!r}")


def crm_value(field: FieldSpec, value: Any) -> Any:
    """A CRM value in the form its mirror column takes (multi-select 'a;b' -> ['a', 'b'])."""
    if field.pg_type == "text[]" and isinstance(value, str):
        return [v for v in value.split(";") if v]
    if field.pg_type == "jsonb" and value is not None:
        import json

        return json.dumps(value)
    return value
