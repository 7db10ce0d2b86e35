"""The heart of two-way sync: turn a batch of record changes from one side into apply commands for the other.

For every synced record the streams keep a row of `crmsync.sync_state`: the identity link (CRM id ⇄ Campaign
key) and the *agreed* values — what both sides should hold after the last decision — with, per field, which
side set it and when, and the writes still in flight to each side. Each incoming change is merged three-way
against `agreed`:

- a field equal to `agreed` is no change;
- a field equal to a value we sent to that side is the echo of our own write (dropped: no ping-pong);
- a field equal to the value that side had before our in-flight write is a side that has not caught up yet;
- anything else is a real edit: it becomes the agreed value and is sent to the other side, unless the other
  side edited the same field later (or owns it): then it is a conflict, decided by the mapping's policy and
  recorded with both values.

Campaign changes made by crmsync's own writer are recognised exactly (change capture tags their transaction)
and skipped before any of this.

A *partial* change (`Change.partial`: a CRM that pushes only the fields an update touched, e.g. Salesforce Change
Data Capture) is merged field by field like any other — a field it does not carry is unchanged, never null — with
three differences: a filter rule on a field it does not carry does not exclude it; it never creates a record (a
record the streams have no link for is skipped: the rest of its fields are unknown; drift repair brings it in if
a mapping wants it); and a field it carries is a real edit even when it equals what that side held before our
write in flight (every field of a pushed update changed; only a read can be "not caught up yet"). Delivery is at-least-once everywhere; the commands are idempotent and the
state update commits only after the commands are acknowledged, so a crash re-decides the same batch.

Invariants:
- Every change is decided, in source order per record; none is folded into a later one (a record's burst of
  Campaign updates each touches its own columns). Commands a batch sends to one record on one side are merged
  into one: the newest value of each field, the oldest expectation.
- Values are compared in canonical form by each field's declared kind (crmsync/values.py), never by shape. A
  value that cannot have its field's kind is left out of the decision and reported (`Decisions.invalid`).
- Update commands carry `expect`: the value each field held on that side when the decision was made (what
  the side holds once our earlier commands are applied: the agreed value). A writer applies a field only if
  the target still holds it (compare-and-set); a field a user changed meanwhile is left alone, and that edit
  reaches the streams as its own change and is decided then.
- Locks: a batch visits mappings in name order, and within a mapping locks every sync-state row it will touch
  in one statement ordered by id, so two batches never wait on each other in a cycle.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Iterable

import psycopg
from psycopg.rows import dict_row

from psycopg import sql

from crmsync import connectors
from crmsync.catalog import Catalog
from crmsync.config import FieldMap, Mapping, Settings
from crmsync.envelope import ECHO_FOR_ALL, ApplyCommand, Change, dumps, echo_mapping, utc_now_iso
from crmsync.field_types import FieldTypes
from crmsync.values import (EnumerationMap, IdentityEnumerations, Kind, canonical, epoch, match_expression,
                            match_index, match_key)

log = logging.getLogger("crmsync.streams")
WRITER_ORIGINS = ("writer-campaign",)
CAMPAIGN_BASES = "campaign_bases"  # key of Link.pending: Campaign column -> {"base", "at"} of our last write to it
PENDING_TTL_SECONDS = 3600  # an in-flight write never acknowledged (rejected, lost) stops shadowing edits


@dataclass
class Link:
    """One row of crmsync.sync_state, loaded for the batch and written back if `dirty`."""

    mapping: str
    id: int | None = None
    crm_id: str | None = None
    campaign_key: int | None = None
    match_key: str | None = None
    agreed: dict[str, Any] = field(default_factory=dict)
    field_meta: dict[str, list] = field(default_factory=dict)  # column -> [side, epoch seconds of the edit]
    pending: dict[str, dict[str, dict]] = field(default_factory=dict)  # "crm" and CAMPAIGN_BASES -> column -> …
    crm_modstamp: str | None = None
    campaign_lsn: int | None = None
    campaign_seq: int | None = None
    deleted: bool = False
    dirty: bool = False
    inserting: bool = False  # its Campaign row is created with a key allocated here: the writer links it


STATE_FIELDS = ("crm_id", "campaign_key", "match_key", "agreed", "field_meta", "pending", "crm_modstamp",
                "campaign_lsn", "campaign_seq", "deleted")
STATE_COLUMNS = ", ".join(STATE_FIELDS)
STATE_TYPES = ("crm_id text, campaign_key bigint, match_key text, agreed jsonb, field_meta jsonb, pending jsonb, "
               "crm_modstamp text, campaign_lsn bigint, campaign_seq integer, deleted boolean")


JSON_STATE_FIELDS = frozenset({"agreed", "field_meta", "pending"})


def _copy_value(name: str, value: Any) -> Any:
    """A sync-state value as COPY takes it: the JSON columns as JSON text (None stays NULL)."""
    return dumps(value).decode() if name in JSON_STATE_FIELDS and value is not None else value


def _prefixed(alias: str) -> str:
    return ", ".join(f"{alias}.{name}" for name in STATE_FIELDS)


SAME_FOR_ALL = "*"  # stored field_meta {"*": [side, ts]}: every agreed column has that [side, ts]


def _state_row(link: Link) -> dict[str, Any]:
    row = {name: getattr(link, name) for name in STATE_FIELDS}
    row["field_meta"] = _stored_meta(link)
    if link.id is not None:
        row["id"] = link.id
    return row


def _stored_meta(link: Link) -> dict[str, list]:
    """field_meta as stored: `{"*": [side, ts]}` when every agreed column has the same one and no other column
    has any — a record that came whole from one side, as every record of a backfill does. It was about a third
    of a new sync-state row."""
    meta = link.field_meta
    first = next(iter(meta.values()), None)
    if first is not None and meta.keys() == link.agreed.keys() and all(value == first for value in meta.values()):
        return {SAME_FOR_ALL: first}
    return meta


def _link_of(row: dict[str, Any]) -> Link:
    """A sync_state row as a Link; field_meta one entry per column again (see _stored_meta)."""
    link = Link(**{k: v for k, v in row.items() if k != "updated_at"})
    meta = link.field_meta
    if len(meta) == 1 and SAME_FOR_ALL in meta:
        link.field_meta = {column: list(meta[SAME_FOR_ALL]) for column in link.agreed}
    return link


@dataclass
class Conflict:
    mapping: str
    crm_id: str | None
    campaign_key: int | None
    field: str
    crm_value: Any
    campaign_value: Any
    crm_ts: float | None
    campaign_ts: float | None
    decision: str
    policy: str


PARENT_NOT_IN_CRM = "a referenced parent is not in the CRM yet"
PARENT_NOT_LINKED = "the CRM resolved a parent sent by its external id; which one is known once that parent is linked"
FIRST_READ = "crm-read:"  # + mapping name: what a change waiting for the CRM's first read of its mapping waits for


@dataclass
class Deferred:
    """A change that must wait. `waiting_for`: the parents it waits for ('<mapping>:<Campaign key>'; the batch
    that links one of them wakes it: `Decisions.linked`), or the CRM's first read of its mapping (FIRST_READ +
    mapping name; woken when that read has been decided)."""

    change: Change
    reason: str
    waiting_for: tuple[str, ...] = ()


@dataclass
class Duplicate:
    """A new record whose matching key belongs to an already linked record: not exported, reported."""

    change: Change
    twin: Link
    mapping: Mapping


@dataclass
class InvalidValue:
    """A field value that cannot have its field's kind: left out of the decision, reported in the rejects."""

    change: Change
    mapping: Mapping
    field: str  # the field as that side names it
    reason: str


