"""The connector conformance suite: what every CRM connector must do, run against its own sandbox.

Each test is parametrized over every registered connector (tests/connectors/conftest.py), the in-memory one
defined in this suite included; the change-source tests over every mode a connector offers (Salesforce: `poll`
and `cdc`). A connector passes when: its client logs in (and a wrong secret is refused without showing it); its
discovery lists the objects, typed fields and picklists; its change source delivers creates, updates and deletes
exactly once across tied modification times and a restart in the middle of a page; its sink applies groups with
per-record errors and compare-and-set; the CRM's rate-limit answers are ridden out; and a mapping round-trips both
ways through the streams' real decisions and the Campaign writer. A push source (a mode where the CRM pushes
changes) also survives its poller process killed with SIGKILL again and again: every change reaches the topic, none
under two ids.
"""
from __future__ import annotations

import json
import random
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from crmsync import names, pg, topics
from crmsync.config import Settings
from crmsync.connectors import Client, PushSource, SourcePage
from crmsync.envelope import ApplyCommand, Change
from crmsync.infra import Endpoints
from services.campaign_writer.service import CampaignWriter
from streams.reconcile import Reconciler
from tests.conftest import consume_changes
from tests.connectors.conftest import SEEDED, Crm, source_cases
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]


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


def read_all(crm: Crm, cursor: dict | None, source: Any = None, mode: str | None = None) \
        -> tuple[list[Change], list[SourcePage]]:
    """Every page a read from `cursor` gives (a new source in `mode` unless one is passed: a restart)."""
    source = source or crm.source(mode)
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
@pytest.mark.parametrize("crm, mode", source_cases(), indirect=["crm"])
def test_changes_are_delivered_exactly_once_across_ties_and_restarts(crm: Crm, mode: str | None) -> None:
    sink = crm.connector.sink(crm.client)
    source = crm.source(mode)
    # the snapshot, read with a restart after its first page: the first page's records come again (same ids),
    # and every seeded record is there
    pages = source.read(None)
    first = next(pages)
    restarted_source = crm.source(mode)
    restarted = list(restarted_source.read(first.cursor))
    pages.close()  # the first reader is gone (a push source's subscription with it)
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

    # the restarted reader goes on: a push source with its subscription (a polling source holds nothing between
    # reads: a new one reads as well)
    changes, pages = read_all(crm, cursor, restarted_source if isinstance(restarted_source, PushSource) else None,
                              mode=mode)
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
        again, _ = read_all(crm, pages[-2].cursor, mode=mode)
        assert {c.id for c in again} <= {c.id for c in changes}
    # and from the end: nothing
    assert read_all(crm, pages[-1].cursor if pages else cursor, mode=mode)[0] == []


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


# -- a push source under SIGKILL ------------------------------------------------------------------------------
POLLER = """
import json, sys
from crmsync import config, process
from crmsync.infra import Endpoints
from services.crm_poller.service import run
options = json.loads(sys.argv[5])
run(config.load(sys.argv[1]), Endpoints(bootstrap_servers=sys.argv[2], campaign_dsn=sys.argv[3]), sys.argv[4],
    [options.pop("object")], 0.5, stop=process.stop_on_signals(), **options)
"""


@pytest.mark.parametrize("crm, mode", source_cases(push_only=True), indirect=["crm"])
def test_a_push_source_killed_again_and_again_publishes_every_change_once(crm: Crm, mode: str, campaign_db,
                                                                         endpoints, tmp_path: Path) -> None:
    """The poller service in a push mode, SIGKILLed between and during bursts of writes and started again: every
    create, update and delete reaches the change topic, in order per record, and a change that is published again
    (killed between the broker's ack and the checkpoint) carries the same id — never a second one."""
    dsn, _ = campaign_db
    account = f"kill{uuid.uuid4().hex[:6]}"
    config_file = tmp_path / "crmsync.yaml"
    config_file.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"),
                                           "accounts": {account: crm.running.account}}))
    options = json.dumps({"object": crm.contacts, **crm.source_options(mode)})
    log = tmp_path / "poller.log"
    rng = random.Random(11)

    def start() -> subprocess.Popen:
        with open(log, "ab") as out:
            return subprocess.Popen([sys.executable, "-c", POLLER, str(config_file), endpoints.bootstrap_servers,
                                     dsn, account, options], cwd=REPO, stdout=out, stderr=subprocess.STDOUT)

    def checkpoint() -> dict | None:
        with pg.connect(dsn) as conn:
            row = conn.execute("SELECT position FROM crmsync.checkpoints WHERE name = %s",
                               (names.poller_checkpoint(account, crm.contacts),)).fetchone()
        return row[0] if row else None

    topic = topics.changes("crm", account, crm.contacts)
    expected: dict[str, list[str]] = {}  # record id -> ops, in the order they were made

    def published(seen: list[Change], records: Any = None) -> bool:
        got: dict[str, dict[str, str]] = {}
        for change in seen:
            got.setdefault(change.key["id"], {})[change.id] = change.op
        return all(list(got.get(rid, {}).values()) == expected[rid] for rid in (records or expected))

    def burst(round_: int, size: int = 4) -> list[str]:
        sink = crm.connector.sink(crm.client)
        made = created_ids(crm, sink.apply([upsert(crm, f"kill{round_}-{i}-{uuid.uuid4().hex[:6]}",
                                                   person(crm, f"Kill{round_}x{i}")) for i in range(size)]))
        for rid in made:
            expected[rid] = ["c"]
        for n in range(2 if size > 1 else 0):
            assert all(o.ok for o in sink.apply([update(crm, rid, crm.values(job_title=f"R{round_}U{n}"))
                                                 for rid in made]))
            for rid in made:
                expected[rid].append("u")
        if size > 1:
            assert sink.apply([delete(crm, made[0])])[0].ok
            expected[made[0]].append("d")
        return made

    def live(round_: int) -> None:
        """The (re)started poller publishes: one create made now reaches the topic."""
        made = burst(round_ * 100, size=1)
        seen = consume_changes(endpoints.bootstrap_servers, [topic], lambda s: published(s, made), timeout=90)
        assert published(seen, made), log.read_text()[-3000:]

    process = start()
    try:
        wait_for(lambda: process.poll() is None and bool((checkpoint() or {}).get("snapshot_done")), 120,
                 f"the poller's first read ({log})")
        for round_ in range(1, 6):
            live(round_)  # from here on a restart resumes the stream from a stored position
            burst(round_, size=6)
            time.sleep(rng.uniform(0.0, 0.4))  # killed while publishing them, or just after
            process.kill()
            process.wait(30)
            process = start()
        seen = consume_changes(endpoints.bootstrap_servers, [topic], published, timeout=120)
    finally:
        process.kill()
        process.wait(30)
    assert published(seen), (expected, log.read_text()[-3000:])
    by_id: dict[str, Change] = {}
    for change in seen:  # a change published twice is the same change
        if change.id in by_id:
            assert (by_id[change.id].after, by_id[change.id].position) == (change.after, change.position)
        by_id[change.id] = change
    ours = [c for c in by_id.values() if c.key["id"] in expected]
    assert len(ours) == sum(len(ops) for ops in expected.values())  # no change under a second id


