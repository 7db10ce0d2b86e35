"""Drift repair (`crmsync reconcile`, and a periodic pass in `crmsync run`): compare both sides record by
record, and re-publish whatever diverged as ordinary changes so the stream processors repair it.

Why re-publish instead of writing directly: every decision (links, conflicts, ownership) stays in one place,
the streams. Divergence can come from anything — the embedded broker forgetting its topics on restart, a
missed event, a hard delete in the CRM — and the repair does not need to know which.

- a CRM record with no Campaign counterpart, or whose mapped values differ → its current state as op 'r'
- a Campaign row with no CRM counterpart, or whose values differ           → its current state as op 'r'
- a link whose CRM record is gone (hard delete, emptied recycle bin)       → a CRM delete ('d')
- a link whose Campaign row is gone                                         → a Campaign delete ('d')

Records with an open reject (`crmsync rejects list`) are left out, on both sides of their pair: the ledger
retries them, and a record the other side refused must not look "gone" (that would publish a delete).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from crmsync import connectors, kafka, pg, topics
from crmsync.config import Mapping, Settings
from crmsync.enums import StoredEnumerations
from crmsync.envelope import Change, crm_change, utc_now_iso
from crmsync.infra import Endpoints
from crmsync.field_types import FieldTypes
from crmsync.values import canonical, iso_utc, match_key, parse_timestamp, split_multi


@dataclass
class MappingReport:
    mapping: str
    crm_records: int = 0
    campaign_rows: int = 0
    missing_in_campaign: list[str] = field(default_factory=list)  # CRM ids
    missing_in_crm: list[int] = field(default_factory=list)  # Campaign keys
    differing: list[tuple[str, int, list[str]]] = field(default_factory=list)  # (CRM id, key, fields)
    gone_from_crm: list[str] = field(default_factory=list)
    gone_from_campaign: list[int] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)  # unlinked Campaign rows sharing a linked row's key
    rejected: int = 0  # records left out of the comparison: an open reject (on either side of a pair, or of an
    # unlinked record) explains why they differ, and repairing them could undo or delete a live record
    in_flight: int = 0  # linked pairs left out because the streams decided them while (or just before) both
    # sides were read: their changes may still be on the way (DriftChecker's `settle_seconds`)
    crm_rows: dict[str, dict] = field(default_factory=dict, repr=False)
    campaign_rows_by_key: dict[int, dict] = field(default_factory=dict, repr=False)

    @property
    def converged(self) -> bool:
        return not (self.missing_in_campaign or self.missing_in_crm or self.differing
                    or self.gone_from_crm or self.gone_from_campaign)

    def summary(self) -> dict[str, Any]:
        return {"mapping": self.mapping, "crm": self.crm_records, "campaign": self.campaign_rows,
                "missing_in_campaign": len(self.missing_in_campaign), "missing_in_crm": len(self.missing_in_crm),
                "differing": len(self.differing), "gone_from_crm": len(self.gone_from_crm),
                "gone_from_campaign": len(self.gone_from_campaign), "duplicates": len(self.duplicates),
                "in_flight": self.in_flight,
                "rejected": self.rejected}


class DriftChecker:
    """Reads both sides of every mapping (one paged query per CRM object, one SQL query per table)."""

    def __init__(self, settings: Settings, found: Endpoints, clients: dict[str, Any], *,
                 settle_seconds: float = 0.0) -> None:
        self.settings = settings
        self.found = found
        self.clients = clients  # account name -> its connector's logged-in client
        # > 0: pairs whose sync state changed from this long before the reads until after them are left out. A
        # repair read is stamped per record (the row's updated_at, the CRM's modification stamp), not per field:
        # re-published while a decision of the same record is still on its way, it can win a field with a
        # record stamp that our own write moved, over the newer edit (found by tests/faults).
        self.settle_seconds = settle_seconds

    def compare(self, mapping: Mapping) -> MappingReport:
        report = MappingReport(mapping.name)
        with pg.connect(self.found.campaign_dsn, application="crmsync-drift") as conn:
            reads_began = conn.execute("SELECT clock_timestamp()").fetchone()[0]
            links = conn.cursor(row_factory=dict_row).execute(
                "SELECT crm_id, campaign_key, deleted, campaign_lsn FROM crmsync.sync_state WHERE mapping = %s",
                (mapping.name,)).fetchall()
            parents = self._parent_crm_ids(conn, mapping)
            types = FieldTypes(conn)
            kinds = {fm.campaign: types.field_kind(mapping.account, mapping.crm_object, fm.crm, mapping.campaign_table,
                                                   fm.campaign) for fm in mapping.fields}
            report.campaign_rows_by_key = self._campaign_rows(conn, mapping)
            rejected_crm, rejected_keys = self._open_rejects(conn, mapping)
            created = self._created_and_gone(conn, mapping, links, report.campaign_rows_by_key)
        report.crm_rows = self._crm_rows(mapping)
        in_flight = self._decided_since(mapping, reads_began) if self.settle_seconds > 0 else set()
        enums = StoredEnumerations(self.found.campaign_dsn, mapping.account)
        report.rejected = len(rejected_crm) + len(rejected_keys)
        report.crm_records, report.campaign_rows = len(report.crm_rows), len(report.campaign_rows_by_key)
        linked_crm, linked_keys = set(), set()
        for link in links:
            crm_id, key = link["crm_id"], link["campaign_key"]
            if link["deleted"]:  # deleted on one side, kept on the other by the delete policy: known, not missing
                linked_crm.add(crm_id)
                linked_keys.add(key)
                continue
            if crm_id is None or key is None:
                continue
            linked_crm.add(crm_id)
            linked_keys.add(key)
            if crm_id in rejected_crm or key in rejected_keys:
                continue  # an open reject on either side explains the difference; "repairing" it could delete
            if (crm_id, key) in in_flight:
                report.in_flight += 1
                continue
            crm_row, campaign_row = report.crm_rows.get(crm_id), report.campaign_rows_by_key.get(key)
            if crm_row is None and campaign_row is not None:
                report.gone_from_crm.append(crm_id)
            elif campaign_row is None and crm_row is not None and link["campaign_lsn"] is None and key not in created:
                linked_crm.discard(crm_id)  # a row the streams never saw a change of: our insert of it was lost
            elif campaign_row is None and crm_row is not None:
                report.gone_from_campaign.append(key)
            elif crm_row is not None and campaign_row is not None:
                fields = self._differing(mapping, crm_row, campaign_row, parents, kinds, enums)
                if fields:
                    report.differing.append((crm_id, key, fields))
        report.missing_in_campaign = (sorted(set(report.crm_rows) - linked_crm - rejected_crm)
                                      if mapping.direction != "export" else [])
        unlinked = (sorted(set(report.campaign_rows_by_key) - linked_keys - rejected_keys)
                    if mapping.direction != "import" else [])
        known = self._match_keys(mapping, [report.campaign_rows_by_key[k] for k in linked_keys
                                           if k in report.campaign_rows_by_key])
        for key in unlinked:  # a second row for a person already linked is a duplicate, not missing
            row_key = self._match_keys(mapping, [report.campaign_rows_by_key[key]])
            (report.duplicates if row_key and row_key <= known else report.missing_in_crm).append(key)
        return report

    @staticmethod
    def _created_and_gone(conn: Any, mapping: Mapping, links: list[dict], rows_by_key: dict) -> set[int]:
        """Keys of linked rows that are missing although our writer created them (crmsync.created_rows): deleted
        since, by a person — not an insert of ours that was lost, which would be sent again."""
        missing = [link["campaign_key"] for link in links
                   if link["campaign_key"] is not None and link["campaign_key"] not in rows_by_key]
        if not missing:
            return set()
        return {key for (key,) in conn.execute(
            "SELECT campaign_key FROM crmsync.created_rows WHERE campaign_table = %s AND campaign_key = ANY(%s)",
            (mapping.campaign_table, missing))}

    def _decided_since(self, mapping: Mapping, reads_began: Any) -> set[tuple[str, int]]:
        """(CRM id, Campaign key) of the pairs whose sync state changed from `settle_seconds` before the reads
        began until now."""
        with pg.connect(self.found.campaign_dsn, application="crmsync-drift") as conn:
            return {tuple(r) for r in conn.execute(
                "SELECT crm_id, campaign_key FROM crmsync.sync_state WHERE mapping = %s AND updated_at > "
                "%s - make_interval(secs => %s)", (mapping.name, reads_began, self.settle_seconds))}

    def _match_keys(self, mapping: Mapping, rows: list[dict]) -> set[str]:
        if not mapping.match:
            return set()
        column = mapping.match[0].campaign
        return {k for k in (match_key(row.get(column)) for row in rows) if k}

    def _open_rejects(self, conn: psycopg.Connection, mapping: Mapping) -> tuple[set[str], set[int]]:
        """CRM ids and Campaign keys of records with an open reject (their divergence is known and listed by
        `crmsync rejects list`); they are left out of the comparison instead of being re-published forever."""
        rows = conn.execute(
            """SELECT record FROM crmsync.rejects WHERE status NOT IN ('resolved') AND object IN (%s, %s)""",
            (mapping.crm_object, mapping.campaign_table)).fetchall()
        crm_ids, keys = set(), set()
        for (record,) in rows:
            record = record.get("change", record) or {}
            crm_side = record.get("side") == "crm"  # a key {"id"} is a CRM id there, a Campaign key elsewhere
            for part in (record.get("key") or {}, record.get("match") or {}):
                if part.get("crm_id"):
                    crm_ids.add(part["crm_id"])
                if crm_side and part.get("id"):
                    crm_ids.add(str(part["id"]))
                elif str(part.get("id", "")).isdigit():
                    keys.add(int(part["id"]))
                external = part.get(mapping.crm_external_id) if mapping.crm_external_id else None
                if str(external or "").isdigit():
                    keys.add(int(external))
        return crm_ids, keys

    def _crm_rows(self, mapping: Mapping) -> dict[str, dict]:
        """Every record of the mapped object, through the connector's RecordQuery (one paged query)."""
        connector = self._connector(mapping)
        names = [*connector.index_fields[:1], *(f.crm for f in mapping.fields)]
        if mapping.crm_external_id:
            names.append(mapping.crm_external_id)
        query = connector.query(self.clients[mapping.account])
        return {record["id"]: record for page in query.records(mapping.crm_object, list(dict.fromkeys(names)))
                for record in page}

    def _connector(self, mapping: Mapping) -> Any:
        return connectors.for_account(self.settings.accounts[mapping.account])

    def _campaign_rows(self, conn: psycopg.Connection, mapping: Mapping) -> dict[int, dict]:
        return campaign_rows(conn, mapping.campaign_table)

    def _parent_crm_ids(self, conn: psycopg.Connection, mapping: Mapping) -> dict[str, dict[int, str]]:
        parents = {f.reference for f in mapping.fields if f.reference}
        result: dict[str, dict[int, str]] = {}
        for parent in parents:
            rows = conn.execute("SELECT campaign_key, crm_id FROM crmsync.sync_state WHERE mapping = %s "
                                "AND crm_id IS NOT NULL AND campaign_key IS NOT NULL", (parent,)).fetchall()
            result[parent] = {key: crm_id for key, crm_id in rows}
        return result

    def _differing(self, mapping: Mapping, crm_row: dict, campaign_row: dict, parents: dict[str, dict[int, str]],
                   kinds: dict[str, Any], enums: StoredEnumerations) -> list[str]:
        fields = []
        for fm in mapping.fields:
            crm_value = crm_row.get(fm.crm)
            campaign_value = campaign_row.get(fm.campaign)
            if fm.reference:
                campaign_value = parents[fm.reference].get(campaign_value) if campaign_value is not None else None
            elif fm.enumeration:  # picklist values as the Campaign names them (the enumeration map), as words
                crm_value = _words(enums.to_campaign(fm.enumeration, crm_value))
                campaign_value = _words(campaign_value)
            else:
                crm_value, campaign_value = (_comparable(crm_value, kinds.get(fm.campaign), fm.conversion),
                                             _comparable(campaign_value, kinds.get(fm.campaign), fm.conversion))
            if crm_value != campaign_value:
                fields.append(fm.campaign)
        return fields

    # -- repair -------------------------------------------------------------------------------------------
    def repair(self, mapping: Mapping, report: MappingReport) -> int:
        """Re-publish the diverged records as changes; the streams do the rest. Returns changes published."""
        stamp = utc_now_iso()
        crm_topic = topics.changes("crm", mapping.account, mapping.crm_object)
        campaign_topic = topics.changes("campaign", self.settings.campaign.name, mapping.campaign_table)
        crm_changes, campaign_changes = [], []
        version_field = next(iter(self._connector(mapping).index_fields), None)
        # a record missing on one side is marked so: the streams then send all of it there, not only what differs
        # from what they agreed (nothing, for a record whose create was decided and then lost)
        missing_in_campaign = set(report.missing_in_campaign)
        for crm_id in [*report.missing_in_campaign, *(d[0] for d in report.differing)]:
            row = report.crm_rows[crm_id]
            version = str(row.get(version_field) or stamp) if version_field else stamp
            missing = {"missing": "campaign"} if crm_id in missing_in_campaign else {}
            crm_changes.append(crm_change(mapping.account, mapping.crm_object, "r", crm_id, version,
                                          _iso(version, stamp), after=row, id_prefix=f"repair:{stamp}", repair=True,
                                          **missing))
        for crm_id in report.gone_from_crm:
            crm_changes.append(crm_change(mapping.account, mapping.crm_object, "d", crm_id, stamp, stamp, after=None,
                                          id_prefix=f"repair:{stamp}:gone", repair=True))
        missing_in_crm = set(report.missing_in_crm)
        for key in [*report.missing_in_crm, *(d[1] for d in report.differing)]:
            row = report.campaign_rows_by_key[key]
            position = {"repair": True, **({"missing": "crm"} if key in missing_in_crm else {})}
            campaign_changes.append(Change(id=f"repair:{stamp}:campaign:{key}", side="campaign",
                                           source=self.settings.campaign.name, object=mapping.campaign_table,
                                           op="r", key={"id": key}, after=row,
                                           position=position, source_ts=row.get("updated_at")))
        for key in report.gone_from_campaign:
            campaign_changes.append(Change(id=f"repair:{stamp}:campaign-gone:{key}", side="campaign",
                                           source=self.settings.campaign.name, object=mapping.campaign_table,
                                           op="d", key={"id": key}, after=None, position={"repair": True},
                                           source_ts=stamp))
        producer = kafka.producer(self.found.bootstrap_servers)
        tracker = kafka.DeliveryTracker()
        kafka.ensure_topics(self.found.bootstrap_servers, [crm_topic, campaign_topic], self.settings.kafka.partitions)
        for topic, changes in ((crm_topic, crm_changes), (campaign_topic, campaign_changes)):
            for change in changes:
                producer.produce(topic, value=change.to_json(), key=change.kafka_key(), on_delivery=tracker)
        kafka.flush_all(producer, tracker)
        return len(crm_changes) + len(campaign_changes)