@dataclass
class Decisions:
    """What one batch decided; the caller publishes `commands`, parks `deferred`, reports `duplicates` and
    `invalid`, then commits."""

    commands: list[ApplyCommand] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    deferred: list[Deferred] = field(default_factory=list)
    duplicates: list[Duplicate] = field(default_factory=list)
    invalid: list[InvalidValue] = field(default_factory=list)
    skipped: int = 0  # echoes, duplicates, out-of-filter records
    linked: list[str] = field(default_factory=list)  # '<mapping>:<Campaign key>' of the records linked to the CRM
    sent: list[str] = field(default_factory=list)  # … of new records whose create went to the CRM (its children may
    # go now, by the parent's external id, where the CRM resolves one: MappingBatch.by_external_id)
    fast: Counter = field(default_factory=Counter)  # changes the fast path decided, per case (streams/fast.py)


def campaign_key_of(value: Any) -> int | None:
    """The Campaign key held in the CRM's external-id field, if that is what it holds (the field may also
    carry values another system put there: those are not ours)."""
    text = str(value).strip() if value is not None else ""
    return int(text) if text.isdigit() else None


def match_index_sql(table: str, column: str) -> sql.Composed:
    """The expression index that makes matching an index lookup (created by the stream processors)."""
    return match_index(table, column)


def _other(side: str) -> str:
    return "campaign" if side == "crm" else "crm"


class Reconciler:
    """Stateless between batches except for the database; safe to run in several workers at once (the rows
    of a batch are locked in a stable order, so two workers never decide the same record concurrently)."""

    def __init__(self, settings: Settings, campaign_name: str, enums: EnumerationMap | None = None,
                 crm_ready: "callable[[Mapping], bool] | None" = None, field_types: FieldTypes | None = None,
                 fast: bool = True) -> None:
        self.settings = settings
        self.fast = fast  # common cases decided together (streams/fast.py); off = every change one by one
        self.campaign_name = campaign_name
        self.enums = enums or IdentityEnumerations()
        self.crm_ready = crm_ready or (lambda mapping: True)
        self.field_types = field_types
        self.key_sequences: dict[str, str | None] = {}  # Campaign table -> the sequence of its primary key
        self._stamp_slack: dict[str, float] = {}

    def key_sequence(self, conn: psycopg.Connection, table: str) -> str | None:
        """The sequence that numbers `table`'s rows (serial or identity key), or None: then a record the CRM
        creates gets its key from the writer's insert, and is linked when change capture shows it back."""
        if table not in self.key_sequences:
            found = Catalog(conn).table(table)
            self.key_sequences[table] = found.key_sequence if found is not None else None
        return self.key_sequences[table]

    def stamp_slack(self, mapping: Mapping) -> float:
        """How much later than its stamp a CRM edit of `mapping`'s account may have happened: a CRM that stamps
        whole seconds shows an edit at 25.9 s as 25 s. CRM times are read as the latest moment they stand for,
        so an edit made in the same second as a Campaign edit, after it, is not judged older than it (a tie
        inside one second goes to the CRM: docs/two-way-sync.md)."""
        if mapping.account not in self._stamp_slack:
            account = self.settings.accounts.get(mapping.account)
            resolution = getattr(connectors.connector(account.type), "stamp_resolution", 0.0) if account else 0.0
            self._stamp_slack[mapping.account] = max(0.0, float(resolution) - 0.001)
        return self._stamp_slack[mapping.account]

    def references_by_external_id(self, mapping: Mapping) -> bool:
        """Whether `mapping`'s CRM resolves a reference given as the parent's external id (a connector
        capability, crmsync/connectors.py)."""
        account = self.settings.accounts.get(mapping.account)
        return account is not None and connectors.references_by_external_id(connectors.for_account(account))

    # -- routing ------------------------------------------------------------------------------------------
    def mappings_for(self, change: Change) -> list[Mapping]:
        if change.side == "crm":
            return [m for m in self.settings.mappings
                    if m.account.lower() == change.source.lower() and m.crm_object.lower() == change.object.lower()]
        return [m for m in self.settings.mappings if m.campaign_table == change.object]

    def process(self, conn: psycopg.Connection, changes: list[Change]) -> Decisions:
        """Decide a batch (all from one side) inside the caller's open transaction."""
        if self.field_types is None or self.field_types.conn is not conn:
            self.field_types = FieldTypes(conn)
        outcome = Decisions()
        by_mapping: dict[str, list[Change]] = {}
        echoes: dict[str, list[Change]] = {}
        for change in changes:
            targets = self.mappings_for(change)
            if not targets:
                outcome.skipped += 1
            # our own Campaign writes, recognised exactly by their transaction tag: nothing to decide for the
            # mapping they were written for, but an insert tells it the Campaign key of a record its CRM created.
            # For another mapping of the same table (a second CRM) the write is news like any user's edit.
            own, echo_for = (echo_mapping(change.origin, WRITER_ORIGINS, change.object) if change.side == "campaign"
                             else (False, None))
            for mapping in targets:
                echo = own and (echo_for is ECHO_FOR_ALL or echo_for == mapping.name)
                (echoes if echo else by_mapping).setdefault(mapping.name, []).append(change)
        for name in sorted(set(by_mapping) | set(echoes)):  # one global order of locks (no deadlocks)
            mapping = self.settings.mapping(name)
            decided = MappingBatch(self, conn, mapping, outcome)
            if name in echoes:  # lock first, learn the keys, then read the rows as the echoes left them
                decided.lock_rows([*by_mapping.get(name, []), *echoes[name]])
                MappingBatch(self, conn, mapping, outcome).learn_keys(echoes[name])
            if name in by_mapping:
                decided.run(by_mapping[name])  # reads and locks the batch's rows in one statement
        return outcome


