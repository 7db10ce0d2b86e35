"""Discovery for the wizard: the account's connector describes its CRM; nothing here knows which CRM it is.

Schema generation, mirror tables, drift handling, enumerations and formula refresh work from the neutral
`TableSpec`/`FieldSpec` of crmsync/connectors.py. Each connector maps its CRM's types onto `MIRROR_PG_TYPES`.
"""
from __future__ import annotations

from typing import Any

from crmsync import connectors
from crmsync.connectors import (MIRROR_PG_TYPES, Discovery, Enumeration, FieldSpec, TableInfo,  # noqa: F401
                                TableSpec, UnsafeName, check_api_name)
from crmsync.values import split_multi


def discovery_for(name: str, account: Any) -> Discovery:
    """Log in to the account's CRM and return its connector's discovery."""
    connector = connectors.for_account(account)
    return connector.discovery(connector.client(name, account))


def crm_value(field: FieldSpec, value: Any, separator: str = ";") -> Any:
    """A CRM value in the form its mirror column takes (a multi-select 'a;b' -> ['a', 'b'])."""
    if field.pg_type == "text[]" and isinstance(value, str):
        return split_multi(value, separator)
    if field.pg_type == "jsonb" and value is not None:
        import json

        return json.dumps(value)
    return value
