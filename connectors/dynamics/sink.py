"""The Dynamics sink: apply commands become Dataverse writes, in as few calls as the work allows, with one outcome
per command in order.

Each command is planned first (`_plan`):

  delete                     DELETE <set>(<id>); a record already gone counts as deleted
  upsert, key {"id": …}      update: PATCH <set>(<id>) with If-Match: * (an update never re-creates a deleted
                             record; Dataverse answers 404)
  upsert, match on an        upsert by alternate key: PATCH <set>(crmsync_campaignkey='42') — a create that is
  alternate key column       retried after a lost answer finds the record it made (idempotent)
  upsert, nothing else       create: POST <set>

Values are converted by column type (values.py); lookups become `<navigation>@odata.bind` = "/<set>(<id>)", for a
polymorphic lookup (Customer, Owner) the target table is found by the id (one query per table and batch), and a
{"campaign_key": k} marker binds the parent by its alternate key — those commands run after the others of their
round, so a parent created in the same batch exists first. A value that cannot be converted refuses that command
only (code CRMSYNC_INVALID_VALUE).

Compare-and-set (`ApplyCommand.expect`, learn.microsoft.com/power-apps/developer/data-platform/webapi/
perform-conditional-operations-using-web-api): the expected columns and the ETag of each record are read (one
query per 100 records), columns the CRM no longer holds as expected are left out (`superseded`), and the rest is
written with `If-Match: <the ETag read>`. A 412 means the record changed between the read and the write: it is
read and compared again, up to `cas_attempts` times.

Batching (learn.microsoft.com/power-apps/developer/data-platform/bulk-operations, execute-batch-operations-using-
web-api): commands run in rounds in which a record appears once (a later command for the same record waits for
the next round, so per-record order holds). In a round, a group of at least `multiple_threshold` plain creates,
updates or key upserts of one table goes out as CreateMultiple / UpdateMultiple / UpsertMultiple
(`multiple_size` records per call); those actions are atomic on standard tables, so a refused call is split into
per-record requests to find the refused record. Everything else goes in `$batch` requests of at most 1,000 parts
with `Prefer: odata.continue-on-error`: each command is its own part, so a refused record answers with its own
error and never fails the others (a change set would make them fail together). Errors carry Dataverse's error
code and message. Transient failures (429 honouring Retry-After, 5xx, timeouts) are retried by the client, a
transient part inside a `$batch` is sent again; what still fails is raised, and the whole batch is applied again
later (every write is idempotent: updates, key upserts and deletes by nature, creates by the alternate key the
two-way sync always sends).
"""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from prometheus_client import Counter

from crmsync.connectors import SinkOutcome, plan_commands
from crmsync.envelope import ApplyCommand

from .client import DataverseApiError, DataverseClient, Operation, Outcome, format_key
from .query import IDS_PER_QUERY, quote
from .schema import Catalog, Column, Table, UnknownTable
from .values import ValueProblem, comparable, version_of, write_value

log = logging.getLogger("crmsync.dynamics.sink")
NOT_FOUND = "0x80040217"
VERSION_MISMATCH = "0x80060882"  # If-Match: the record changed since it was read
DUPLICATE_RECORD = "0x80040237"  # If-None-Match: *: a record with the key was created meanwhile
RACE_CODES = frozenset({VERSION_MISMATCH, DUPLICATE_RECORD})
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
DEFAULT_EXTERNAL_ID = "crmsync_campaignkey"

SUPERSEDED = Counter("crmsync_dynamics_sink_superseded_fields_total",
                     "Fields not written because Dataverse holds a newer value than the decision saw "
                     "(compare-and-set)", ["account", "object"])
CALLS = Counter("crmsync_dynamics_sink_calls_total", "Write calls made by the Dynamics sink",
                ["account", "kind"])


@dataclass(frozen=True)
class SinkOptions:
    multiple_threshold: int = 50  # a group this large of one table and kind goes through the *Multiple actions
    multiple_size: int = 500  # records per *Multiple call
    batch_size: int = 1000  # parts per $batch (Dataverse's maximum)
    cas_attempts: int = 3  # compare-and-set rounds when records keep changing under us (412)
    part_retries: int = 3  # transient parts inside a $batch are sent again this often