class MappingBatch:
    """The decisions for one mapping and one batch of changes from one side."""

    def __init__(self, reconciler: Reconciler, conn: psycopg.Connection, mapping: Mapping, outcome: Decisions) -> None:
        self.r = reconciler
        self.conn = conn
        self.m = mapping
        self.out = outcome
        self.links_by_crm: dict[str, Link] = {}
        self.links_by_key: dict[int, Link] = {}
        self.fields_by_column = {f.campaign: f for f in mapping.fields}
        self.emitted: dict[tuple[str, int], ApplyCommand] = {}  # (side, id(link)) -> this batch's upsert command
        self.key_for: dict[str, int] = {}  # change id -> the Campaign key allocated for it (a new CRM record)
        self.linked_rows: dict[str, dict] = {}  # CRM id -> the Campaign row our writer already linked to it
        self.match_rows: dict[str, list[dict]] = {}  # matching key -> unlinked Campaign rows, handed out in order
        self.twins: dict[str, dict] = {}  # matching key -> a linked record of it (new Campaign rows' duplicates)
        self.parent_ids: dict[tuple[str, int], str | None] = {}  # (mapping, Campaign key) -> the parent's CRM id
        self.allowed_from = {side: {f.campaign for f in mapping.fields if mapping.allows(f, side)}
                             for side in ("crm", "campaign")}  # the fields each side may change
        self.parents = {f.campaign: reconciler.settings.mapping(f.reference) for f in mapping.fields if f.reference}
        # references a new record may carry as its parent's Campaign key (the parent's external id in the CRM,
        # which resolves it) while the parent's create is on its way: no wait for the parent's read-back
        self.by_external_id = {column: parent for column, parent in self.parents.items()
                               if parent.crm_external_id and parent.account == mapping.account
                               and reconciler.references_by_external_id(mapping)}
        self.parents_sent: set[tuple[str, int]] = set()  # (mapping, key) of parents linked without a CRM id yet
        self.now = utc_now_iso()  # when this batch's commands were made
        self._kinds: dict[str, Kind | None] = {}

    # -- batch flow ---------------------------------------------------------------------------------------
    def run(self, changes: list[Change]) -> None:
        """Decide each change in source order (the caller locked the batch's rows: `lock_rows`)."""
        changes = self._in_order(changes)
        side = changes[0].side
        self._load_links(changes, side)
        if side == "crm":
            self._prefetch_matches(changes)
            self._allocate_keys(changes)
            self._prefetch_agreed_parents()
        else:
            self._prefetch_twins(changes)
            self._prefetch_parents(changes)
        if self.r.fast:
            from streams.fast import FastPath

            changes = FastPath(self).take(changes)
        for change in changes:
            self._decide_change(change)
        self._save_links()

    def _decide_change(self, change: Change) -> None:
        if not self._in_filter(change):
            self.out.skipped += 1
            return
        link = self._find_link(change)
        if link is None and change.partial:
            self.out.skipped += 1  # only the fields an update touched: not enough to create a record from
        elif link is None:
            self._new_record(change)
        elif change.op == "d":
            self._deleted(change, link)
        elif self._is_stale(change, link):
            self.out.skipped += 1
        elif link.deleted and change.op != "c":
            self._note_position(change, link)  # deleted on one side, kept on the other by the policy: an
            self.out.skipped += 1              # echo or an edit of what was kept does not bring it back
        else:
            self._revive(change, link)
            self._merge(change, link)

    def _in_order(self, changes: list[Change]) -> list[Change]:
        """The batch's changes, each once, in source order (per record that is the order they happened in; a
        record's changes are never folded into one: each one's before-image says what it changed)."""
        unique = list({change.id: change for change in changes}.values())
        return sorted(unique, key=self._position)

    def learn_keys(self, echoes: list[Change]) -> None:
        """Echoes of the Campaign writer: link CRM-created records to the Campaign rows inserted for them.
        A backfill sends one echo per record, so the common case — the insert of a row for a CRM record whose
        link has no Campaign key yet — is one set-based UPDATE for the batch; only the rest is looked at one
        by one."""
        self.out.skipped += len(echoes)
        rest = self._learn_inserted_keys(echoes)
        if not rest:
            return
        self._load_links(rest, "campaign")
        for change in rest:
            row = change.after or {}
            if change.op == "d" or self._find_link(change) is not None:  # fills campaign_key if missing
                continue
            if row.get("crm_id") and row.get("crm_account") == self.m.account:
                # the insert overtook the commit of the link that caused it (commands are acknowledged before
                # the state commits): wait and look again, or the Campaign key of this record is never learnt
                self.out.deferred.append(Deferred(change, "the CRM link of this row is not committed yet"))
        self._save_links()

    def _learn_inserted_keys(self, echoes: list[Change]) -> list[Change]:
        """Set the Campaign key of links that lack it, from inserted rows that carry the CRM id; return the
        echoes this did not settle."""
        inserted = {}
        for change in echoes:
            row = change.after or {}
            if change.op == "c" and row.get("crm_id") and row.get("crm_account") == self.m.account:
                inserted[row["crm_id"]] = int(change.key["id"])
        if not inserted:
            return echoes
        crm_ids = sorted(inserted)
        settled = {crm_id for (crm_id,) in self.conn.execute(
            """WITH x AS (SELECT * FROM unnest(%(ids)s::text[], %(keys)s::bigint[]) AS x(crm_id, campaign_key)),
               learnt AS (UPDATE crmsync.sync_state s SET campaign_key = x.campaign_key, updated_at = now()
                          FROM x WHERE s.mapping = %(mapping)s AND s.crm_id = x.crm_id AND s.campaign_key IS NULL
                          RETURNING s.crm_id)
               SELECT crm_id FROM learnt
               UNION ALL SELECT s.crm_id FROM crmsync.sync_state s JOIN x USING (crm_id, campaign_key)
                         WHERE s.mapping = %(mapping)s""",
            {"ids": crm_ids, "keys": [inserted[c] for c in crm_ids], "mapping": self.m.name}).fetchall()}
        return [c for c in echoes if not (c.op == "c" and (c.after or {}).get("crm_id") in settled
                                          and (c.after or {}).get("crm_account") == self.m.account)]

    def _position(self, change: Change) -> tuple:
        if change.side == "crm":
            return (epoch(change.position.get("ts")),)
        return (change.position.get("lsn_int") or 0, change.position.get("seq") or 0)

    def _record_id(self, change: Change) -> Any:
        return change.key.get("id")

    def _in_filter(self, change: Change) -> bool:
        """The change's record passes the mapping's filter for its side (a partial change is judged on the
        fields it carries: one it does not carry did not change)."""
        rules = self.m.filter.crm if change.side == "crm" else self.m.filter.campaign
        row = change.after or change.before or {}
        return all(row.get(name) in allowed for name, allowed in rules.items()
                   if not (change.partial and name not in row))

    # -- state --------------------------------------------------------------------------------------------
    def _identities(self, changes: Iterable[Change]) -> tuple[set[str], set[int]]:
        """The CRM ids and Campaign keys these changes may address."""
        crm_ids, keys = set(), set()
        for change in changes:
            row = change.after or change.before or {}
            if change.side == "crm":
                crm_ids.add(change.key["id"])
                external = campaign_key_of(row.get(self.m.crm_external_id)) if self.m.crm_external_id else None
                if external is not None:
                    keys.add(external)
            else:
                keys.add(int(change.key["id"]))
                if row.get("crm_id") and row.get("crm_account") == self.m.account:
                    crm_ids.add(row["crm_id"])
        return crm_ids, keys

    def lock_rows(self, changes: list[Change]) -> None:
        """Lock, in id order and in one statement, every existing sync-state row this batch may touch."""
        crm_ids, keys = self._identities(changes)
        if crm_ids or keys:
            self.conn.execute(
                """SELECT 1 FROM crmsync.sync_state WHERE mapping = %s AND (crm_id = ANY(%b) OR campaign_key = ANY(%b))
                   ORDER BY id FOR UPDATE""", (self.m.name, sorted(crm_ids), sorted(keys)))

    def _load_links(self, changes: list[Change], side: str) -> None:
        crm_ids, keys = self._identities(changes)
        rows = self.conn.cursor(row_factory=dict_row).execute(
            """SELECT * FROM crmsync.sync_state
               WHERE mapping = %s AND (crm_id = ANY(%b) OR campaign_key = ANY(%b))
               ORDER BY id FOR UPDATE""", (self.m.name, sorted(crm_ids), sorted(keys))).fetchall()
        for row in rows:
            if (row["crm_id"] and row["crm_id"] in self.links_by_crm) or row["campaign_key"] in self.links_by_key:
                continue  # already loaded (and perhaps changed) in this batch
            self._remember(_link_of(row))
    def _remember(self, link: Link) -> Link:
        if link.crm_id:
            self.links_by_crm[link.crm_id] = link
        if link.campaign_key is not None:
            self.links_by_key[link.campaign_key] = link
        return link

    def _find_link(self, change: Change) -> Link | None:
        row = change.after or change.before or {}
        if change.side == "crm":
            link = self.links_by_crm.get(change.key["id"])
            external = campaign_key_of(row.get(self.m.crm_external_id)) if self.m.crm_external_id else None
            if link is None and external is not None:
                link = self.links_by_key.get(external)
                if link is not None and link.crm_id is None:  # the CRM record we created for this row
                    link.crm_id, link.dirty = change.key["id"], True
                    self._remember(link)
            return link
        link = self.links_by_key.get(int(change.key["id"]))
        if link is None and row.get("crm_id") and row.get("crm_account") == self.m.account:
            link = self.links_by_crm.get(row["crm_id"])
            if link is not None and link.campaign_key is None:  # the row our writer inserted
                link.campaign_key, link.dirty = int(change.key["id"]), True
                self._remember(link)
        return link

    def _save_links(self) -> None:
        """Write the batch's changed links: new ones by one COPY, changed ones by one set-based statement over a
        JSON array. A backfill writes thousands per batch, and one statement per row cost PostgreSQL more than
        the whole decision; COPY took 5,000 new links in ~60 % of the time of an INSERT … SELECT FROM
        jsonb_to_recordset (docs/benchmarks.md)."""
        links = list({id(link): link for link in [*self.links_by_crm.values(), *self.links_by_key.values()]
                      if link.dirty}.values())
        new = [_state_row(link) for link in links if link.id is None]
        changed = [_state_row(link) for link in links if link.id is not None]
        linked = sorted({(link.crm_id, link.campaign_key) for link in links  # (a row being created is linked
                         if link.crm_id and link.campaign_key is not None and not link.inserting})  # by the writer)
        if new:
            with self.conn.cursor().copy(f"COPY crmsync.sync_state (mapping, {STATE_COLUMNS}) FROM STDIN") as copy:
                for row in new:
                    copy.write_row([self.m.name, *(_copy_value(name, row[name]) for name in STATE_FIELDS)])
        if changed:
            self.conn.execute(
                f"""UPDATE crmsync.sync_state s SET ({STATE_COLUMNS}, updated_at) = ({_prefixed("x")}, now())
                    FROM jsonb_to_recordset(%s::jsonb) AS x(id bigint, {STATE_TYPES}) WHERE s.id = x.id""",
                (dumps(changed).decode(),))
        self.out.linked.extend(f"{self.m.name}:{key}" for _, key in linked)
        self.out.sent.extend(f"{self.m.name}:{row['campaign_key']}" for row in new
                             if row["crm_id"] is None and row["campaign_key"] is not None)
        if linked:
            self.conn.execute(
                """INSERT INTO crmsync.identity_links (crm_account, crm_object, crm_id, campaign_table, campaign_key)
                   SELECT %s, %s, x.crm_id, %s, x.campaign_key FROM unnest(%b::text[], %b::bigint[])
                       AS x(crm_id, campaign_key) ON CONFLICT DO NOTHING""",
                (self.m.account, self.m.crm_object, self.m.campaign_table,
                 [crm_id for crm_id, _ in linked], [key for _, key in linked]))


    # -- values -------------------------------------------------------------------------------------------
    def _kind(self, fm: FieldMap) -> Kind | None:
        """The kind the field compares in (crmsync/field_types.py), looked up once per batch."""
        if fm.campaign not in self._kinds:
            self._kinds[fm.campaign] = self.r.field_types.field_kind(
                self.m.account, self.m.crm_object, fm.crm, self.m.campaign_table, fm.campaign)
        return self._kinds[fm.campaign]

    def _values(self, change: Change, *, report: bool = True) -> dict[str, Any]:
        """The change's mapped fields in canonical form, keyed by Campaign column. A value that cannot have its
        field's kind is left out (and reported, unless `report` is off: before-images are not news)."""
        row = change.after or {}
        values: dict[str, Any] = {}
        for fm in self.m.fields:
            if fm.campaign not in self.allowed_from[change.side]:
                continue
            source = fm.crm if change.side == "crm" else fm.campaign
            if source not in row:
                continue
            raw = row[source]
            try:
                if fm.reference:
                    values[fm.campaign] = raw if change.side == "crm" else self._parent_crm_id(fm, raw)
                elif fm.enumeration and raw is not None:
                    translated = self.r.enums.to_campaign(fm.enumeration, raw) if change.side == "crm" else raw
                    values[fm.campaign] = canonical(translated, "text" if isinstance(translated, str) else None)
                else:
                    values[fm.campaign] = canonical(raw, self._kind(fm), fm.conversion)
            except ValueError as exc:
                if report:
                    self.out.invalid.append(InvalidValue(change, self.m, source, f"{source}: {exc}"))
        return values

    def _parent_crm_id(self, fm: FieldMap, campaign_key: Any) -> Any:
        """A Campaign reference (parent key) in canonical form: the parent's CRM id, or a marker if unknown."""
        if campaign_key is None:
            return None
        try:
            key = int(campaign_key)
        except (TypeError, ValueError):
            raise ValueError(f"not a key of {fm.reference}: {campaign_key!r}") from None
        if (fm.reference, key) not in self.parent_ids:
            row = self.conn.execute("SELECT crm_id FROM crmsync.sync_state WHERE mapping = %s AND campaign_key = %s",
                                    (fm.reference, key)).fetchone()
            self._note_parent(fm.reference, key, row is not None, row[0] if row else None)
        return self.parent_ids[(fm.reference, key)] or {"campaign_key": key}

    def _prefetch_parents(self, changes: list[Change]) -> None:
        """The CRM ids of the parents the batch's Campaign rows point at, one query per referenced mapping (they
        used to be asked for one reference at a time)."""
        for fm in self.m.fields:
            if not fm.reference:
                continue
            keys = sorted({int(v) for c in changes for row in (c.after, c.before) if row
                           for v in [row.get(fm.campaign)] if isinstance(v, int) or (isinstance(v, str) and v.isdigit())})
            self._fetch_parents(fm.reference, keys)

    def _fetch_parents(self, mapping: str, keys: list[int]) -> None:
        """The CRM ids of `mapping`'s records `keys` (one query), and which of them are on their way to the CRM
        (linked, no CRM id yet: `parents_sent`)."""
        if not keys:
            return
        found = dict(self.conn.execute(
            "SELECT campaign_key, crm_id FROM crmsync.sync_state WHERE mapping = %s AND campaign_key = ANY(%b)",
            (mapping, keys)).fetchall())
        for key in keys:
            self._note_parent(mapping, key, key in found, found.get(key))

    def _note_parent(self, mapping: str, key: int, has_link: bool, crm_id: str | None) -> None:
        self.parent_ids[(mapping, key)] = crm_id
        if has_link and crm_id is None:
            self.parents_sent.add((mapping, key))

    def _prefetch_agreed_parents(self) -> None:
        """The parents named by external id in the loaded links' agreement (records sent before their parent's
        CRM id was known), one query per referenced mapping: their read-back is compared once they are known."""
        links = [*self.links_by_crm.values(), *self.links_by_key.values()]  # (a read-back of our create: by key)
        for column in self.by_external_id:
            fm = self._field(column)
            self._fetch_parents(fm.reference, sorted({marker["campaign_key"] for link in links
                                                      for marker in [link.agreed.get(column)]
                                                      if isinstance(marker, dict)}))

    def _change_ts(self, change: Change) -> float:
        if change.side == "crm":
            return epoch(change.position.get("ts") or change.source_ts) + self.r.stamp_slack(self.m)
        return epoch(change.source_ts or (change.after or {}).get("updated_at"))

    def _is_stale(self, change: Change, link: Link) -> bool:
        """Duplicates (at-least-once delivery) and reordered old changes are ignored; reads (snapshots,
        repairs) never are: they state what a side holds now."""
        if change.op == "r":
            return False
        if change.side == "crm":
            stamp = change.position.get("ts")
            if not (link.crm_modstamp and stamp):
                return False
            decided_ts, _, decided_id = link.crm_modstamp.partition("|")
            # a CRM that stamps to the second (Oracle) shows two saves of one second with one time: a change of
            # the same time is stale only if it is the very change decided last (a redelivery)
            return epoch(stamp) < epoch(decided_ts) or (epoch(stamp) == epoch(decided_ts)
                                                        and decided_id in ("", change.id))
        lsn, seq = change.position.get("lsn_int"), change.position.get("seq", 0)
        return (lsn is not None and link.campaign_lsn is not None
                and (lsn, seq) <= (link.campaign_lsn, link.campaign_seq or 0))

    def _note_position(self, change: Change, link: Link) -> None:
        if change.side == "crm":
            stamp = change.position.get("ts")
            if stamp:
                link.crm_modstamp = f"{stamp}|{change.id}"  # the CRM version last decided: its time and change
        elif change.position.get("lsn_int") is not None:
            link.campaign_lsn, link.campaign_seq = change.position["lsn_int"], change.position.get("seq", 0)
        link.dirty = True

    # -- decisions ----------------------------------------------------------------------------------------
    def _new_record(self, change: Change) -> None:
        if change.op == "d":
            self.out.skipped += 1  # never synced, nothing to delete on the other side
            return
        values = self._values(change)
        key = match_key(self._match_value(change))
        if change.side == "crm":
            existing = self.linked_rows.get(change.key["id"]) or self._match_campaign_row(key)
            if existing is not None:
                return self._link_existing(change, values, existing, key)
            fresh = self.key_for.get(change.id)
            link = self._remember(Link(mapping=self.m.name, crm_id=change.key["id"], campaign_key=fresh,
                                       match_key=key, dirty=True, inserting=fresh is not None))
            self._accept_all(link, values, "crm", self._change_ts(change))
            self._note_position(change, link)
            self._send(link, "campaign", values, change, create=True)
            return
        if self.m.direction == "import":
            self.out.skipped += 1
            return
        if not self.r.crm_ready(self.m):
            self.out.deferred.append(Deferred(change, "waiting for the first CRM read of "
                                                      f"{self.m.crm_object} to finish (matching needs it)",
                                              (f"{FIRST_READ}{self.m.name}",)))
            return
        if self._must_wait_for_parents(values):
            self._wait_for_parents(change, values)
            return
        twin = self._linked_twin(key)
        if twin is not None:
            self.out.duplicates.append(Duplicate(change, twin, self.m))
            return
        link = self._remember(Link(mapping=self.m.name, campaign_key=int(change.key["id"]), match_key=key, dirty=True))
        self._accept_all(link, values, "campaign", self._change_ts(change))
        self._note_position(change, link)
        self._send(link, "crm", values, change, create=True)

    def _match_value(self, change: Change) -> Any:
        row = change.after or {}
        for key in self.m.match:
            value = row.get(key.crm if change.side == "crm" else key.campaign)
            if value not in (None, ""):
                return value
        return None

    def _linked_twin(self, key: str | None) -> Link | None:
        """A record of this mapping already linked under the same matching key: a new Campaign row with that
        key is a duplicate of a known person, and exporting it would create a second CRM record."""
        if key is None or not self.m.match:
            return None
        row = self.twins.get(key)
        return _link_of(row) if row else None

    def _prefetch_twins(self, changes: list[Change]) -> None:
        """The linked records that new Campaign rows of this batch would duplicate, in one query (an export
        backfill used to ask once per row)."""
        if not self.m.match or self.m.direction == "import":
            return
        keys = sorted({k for c in changes if c.op != "d" and self._find_link_quietly(c) is None
                       for k in [match_key(self._match_value(c))] if k})
        if keys:
            self.twins = {row["match_key"]: row for row in self.conn.cursor(row_factory=dict_row).execute(
                """SELECT DISTINCT ON (match_key) * FROM crmsync.sync_state
                   WHERE mapping = %s AND match_key = ANY(%b) AND crm_id IS NOT NULL AND NOT deleted
                   ORDER BY match_key, id""", (self.m.name, keys)).fetchall()}

    def _table_ident(self) -> sql.Identifier:
        schema, _, table = self.m.campaign_table.rpartition(".")
        return sql.Identifier(schema, table) if schema else sql.Identifier(table)

    def _prefetch_matches(self, changes: list[Change]) -> None:
        """Two queries for the batch. First, rows our writer already linked to one of these CRM records (a
        decision replayed after a crash, whose command had landed): *the* match, whatever their key says now.
        Then unlinked rows whose matching key equals a new CRM record's, through the expression index that
        `match_index_sql` creates (an index lookup, not a scan). Rows are locked in id order."""
        new = [c for c in changes if self._find_link_quietly(c) is None]
        table = self._table_ident()
        self.linked_rows = {row["crm_id"]: row for row in self.conn.cursor(row_factory=dict_row).execute(
            sql.SQL("SELECT t.* FROM {} t WHERE t.crm_account = %s AND t.crm_id = ANY(%b) ORDER BY t.id FOR UPDATE"
                    ).format(table), (self.m.account, sorted({c.key["id"] for c in new}))).fetchall()} if new else {}
        keys = sorted({k for c in new for k in [match_key(self._match_value(c))] if k})
        if not keys or not self.m.match:
            return
        expression = match_expression(self.m.match[0].campaign)
        rows = self.conn.cursor(row_factory=dict_row).execute(
            sql.SQL("""SELECT {e} AS crmsync_match, t.* FROM {t} t
                       WHERE {e} = ANY(%b) AND t.crm_id IS NULL
                         AND NOT EXISTS (SELECT 1 FROM crmsync.sync_state s WHERE s.mapping = %s AND s.campaign_key = t.id)
                       ORDER BY t.id FOR UPDATE SKIP LOCKED""").format(e=expression, t=table),
            (keys, self.m.name)).fetchall()
        for row in rows:
            self.match_rows.setdefault(row.pop("crmsync_match"), []).append(row)

    def _find_link_quietly(self, change: Change) -> Link | None:
        """The link `_find_link` would find, without filling in anything."""
        row = change.after or change.before or {}
        if change.side == "campaign":
            crm_id = row.get("crm_id") if row.get("crm_account") == self.m.account else None
            return self.links_by_key.get(int(change.key["id"])) or (self.links_by_crm.get(crm_id) if crm_id else None)
        external = campaign_key_of(row.get(self.m.crm_external_id)) if self.m.crm_external_id else None
        return self.links_by_crm.get(change.key["id"]) or (self.links_by_key.get(external) if external else None)

    def _allocate_keys(self, changes: list[Change]) -> None:
        """Campaign keys for the batch's CRM records that may be new to Campaign, in one statement (nextval in
        this transaction): the writer inserts each row with its key, so the link is complete now and the sync
        state is written once per new record. A key not used (the record matched a row) is a gap, as sequences
        have anyway."""
        if self.m.direction == "export":
            return
        sequence = self.r.key_sequence(self.conn, self.m.campaign_table)
        wanted = [c.id for c in changes if c.op != "d" and self._find_link_quietly(c) is None
                  and c.key["id"] not in self.linked_rows]
        if sequence and wanted:  # in source order, so any way of deciding the batch hands out the same keys
            keys = [k for (k,) in self.conn.execute(
                "SELECT nextval(%s::regclass) FROM generate_series(1, %s) ORDER BY 1", (sequence, len(wanted)))]
            self.key_for = dict(zip(wanted, keys))

    def _match_campaign_row(self, key: str | None) -> dict | None:
        """An existing, unlinked Campaign row with the same matching key (e.g. the same email); each row is
        handed out once per batch."""
        candidates = self.match_rows.get(key or "", [])
        return candidates.pop(0) if candidates else None

    def _link_existing(self, change: Change, crm_values: dict, row: dict, key: str) -> None:
        """First contact between a CRM record and the Campaign row it matches: merge field by field."""
        campaign_change = Change(id=f"{change.id}:match", side="campaign", source=self.r.campaign_name,
                                 object=self.m.campaign_table, op="r", key={"id": row["id"]},
                                 after={k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()},
                                 position={}, source_ts=str(row.get("updated_at")))
        campaign_values = self._values(campaign_change)
        link = self._remember(Link(mapping=self.m.name, crm_id=change.key["id"], campaign_key=int(row["id"]),
                                   match_key=key, dirty=True))
        crm_ts, campaign_ts = self._change_ts(change), self._change_ts(campaign_change)
        to_campaign, to_crm = {}, {}
        for column in sorted(set(crm_values) | set(campaign_values)):
            crm_value, campaign_value = crm_values.get(column), campaign_values.get(column)
            if column not in campaign_values or crm_value == campaign_value:
                winner = "crm"
            elif column not in crm_values:
                winner = "campaign"
            else:
                winner = self._winner(column, crm_ts, campaign_ts)
                self._record_conflict(link, column, crm_value, campaign_value, crm_ts, campaign_ts, winner)
            value = crm_value if winner == "crm" else campaign_value
            link.agreed[column] = value
            link.field_meta[column] = [winner, crm_ts if winner == "crm" else campaign_ts]
            if winner == "crm" and campaign_value != value:
                to_campaign[column] = value
            if winner == "campaign" and crm_value != value:
                to_crm[column] = value
        self._note_position(change, link)
        self._send(link, "campaign", to_campaign, change, bases=campaign_values, link_only=True)
        if to_crm or self.m.crm_external_id:
            self._send(link, "crm", to_crm, change, bases=crm_values, link_only=True)

    def _revive(self, change: Change, link: Link) -> None:
        """A record created again where it had been deleted (a CRM undelete): the link lives again, and a
        Campaign row the delete had only marked is unmarked."""
        if not link.deleted:
            return
        link.deleted, link.dirty = False, True
        if change.side == "crm" and self.m.delete == "mark" and link.campaign_key is not None:
            self._emit(link, "campaign", "upsert", {"deleted": False}, change, raw=True)

    def _merge(self, change: Change, link: Link) -> None:
        side, other = change.side, _other(change.side)
        values = self._values(change)
        before = self._values(replace(change, after=change.before), report=False) if change.before else None
        if side == "campaign" and self._waits_for_parent(link, values, before):
            self._wait_for_parents(change, values)
            return  # decided when it comes back: nothing of it is taken in before then
        unknown_parents = self._resolve_agreed_parents(link, values, change)
        if side == "crm" and unknown_parents:
            self.out.deferred.append(Deferred(change, PARENT_NOT_LINKED, unknown_parents))
            return
        change_ts = self._change_ts(change)
        to_other: dict[str, Any] = {}
        back_to_side: dict[str, Any] = {}
        bases = dict(link.agreed)  # what the other side holds now: our writes to it are based on this
        for column, value in values.items():
            agreed = link.agreed.get(column)
            pending = self._pending(link, side, column, change_ts)
            if value == agreed:
                self._clear_pending(link, side, column)
                if side == "campaign":
                    self._clear_pending(link, CAMPAIGN_BASES, column)
                continue
            if pending and value in pending["sent"]:  # echo of an earlier write of ours, superseded since
                pending["sent"] = pending["sent"][pending["sent"].index(value) + 1:]
                link.dirty = True
                if pending["sent"]:  # it may have landed after the newer one (a late request): assert the newest
                    back_to_side[column] = agreed
                continue
            if before is not None and column in before and before[column] == value:
                continue  # this Campaign update did not touch the column
            if change.op == "r" and side == "campaign" and self._missed_our_write(link, column, value, change_ts):
                back_to_side[column] = agreed  # a repair read of a row our write never reached: send it again
                continue
            if side == "campaign":
                self._clear_pending(link, CAMPAIGN_BASES, column)  # Campaign's own edit of the field
            if pending and value == pending["base"] and not change.partial:
                if change.op == "r":  # a repair read: our write never arrived (e.g. broker data lost)
                    back_to_side[column] = agreed
                continue  # that side has not caught up with our write yet
            winner = self._decide(link, column, side, value, agreed, change_ts, concurrent=bool(pending))
            if winner == side:
                link.agreed[column] = value
                link.field_meta[column] = [side, change_ts]
                to_other[column] = value
                if pending:  # our older write may still land after this edit: re-assert the winner last
                    back_to_side[column] = value  # (the older write stays in `sent`: its echo is recognised)
            else:
                back_to_side[column] = agreed
        self._note_position(change, link)
        if self._lost_on(other, link, change):
            self._send_whole_record(link, other, change)
        elif to_other:
            self._send(link, other, to_other, change, bases=bases)
        if back_to_side:
            self._send(link, side, back_to_side, change, bases=values)
        if not to_other and not back_to_side:
            self.out.skipped += 1

    def _lost_on(self, side: str, link: Link, change: Change) -> bool:
        """Is this a drift repair's read of a record that `side` never received (its create was decided, and
        lost on the way: e.g. with the broker's memory)? The repair says so (`position["missing"]`); the link
        agrees: no CRM id yet, or (Campaign) a row the streams never saw a change of."""
        if change.op != "r" or change.position.get("missing") != side:
            return False
        return link.crm_id is None if side == "crm" else link.campaign_lsn is None

    def _send_whole_record(self, link: Link, side: str, change: Change) -> None:
        """Send everything agreed to `side` again, as a create. A merge alone sends only what differs from the
        agreement, i.e. nothing: the record never arrived. Harmless if it did meanwhile: a CRM create is an
        upsert by external id, a Campaign create with its key updates the row it finds."""
        link.inserting = side == "campaign" and link.campaign_key is not None
        self._send(link, side, dict(link.agreed), change, create=True)

    def _waits_for_parent(self, link: Link, values: dict, before: dict | None) -> bool:
        """A Campaign edit pointing at a parent the CRM does not have yet cannot be sent: the whole change waits
        (deciding part of it now would mark it as seen, and it would be dropped as stale when it comes back)."""
        if self.m.direction == "import":
            return False
        for fm in self.m.fields:
            value = values.get(fm.campaign)
            if fm.reference and isinstance(value, dict) and value != link.agreed.get(fm.campaign) and not (
                    before is not None and before.get(fm.campaign) == value):
                return True
        return False

    def _decide(self, link: Link, column: str, side: str, value: Any, agreed: Any, change_ts: float,
                concurrent: bool) -> str:
        """Who wins a field edited on `side`. A plain edit wins; an edit the other side raced (it edited the
        field later, or our write to this side was still in flight) is a conflict for the policy; an owned
        field always goes to its owner. Conflicts are recorded with both values."""
        meta = link.field_meta.get(column) or [None, 0.0]
        other_ts = float(meta[1] or 0.0) if meta[0] not in (None, side) else 0.0
        fm = self._field(column)
        raced = concurrent or other_ts > change_ts
        if fm.owner:
            winner = fm.owner
        elif not raced:
            return side
        else:
            winner = self._winner(column, *((change_ts, other_ts) if side == "crm" else (other_ts, change_ts)))
        if raced or winner != side:
            crm_value, campaign_value = (value, agreed) if side == "crm" else (agreed, value)
            crm_ts, campaign_ts = (change_ts, other_ts) if side == "crm" else (other_ts, change_ts)
            self._record_conflict(link, column, crm_value, campaign_value, crm_ts, campaign_ts, winner)
        return winner

    def _field(self, column: str) -> FieldMap:
        return self.fields_by_column[column]

    def _winner(self, column: str, crm_ts: float, campaign_ts: float) -> str:
        fm = self._field(column)
        if fm.owner:
            return fm.owner
        if self.m.conflict == "crm_wins":
            return "crm"
        if self.m.conflict == "campaign_wins":
            return "campaign"
        return "crm" if crm_ts >= campaign_ts else "campaign"

    def _record_conflict(self, link: Link, column: str, crm_value: Any, campaign_value: Any, crm_ts: float,
                         campaign_ts: float, winner: str) -> None:
        fm = self._field(column)
        policy = f"owner:{fm.owner}" if fm.owner else self.m.conflict
        self.out.conflicts.append(Conflict(self.m.name, link.crm_id, link.campaign_key, column, crm_value,
                                           campaign_value, crm_ts, campaign_ts, f"{winner} wins", policy))

    def _accept_all(self, link: Link, values: dict, side: str, ts: float) -> None:
        """A record new to the sync: its values are the agreement."""
        link.agreed.update(values)
        for column in values:
            link.field_meta[column] = [side, ts]

    def _deleted(self, change: Change, link: Link) -> None:
        other = _other(change.side)
        self._note_position(change, link)
        if link.deleted or self.m.delete == "ignore" or (
                self.m.direction == ("export" if change.side == "crm" else "import")):
            self.out.skipped += 1
            return
        link.deleted = True
        if self.m.delete == "propagate":
            self._emit(link, other, "delete", {}, change)
        elif other == "campaign":  # mark as deleted: the Campaign row stays, flagged
            self._emit(link, other, "upsert", {"deleted": True}, change, raw=True)
        else:
            self.out.skipped += 1  # a CRM record has no deletion flag to set: marking only applies to Campaign

    # -- pending writes -----------------------------------------------------------------------------------
    def _pending(self, link: Link, side: str, column: str, now: float) -> dict | None:
        entry = link.pending.get(side, {}).get(column)
        if entry and now - float(entry.get("at", now)) > PENDING_TTL_SECONDS:
            self._clear_pending(link, side, column)
            return None
        return entry

    def _clear_pending(self, link: Link, side: str, column: str) -> None:
        if link.pending.get(side, {}).pop(column, None) is not None:
            link.dirty = True

    def _missed_our_write(self, link: Link, column: str, value: Any, now: float) -> bool:
        """Does Campaign still hold the value our last write to this field was meant to replace? A repair read
        has no before-image and the row's `updated_at` may come from an edit of another column, so this is how
        it tells "our write never arrived" from "Campaign edited the field"."""
        entry = self._pending(link, CAMPAIGN_BASES, column, now)
        return entry is not None and entry["base"] == value

    def _track_campaign_bases(self, link: Link, values: dict, bases: dict, ts: float) -> None:
        """Remember what each Campaign field held when we wrote to it (until a Campaign change shows the field
        agreed, or Campaign's own edit of it): only repair reads look at it (`_missed_our_write`). Campaign
        echoes themselves need no bookkeeping: change capture tags our writer's transactions."""
        per_column = link.pending.setdefault(CAMPAIGN_BASES, {})
        for column in values:
            if column in bases:
                per_column[column] = {"base": bases[column], "at": ts}
                link.dirty = True

    def _track_sent(self, link: Link, values: dict, bases: dict, ts: float) -> None:
        """Remember writes in flight to the CRM: its poller will show them back to us (echoes). Campaign
        echoes need no bookkeeping: change capture tags our writer's transactions."""
        per_side = link.pending.setdefault("crm", {})
        for column, value in values.items():
            entry = per_side.get(column)
            if entry is None:
                entry = per_side[column] = {"base": bases.get(column), "sent": [], "at": ts}
            entry["sent"] = (entry["sent"] + [value])[-5:]
        link.dirty = True

    # -- commands -----------------------------------------------------------------------------------------
    def _resolve_parents(self, link: Link, values: dict) -> dict:
        """Parents that had no CRM id when the value was agreed may have one now (created since)."""
        resolved = dict(values)
        for fm in self.m.fields:
            marker = values.get(fm.campaign)
            if fm.reference and isinstance(marker, dict):
                crm_id = self._parent_crm_id(fm, marker["campaign_key"])
                if not isinstance(crm_id, dict):
                    resolved[fm.campaign] = crm_id
                    if link.agreed.get(fm.campaign) == marker:
                        link.agreed[fm.campaign] = crm_id
                        link.dirty = True
        return resolved

    def _must_wait_for_parents(self, values: dict) -> bool:
        """Whether a record pointing at parents without a CRM id must wait for them. It need not where the CRM
        resolves a parent's external id and that parent's create is on its way (linked, no CRM id yet): the
        record goes now with the parent's Campaign key, and the CRM writer writes parents first."""
        for fm in self.m.fields:
            marker = values.get(fm.campaign)
            if fm.reference and isinstance(marker, dict) and not (
                    fm.campaign in self.by_external_id and (fm.reference, marker["campaign_key"]) in self.parents_sent):
                return True
        return False

    def _resolve_agreed_parents(self, link: Link, values: dict, change: Change) -> tuple[str, ...]:
        """A record sent with a parent's external id holds that parent's marker as agreed until the parent's CRM
        id is known; then the id replaces it (in what was sent too, so the read-back is recognised as ours). A
        create event the CRM marks as our own write (`origin`: Salesforce's change events) says which id it
        resolved the marker to: taken as the agreement at once. Any other read-back (a poll may read the record
        after a user's edit) holding something else is compared once that parent is linked: the change waits for
        it. Returns the parents it waits for."""
        unknown = []
        for column in self.by_external_id:
            marker = link.agreed.get(column)
            if not isinstance(marker, dict):
                continue
            crm_id = self._parent_crm_id(self._field(column), marker["campaign_key"])
            if isinstance(crm_id, dict):
                if column not in values or values[column] == marker:
                    continue
                if change.side == "crm" and change.op == "c" and change.origin and values[column] is not None:
                    crm_id = values[column]  # our create, as the CRM resolved it
                else:
                    unknown.append(f"{self.parents[column].name}:{marker['campaign_key']}")
                    continue
            link.agreed[column], link.dirty = crm_id, True
            entry = link.pending.get("crm", {}).get(column)
            if entry:
                entry["sent"] = [crm_id if sent == marker else sent for sent in entry["sent"]]
        return tuple(unknown)

    def _wait_for_parents(self, change: Change, values: dict) -> None:
        """Park `change` until the parents it points at are in the CRM; linking one of them wakes it."""
        waiting = tuple(f"{fm.reference}:{values[fm.campaign]['campaign_key']}" for fm in self.m.fields
                        if fm.reference and isinstance(values.get(fm.campaign), dict))
        self.out.deferred.append(Deferred(change, PARENT_NOT_IN_CRM, waiting))

    def _send(self, link: Link, side: str, values: dict, change: Change, *, bases: dict | None = None,
              create: bool = False, link_only: bool = False) -> None:
        """Send canonical `values` to `side` (converted there). CRM writes are remembered as in flight; Campaign
        writes carry what each field held when this was decided (`bases`; nothing for a new row)."""
        if self.m.direction == ("import" if side == "crm" else "export"):
            return
        allowed = self.allowed_from[_other(side)]
        values = {c: v for c, v in values.items() if c in allowed}
        if not values and not (create or link_only):
            return
        if side == "crm":
            values = self._resolve_parents(link, values)
            if self._must_wait_for_parents(values):
                self._wait_for_parents(change, values)
                return
            self._track_sent(link, values, bases or {}, self._change_ts(change))
            bases = bases if link.crm_id else None  # a CRM record we create has nothing to compare with yet
        else:
            bases = {} if create else bases  # a new Campaign row: each field must be empty if the row is there
            if bases:
                self._track_campaign_bases(link, values, bases, self._change_ts(change))
        action = "create" if create and side == "campaign" and link.inserting else "upsert"
        self._emit(link, side, action, values, change, expect=self._expectations(side, values, bases))

    def _expectations(self, side: str, values: dict, bases: dict | None) -> dict[str, Any] | None:
        """What each field must still hold on `side` for this write to apply (compare-and-set), named and
        converted as that side has it, for the fields an edit on that side could change: an edit made there
        meanwhile wins over a decision that did not see it (and reaches the streams as its own change).
        References are not checked (a parent is compared through its link). None = no condition."""
        if bases is None:
            return None
        expect = {}
        for column in values:
            fm = self._field(column)
            if fm.reference or fm.campaign not in self.allowed_from[side]:
                continue
            if side == "campaign":
                expect[fm.campaign] = self._to_campaign(fm, bases.get(column))
            else:
                expect[fm.crm] = self._to_crm(fm, bases.get(column))
        return expect or None

    def _emit(self, link: Link, side: str, action: str, values: dict, change: Change, raw: bool = False,
              expect: dict[str, Any] | None = None) -> None:
        if side == "campaign":
            payload = values if raw else {fm.campaign: self._to_campaign(fm, values[fm.campaign])
                                          for fm in self.m.fields if fm.campaign in values}
            key = {"id": link.campaign_key} if link.campaign_key is not None else None
            match = ({"crm_account": self.m.account, "crm_object": self.m.crm_object, "crm_id": link.crm_id}
                     if link.crm_id else None)
            target, obj = self.r.campaign_name, self.m.campaign_table
        else:
            payload = {fm.crm: self._to_crm(fm, values[fm.campaign]) for fm in self.m.fields if fm.campaign in values}
            key = {"id": link.crm_id} if link.crm_id else None
            if key and self.m.crm_external_id and link.campaign_key is not None and action == "upsert":
                payload[self.m.crm_external_id] = str(link.campaign_key)  # the CRM record points back to us
            match = ({self.m.crm_external_id: str(link.campaign_key)}
                     if self.m.crm_external_id and link.campaign_key is not None else None)
            target, obj = self.m.account, self.m.crm_object
        if self._merged_into_earlier(link, side, action, payload, expect, key, match, observed=change.side == side):
            return
        command = ApplyCommand(
            id=f"{change.id}>{self.m.name}>{side}", side=side, target=target, object=obj, action=action,
            key=key, values=payload, cause=change.id, match=match, source_ts=change.source_ts, expect=expect,
            created_ts=self.now,
            base_version=(link.crm_modstamp or "").partition("|")[0] or None if side == "crm" else None,
            mapping=self.m.name)
        self.out.commands.append(command)
        if action in ("upsert", "create"):
            self.emitted[(side, id(link))] = command
        else:
            self.emitted.pop((side, id(link)), None)

    def _merged_into_earlier(self, link: Link, side: str, action: str, payload: dict, expect: dict | None,
                             key: dict | None, match: dict | None, *, observed: bool = False) -> bool:
        """A second upsert for one record on one side in this batch joins the first: newest value per field,
        and per field the expectation of what that side holds when the write lands. An expectation derived
        from the agreed values (a change from the other side) assumed this batch's earlier writes: the first
        one stands. One `observed` on that side itself (a later version of the record, read back in this
        batch) is newer than any earlier one and replaces it — else a late write of ours that the later version
        showed made the merged write expect a value the side no longer held, and compare-and-set left it out."""
        earlier = self.emitted.get((side, id(link)))
        if action != "upsert" or earlier is None:
            return False
        earlier.values.update(payload)
        if expect is not None or earlier.expect is not None:
            first, later = earlier.expect or {}, expect or {}
            merged = {**first, **later} if observed else {**later, **first}
            earlier.expect = {c: v for c, v in merged.items() if c in earlier.values}
        earlier.key, earlier.match = key or earlier.key, match or earlier.match
        return True

    def _to_campaign(self, fm: FieldMap, value: Any) -> Any:
        if fm.reference and value is not None:  # resolved by the Campaign writer; it waits for the parent
            parent = self.parents[fm.campaign]
            return {"$ref": {"table": parent.campaign_table, "crm_account": parent.account, "crm_id": value}}
        return value

    def _to_crm(self, fm: FieldMap, value: Any) -> Any:
        if fm.reference and isinstance(value, dict):  # a parent whose create is on its way: by its external id
            parent = self.by_external_id[fm.campaign]
            return {"$ref": {"object": parent.crm_object,
                             "external_id": {parent.crm_external_id: str(value["campaign_key"])}}}
        if fm.enumeration and value is not None:
            return self.r.enums.to_crm(fm.enumeration, value)
        return value


