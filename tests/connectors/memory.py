"""A CRM that lives in this test process: a connector written inside the test suite, to prove a CRM plugs into
crmsync without editing the engine (it is registered with `crmsync.connectors.register`, passes the same
conformance suite as the real connectors, and syncs with the Campaign through the unchanged streams).

It keeps records per object in memory with a change log: every write gets the next sequence number and the
time; its change source reads the log after a cursor (so ties on time cannot lose anything), its sink applies
commands one by one with per-record errors and compare-and-set. Field names differ from Salesforce's on purpose
(`given`, `family`, `mail`): nothing in the engine may assume them.
"""
from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar, Iterator, Literal, Sequence

from pydantic import SecretStr

from crmsync import filters
from crmsync.connectors import (AccountBase, ApiUsage, DeletedRecord, Enumeration, FieldSpec, RunningSandbox,
                                SinkOutcome, SourcePage, TableInfo, TableSpec)
from crmsync.envelope import ApplyCommand, crm_change
from crmsync.values import canonical

SECRET = "right-secret"
FIELDS: dict[str, dict[str, tuple[str, str]]] = {  # object -> field -> (memory type, kind)
    "Person": {"pid": ("id", "text"), "given": ("text", "text"), "family": ("text", "text"), "mail": ("text", "text"),
               "role": ("text", "text"), "city": ("text", "text"), "born": ("date", "date"),
               "level": ("choice", "text"), "campaign_key": ("text", "text"), "modified": ("datetime", "datetime")},
}
LEVELS = ["Gold", "Silver", "Bronze"]


class MemoryAccount(AccountBase):
    type: Literal["memory"] = "memory"
    org: str
    secret: SecretStr


class MemoryError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass
class Org:
    """One in-memory CRM: records per object and an ordered change log."""

    records: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    log: list[tuple[int, str, str, str, str]] = field(default_factory=list)  # (seq, object, id, op, time)
    deleted: list[DeletedRecord] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    seq: Any = field(default_factory=lambda: itertools.count(1))
    ids: Any = field(default_factory=lambda: itertools.count(1))
    frozen: str | None = None  # a held clock: every write gets this time (ties)
    calls: int = 0

    def now(self) -> str:
        return self.frozen or datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")

    def write(self, obj: str, values: dict[str, Any], record_id: str | None = None) -> tuple[str, bool]:
        refused = [k for k in values if k not in FIELDS[obj]]
        if refused:
            raise MemoryError("NO_SUCH_FIELD", f"{obj} has no field {refused[0]}")
        if "@invalid." in str(values.get("mail") or ""):
            raise MemoryError("INVALID_MAIL", "mail addresses at invalid.example are refused")
        table = self.records.setdefault(obj, {})
        created = record_id is None or record_id not in table
        record_id = record_id or f"m{next(self.ids):06d}"
        moment = self.now()
        table.setdefault(record_id, {"pid": record_id}).update({**values, "modified": moment})
        self.log.append((next(self.seq), obj, record_id, "c" if created else "u", moment))
        return record_id, created

    def delete(self, obj: str, record_id: str) -> None:
        if self.records.get(obj, {}).pop(record_id, None) is not None:
            moment = self.now()
            self.log.append((next(self.seq), obj, record_id, "d", moment))
            self.deleted.append(DeletedRecord(record_id, moment))


ORGS: dict[str, Org] = {}


class MemoryClient:
    def __init__(self, account_name: str, account: MemoryAccount) -> None:
        if account.secret.get_secret_value() != SECRET:
            raise MemoryError("INVALID_LOGIN", f"authentication of account {account_name} failed: check its secret")
        self.account_name, self.account = account_name, account
        self.org = ORGS.setdefault(account.org, Org())

    def usage(self) -> ApiUsage:
        return ApiUsage(self.org.calls, None, None, "day")

    def whoami(self) -> dict[str, str]:
        return {"organization": self.account.org, "user": self.account_name, "api_version": "1"}

    def close(self) -> None:
        pass


