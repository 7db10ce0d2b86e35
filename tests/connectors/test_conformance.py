"""The connector conformance suite: what every CRM connector must do, run against its own sandbox.

Each test is parametrized over every registered connector (tests/connectors/conftest.py), the in-memory one
defined in this suite included. A connector passes when: its client logs in (and a wrong secret is refused
without showing it); its discovery lists the objects, typed fields and picklists; its change source delivers
creates, updates and deletes exactly once across tied modification times and a restart in the middle of a page;
its sink applies groups with per-record errors and compare-and-set; the CRM's rate-limit answers are ridden out;
and a mapping round-trips both ways through the streams' real decisions and the Campaign writer.
"""
from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import pytest

from crmsync import pg
from crmsync.config import Settings
from crmsync.connectors import Client, SourcePage
from crmsync.envelope import ApplyCommand, Change
from crmsync.infra import Endpoints
from services.campaign_writer.service import CampaignWriter
from streams.reconcile import Reconciler
from tests.connectors.conftest import SEEDED, Crm


def upsert(crm: Crm, key: str, values: dict[str, Any]) -> ApplyCommand:
    """A create as the streams send it: an upsert by the external-id field holding a Campaign key."""
    return ApplyCommand(id=f"conf-{uuid.uuid4().hex}", side="crm", target=crm.client.account_name,
                        object=crm.contacts, action="upsert", key=None, values=values, cause="conformance",
                        match={crm.connector.default_external_id: key})


def update(crm: Crm, crm_id: str, values: dict[str, Any], expect: dict[str, Any] | None = None) -> ApplyCommand:
    return ApplyCommand(id=f"conf-{uuid.uuid4().hex}", side="crm", target=crm.client.account_name,
                        object=crm.contacts, action="upsert", key={"id": crm_id}, values=values,
                        cause="conformance", expect=expect)


def delete(crm: Crm, crm_id: str) -> ApplyCommand:
    return ApplyCommand(id=f"conf-{uuid.uuid4().hex}", side="crm", target=crm.client.account_name,
                        object=crm.contacts, action="delete", key={"id": crm_id}, values={}, cause="conformance")


def person(crm: Crm, tag: str, **extra: Any) -> dict[str, Any]:
    return crm.values(first_name="Conformance", last_name=tag, email=f"{tag.lower()}@conformance.example", **extra)


def read_all(crm: Crm, cursor: dict | None, source: Any = None) -> tuple[list[Change], list[SourcePage]]:
    source = source or crm.connector.change_source(crm.client, crm.contacts)
    pages = list(source.read(cursor))
    return [c for p in pages for c in p.changes], pages


def created_ids(crm: Crm, outcomes: list) -> list[str]:
    assert all(o.ok for o in outcomes), [(o.code, o.message) for o in outcomes if not o.ok]
    return [o.crm_id for o in outcomes]


# -- login -------------------------------------------------------------------------------------------------
def test_login_works_and_a_wrong_secret_is_refused_without_showing_it(crm: Crm) -> None:
    tables = {t.name for t in crm.connector.discovery(crm.client).list_tables()}
    assert crm.contacts in tables
    assert isinstance(crm.client, Client)
    me = crm.client.whoami()  # what `crmsync account test` shows
    assert me["organization"] and me["user"] and me["api_version"], me
    usage = crm.client.usage()
    assert usage.calls >= 0 and usage.window
    wrong = "wrong-" + uuid.uuid4().hex
    bad = crm.connector.account_model.model_validate({**crm.running.account, crm.harness.secret_key: wrong})
    with pytest.raises(Exception) as refused:
        crm.connector.client("conformance_bad", bad)
    assert wrong not in str(refused.value) and wrong not in repr(refused.value)


# -- discovery -----------------------------------------------------------------------------------------------
def test_discovery_lists_typed_fields_and_picklists(crm: Crm) -> None:
    spec = crm.connector.discovery(crm.client).describe_table(crm.contacts)
    fields = {f.name: f for f in spec.fields}
    for column in ("first_name", "last_name", "email"):
        assert fields[crm.field(column)].kind == "text"
    assert fields[crm.field("birth_date")].kind == "date"
    assert any(e.values for e in spec.enumerations), "a picklist with its values"
    assert all(f.pg_type for f in spec.fields)
    kinds = {name: f.kind for name, f in crm.connector.change_source(crm.client, crm.contacts).fields().items()}
    assert kinds[crm.field("email")] == "text"


