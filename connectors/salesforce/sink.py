"""Salesforce sink: apply commands become sObject Collections (or Bulk API 2.0) calls, one outcome per command.

Per group of commands (`SalesforceSink.apply`):

1. Plan each command: ``key {'id': ...}`` → update (PATCH); no key but ``match`` on an external-id field →
   upsert by that field (``PATCH composite/sobjects/<Type>/<Field>``); otherwise → create (POST);
   ``action 'delete'`` → ``DELETE composite/sobjects?ids=``. A reference given as its parent's external id
   (``{"$ref": {"object": "Account", "external_id": {"Campaign_Key__c": "42"}}}`` for ``AccountId``) is written
   as Salesforce's relationship by external id (``"Account": {"Campaign_Key__c": "42"}``, a Bulk column
   ``Account.Campaign_Key__c``): Salesforce resolves it when it writes the record. The commands of a batch
   are carried out parents first (an object before the objects whose commands reference it that way).
2. Compare-and-set: updates carrying ``expect`` first read the expected fields (one SOQL query per 300 records)
   and leave out the fields Salesforce no longer holds as expected (a user edited them after the decision: that
   edit is news the change source brings to the streams). They are named in the outcome's ``superseded``.
3. Group the plan by (object, operation), 200 records per call, ``allOrNone=false`` so one bad record never
   blocks the others. Commands for the same record keep their order (a second command for a record flushes what
   is pending first). A group of at least ``bulk_threshold`` records goes through Bulk API 2.0 instead.
   A call refused as a whole for one record's value (HTTP 400 JSON_PARSER_ERROR: a value of the wrong type for
   its field) is bisected until the refused records stand alone; the others are applied.
4. Every record's result becomes an outcome: success (with the record's Id, and whether it was created), or
   Salesforce's statusCode and message.

Duplicates on retry. The API client retries transient failures (REQUEST_LIMIT_EXCEEDED, 5xx, timeouts, expired
sessions), and a failed batch is consumed again after a restart. A retried upsert/update/delete cannot create a
duplicate, and a delete of an already deleted record (ENTITY_IS_DELETED) counts as done. A *create* without an
external id can: if Salesforce applied a POST whose answer was lost, the retry creates the records again. Such
creates are therefore at-least-once. The two-way sync avoids them altogether by always minting a
``Campaign_Key__c`` external id for a new record and sending it in ``match``, which turns every create into an
idempotent upsert.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

from simple_salesforce.exceptions import SalesforceError

from connectors.salesforce.client import (COLLECTION_LIMIT, Bulk2Result, SalesforceClient, csv_value, error_code,
                                          error_message, retry_reason)
from connectors.salesforce.types import kind_of
from crmsync.connectors import SinkOutcome
from crmsync.envelope import ApplyCommand
from crmsync.values import canonical

log = logging.getLogger("crmsync.salesforce.sink")

Kind = Literal["create", "update", "upsert", "delete"]
IDEMPOTENT_DELETE_CODES = frozenset({"ENTITY_IS_DELETED"})
# A whole collections request refused (HTTP 400) for what one record holds: Salesforce reads the body into typed
# sObjects before any record runs, and a value of the wrong type for its field fails the request.
REFUSED_FOR_A_VALUE = frozenset({"JSON_PARSER_ERROR", "INVALID_TYPE_ON_FIELD_IN_RECORD"})
BISECT_CALLS = 64  # calls spent finding the refused records of one chunk (4 bad records in 200); then it stops


@dataclass(frozen=True)
class SinkOptions:
    auto_assign: str = "FALSE"  # Sforce-Auto-Assign: FALSE (default), TRUE, or an AssignmentRule id
    bulk_threshold: int = 2000  # a group this large goes through Bulk API 2.0
    bulk_poll_interval: float = 0.5


@dataclass
class Planned:
    """One command, turned into the record body of the Salesforce call that carries it out."""

    command: ApplyCommand
    kind: Kind
    record: dict[str, Any]
    ext_field: str | None = None
    identity: tuple | None = None  # same identity = same Salesforce record (keeps per-record order)
    parents: frozenset[str] = frozenset()  # objects this record references by external id (written before it)
    superseded: list[str] = field(default_factory=list)


def _outcome(planned: Planned, ok: bool, **details: Any) -> SinkOutcome:
    return SinkOutcome(planned.command, ok, superseded=planned.superseded, **details)


class SalesforceSink:
    """crmsync.connectors.Sink for one Salesforce account."""

    def __init__(self, client: SalesforceClient, options: SinkOptions | None = None) -> None:
        self.client = client
        self.options = options or SinkOptions()
        self._described: dict[str, dict[str, dict[str, Any]]] = {}  # object -> field name -> describe

    def apply(self, commands: Sequence[ApplyCommand]) -> list[SinkOutcome]:
        """Apply `commands` in Salesforce; one outcome per command, in order."""
        plans = [self._plan(command) for command in commands]
        settled = self._compare_and_set([p for p in plans if isinstance(p, Planned)])
        outcomes: dict[int, SinkOutcome] = {}
        pending: list[list[Planned]] = []  # open groups, in the order they were opened
        identities: set[tuple] = set()
        for planned in _parents_first(plans):
            if isinstance(planned, SinkOutcome) or id(planned) in settled:
                continue
            if planned.identity is not None and planned.identity in identities:
                outcomes.update(self._flush(pending))  # an earlier command for this record must land first
                pending, identities = [], set()
            group = next((g for g in pending if _group_key(g[0]) == _group_key(planned)), None)
            if group is None:
                pending.append(group := [])
            group.append(planned)
            if planned.identity is not None:
                identities.add(planned.identity)
        outcomes.update(self._flush(pending))
        outcomes.update(settled)
        return [p if isinstance(p, SinkOutcome) else outcomes[id(p)] for p in plans]

    # -- planning ----------------------------------------------------------------------------------------------
    def _plan(self, command: ApplyCommand) -> Planned | SinkOutcome:
        record_id = (command.key or {}).get("id")
        values = {k: v for k, v in command.values.items() if k not in ("Id", "id", "attributes")}
        parents: set[str] = set()
        for name, value in list(values.items()):
            if isinstance(value, dict) and "$ref" in value:
                relationship = self._by_external_id(command.object, name, value["$ref"])
                if isinstance(relationship, str):
                    return SinkOutcome(command, False, code="CRMSYNC_INVALID_VALUE", message=relationship)
                del values[name]
                values.update(relationship)
                parents.add(value["$ref"]["object"])
        if command.action == "delete":
            if not record_id:
                return SinkOutcome(command, False, code="CRMSYNC_NO_KEY",
                                   message="a delete needs the record's Salesforce Id in `key`")
            return Planned(command, "delete", {"id": record_id}, identity=("id", record_id[:15]))
        if record_id:
            return Planned(command, "update", {**values, "id": record_id}, identity=("id", record_id[:15]))
        ext_field = self._external_id_in(command)
        if ext_field:
            value = command.match[ext_field]
            return Planned(command, "upsert", {**values, ext_field: value}, ext_field,
                           identity=("ext", command.object, ext_field, str(value).lower()), parents=frozenset(parents))
        return Planned(command, "create", values, parents=frozenset(parents))

    def _by_external_id(self, obj: str, name: str, ref: Any) -> dict[str, dict[str, Any]] | str:
        """`{"Account": {"Campaign_Key__c": "42"}}` for reference field `name` (AccountId) given as the parent's
        external id, or why it cannot be written."""
        field = self._fields(obj).get(name, {})
        relationship = field.get("relationshipName")
        external = ref.get("external_id") if isinstance(ref, dict) else None
        if field.get("type") != "reference" or not relationship or not isinstance(external, dict) or len(external) != 1:
            return (f"{obj}.{name}: a reference by external id needs a reference field and one external-id value "
                    f"({{'$ref': {{'object': …, 'external_id': {{field: value}}}}}}), got {ref!r}")
        return {relationship: dict(external)}

    def _fields(self, obj: str) -> dict[str, dict[str, Any]]:
        """The object's describe by field name (cached; an unknown object has none: the write then says why)."""
        if obj not in self._described:
            try:
                described = self.client.describe(obj)["fields"]
            except SalesforceError as exc:
                if retry_reason(exc) is not None:
                    raise
                described = []
            self._described[obj] = {f["name"]: f for f in described}
        return self._described[obj]

    def _external_id_in(self, command: ApplyCommand) -> str | None:
        """The first `match` field that is an external id of the object."""
        if not command.match:
            return None
        fields = self._fields(command.object)
        return next((name for name, value in command.match.items()
                     if fields.get(name, {}).get("externalId") and value not in (None, "")), None)

    # -- compare-and-set ---------------------------------------------------------------------------------------
    def _compare_and_set(self, plans: list[Planned]) -> dict[int, SinkOutcome]:
        """Leave out of each update the fields Salesforce no longer holds as the decision expected. Returns the
        outcomes of updates left with nothing to write (by id of the plan)."""
        checked: dict[str, list[Planned]] = {}
        for planned in plans:
            if planned.kind == "update" and planned.command.expect:
                checked.setdefault(planned.command.object, []).append(planned)
        settled: dict[int, SinkOutcome] = {}
        for obj, group in checked.items():
            fields = sorted({f for p in group for f in p.command.expect or {} if f in p.record})
            current = self._current_values(obj, fields, [p.record["id"] for p in group]) if fields else {}
            for planned in group:
                row = current.get(planned.record["id"][:15])
                if row is None:
                    continue  # gone or unreadable: the write itself reports it
                self._drop_superseded(planned, row)
                if planned.superseded and not set(planned.record) - {"id", *(planned.command.match or {})}:
                    settled[id(planned)] = _outcome(planned, True, crm_id=planned.record["id"])
        return settled

    def _drop_superseded(self, planned: Planned, row: dict[str, Any]) -> None:
        fields = self._fields(planned.command.object)
        for name, expected in (planned.command.expect or {}).items():
            if name not in planned.record:
                continue
            kind = kind_of(fields.get(name, {}).get("type", ""))
            now = _comparable(row.get(name), kind)
            if now != _comparable(expected, kind) and now != _comparable(planned.record[name], kind):
                del planned.record[name]
                planned.superseded.append(name)
        if planned.superseded:
            log.info("command %s for %s %s: %s changed in Salesforce since the decision; left as they are",
                     planned.command.id, planned.command.object, planned.record["id"], ", ".join(planned.superseded))

    def _current_values(self, obj: str, fields: list[str], ids: list[str]) -> dict[str, dict[str, Any]]:
        """Salesforce's current values of `fields` for the records `ids`, by 15-character id: sObject Collections
        retrieve, 2,000 ids per call (a SOQL `Id IN (…)` query fits ~300 in its URL: 34 calls for 10,000 updates,
        two thirds of the writer's API calls, now 5)."""
        rows: dict[str, dict[str, Any]] = {}
        for record in self.client.collections_retrieve(obj, ids, ["Id", *fields]):
            if record is not None:
                rows[str(record["Id"])[:15]] = record
        return rows

    # -- carrying out groups -----------------------------------------------------------------------------------
    def _flush(self, groups: list[list[Planned]]) -> dict[int, SinkOutcome]:
        outcomes: dict[int, SinkOutcome] = {}
        for group in groups:
            if len(group) >= self.options.bulk_threshold:
                results = self._bulk(group)
            else:
                results = [o for start in range(0, len(group), COLLECTION_LIMIT)
                           for o in self._collections(group[start:start + COLLECTION_LIMIT])]
            outcomes.update(results)
        return outcomes

    def _collections(self, chunk: list[Planned], budget: list[int] | None = None) -> list[tuple[int, SinkOutcome]]:
        """One collections call for `chunk`. A call Salesforce refuses as a whole because of one record's value
        (REFUSED_FOR_A_VALUE) is bisected: each half is sent again until the refused records stand alone, so
        the others are applied and only those are rejected, with Salesforce's code. One bad record among 200
        costs at most 2 × 8 more calls; after BISECT_CALLS the records still together are rejected together."""
        budget = [BISECT_CALLS] if budget is None else budget
        first = chunk[0]
        obj, kind = first.command.object, first.kind
        headers = {"Sforce-Auto-Assign": self.options.auto_assign}
        records = [p.record for p in chunk]
        try:
            if kind == "create":
                results = self.client.collections_create(obj, records, headers=headers)
            elif kind == "update":
                results = self.client.collections_update(obj, records, headers=headers)
            elif kind == "upsert":
                results = self.client.collections_upsert(obj, first.ext_field or "", records, headers=headers)
            else:
                results = self.client.collections_delete([r["id"] for r in records])
        except Exception as exc:
            if retry_reason(exc) is not None or not hasattr(exc, "status"):
                raise  # transient and out of retries, or not Salesforce's answer: retry the whole batch later
            code, message = error_code(exc) or f"HTTP_{exc.status}", error_message(exc)
            if len(chunk) > 1 and code in REFUSED_FOR_A_VALUE and budget[0] >= 2:
                budget[0] -= 2
                log.info("%s refused a call of %d %s records (%s); sending it again in halves to find the record",
                         obj, len(chunk), kind, code)
                half = len(chunk) // 2
                return self._collections(chunk[:half], budget) + self._collections(chunk[half:], budget)
            return [(id(p), _outcome(p, False, code=code, message=message)) for p in chunk]
        return [(id(p), self._result(p, r)) for p, r in zip(chunk, results)]

    @staticmethod
    def _result(planned: Planned, result: dict[str, Any]) -> SinkOutcome:
        if result.get("success"):
            created = planned.kind == "create" or bool(result.get("created"))
            return _outcome(planned, True, crm_id=result.get("id") or planned.record.get("id"), created=created)
        errors = result.get("errors") or [{}]
        code, message = errors[0].get("statusCode"), errors[0].get("message", "rejected by Salesforce")
        if planned.kind == "delete" and code in IDEMPOTENT_DELETE_CODES:
            return _outcome(planned, True, crm_id=planned.record["id"])
        return _outcome(planned, False, code=code, message=message)

    def _bulk(self, group: list[Planned]) -> list[tuple[int, SinkOutcome]]:
        first = group[0]
        operation = {"create": "insert", "update": "update", "upsert": "upsert", "delete": "delete"}[first.kind]
        records = [({"Id": p.record["id"]} if p.kind == "delete" else _bulk_columns(p.record)) for p in group]
        result = self.client.bulk2_ingest(first.command.object, operation, records, ext_field=first.ext_field,
                                          poll_interval=self.options.bulk_poll_interval)
        if result.state != "JobComplete":
            message = f"Bulk API 2.0 job {result.job_id} ended {result.state}: {result.error_message}"
            return [(id(p), _outcome(p, False, code="BULK_JOB_FAILED", message=message)) for p in group]
        return _match_bulk_rows(group, records, result)