@dataclass
class RepairPass:
    """What one pass over every mapping did."""
    published: int = 0  # changes re-published
    failed: list[str] = field(default_factory=list)  # mappings whose pass failed (said): a later pass must retry

    @property
    def complete(self) -> bool:
        return not self.failed


def repair_all(settings: Settings, found: Endpoints, say: Callable[[str], None] = print, *,
               settle_seconds: float = 0.0) -> RepairPass:
    """One drift-repair pass over every mapping (the periodic pass of `crmsync run`, and its answer to a broker
    that lost its memory). A mapping whose pass fails (the database restarting, the CRM not answering) is said
    and skipped, and named in the result: a caller that needs the repair done (after a broker loss) repeats the
    pass until it is complete."""
    result = RepairPass()
    with open_clients(settings) as clients:
        checker = DriftChecker(settings, found, clients, settle_seconds=settle_seconds)
        for mapping in settings.mappings:
            try:
                report = checker.compare(mapping)
                if not report.converged:
                    count = checker.repair(mapping, report)
                    result.published += count
                    say(f"drift in {mapping.name}: {report.summary()}; re-published {count} changes")
            except Exception as exc:  # noqa: BLE001 - a failed pass is retried at the next one
                say(f"drift repair of {mapping.name} failed: {exc}")
                result.failed.append(mapping.name)
    return result