class MemorySource:
    def __init__(self, client: MemoryClient, obj: str, page_size: int = 100) -> None:
        self.client, self.obj, self.page_size = client, obj, page_size

    def read(self, cursor: dict[str, Any] | None) -> Iterator[SourcePage]:
        """A snapshot first (records by id, resumable from any cursor it handed out), then the change log."""
        org = self.client.org
        cursor = cursor or {"seq": None, "snapshot_after": ""}
        if "snapshot_after" in cursor:
            with org.lock:
                seq = cursor["seq"] if cursor["seq"] is not None else (org.log[-1][0] if org.log else 0)
                rows = sorted((dict(r) for r in org.records.get(self.obj, {}).values()
                               if r["pid"] > cursor["snapshot_after"]), key=lambda r: r["pid"])
            for start in range(0, len(rows), self.page_size):
                chunk = rows[start:start + self.page_size]
                yield SourcePage([self._change("r", r) for r in chunk], {"seq": seq, "snapshot_after": chunk[-1]["pid"]})
            yield SourcePage([], {"seq": seq}, snapshot_done=True)
            return
        with org.lock:
            entries = [e for e in org.log if e[0] > cursor["seq"] and e[1] == self.obj]
            current = {rid: dict(r) for rid, r in org.records.get(self.obj, {}).items()}
        for start in range(0, len(entries), self.page_size):
            chunk = entries[start:start + self.page_size]
            changes = [self._change(op, current.get(rid), rid, at, seq) for seq, _, rid, op, at in chunk
                       if op == "d" or rid in current]
            yield SourcePage(changes, {"seq": chunk[-1][0]})

    def _change(self, op: str, row: dict[str, Any] | None, rid: str | None = None, at: str | None = None,
                seq: int | None = None) -> Any:
        rid = rid or (row or {})["pid"]
        moment = at or (row or {}).get("modified") or self.client.org.now()
        version = f"{moment}#{seq}" if seq else moment
        return crm_change(self.client.account_name, self.obj, op, rid, version, moment,
                          after=None if op == "d" else row, seq=seq)

    def fields(self) -> dict[str, FieldSpec]:
        return {name: FieldSpec(name, name, crm_type, "text", kind=kind)
                for name, (crm_type, kind) in FIELDS[self.obj].items()}


class MemorySink:
    def __init__(self, client: MemoryClient) -> None:
        self.org = client.org

    def apply(self, commands: Sequence[ApplyCommand]) -> list[SinkOutcome]:
        return [self._one(command) for command in commands]

    def _one(self, command: ApplyCommand) -> SinkOutcome:
        org = self.org
        with org.lock:
            org.calls += 1
            table = org.records.setdefault(command.object, {})
            record_id = (command.key or {}).get("id")
            if record_id is None and command.match and command.match.get("campaign_key"):
                record_id = next((rid for rid, r in table.items()
                                  if r.get("campaign_key") == command.match["campaign_key"]), None)
            if command.action == "delete":
                org.delete(command.object, record_id or "")
                return SinkOutcome(command, True, crm_id=record_id)
            values = dict(command.values)
            if command.match and "campaign_key" in command.match:
                values["campaign_key"] = command.match["campaign_key"]
            superseded = []
            if record_id in table and command.expect:
                for name, expected in command.expect.items():
                    now = table[record_id].get(name)
                    if canonical(now) != canonical(expected) and canonical(now) != canonical(values.get(name)):
                        values.pop(name, None)
                        superseded.append(name)
            try:
                crm_id, created = org.write(command.object, values, record_id)
            except MemoryError as exc:
                return SinkOutcome(command, False, code=exc.code, message=exc.message)
            return SinkOutcome(command, True, crm_id=crm_id, created=created, superseded=superseded)


class MemoryDiscovery:
    namespace = "mem"
    connector_label = "Memory CRM"

    def __init__(self, client: MemoryClient) -> None:
        self.client = client

    def list_tables(self) -> list[TableInfo]:
        return [TableInfo(name, name) for name in FIELDS]

    def describe_table(self, name: str) -> TableSpec:
        specs = [FieldSpec(f, f, t, "date" if t == "date" else "text", enumeration="Person_level" if t == "choice"
                           else None, kind=k, updateable=f not in ("pid", "modified"))
                 for f, (t, k) in FIELDS[name].items()]
        return TableSpec(name, name, specs, [Enumeration("Person_level", "Level", False,
                                                         [{"name": v, "label": v, "value": v} for v in LEVELS])],
                         key="pid")

    def rows(self, table: str, fields: list[str]) -> Iterator[list[dict[str, Any]]]:
        yield [{f: r.get(f) for f in fields} for r in self.client.org.records.get(table, {}).values()]