# -- through the streams -----------------------------------------------------------------------------------
@pytest.mark.parametrize("crm, mode", source_cases(), indirect=["crm"])
def test_a_mapping_round_trips_both_ways_through_the_streams(crm: Crm, mode: str | None, campaign_db,
                                                            endpoints) -> None:
    dsn, name = campaign_db
    with pg.connect(dsn) as conn:  # Campaign keys of its own: it runs once per mode against the same CRM
        conn.execute("SELECT setval(pg_get_serial_sequence('recipients', 'id'), %s)",
                     (random.randrange(10 ** 6, 10 ** 9),))
    account = crm.client.account_name
    mapping = {**crm.connector.default_mappings(account)[0], "name": "people"}
    mapping = next(m for m in crm.connector.default_mappings(account) if m["campaign_table"] == "recipients")
    mapping["fields"] = [f for f in mapping["fields"] if not f.get("reference")]
    settings = Settings.model_validate({"accounts": {account: crm.running.account}, "campaign": {"name": name},
                                        "mappings": [mapping]})
    reconciler = Reconciler(settings, name)
    writer = CampaignWriter(dsn, endpoints.bootstrap_servers, name, tables=["recipients"])
    sink = crm.connector.sink(crm.client)
    source = crm.source(mode)
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
        outcomes = sink.apply(to_crm)
        assert to_crm and all(o.ok for o in outcomes), [(o.code, o.message) for o in outcomes]
        rows = [r for p in crm.connector.query(crm.client).records(crm.contacts, [crm.field("job_title")],
                                                                    ids=[crm_id]) for r in p]
        assert rows[0][crm.field("job_title")] == "CMO"
        # the CRM's echo of that write is recognised: nothing goes back
        echo, _ = read_all(crm, cursor, source)
        assert [c for c in decide(dsn, reconciler, [c for c in echo if c.key["id"] == crm_id])] == []
    finally:
        writer.close()
        getattr(source, "close", lambda: None)()


def decide(dsn: str, reconciler: Reconciler, changes: list[Change]) -> list[ApplyCommand]:
    with pg.connect(dsn) as conn:
        return reconciler.process(conn, changes).commands


def campaign_row(dsn: str, key: int) -> dict[str, Any]:
    with pg.connect(dsn) as conn:
        cursor = conn.cursor(row_factory=__import__("psycopg").rows.dict_row)
        row = cursor.execute("SELECT * FROM recipients WHERE id = %s", (key,)).fetchone()
    return {k: pg.json_ready(v) for k, v in row.items()}


@pytest.mark.parametrize("crm, mode", source_cases(), indirect=["crm"])
def test_every_change_a_source_delivers_is_neutral(crm: Crm, mode: str | None) -> None:
    """The engine reads only the neutral envelope: key {"id"}, position {"ts", "id"}, deterministic ids."""
    changes, _ = read_all(crm, None, mode=mode)
    assert changes
    for change in changes[:10]:
        assert set(change.key) == {"id"} and {"ts", "id"} <= set(change.position)
        assert change.id.startswith(f"crm:{crm.client.account_name}:{crm.contacts}:{change.key['id']}:")
        assert change.position["ts"].endswith("Z")
    assert Counter(c.op for c in changes)["r"] == len(changes)
