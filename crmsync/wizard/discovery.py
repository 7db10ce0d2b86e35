"""Discovery for the wizard: the account's connector describes its CRM; nothing here knows which CRM it is.

Schema generation, mirror tables, drift handling, enumerations and formula refresh work from the neutral
`TableSpec`/`FieldSpec` of crmsync/connectors.py. Each connector maps its CRM's types onto `MIRROR_PG_TYPES`.
"""
from __future__ import annotations

from typing import Any

from crmsync import connectors
from crmsync.connectors import (MIRROR_PG_TYPES, Discovery, Enumeration, FieldSpec, TableInfo,  # noqa: F401
                                TableSpec, UnsafeName, check_api_name)


def discovery_for(name: str, account: Any) -> Discovery:
    """Log in to the account's CRM and return its connector's discovery."""
    connector = connectors.for_account(account)
    return connector.discovery(connector.client(name, account))