def save_conflicts(conn: psycopg.Connection, conflicts: Iterable[Conflict]) -> None:
    """Record conflicts, each once: a decision made again for the same two edits (a change that waited for
    its parent comes back; a batch replayed after a crash) finds its conflict already there."""
    rows = [{"mapping": c.mapping, "crm_id": c.crm_id, "campaign_key": c.campaign_key, "field": c.field,
             "crm_value": c.crm_value, "campaign_value": c.campaign_value, "crm_ts": c.crm_ts,
             "campaign_ts": c.campaign_ts, "decision": c.decision, "policy": c.policy} for c in conflicts]
    if rows:
        conn.execute(
            """INSERT INTO crmsync.conflicts (mapping, crm_id, campaign_key, field, crm_value, campaign_value,
                   crm_ts, campaign_ts, decision, policy)
               SELECT x.mapping, x.crm_id, x.campaign_key, x.field, x.crm_value, x.campaign_value,
                      to_timestamp(x.crm_ts), to_timestamp(x.campaign_ts), x.decision, x.policy
               FROM jsonb_to_recordset(%s::jsonb) AS x(mapping text, crm_id text, campaign_key bigint, field text,
                   crm_value jsonb, campaign_value jsonb, crm_ts float8, campaign_ts float8, decision text, policy text)
               WHERE NOT EXISTS (
                   SELECT 1 FROM crmsync.conflicts c WHERE c.mapping = x.mapping AND c.crm_id IS NOT DISTINCT FROM x.crm_id
                     AND c.field = x.field AND c.campaign_key IS NOT DISTINCT FROM x.campaign_key
                     AND c.crm_ts IS NOT DISTINCT FROM to_timestamp(x.crm_ts)
                     AND c.campaign_ts IS NOT DISTINCT FROM to_timestamp(x.campaign_ts) AND c.decision = x.decision)""",
            (dumps(rows).decode(),))