@dataclass
class Plan:
    """One command as a Web API write."""

    index: int  # position of the command in apply()'s input
    command: ApplyCommand
    table: Table
    kind: str  # create | update | upsert | delete
    body: dict[str, Any] = field(default_factory=dict)
    written: dict[str, str] = field(default_factory=dict)  # column -> its key in the body
    record_id: str | None = None  # update, delete
    key: dict[str, str] | None = None  # upsert by alternate key
    keyed_binds: bool = False  # binds a parent by alternate key: runs after the others of its round
    expect: dict[str, Any] = field(default_factory=dict)  # compare-and-set: column -> expected value
    etag: str | None = None  # compare-and-set: the version read
    insert_only: bool = False  # compare-and-set found no record: create it, but never over one made meanwhile
    superseded: list[str] = field(default_factory=list)
    full_body: dict[str, Any] = field(default_factory=dict)  # the body before compare-and-set left columns out
    refused: dict[str, str] = field(default_factory=dict)  # command field -> why Dataverse cannot take its value

    @property
    def identity(self) -> tuple | None:
        if self.record_id:
            return ("id", self.record_id.lower())
        if self.key:
            return ("key", self.table.name, tuple(sorted((k, v.lower()) for k, v in self.key.items())))
        return None

    @property
    def address(self) -> str:
        if self.record_id:
            return f"{self.table.entity_set}({self.record_id})"
        if self.key:
            return f"{self.table.entity_set}{format_key(self.key)}"
        return self.table.entity_set