# -- the change source ---------------------------------------------------------------------------------------
def test_changes_are_delivered_exactly_once_across_ties_and_restarts(crm: Crm) -> None:
    sink = crm.connector.sink(crm.client)
    source = crm.connector.change_source(crm.client, crm.contacts)
    # the snapshot, read with a restart after its first page: the first page's records come again (same ids),
    # and every seeded record is there
    pages = source.read(None)
    first = next(pages)
    restarted = list(crm.connector.change_source(crm.client, crm.contacts).read(first.cursor))
    snapshot = [*first.changes, *(c for p in restarted for c in p.changes)]
    assert {c.op for c in snapshot} == {"r"} and restarted[-1].snapshot_done
    assert len({c.key["id"] for c in snapshot}) >= SEEDED and len({c.id for c in snapshot}) == len(snapshot)
    cursor = restarted[-1].cursor

    # creates, updates (some with one shared modification time) and deletes
    made = created_ids(crm, sink.apply([upsert(crm, f"k{i}-{uuid.uuid4().hex[:6]}", person(crm, f"New{i}"))
                                        for i in range(4)]))
    with crm.harness.tied_writes(crm.running):
        tied = sink.apply([update(crm, made[0], crm.values(job_title="Tied A")),
                           update(crm, made[1], crm.values(job_title="Tied B"))])
    assert all(o.ok for o in tied)
    gone = sink.apply([delete(crm, made[3])])
    assert gone[0].ok

    changes, pages = read_all(crm, cursor)
    by_record: dict[str, list[Change]] = {}
    for change in changes:
        by_record.setdefault(change.key["id"], []).append(change)
    assert set(made) <= set(by_record)
    assert by_record[made[3]][-1].op == "d"
    for crm_id in made[:3]:
        assert by_record[crm_id][-1].op in ("c", "u") and by_record[crm_id][-1].after is not None
    assert len({c.id for c in changes}) == len(changes)  # no change twice in one read
    # a restart from the cursor of the last page but one delivers only what that page covers again
    if len(pages) > 1:
        again, _ = read_all(crm, pages[-2].cursor)
        assert {c.id for c in again} <= {c.id for c in changes}
    # and from the end: nothing
    assert read_all(crm, pages[-1].cursor if pages else cursor)[0] == []


# -- the sink ------------------------------------------------------------------------------------------------
def test_the_sink_applies_groups_with_per_record_errors(crm: Crm) -> None:
    sink = crm.connector.sink(crm.client)
    keys = [f"g{i}-{uuid.uuid4().hex[:6]}" for i in range(5)]
    commands = [upsert(crm, key, person(crm, f"Group{i}")) for i, key in enumerate(keys)]
    commands[2] = upsert(crm, keys[2], {**person(crm, "Refused"), **crm.harness.refused_contact_values()})
    outcomes = sink.apply(commands)
    assert [o.command.id for o in outcomes] == [c.id for c in commands]  # one outcome per command, in order
    assert [o.ok for o in outcomes] == [True, True, False, True, True]
    assert outcomes[2].code and outcomes[2].message
    again = sink.apply([upsert(crm, keys[0], person(crm, "Group0"))])  # the same create again: the same record
    assert again[0].ok and again[0].crm_id == outcomes[0].crm_id
    ids = [o.crm_id for o in outcomes if o.ok]
    assert all(o.ok for o in sink.apply([update(crm, ids[0], crm.values(job_title="Updated"))]))
    assert all(o.ok for o in sink.apply([delete(crm, ids[1])]))
    assert all(o.ok for o in sink.apply([delete(crm, ids[1])]))  # deleting a deleted record is done, not an error


def test_compare_and_set_leaves_a_field_changed_meanwhile(crm: Crm) -> None:
    sink = crm.connector.sink(crm.client)
    [crm_id] = created_ids(crm, sink.apply([upsert(crm, f"cas-{uuid.uuid4().hex[:6]}",
                                                   person(crm, "Cas", job_title="Buyer", city="Oslo"))]))
    assert sink.apply([update(crm, crm_id, crm.values(job_title="CMO"))])[0].ok  # a user's edit
    stale = update(crm, crm_id, crm.values(job_title="Director", city="Bergen"),
                   expect=crm.values(job_title="Buyer", city="Oslo"))
    [outcome] = sink.apply([stale])
    assert outcome.ok and outcome.superseded == [crm.field("job_title")]
    rows = [r for page in crm.connector.query(crm.client).records(
        crm.contacts, [crm.field("job_title"), crm.field("city")], ids=[crm_id]) for r in page]
    assert (rows[0][crm.field("job_title")], rows[0][crm.field("city")]) == ("CMO", "Bergen")


