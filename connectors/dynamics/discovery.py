"""Dynamics discovery for the wizard: tables, typed columns (schema.py's type table), choices as enumerations.

Tables are the ones the Web API serves (an EntitySetName) and Advanced Find offers; each TableSpec lists its
mirrored columns and, as `skipped`, the others (with their type), like the Campaign wizard's "unable to use type"
warnings. Every choice column becomes an Enumeration with its integer values (as text) and labels: a local option
set is named `<table>_<column>`, a global one by its own name, so every column using a global option set shares
one enumeration and enumeration sync covers both kinds. State and status columns are choices too. Multi-select
choices are enumerations with `multiple` set, mirrored as text[].
"""
from __future__ import annotations

from typing import Any, Iterator

from crmsync.connectors import Enumeration, TableInfo, TableSpec

from .client import DataverseClient, localized_label
from .schema import Catalog
from .source import enumeration_name, field_specs
from .values import read_value


class DynamicsDiscovery:
    namespace = "mscrm"
    connector_label = "Microsoft CRM"

    def __init__(self, client: DataverseClient, catalog: Catalog, page_size: int = 5000) -> None:
        self.client, self.catalog, self.page_size = client, catalog, page_size

    def list_tables(self) -> list[TableInfo]:
        found = [TableInfo(e["LogicalName"], localized_label(e.get("DisplayName")) or e["LogicalName"])
                 for e in self.catalog.list() if e.get("IsValidForAdvancedFind", True)]
        return sorted(found, key=lambda t: t.name)

    def describe_table(self, name: str) -> TableSpec:
        table = self.catalog.table(name)
        fields = list(field_specs(table).values())
        enumerations: dict[str, Enumeration] = {}
        for column in table.mirrored():
            if column.choice is None:
                continue
            enum = enumeration_name(table, column)
            label = (f"List of '{column.label}' (global choice '{column.choice.name}')" if column.choice.is_global
                     else f"List of '{column.label}' from '{table.name}'")
            enumerations[enum] = Enumeration(enum, label, column.multiselect, [
                {"name": str(value), "label": text or str(value), "value": str(value)}
                for value, text in column.choice.options.items()])
        skipped = [(c.name, c.crm_type) for c in table.columns.values() if not c.mirrored]
        return TableSpec(table.name, table.label, fields, list(enumerations.values()), skipped, key=table.primary_id)

    def rows(self, table: str, fields: list[str]) -> Iterator[list[dict[str, Any]]]:
        """Current rows with `fields` (logical names), in the forms the mirror columns take."""
        described = self.catalog.table(table)
        columns = [described.column(name) for name in fields]
        select = list(dict.fromkeys(c.web_name for c in columns))
        for page in self.client.query_pages(described.entity_set, select=select, page_size=self.page_size):
            yield [{c.name: read_value(c, row.get(c.web_name)) for c in columns} for row in page]
