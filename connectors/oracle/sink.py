"""The Oracle CRM On Demand sink: apply commands become Web Services v2.0 batches, one outcome per command.

Why Web Services: REST writes one record per request under a limit of 30 requests a minute; Web Services write
20 records per request at 20 requests a second ("Batch Processing", OnDemWebSvcs_BestPractices18; Limiters2/3).

Per `apply(commands)`:

1. Plan each command: a delete (by `key["id"]`), an update (by `key["id"]`, user key Id), an upsert by the
   Campaign key when `match` holds an OOD user key (ExternalSystemId or IntegrationId: `<Object>InsertOrUpdate`,
   or QueryPage + Execute where a v2.0 server lacks it -- webservices.py), else an insert. Values are canonical
   (crmsync/values.py) and are converted per field type (types.py): datetimes go out as XSD UTC, so no time
   zone can shift them.
2. Compare-and-set: for commands with `expect`, read the expected fields of those records (QueryPage by Id or by
   the Campaign key, 50 keys a query; OOD has no conditional write) and leave out every field OOD no longer holds
   as expected (a user changed it since the decision); those fields are named in `superseded`. A command left
   with nothing to write succeeds without a write.
3. Order: parents first (Account, Contact, Opportunity, Lead, then the rest), deletes after the writes of their
   round and children before parents; commands for one record keep their order (a record's later command
   starts a new round after its delete).
4. Batches of 20 per (object, operation). OOD runs a batch all or nothing; a refused batch is split until each
   record has its own outcome, with OOD's error code, symbol, message and log file (`OracleSinkOutcome`, the
   reject fields of Adobe's OOD connector). A delete of a record already gone is a success.
5. Transient failures (rate limit, expired session, 5xx, transport) are retried in the client; rate-limit
   refusals wait for the next window and are counted (`crmsync_oracle_rate_limited_total`); one that persists
   is raised, so the caller consumes the whole batch again (every write here is idempotent but a plain insert).

Writes go with `<Echo>Off</Echo>` by default: the sync's own writes raise no integration events.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

from prometheus_client import Counter

from crmsync.connectors import SinkOutcome, plan_commands
from crmsync.envelope import ApplyCommand

from .connection import OracleConnection
from .errors import OracleApiError
from .query import ws_any_of
from .types import OodField, comparable, to_ws
from .webservices import Outcome

log = logging.getLogger("crmsync.oracle.sink")

USER_KEYS = ("ExternalSystemId", "IntegrationId")
PARENT_ORDER = ("Account", "Contact", "Opportunity", "Lead")
NO_RECORD_CODE = "SBL-EAI-04378"  # "No rows retrieved ..." (a delete of a record already gone: done)
KEYS_PER_QUERY = 50
SUPERSEDED = Counter("crmsync_oracle_sink_superseded_fields_total",
                     "Fields not written because OOD holds a newer value than the decision saw (compare-and-set)",
                     ["account", "object"])


@dataclass
class OracleSinkOutcome(SinkOutcome):
    """A SinkOutcome with the rest of what OOD says about a refused record."""

    symbol: str = ""  # Siebel error symbol
    log_file: str = ""  # Oracle-side log file name

    def reject_fields(self) -> dict[str, str | None]:
        """The reject columns of Adobe's OOD connector (the workflow activity's reject rows and file)."""
        return {"errorLogFilename": self.log_file or None, "errorCode": self.code, "errorSymbol": self.symbol or None,
                "errorMessage": self.message}


@dataclass
class Planned:
    index: int
    command: ApplyCommand
    kind: str  # update | upsert | insert | delete
    record: dict[str, Any]
    key_field: str = "Id"  # the user key identifying the record in its batch
    superseded: list[str] = field(default_factory=list)

    @property
    def identity(self) -> tuple[str, str, str]:
        return self.command.object, self.key_field, str(self.record.get(self.key_field, self.index))


class OracleSink:
    def __init__(self, connection: OracleConnection, *, echo: bool = False) -> None:
        self.connection = connection
        self.account_name = connection.account_name
        self.echo = echo

    def apply(self, commands: Sequence[ApplyCommand]) -> list[SinkOutcome]:
        outcomes, plans = plan_commands(commands, self._plan)
        outcomes.update(self._compare_and_set(plans))
        for group in _rounds([p for p in plans if p.index not in outcomes]):
            outcomes.update(self._carry_out(group))
        self.connection.count_refusals()
        return [outcomes[i] for i in range(len(commands))]

    # ---------------------------------------------------------------- planning

    def _plan(self, index: int, command: ApplyCommand) -> Planned | SinkOutcome:
        if command.side != "crm" or command.target != self.account_name:
            return SinkOutcome(command, False, code="CRMSYNC_WRONG_TARGET",
                               message=f"command for {command.side}/{command.target} reached the Oracle sink of "
                                       f"{self.account_name}")
        record_id = (command.key or {}).get("id") or (command.key or {}).get("Id")
        if command.action == "delete":
            if not record_id:
                return SinkOutcome(command, False, code="CRMSYNC_NO_KEY",
                                   message="a delete needs the record's OOD Id in `key`")
            return Planned(index, command, "delete", {"Id": record_id})
        try:
            values = self._encoded(command.object, command.values)
        except ValueError as exc:
            return SinkOutcome(command, False, code="CRMSYNC_INVALID_VALUE", message=str(exc))
        if record_id:
            return Planned(index, command, "update", {**values, "Id": record_id})
        key = next((k for k in USER_KEYS if (command.match or {}).get(k) not in (None, "")), None)
        if key:
            return Planned(index, command, "upsert", {**values, key: str(command.match[key])}, key_field=key)
        return Planned(index, command, "insert", values, key_field="")

    def _encoded(self, obj: str, values: dict[str, Any]) -> dict[str, Any]:
        described = self._described(obj)
        return {name: to_ws(described.get(name), value) for name, value in values.items()
                if name not in ("Id", "id")}

    # ---------------------------------------------------------------- compare-and-set

    def _compare_and_set(self, plans: list[Planned]) -> dict[int, SinkOutcome]:
        """Drop the fields OOD no longer holds as expected; settle the commands left with nothing to write."""
        settled: dict[int, SinkOutcome] = {}
        checked: dict[tuple[str, str], list[Planned]] = {}
        for planned in plans:
            if planned.kind in ("update", "upsert") and planned.command.expect:
                checked.setdefault((planned.command.object, planned.key_field), []).append(planned)
        for (obj, key_field), group in checked.items():
            names = sorted({n for p in group for n in p.command.expect or {} if n in p.record and n != key_field})
            if not names:
                continue
            current = self._current(obj, key_field, [str(p.record[key_field]) for p in group], names)
            for planned in group:
                row = current.get(str(planned.record[key_field]))
                if row is not None and self._drop_superseded(planned, row) and \
                        not set(planned.record) - {planned.key_field}:
                    settled[planned.index] = SinkOutcome(planned.command, True, crm_id=row.get("Id"),
                                                         superseded=planned.superseded)
        return settled

    def _current(self, obj: str, key_field: str, keys: list[str], names: list[str]) -> dict[str, dict[str, str]]:
        """OOD's current values of `names` for the records whose `key_field` is in `keys`, by key."""
        web_services, found = self.connection.api.web_services, {}
        fields = list(dict.fromkeys(["Id", key_field, *names]))
        for start in range(0, len(keys), KEYS_PER_QUERY):
            chunk = keys[start:start + KEYS_PER_QUERY]
            for record in web_services.query(obj, fields, filters={key_field: ws_any_of(chunk)}):
                found[record.get(key_field, "")] = record
        return found

    def _drop_superseded(self, planned: Planned, row: dict[str, str]) -> bool:
        described = self._described(planned.command.object)
        for name, expected in (planned.command.expect or {}).items():
            if name not in planned.record or name == planned.key_field:
                continue
            spec = described.get(name)
            now = comparable(spec, row.get(name))
            if now != comparable(spec, expected) and now != comparable(spec, planned.record[name]):
                del planned.record[name]
                planned.superseded.append(name)
        if planned.superseded:
            SUPERSEDED.labels(self.account_name, planned.command.object).inc(len(planned.superseded))
            log.info("command %s for %s %s: %s changed in OOD since the decision; left as they are",
                     planned.command.id, planned.command.object, row.get("Id"), ", ".join(planned.superseded))
        return bool(planned.superseded)

    # ---------------------------------------------------------------- writing

    def _carry_out(self, group: list[Planned]) -> dict[int, SinkOutcome]:
        first = group[0]
        obj, kind = first.command.object, first.kind
        web_services = self.connection.api.web_services
        if kind == "delete":
            return self._delete(group)
        records = [p.record for p in group]
        if kind == "upsert":
            results = web_services.insert_or_update(obj, records, user_key=first.key_field, echo=self.echo)
        else:
            results = web_services.write(obj, "Update" if kind == "update" else "Insert", records, echo=self.echo)
        return {p.index: self._outcome(p, r) for p, r in zip(group, results)}

    def _delete(self, group: list[Planned]) -> dict[int, SinkOutcome]:
        """Delete what is still there; a record already gone (or going meanwhile) counts as deleted."""
        obj = group[0].command.object
        ids = [str(p.record["Id"]) for p in group]
        existing = self._current(obj, "Id", ids, [])
        outcomes = {p.index: SinkOutcome(p.command, True, crm_id=p.record["Id"])
                    for p in group if p.record["Id"] not in existing}
        live = [p for p in group if p.record["Id"] in existing]
        results = self.connection.api.web_services.write(obj, "Delete", [p.record for p in live], echo=self.echo)
        for planned, result in zip(live, results):
            gone = result.error is not None and result.error.code == NO_RECORD_CODE
            outcomes[planned.index] = SinkOutcome(planned.command, True, crm_id=planned.record["Id"]) if gone \
                else self._outcome(planned, result)
        return outcomes

    def _outcome(self, planned: Planned, result: Outcome) -> SinkOutcome:
        if result.ok:
            created = planned.kind == "insert" or result.operation == "insert"
            return SinkOutcome(planned.command, True, crm_id=result.id or planned.record.get("Id"), created=created,
                               superseded=planned.superseded)
        error = result.error or OracleApiError("OOD gave no result for this record")
        log.info("OOD refused %s for %s: %s %s", planned.command.id, planned.command.object, error.code,
                 error.message)
        return OracleSinkOutcome(planned.command, False, crm_id=planned.record.get("Id"), code=error.code or None,
                                 message=error.message, superseded=planned.superseded, symbol=error.symbol,
                                 log_file=error.log_file)

    def _described(self, obj: str) -> dict[str, OodField]:
        try:
            return self.connection.fields(obj)
        except OracleApiError as exc:
            if exc.retryable:
                raise
            return {}  # e.g. no such record type: the write itself is refused with OOD's reason