def _comparable(value: Any, kind: Any) -> Any:
    try:
        return canonical(value, kind)
    except ValueError:
        return value


def _group_key(planned: Planned) -> tuple:
    return planned.command.object, planned.kind, planned.ext_field, planned.parents


def _bulk_columns(record: dict[str, Any]) -> dict[str, Any]:
    """A record as a Bulk API 2.0 CSV row: `Id`, and a relationship by external id as an `Account.Key__c` column."""
    row: dict[str, Any] = {}
    for name, value in record.items():
        if isinstance(value, dict):
            row.update({f"{name}.{field}": key for field, key in value.items()})
        else:
            row["Id" if name == "id" else name] = value
    return row


def _parents_first(plans: list[Planned | SinkOutcome]) -> list[Planned | SinkOutcome]:
    """`plans` with every object before the objects that reference it by external id in this batch (a parent
    must exist when Salesforce resolves its child's reference); otherwise in order (a record's commands too)."""
    referenced = {(p.command.object, parent) for p in plans if isinstance(p, Planned) for parent in p.parents
                  if parent != p.command.object}
    if not referenced:
        return plans
    depth: dict[str, int] = {}

    def depth_of(obj: str, seen: frozenset[str] = frozenset()) -> int:
        if obj not in depth:
            parents = [parent for child, parent in referenced if child == obj and parent not in seen]
            depth[obj] = 1 + max((depth_of(parent, seen | {obj}) for parent in parents), default=-1)
        return depth[obj]

    return sorted(plans, key=lambda p: depth_of(p.command.object))


