"""The house reads one way: foundation ← connectors and sandboxes, services, streams ← application.

Foundation is crmsync's shared core (config, envelope, topics, Kafka and PostgreSQL helpers, values, the connector
interface, …); application is what a user runs (the CLI, run, demo, wizard, workflow, dashboard, drift repair).
A module may import its own layer's neighbours only within its own package family, and never a layer above it:
the engine never depends on a CRM, a service never on the CLI. And no Salesforce name is spoken outside the
Salesforce connector and its sandbox.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOUNDATION = {"accounts", "api_budget", "burrow", "campaign", "catalog", "compose", "config", "connectors", "defaults", "envelope",
              "enums", "field_types", "filters", "infra", "kafka", "lag", "logs", "mirrors", "names", "observability",
              "people", "pg", "private", "process", "rejects", "retry", "tls", "topics", "values"}
RANK = {"foundation": 0, "connectors": 1, "sandboxes": 1, "services": 1, "streams": 1, "application": 2}


def layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "crmsync":
        return "foundation" if len(parts) == 1 or parts[1] in FOUNDATION else "application"
    return parts[0] if parts[0] in RANK else None


def modules() -> list[tuple[str, Path]]:
    found = []
    for package in ("crmsync", "connectors", "sandboxes", "services", "streams"):
        for path in (ROOT / package).rglob("*.py"):
            found.append((".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"), path))
    return found


def imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module]
    return names


def test_no_module_imports_a_layer_above_or_beside_it() -> None:
    wrong = []
    for module, path in modules():
        here = layer(module)
        for name in imports(path):
            there = layer(name)
            if there is None or there == here:
                continue
            sideways = RANK[there] == RANK[here] == 1 and {here, there} != {"connectors", "sandboxes"}
            if RANK[there] > RANK[here] or sideways:
                wrong.append(f"{module} ({here}) imports {name} ({there})")
    assert wrong == []


def test_no_salesforce_names_in_the_engine() -> None:
    """`grep -rnE "SystemModstamp|SOQL|soql|sobject|simple_salesforce|SalesforceClient" crmsync streams services`"""
    pattern = re.compile(r"SystemModstamp|SOQL|soql|sobject|simple_salesforce|SalesforceClient")
    found = [f"{path.relative_to(ROOT)}:{number}" for package in ("crmsync", "streams", "services")
             for path in (ROOT / package).rglob("*.py")
             for number, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert found == []