class DynamicsSink:
    """Sink over one environment (crmsync/connectors.py); see the module docstring."""

    def __init__(self, client: DataverseClient, catalog: Catalog, options: SinkOptions | None = None,
                 external_id: str = DEFAULT_EXTERNAL_ID) -> None:
        self.client, self.catalog = client, catalog
        self.options = options or SinkOptions()
        self.external_id = external_id
        self.account = client.account_name
        self._targets: dict[str, str] = {}  # record id -> table, for polymorphic lookups (kept for this sink)

    def apply(self, commands: Sequence[ApplyCommand]) -> list[SinkOutcome]:
        refused, plans = plan_commands(commands, self._plan)
        outcomes: list[SinkOutcome | None] = [refused.get(index) for index in range(len(commands))]
        self._resolve_lookups(plans, outcomes)
        for round_plans in _rounds([p for p in plans if outcomes[p.index] is None]):
            for plan, outcome in self._run_round(round_plans):
                if outcome.ok and plan.refused:
                    outcome.refused_fields = dict(plan.refused)
                outcomes[plan.index] = outcome
        return [o if o is not None else SinkOutcome(c, False, code="CRMSYNC_NO_RESULT",
                                                    message="Dataverse gave no result for this command")
                for c, o in zip(commands, outcomes)]

    # ---------------------------------------------------------------- planning

    def _plan(self, index: int, command: ApplyCommand) -> Plan | SinkOutcome:
        if command.side != "crm" or command.target != self.account:
            return SinkOutcome(command, False, code="CRMSYNC_WRONG_TARGET",
                               message=f"command for {command.side}/{command.target} reached the Dynamics sink of "
                                       f"{self.account}")
        try:
            table = self.catalog.table(command.object)
        except UnknownTable as exc:
            return SinkOutcome(command, False, code="CRMSYNC_UNKNOWN_OBJECT", message=str(exc))
        record_id = _record_id(command)
        if record_id is not None and not _is_guid(record_id):
            return SinkOutcome(command, False, code="CRMSYNC_NO_KEY",
                               message=f"{record_id!r} is not a Dataverse record id (a GUID)")
        if command.action == "delete":
            if not record_id:
                return SinkOutcome(command, False, code="CRMSYNC_NO_KEY",
                                   message="a delete needs the record's id in `key`")
            return Plan(index, command, table, "delete", record_id=record_id)
        key = None if record_id else self._key(table, command)
        plan = Plan(index, command, table, "update" if record_id else "upsert" if key else "create",
                    record_id=record_id, key=key)
        for name, value in command.values.items():
            try:
                self._add(plan, name, value)
            except ValueProblem as exc:  # this field only: the others are written, this one is rejected
                plan.refused[name] = str(exc)
        if plan.refused and not plan.written:
            return SinkOutcome(command, False, crm_id=record_id, code="CRMSYNC_INVALID_VALUE",
                               message="; ".join(plan.refused.values()))
        plan.body.update(key or {})
        if plan.kind != "create":  # a record that cannot be found beforehand has nothing to compare with
            plan.expect = {k: v for k, v in (command.expect or {}).items() if k in plan.written}
        return plan

    def _key(self, table: Table, command: ApplyCommand) -> dict[str, str] | None:
        """The first `match` column that is an alternate key of the table, with its value."""
        for name, value in (command.match or {}).items():
            if value not in (None, "") and table.is_key(name):
                return {name: str(value)}
        return None

    def _add(self, plan: Plan, name: str, value: Any) -> None:
        """Put one command value into the plan's body, converted for its column."""
        table = plan.table
        if name in ("id", table.primary_id) or name.startswith("@"):
            return
        try:
            column = table.column(name)
        except KeyError as exc:
            raise ValueProblem(exc.args[0]) from None
        creating = plan.kind != "update"
        if not (column.creatable if creating else column.updatable):
            raise ValueProblem(f"{column.name} is read-only in Dataverse (not valid for "
                               f"{'create' if creating else 'update'}): leave it out of what is sent to the CRM")
        if not column.lookup:
            plan.body[column.name] = write_value(column, value)
            plan.written[column.name] = column.name
            return
        key, bound = self._bind(column, value)
        plan.body[key] = bound
        plan.written[column.name] = key
        plan.keyed_binds = plan.keyed_binds or isinstance(value, dict)

    def _bind(self, column: Column, value: Any) -> tuple[str, Any]:
        """(body key, value) for a lookup value: a GUID, the parent's external id ({"$ref": {"object", "external_id":
        {column: value}}}, or a {"campaign_key": k} marker) bound by alternate key, or None (clear). A GUID for a
        polymorphic lookup gets a placeholder key until its table is known (_resolve_lookups)."""
        if isinstance(value, dict) and ("$ref" in value or value.get("campaign_key") is not None):
            ref = value.get("$ref") or {}
            external = ref.get("external_id") if isinstance(ref, dict) else None
            if "$ref" in value and not (isinstance(external, dict) and len(external) == 1):
                raise ValueProblem(f"{column.name}: a reference by external id needs one alternate-key value "
                                   f"({{'$ref': {{'object': …, 'external_id': {{column: value}}}}}}), got {value!r}")
            (key_column, key_value), = (external or {self.external_id: value.get("campaign_key")}).items()
            target = ref.get("object") or self._single_target(column)
            if target not in column.targets:
                raise ValueProblem(f"{column.name} points at {' or '.join(column.targets)}, not {target}")
            parent = self.catalog.table(target)
            if not parent.is_key(key_column):
                raise ValueProblem(f"{column.name}: {target} has no alternate key {key_column} to find the "
                                   "parent by its Campaign key")
            key = format_key({key_column: str(key_value)})
            return f"{column.navigation.get(target, column.name)}@odata.bind", f"/{parent.entity_set}{key}"
        if value is None or value == "":
            target = column.targets[0]
            return f"{column.navigation.get(target, column.name)}@odata.bind", None
        try:
            record = str(uuid.UUID(str(value)))
        except ValueError:
            raise ValueProblem(f"{column.name} is a lookup: its value must be the GUID of a "
                               f"{' or '.join(column.targets)} record, got {value!r}") from None
        if len(column.targets) > 1:
            return f"{_UNRESOLVED}{column.name}", record
        target = column.targets[0]
        return (f"{column.navigation.get(target, column.name)}@odata.bind",
                f"/{self.catalog.table(target).entity_set}({record})")

    @staticmethod
    def _single_target(column: Column) -> str:
        if len(column.targets) != 1:
            raise ValueProblem(f"{column.name} can point at {', '.join(column.targets)}: give the parent's GUID")
        return column.targets[0]

    def _resolve_lookups(self, plans: list[Plan], outcomes: list[SinkOutcome | None]) -> None:
        """Find the table of every GUID given for a polymorphic lookup (one In() query per table and 100 ids)."""
        wanted: dict[tuple[str, ...], set[str]] = {}
        for plan in plans:
            for key, record in plan.body.items():
                if key.startswith(_UNRESOLVED) and record not in self._targets:
                    column = plan.table.column(key[len(_UNRESOLVED):])
                    wanted.setdefault(column.targets, set()).add(record)
        for targets, records in wanted.items():
            for target in targets:
                missing = sorted(r for r in records if r not in self._targets)
                table = self.catalog.table(target)
                for start in range(0, len(missing), IDS_PER_QUERY):
                    chunk = missing[start:start + IDS_PER_QUERY]
                    found = self.client.query(table.entity_set, select=[table.primary_id], filter=_in(table, chunk))
                    self._targets.update({str(row[table.primary_id]).lower(): target for row in found})
        for plan in plans:
            for key in [k for k in plan.body if k.startswith(_UNRESOLVED)]:
                record, column = plan.body.pop(key), plan.table.column(key[len(_UNRESOLVED):])
                target = self._targets.get(record.lower())
                if target is None:
                    outcomes[plan.index] = SinkOutcome(
                        plan.command, False, crm_id=plan.record_id, code="CRMSYNC_INVALID_VALUE",
                        message=f"{column.name}: no {' or '.join(column.targets)} record has the id {record}")
                    continue
                bind = f"{column.navigation.get(target, f'{column.name}_{target}')}@odata.bind"
                plan.body[bind] = f"/{self.catalog.table(target).entity_set}({record})"
                plan.written[column.name] = bind

    # ---------------------------------------------------------------- one round

    def _run_round(self, plans: list[Plan]) -> list[tuple[Plan, SinkOutcome]]:
        results: list[tuple[Plan, SinkOutcome]] = []
        checked = [p for p in plans if p.expect]
        plain = [p for p in plans if not p.expect]
        for plan in checked:
            plan.full_body = dict(plan.body)
        settled, conditional = self._compare_and_set(checked)
        results += settled
        in_batch: list[Plan] = []
        for group in _groups([p for p in plain if not p.keyed_binds]):
            if len(group) >= self.options.multiple_threshold and group[0].kind != "delete":
                done, refused = self._multiple(group)
                results += done
                in_batch += refused
            else:
                in_batch += group
        in_batch += [p for p in plain if p.keyed_binds]  # parents bound by key: after what may create them
        results += self._batched(in_batch)
        for attempt in range(1, self.options.cas_attempts + 1):
            if not conditional:
                break
            answered = self._batched(conditional)
            results += [(p, o) for p, o in answered if o.code not in RACE_CODES]
            conditional = [p for p, o in answered if o.code in RACE_CODES]
            if conditional and attempt == self.options.cas_attempts:
                results += [(p, _refused(p, VERSION_MISMATCH, f"the record kept changing during "
                                                             f"{attempt} compare-and-set attempts"))
                            for p in conditional]
                break
            for plan in conditional:  # changed between our read and our write: read and compare again
                plan.body, plan.superseded, plan.etag, plan.insert_only = dict(plan.full_body), [], None, False
            settled, conditional = self._compare_and_set(conditional)
            results += settled
        return results

    # ---------------------------------------------------------------- compare-and-set

    def _compare_and_set(self, plans: list[Plan]) -> tuple[list[tuple[Plan, SinkOutcome]], list[Plan]]:
        """Read what the records hold now; leave out superseded columns. Returns (settled, plans to write with
        If-Match)."""
        settled: list[tuple[Plan, SinkOutcome]] = []
        ready: list[Plan] = []
        for table_name in dict.fromkeys(p.table.name for p in plans):
            group = [p for p in plans if p.table.name == table_name]
            current = self._current(group[0].table, group)
            for plan in group:
                row = current.get(plan.identity)
                if row is None:
                    if plan.kind == "upsert":  # not there: nothing to compare with; create it, unless made meanwhile
                        plan.insert_only = True
                        ready.append(plan)
                        continue
                    settled.append((plan, _refused(plan, NOT_FOUND, f"{plan.table.name} With Id = "
                                                                    f"{plan.record_id} Does Not Exist")))
                    continue
                plan.record_id = plan.record_id or str(row[plan.table.primary_id])
                plan.etag = row.get("@odata.etag") or f'W/"{version_of(row)}"'
                self._drop_superseded(plan, row)
                if _writes(plan):
                    ready.append(plan)
                else:
                    settled.append((plan, SinkOutcome(plan.command, True, crm_id=plan.record_id,
                                                      superseded=list(plan.superseded))))
        return settled, ready

    def _current(self, table: Table, plans: list[Plan]) -> dict[tuple, dict[str, Any]]:
        """Rows of the planned records with the expected columns and their ETag, by plan identity."""
        columns = sorted({table.column(name).web_name for p in plans for name in p.expect})
        select = list(dict.fromkeys([table.primary_id, "versionnumber", *columns]))
        rows: dict[tuple, dict[str, Any]] = {}
        by_id = sorted({p.record_id.lower() for p in plans if p.record_id})
        for start in range(0, len(by_id), IDS_PER_QUERY):
            for row in self.client.query(table.entity_set, select=select,
                                         filter=_in(table, by_id[start:start + IDS_PER_QUERY])):
                rows[("id", str(row[table.primary_id]).lower())] = row
        for plan in plans:
            if plan.record_id is None and plan.key:
                condition = " and ".join(f"{name} eq {quote(value)}" for name, value in plan.key.items())
                for row in self.client.query(table.entity_set, select=select, filter=condition):
                    rows[plan.identity] = row  # type: ignore[index]
        return rows

    def _drop_superseded(self, plan: Plan, row: dict[str, Any]) -> None:
        for name, expected in plan.expect.items():
            column = plan.table.column(name)
            now = comparable(column, row.get(column.web_name))
            if now != comparable(column, expected) and now != comparable(column, plan.command.values.get(name)):
                plan.body.pop(plan.written[name], None)
                plan.superseded.append(name)
        if plan.superseded:
            SUPERSEDED.labels(self.account, plan.table.name).inc(len(plan.superseded))
            log.info("command %s for %s %s: %s changed in Dataverse since the decision; left as they are",
                     plan.command.id, plan.table.name, plan.record_id, ", ".join(plan.superseded))

    # ---------------------------------------------------------------- bulk actions

    def _multiple(self, group: list[Plan]) -> tuple[list[tuple[Plan, SinkOutcome]], list[Plan]]:
        """CreateMultiple / UpdateMultiple / UpsertMultiple in chunks; a refused chunk goes to per-record requests."""
        done: list[tuple[Plan, SinkOutcome]] = []
        refused: list[Plan] = []
        table, kind = group[0].table, group[0].kind
        for start in range(0, len(group), self.options.multiple_size):
            chunk = group[start:start + self.options.multiple_size]
            CALLS.labels(self.account, f"{kind}_multiple").inc()
            try:
                if kind == "create":
                    ids = self.client.create_multiple(table.entity_set, table.name, [p.body for p in chunk])
                    done += [(p, SinkOutcome(p.command, True, crm_id=i, created=True)) for p, i in zip(chunk, ids)]
                elif kind == "update":
                    self.client.update_multiple(table.entity_set, table.name,
                                                [{**p.body, table.primary_id: p.record_id} for p in chunk])
                    done += [(p, SinkOutcome(p.command, True, crm_id=p.record_id)) for p in chunk]
                else:
                    results = self.client.upsert_multiple(table.entity_set, table.name,
                                                          [(p.key or {}, p.body) for p in chunk])
                    done += [(p, SinkOutcome(p.command, True, crm_id=(r.get("Target") or {}).get(table.primary_id),
                                             created=bool(r.get("RecordCreated")))) for p, r in zip(chunk, results)]
            except DataverseApiError as exc:
                if exc.status in TRANSIENT_STATUSES or exc.status in (0, 401):
                    raise
                log.info("%s %s of %d %s refused (%s %s); applying them one by one to find the refused ones",
                         kind, "multiple", len(chunk), table.name, exc.code, exc.message)
                refused += chunk
        return done, refused

    # ---------------------------------------------------------------- $batch

    def _batched(self, plans: list[Plan]) -> list[tuple[Plan, SinkOutcome]]:
        results: list[tuple[Plan, SinkOutcome]] = []
        for start in range(0, len(plans), self.options.batch_size):
            results += self._batch(plans[start:start + self.options.batch_size])
        return results

    def _batch(self, plans: list[Plan]) -> list[tuple[Plan, SinkOutcome]]:
        pending, results = list(plans), []
        for attempt in range(self.options.part_retries + 1):
            if not pending:
                break
            CALLS.labels(self.account, "batch").inc()
            outcomes = self.client.batch([_operation(p) for p in pending], continue_on_error=True)
            transient = []
            for plan, outcome in zip(pending, outcomes):
                if outcome.status in TRANSIENT_STATUSES and attempt < self.options.part_retries:
                    transient.append(plan)
                else:
                    results.append((plan, self._outcome(plan, outcome)))
            results += [(p, _refused(p, "CRMSYNC_NO_RESULT", "the $batch answer had no part for this command"))
                        for p in pending[len(outcomes):]]
            if transient:
                time.sleep(self.client.backoff * 2 ** attempt)
            pending = transient
        return results

    def _outcome(self, plan: Plan, outcome: Outcome) -> SinkOutcome:
        command = plan.command
        if outcome.ok:
            if plan.kind == "delete":
                return SinkOutcome(command, True, crm_id=plan.record_id)
            body = outcome.body if isinstance(outcome.body, dict) else {}
            crm_id = body.get(plan.table.primary_id) or outcome.entity_id or plan.record_id
            created = plan.kind == "create" or (plan.kind == "upsert" and outcome.status == 201)
            return SinkOutcome(command, True, crm_id=crm_id, created=created, superseded=list(plan.superseded))
        error = outcome.error or {}
        code = str(error.get("code") or f"HTTP_{outcome.status}")
        if plan.kind == "delete" and (outcome.status == 404 or code == NOT_FOUND):
            return SinkOutcome(command, True, crm_id=plan.record_id)  # already deleted
        if outcome.status in TRANSIENT_STATUSES:
            raise DataverseApiError(outcome.status, code, str(error.get("message") or "transient failure in $batch"),
                                    "POST", "$batch")
        return SinkOutcome(command, False, crm_id=plan.record_id, code=code,
                           message=self.client.scrub(str(error.get("message") or f"HTTP {outcome.status}")))