def campaign_rows(conn: psycopg.Connection, table: str) -> dict[int, dict]:
    """Every row of a Campaign table ("table" or "schema.table") by key, as change capture describes rows;
    rows marked deleted are left out."""
    schema, _, name = table.rpartition(".")
    has_deleted = conn.execute(
        "SELECT 1 FROM information_schema.columns WHERE table_schema = coalesce(%s, current_schema()) "
        "AND table_name = %s AND column_name = 'deleted'", (schema or None, name)).fetchone()
    statement = sql.SQL("SELECT * FROM {}{}").format(pg.table_identifier(table),
                                                     sql.SQL(" WHERE NOT deleted" if has_deleted else ""))
    rows = conn.cursor(row_factory=dict_row).execute(statement).fetchall()
    return {row["id"]: {k: pg.json_ready(v) for k, v in row.items()} for row in rows}


def clients_for(settings: Settings) -> dict[str, Any]:
    """One logged-in client per account, each from its own connector. The caller closes them (`open_clients`)."""
    return {name: connectors.for_account(account).client(name, account) for name, account in settings.accounts.items()}


@contextmanager
def open_clients(settings: Settings) -> Iterator[dict[str, Any]]:
    """`clients_for`, each client closed on the way out. Closing logs the CRM session off: some CRMs cap the
    sessions a company may hold at once (Oracle CRM On Demand: 10), and sessions left open until they time out
    lock the services out of signing in."""
    clients = clients_for(settings)
    try:
        yield clients
    finally:
        connectors.close_clients(clients)


def _words(value: Any) -> Any:
    """A picklist value for comparison: its text (a choice's 20 and the Campaign's '20' agree), a multi-select
    as the set of its values."""
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple, set)):
        return frozenset(str(v) for v in value)
    return frozenset(split_multi(value)) if isinstance(value, str) and ";" in value else str(value)


def _iso(version: str, fallback: str) -> str:
    try:
        moment = parse_timestamp(version)
    except ValueError:
        return fallback
    return iso_utc(moment) if moment else fallback


def _comparable(value: Any, kind: Any, conversion: Any) -> Any:
    """A value in the streams' canonical form; one that cannot have its field's kind compares as itself (it
    differs, and the streams report it as an invalid value when it is re-published)."""
    try:
        return canonical(value, kind, conversion)
    except ValueError:
        return value