def _bulk_row_key(kind: Kind, ext_field: str | None, row: dict[str, Any]) -> tuple:
    """How a Bulk result row is matched back to its command (result rows come in no particular order)."""
    if kind in ("update", "delete"):
        return ("id", str(row.get("Id", ""))[:15])
    if kind == "upsert":
        return ("ext", str(row.get(ext_field or "", "")).lower())
    return ("row",) + tuple(sorted((k, v) for k, v in row.items() if not k.startswith("sf__")))


def _match_bulk_rows(group: list[Planned], records: list[dict[str, Any]],
                     result: Bulk2Result) -> list[tuple[int, SinkOutcome]]:
    kind, ext_field = group[0].kind, group[0].ext_field
    columns = list(dict.fromkeys(k for r in records for k in r))
    waiting: dict[tuple, list[Planned]] = {}
    for planned, record in zip(group, records):
        as_sent = {c: csv_value(record[c]) if c in record else "" for c in columns}  # the CSV row we uploaded
        waiting.setdefault(_bulk_row_key(kind, ext_field, as_sent), []).append(planned)
    outcomes: list[tuple[int, SinkOutcome]] = []
    for row in result.successes:
        for planned in waiting.get(_bulk_row_key(kind, ext_field, row), [])[:1]:
            waiting[_bulk_row_key(kind, ext_field, row)].remove(planned)
            outcomes.append((id(planned), _outcome(planned, True, crm_id=row.get("sf__Id") or planned.record.get("id"),
                                                   created=str(row.get("sf__Created", "")).lower() == "true")))
    for row in result.failures:
        for planned in waiting.get(_bulk_row_key(kind, ext_field, row), [])[:1]:
            waiting[_bulk_row_key(kind, ext_field, row)].remove(planned)
            code, _, message = str(row.get("sf__Error", "")).partition(":")
            message = message.rsplit(":", 1)[0] if message.count(":") else message
            if kind == "delete" and code in IDEMPOTENT_DELETE_CODES:
                outcomes.append((id(planned), _outcome(planned, True, crm_id=planned.record["id"])))
            else:
                outcomes.append((id(planned), _outcome(planned, False, code=code or "BULK_ERROR",
                                                       message=message.strip())))
    for leftovers in waiting.values():
        outcomes += [(id(p), _outcome(p, False, code="BULK_UNPROCESSED",
                                      message=f"no result for this record in Bulk API 2.0 job {result.job_id}"))
                     for p in leftovers]
    return outcomes