# ---------------------------------------------------------------- helpers

_UNRESOLVED = "\u0000lookup:"  # body placeholder for a polymorphic lookup whose table is not known yet


def _is_guid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def _record_id(command: ApplyCommand) -> str | None:
    key = command.key or {}
    value = key.get("id") or key.get("Id")
    return str(value) if value else None


def _writes(plan: Plan) -> bool:
    """Whether anything is left to write beyond the alternate key itself."""
    return any(k not in (plan.key or {}) for k in plan.body)


def _refused(plan: Plan, code: str, message: str) -> SinkOutcome:
    return SinkOutcome(plan.command, False, crm_id=plan.record_id, code=code, message=message)


def _in(table: Table, ids: Sequence[str]) -> str:
    return (f"Microsoft.Dynamics.CRM.In(PropertyName={quote(table.primary_id)},PropertyValues=["
            + ",".join(quote(i) for i in ids) + "])")


def _operation(plan: Plan) -> Operation:
    """The request carrying a plan: If-Match: <ETag read> for compare-and-set, If-Match: * so an update never
    creates, If-None-Match: * so a compare-and-set create never overwrites; upserts ask for the id back (201 =
    created, 200 = updated)."""
    if plan.kind == "delete":
        return Operation("DELETE", plan.address)
    if plan.kind == "create":
        return Operation("POST", plan.address, plan.body)
    if plan.etag:
        address, headers = f"{plan.table.entity_set}({plan.record_id})", {"If-Match": plan.etag}
    elif plan.insert_only:
        address, headers = plan.address, {"If-None-Match": "*"}
    else:
        address, headers = plan.address, ({"If-Match": "*"} if plan.kind == "update" else {})
    if plan.kind == "upsert":
        return Operation("PATCH", f"{address}?$select={plan.table.primary_id}", plan.body,
                         {**headers, "Prefer": "return=representation"})
    return Operation("PATCH", address, plan.body, headers)


def _groups(plans: list[Plan]) -> Iterator[list[Plan]]:
    """Plans grouped by (table, kind), groups in order of their first plan."""
    groups: dict[tuple[str, str], list[Plan]] = {}
    for plan in plans:
        groups.setdefault((plan.table.name, plan.kind), []).append(plan)
    yield from groups.values()


def _rounds(plans: list[Plan]) -> Iterator[list[Plan]]:
    """Consecutive rounds in which each record appears at most once, commands for one record in input order."""
    remaining = plans
    while remaining:
        round_plans, later, seen = [], [], set()
        for plan in remaining:
            identity = plan.identity
            if identity is not None and identity in seen:
                later.append(plan)
                continue
            seen.add(identity)
            round_plans.append(plan)
        yield round_plans
        remaining = later
