"""The Oracle CRM On Demand connector (`type: oracle`, mirror namespace `ood`): crmsync.connectors.Connector.

    account.py     OracleAccount: url (https), username, password (secret), user_timezone, api: rest | webservices
    connection.py  the signed-in client of one account: usage() = REST requests left in the minute
    source.py      changes of one record type: ModifiedDate keyset pages, lookback memory, DeletedItemQueryPage
    sink.py        apply commands as Web Services batches of 20, parents first, compare-and-set
    records.py     records by the neutral filter tree (searchspec.py), deleted items, the wizard's discovery
    types.py       OOD field types ⇄ kinds, mirror columns, canonical values
    kit.py         the sandbox (sandboxes/oracle) as a child process
The API client underneath (client.py, webservices.py, auth.py, pacer.py, query.py, timezone.py) is described
in docs/oracle.md.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import yaml

from crmsync.connectors import AccountBase

from .account import OracleAccount
from .connection import OracleConnection
from .errors import OracleApiError
from .kit import OracleSandboxKit
from .records import OracleDiscovery, OracleRecordQuery
from .sink import OracleSink
from .source import OracleChangeSource


class OracleConnector:
    type: ClassVar[str] = "oracle"
    label: ClassVar[str] = "Oracle CRM On Demand"
    account_model: ClassVar[type[AccountBase]] = OracleAccount
    default_external_id: ClassVar[str | None] = "ExternalSystemId"
    system_fields: ClassVar[frozenset[str]] = frozenset({
        "Id", "CreatedDate", "CreatedById", "ModifiedDate", "ModifiedById", "Owner", "OwnerId"})
    # modification stamps, preferred first: the seed's OOD fields (LastUpdated, ModifiedDate, LastLoggedIn) with
    # ModifiedDate first, because every standard record type has it (the change source reads it too)
    index_fields: ClassVar[tuple[str, ...]] = ("ModifiedDate", "LastUpdated", "LastLoggedIn")
    stamp_resolution: ClassVar[float] = 1.0  # ModifiedDate is stamped to the second
    deleted_flag: ClassVar[str | None] = "IsDeleted"  # records(include_deleted=True): Deleted Items carry it true
    multi_select_separator: ClassVar[str] = ";"  # multi-select picklist values as one string, "a;b"
    # a value not in a bounded picklist, longer than the field, not valid for the field's type
    value_error_codes: ClassVar[frozenset[str]] = frozenset({"SBL-DAT-00225", "SBL-DAT-00235", "SBL-DAT-00359"})
    objects: ClassVar[dict[str, str]] = {"contacts": "Contact", "accounts": "Account", "opportunities": "Opportunity"}

    def client(self, account_name: str, account: AccountBase) -> OracleConnection:
        if not isinstance(account, OracleAccount):
            account = OracleAccount.model_validate(account.model_dump() if hasattr(account, "model_dump") else account)
        return OracleConnection(account_name, account)

    def change_source(self, client: OracleConnection, obj: str, **options: Any) -> OracleChangeSource:
        return OracleChangeSource(client, obj, **options)

    def sink(self, client: OracleConnection, *, assignment_rule: str | None = None, bulk: bool | None = None,
             **options: Any) -> OracleSink:
        """OOD's API has no assignment rules to choose, and every write is a batch: both options are ignored."""
        return OracleSink(client, **options)

    def discovery(self, client: OracleConnection) -> OracleDiscovery:
        return OracleDiscovery(client)

    def query(self, client: OracleConnection) -> OracleRecordQuery:
        return OracleRecordQuery(client)

    def sandbox(self) -> OracleSandboxKit:
        return OracleSandboxKit()

    def api_error(self, exc: BaseException) -> tuple[str, str] | None:
        """(OOD's error code, its message) when `exc` is OOD refusing a call; None for anything else."""
        if isinstance(exc, OracleApiError):
            return exc.code or (f"HTTP_{exc.status}" if exc.status else "OOD_ERROR"), exc.message
        return None

    def default_mappings(self, account_name: str) -> list[dict[str, Any]]:
        mappings = yaml.safe_load((Path(__file__).parent / "default_mappings.yaml").read_text())
        return [{**mapping, "account": account_name} for mapping in mappings]


CONNECTOR = OracleConnector()