class MemoryQuery:
    def __init__(self, client: MemoryClient) -> None:
        self.client = client

    def records(self, obj: str, fields: Sequence[str], where: filters.Node | None = None,
                order_by: Sequence[tuple[str, bool]] = (), include_deleted: bool = False,
                ids: Sequence[str] | None = None) -> Iterator[list[dict[str, Any]]]:
        rows = [r for r in self.client.org.records.get(obj, {}).values()
                if (ids is None or r["pid"] in ids) and (where is None or _matches(where, r))]
        for name, descending in reversed(list(order_by)):
            rows.sort(key=lambda r: str(r.get(name) or ""), reverse=descending)
        yield [{"id": r["pid"], **{f: r.get(f) for f in fields}} for r in rows]

    def deleted(self, obj: str, start: str, end: str) -> list[DeletedRecord]:
        return [d for d in self.client.org.deleted if start <= d.deleted_at < end]


def _matches(node: filters.Node, row: dict[str, Any]) -> bool:
    if isinstance(node, filters.Group):
        results = [_matches(item, row) for item in node.items]
        return all(results) if node.logic == "and" else any(results)
    value = row.get(node.field)
    if node.op == "is empty":
        return value in (None, "")
    if node.op == "is not empty":
        return value not in (None, "")
    if node.op == "=":
        return value == node.value
    if node.op == "!=":
        return value != node.value
    raise filters.FilterError("filter", f"the memory CRM cannot compare with {node.op!r}")


class MemorySandboxKit:
    def start(self, state_dir: Path, *, seed_contacts: int = 0, log_file: Path | None = None) -> RunningSandbox:
        org_name = f"org-{state_dir.name}"
        org = ORGS.setdefault(org_name, Org())
        for i in range(seed_contacts):
            org.write("Person", {"given": f"Seed{i}", "family": "Person", "mail": f"seed{i}@memory.example",
                                 "level": LEVELS[i % 3]})
        account = {"type": "memory", "org": org_name, "secret": SECRET}
        return RunningSandbox(None, f"memory://{org_name}", Path("/dev/null"), account, "")

    def attach(self, url: str, ca_file: Path) -> RunningSandbox:
        raise ValueError("an in-memory CRM cannot be attached to from another process")

    def refused_contact_values(self) -> dict[str, Any]:
        return {"email": "refused@invalid.example"}


MAPPINGS = [{
    "name": "people", "account": "{account}", "crm_object": "Person", "campaign_table": "recipients",
    "direction": "both", "match": [{"crm": "mail", "campaign": "email"}], "delete": "mark",
    "crm_external_id": "campaign_key",
    "fields": [{"crm": "given", "campaign": "first_name"}, {"crm": "family", "campaign": "last_name"},
               {"crm": "mail", "campaign": "email"}, {"crm": "role", "campaign": "job_title"},
               {"crm": "city", "campaign": "city"}, {"crm": "born", "campaign": "birth_date"}]}]


class MemoryConnector:
    type: ClassVar[str] = "memory"
    label: ClassVar[str] = "Memory CRM"
    account_model: ClassVar[type[AccountBase]] = MemoryAccount
    default_external_id: ClassVar[str | None] = "campaign_key"
    system_fields: ClassVar[frozenset[str]] = frozenset({"pid", "modified"})
    index_fields: ClassVar[tuple[str, ...]] = ("modified",)
    stamp_resolution: ClassVar[float] = 0.000001
    deleted_flag: ClassVar[str | None] = None
    multi_select_separator: ClassVar[str] = ";"
    value_error_codes: ClassVar[frozenset[str]] = frozenset()
    objects: ClassVar[dict[str, str]] = {"contacts": "Person"}

    def client(self, account_name: str, account: Any) -> MemoryClient:
        return MemoryClient(account_name, account)

    def change_source(self, client: MemoryClient, obj: str, **options: Any) -> MemorySource:
        return MemorySource(client, obj, **options)

    def sink(self, client: MemoryClient, *, assignment_rule: str | None = None, bulk: bool | None = None,
             **options: Any) -> MemorySink:
        return MemorySink(client)

    def discovery(self, client: MemoryClient) -> MemoryDiscovery:
        return MemoryDiscovery(client)

    def query(self, client: MemoryClient) -> MemoryQuery:
        return MemoryQuery(client)

    def sandbox(self) -> MemorySandboxKit:
        return MemorySandboxKit()

    def default_mappings(self, account_name: str) -> list[dict[str, Any]]:
        import json

        return json.loads(json.dumps(MAPPINGS).replace("{account}", account_name))

    def api_error(self, exc: BaseException) -> tuple[str, str] | None:
        return (exc.code, exc.message) if isinstance(exc, MemoryError) else None


CONNECTOR = MemoryConnector()
