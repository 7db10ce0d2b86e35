"""The Salesforce connector: everything crmsync knows about Salesforce, behind crmsync/connectors.py.

    client.py     one logged-in account, every call through one retry policy (simple-salesforce underneath)
    auth.py       OAuth 2.0 / SOAP login against the account's https login URL
    source.py     the change source: SystemModstamp cursor with a lookback memory, deletes (queryAll + deleted)
    cdc.py        the push change source: Change Data Capture events through the Pub/Sub API (pubsub.py), for
                  objects selected for CDC; gaps filled by query
    sink.py       the sink: sObject Collections and Bulk API 2.0, compare-and-set by a SOQL read
    query.py      the record query: neutral filters as SOQL
    discovery.py  describeGlobal / describe in neutral terms (wizard, field kinds)
    soql.py, types.py   SOQL literals; Salesforce field types as kinds
    sandbox.py    the local HTTPS sandbox (sandboxes/salesforce) as a child process
    mappings.yaml the shipped mappings
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from connectors.salesforce.account import SalesforceAccount
from crmsync.connectors import AccountBase, mappings_file


POLL_OPTIONS = frozenset({"lookback_seconds", "batch_size", "track_hard_deletes", "full_window_every_seconds",
                          "bulk_threshold", "bulk_page_records", "bulk_slice_records"})


class SalesforceConnector:
    type: ClassVar[str] = "salesforce"
    label: ClassVar[str] = "Salesforce"
    account_model: ClassVar[type[AccountBase]] = SalesforceAccount
    default_external_id: ClassVar[str | None] = "Campaign_Key__c"
    system_fields: ClassVar[frozenset[str]] = frozenset({
        "Id", "IsDeleted", "SystemModstamp", "CreatedDate", "CreatedById", "LastModifiedDate", "LastModifiedById",
        "LastActivityDate", "LastViewedDate", "LastReferencedDate", "MasterRecordId"})
    index_fields: ClassVar[tuple[str, ...]] = ("SystemModstamp", "LastModifiedDate")
    stamp_resolution: ClassVar[float] = 0.001  # SystemModstamp has milliseconds
    deleted_flag: ClassVar[str | None] = "IsDeleted"  # set on records queryAll returns from the recycle bin
    multi_select_separator: ClassVar[str] = ";"
    value_error_codes: ClassVar[frozenset[str]] = frozenset({
        "STRING_TOO_LONG", "INVALID_EMAIL_ADDRESS", "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
        "INVALID_TYPE_ON_FIELD_IN_RECORD", "JSON_PARSER_ERROR", "NUMBER_OUTSIDE_VALID_RANGE"})
    objects: ClassVar[dict[str, str]] = {"contacts": "Contact", "accounts": "Account", "opportunities": "Opportunity"}
    source_modes: ClassVar[tuple[str, ...]] = ("poll", "cdc")
    references_by_external_id: ClassVar[bool] = True  # {"Account": {"Campaign_Key__c": …}}, Account.… columns

    def client(self, account_name: str, account: Any) -> Any:
        from connectors.salesforce.client import SalesforceClient

        return SalesforceClient(account_name, account)

    def change_source(self, client: Any, obj: str, *, mode: str | None = None, **options: Any) -> Any:
        """`mode`: "poll" (SystemModstamp queries), "cdc" (Change Data Capture events), or None: cdc when the
        account allows it and the object is selected for Change Data Capture (cdc.choose_mode). Options a mode
        does not know are left out (the poller passes one set for every object)."""
        from connectors.salesforce.cdc import CdcSource, choose_mode
        from connectors.salesforce.source import SalesforceSource

        mode = mode or choose_mode(client, obj)
        if mode not in self.source_modes:
            raise ValueError(f"unknown change source mode {mode!r} for Salesforce (known: {', '.join(self.source_modes)})")
        if mode == "cdc":
            return CdcSource(client, obj, **options)
        return SalesforceSource(client, obj, **{k: v for k, v in options.items() if k in POLL_OPTIONS})

    def sink(self, client: Any, *, assignment_rule: str | None = None, bulk: bool | None = None,
             **options: Any) -> Any:
        """`assignment_rule`: none | default | an AssignmentRule id (Sforce-Auto-Assign); `bulk`: True = every
        group through Bulk API 2.0, False = never, None = above the threshold."""
        from connectors.salesforce.sink import SalesforceSink, SinkOptions

        rule = assignment_rule or str(getattr(client.account, "auto_assign", "none"))
        options["auto_assign"] = {"none": "FALSE", "default": "TRUE", "FALSE": "FALSE", "TRUE": "TRUE"}.get(rule, rule)
        if bulk is not None:
            options["bulk_threshold"] = 1 if bulk else 10 ** 9
        return SalesforceSink(client, SinkOptions(**options))

    def api_error(self, exc: BaseException) -> tuple[str, str] | None:
        """(Salesforce's error code, its message) when `exc` is Salesforce refusing a call; else None."""
        from simple_salesforce.exceptions import SalesforceError

        from connectors.salesforce.client import error_code, error_message

        if not isinstance(exc, SalesforceError):
            return None
        return error_code(exc) or f"HTTP_{exc.status}", error_message(exc)

    def discovery(self, client: Any) -> Any:
        from connectors.salesforce.discovery import SalesforceDiscovery

        return SalesforceDiscovery(client)

    def query(self, client: Any) -> Any:
        from connectors.salesforce.query import SalesforceQuery

        return SalesforceQuery(client)

    def sandbox(self) -> Any:
        from connectors.salesforce.sandbox import SalesforceSandboxKit

        return SalesforceSandboxKit()

    def default_mappings(self, account_name: str) -> list[dict[str, Any]]:
        return mappings_file(Path(__file__).parent / "mappings.yaml", account_name)


CONNECTOR = SalesforceConnector()
