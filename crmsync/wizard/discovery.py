"""Discovery for the wizard: the account's connector describes its CRM; nothing here knows which CRM it is.

Schema generation, mirror tables, drift handling, enumerations and formula refresh work from the neutral
`TableSpec`/`FieldSpec` of crmsync/connectors.py. Each connector maps its CRM's types onto `MIRROR_PG_TYPES`.
"""
from __future__ import annotations

from typing import Any, Callable

from crmsync import connectors
from crmsync.connectors import (MIRROR_PG_TYPES, Discovery, Enumeration, FieldSpec, TableInfo,  # noqa: F401
                                TableSpec, UnsafeName, check_api_name)


def discovery_for(name: str, account: Any, on_close: Callable[[Callable[[], None]], Any]) -> Discovery:
    """Log in to the account's CRM and return its connector's discovery; the client's `close` (which logs the
    CRM session off) is handed to `on_close`, e.g. the CLI context's `call_on_close`."""
    connector = connectors.for_account(account)
    client = connector.client(name, account)
    on_close(client.close)
    return connector.discovery(client)