def _rounds(plans: list[Planned]) -> list[list[Planned]]:
    """Groups to write, in order: per round (a record's command after its delete opens the next round) the
    writes parents first, then the deletes children first; a group holds one (object, operation), at most one
    command per record, and is split into batches by the client."""
    deletes_seen: dict[tuple[str, str, str], int] = {}
    keyed: list[tuple[tuple[int, int, int], Planned]] = []
    for planned in plans:
        round_ = deletes_seen.get(planned.identity, 0)
        rank = _rank(planned.command.object)
        keyed.append(((round_, 1, -rank) if planned.kind == "delete" else (round_, 0, rank), planned))
        if planned.kind == "delete":
            deletes_seen[planned.identity] = round_ + 1
    keyed.sort(key=lambda item: item[0])  # stable: commands of one record keep their order
    groups: list[list[Planned]] = []
    open_groups: dict[tuple[Any, ...], list[Planned]] = {}
    identities: set[tuple[str, str, str]] = set()
    for order, planned in keyed:
        if planned.kind != "insert" and planned.identity in identities:
            open_groups, identities = {}, set()  # an earlier command for this record must land first
        label = (order, planned.command.object, planned.kind, planned.key_field)
        if label not in open_groups:
            open_groups[label] = []
            groups.append(open_groups[label])
        open_groups[label].append(planned)
        identities.add(planned.identity)
    return groups


def _rank(obj: str) -> int:
    return PARENT_ORDER.index(obj) if obj in PARENT_ORDER else len(PARENT_ORDER)