def test_rate_limit_answers_are_ridden_out(crm: Crm) -> None:
    sink = crm.connector.sink(crm.client)
    keys = [f"rl{i}-{uuid.uuid4().hex[:6]}" for i in range(40)]
    with crm.harness.rate_limited(crm.running):
        outcomes = [o for start in range(0, 40, 10)
                    for o in sink.apply([upsert(crm, k, person(crm, f"Limited{i}"))
                                         for i, k in enumerate(keys[start:start + 10], start)])]
    assert all(o.ok for o in outcomes) and len({o.crm_id for o in outcomes}) == 40


# -- through the streams -----------------------------------------------------------------------------------
def test_a_mapping_round_trips_both_ways_through_the_streams(crm: Crm, campaign_db, endpoints) -> None:
    dsn, name = campaign_db
    account = crm.client.account_name
    mapping = {**crm.connector.default_mappings(account)[0], "name": "people"}
    mapping = next(m for m in crm.connector.default_mappings(account) if m["campaign_table"] == "recipients")
    mapping["fields"] = [f for f in mapping["fields"] if not f.get("reference")]
    settings = Settings.model_validate({"accounts": {account: crm.running.account}, "campaign": {"name": name},
                                        "mappings": [mapping]})
    reconciler = Reconciler(settings, name)
    writer = CampaignWriter(dsn, endpoints.bootstrap_servers, name, tables=["recipients"])
    sink = crm.connector.sink(crm.client)
    source = crm.connector.change_source(crm.client, crm.contacts)
    try:
        cursor = list(source.read(None))[-1].cursor  # the seeded records: not part of this test
        [crm_id] = created_ids(crm, sink.apply([upsert(crm, f"rt-{uuid.uuid4().hex[:6]}",
                                                       person(crm, "Trip", job_title="Buyer"))]))
        # CRM → Campaign
        changes, pages = read_all(crm, cursor, source)
        cursor = pages[-1].cursor
        commands = decide(dsn, reconciler, [c for c in changes if c.key["id"] == crm_id])
        writer.apply_batch([c for c in commands if c.side == "campaign"])
        with pg.connect(dsn) as conn:
            row = conn.execute("SELECT id, job_title, crm_id FROM recipients WHERE crm_id = %s", (crm_id,)).fetchone()
        assert row is not None and row[1] == "Buyer"
        # Campaign → CRM (a marketer's edit, as change capture publishes it)
        before = campaign_row(dsn, row[0])
        with pg.connect(dsn) as conn:
            conn.execute("UPDATE recipients SET job_title = 'CMO' WHERE id = %s", (row[0],))
        edit = Change(id=f"campaign:{name}:rt:{uuid.uuid4().hex}", side="campaign", source=name, object="recipients",
                      op="u", key={"id": row[0]}, after=campaign_row(dsn, row[0]), before=before,
                      position={"lsn_int": 10 ** 12, "seq": 0}, source_ts="2099-01-01T00:00:00Z")
        to_crm = [c for c in decide(dsn, reconciler, [edit]) if c.side == "crm"]
        assert to_crm and all(o.ok for o in sink.apply(to_crm))
        rows = [r for p in crm.connector.query(crm.client).records(crm.contacts, [crm.field("job_title")],
                                                                    ids=[crm_id]) for r in p]
        assert rows[0][crm.field("job_title")] == "CMO"
        # the CRM's echo of that write is recognised: nothing goes back
        echo, _ = read_all(crm, cursor, source)
        assert [c for c in decide(dsn, reconciler, [c for c in echo if c.key["id"] == crm_id])] == []
    finally:
        writer.close()


def decide(dsn: str, reconciler: Reconciler, changes: list[Change]) -> list[ApplyCommand]:
    with pg.connect(dsn) as conn:
        return reconciler.process(conn, changes).commands


def campaign_row(dsn: str, key: int) -> dict[str, Any]:
    with pg.connect(dsn) as conn:
        cursor = conn.cursor(row_factory=__import__("psycopg").rows.dict_row)
        row = cursor.execute("SELECT * FROM recipients WHERE id = %s", (key,)).fetchone()
    return {k: pg.json_ready(v) for k, v in row.items()}


def test_every_change_a_source_delivers_is_neutral(crm: Crm) -> None:
    """The engine reads only the neutral envelope: key {"id"}, position {"ts", "id"}, deterministic ids."""
    changes, _ = read_all(crm, None)
    assert changes
    for change in changes[:10]:
        assert set(change.key) == {"id"} and {"ts", "id"} <= set(change.position)
        assert change.id.startswith(f"crm:{crm.client.account_name}:{crm.contacts}:{change.key['id']}:")
        assert change.position["ts"].endswith("Z")
    assert Counter(c.op for c in changes)["r"] == len(changes)
