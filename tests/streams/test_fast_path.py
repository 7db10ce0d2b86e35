"""The fast path (streams/fast.py) decides exactly as the per-record path: the same randomized batches (seeded),
decided in two identical databases, one with the fast path and one without, give the same apply commands,
conflicts, deferred changes, invalid values, duplicates, skipped count, sync state and identity links.

Each seed builds one world — linked contacts (some with our writes still in flight to the CRM, some edited in
Campaign after the batch's CRM edits, one deleted), unlinked Campaign rows to match by email, organisations
linked or not — then a CRM batch and a Campaign batch that mix every case: new records (matching, duplicate,
unique), edits (plain, racing, of an owned field, twice in a batch, stale), deletes, invalid values, rows
whose parent is not in the CRM yet, records outside the mapping's filter."""
from __future__ import annotations

import itertools
import random
from collections import Counter
from dataclasses import asdict
from typing import Any, Iterator

import psycopg
import pytest

from crmsync import pg
from crmsync.envelope import crm_change
from crmsync.field_types import store_crm_fields
from streams.reconcile import Reconciler, save_conflicts
from tests.streams import changes as changes_module
from tests.streams.changes import ACCOUNT, _settings, campaign, crm

SEEDS = [1, 2, 3, 4, 5]
FIELDS = {"FirstName": ("text", "string"), "LastName": ("text", "string"), "Email": ("text", "email"),
          "Title": ("text", "string"), "Birthdate": ("date", "date"), "HasOptedOutOfEmail": ("boolean", "boolean"),
          "MailingCity": ("text", "string"), "AccountId": ("text", "reference")}


@pytest.fixture
def twins(endpoints) -> Iterator[tuple[str, str]]:
    """Two fresh, identical Campaign databases."""
    made = [pg.fresh_database(endpoints.campaign_dsn, "fast") for _ in range(2)]
    yield made[0][0], made[1][0]
    with psycopg.connect(psycopg.conninfo.make_conninfo(endpoints.campaign_dsn, dbname="postgres"),
                         autocommit=True) as conn:
        for _, name in made:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class World:
    """One database, driven the same way as its twin: decisions by the per-record path, and what the writers
    would do with them."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.settings = _settings()
        with pg.connect(dsn) as conn:
            store_crm_fields(conn, ACCOUNT, "Contact", FIELDS)

    def decide(self, changes: list, fast: bool = False) -> Any:
        with pg.connect(self.dsn) as conn:
            outcome = Reconciler(self.settings, "campaign", fast=fast).process(conn, changes)
            save_conflicts(conn, outcome.conflicts)
        return outcome

    def sql(self, query: str, params: tuple = ()) -> list[tuple]:
        with pg.connect(self.dsn) as conn:
            return conn.execute(query, params).fetchall()

    def apply_creates(self, outcome: Any) -> None:
        """The Campaign writer's part: every `create` becomes a row with its key and CRM link."""
        for command in outcome.commands:
            if command.side == "campaign" and command.action == "create":
                columns = ["id", "crm_account", "crm_id", *(c for c, v in command.values.items()
                                                           if not isinstance(v, dict))]
                values = [command.key["id"], command.match["crm_account"], command.match["crm_id"],
                          *(v for v in command.values.values() if not isinstance(v, dict))]
                self.sql(f"INSERT INTO {command.object} ({', '.join(columns)}) VALUES "
                         f"({', '.join(['%s'] * len(columns))}) RETURNING id", tuple(values))


def stamp(second: float) -> str:
    whole = int(second)
    return f"2026-03-01T10:{whole // 60:02d}:{whole % 60:02d}.{int(second * 1000) % 1000:03d}+0000"


def iso(second: float) -> str:
    return stamp(second).replace("+0000", "Z")


def contact_row(rng: random.Random, i: int, email: str, **overrides) -> dict[str, Any]:
    row = {"FirstName": f"F{i}", "LastName": rng.choice(["Lee", "Ng", "Roy"]), "Email": email,
           "Title": rng.choice(["Buyer", "CTO", None]), "Birthdate": rng.choice(["1990-02-03", None]),
           "HasOptedOutOfEmail": False, "MailingCity": rng.choice(["Lyon", "Oslo"])}
    row.update(overrides)
    return row


def recipient_row(key: int, email: str, crm_id: str | None, **columns) -> dict[str, Any]:
    row = {"id": key, "email": email, "first_name": "F", "last_name": "Lee", "job_title": None, "city": "Lyon",
           "birth_date": None, "email_opt_out": False, "organisation_id": None,
           "crm_account": ACCOUNT if crm_id else None, "crm_id": crm_id}
    row.update(columns)
    return row


def build(world: World, seed: int) -> tuple[list, list]:
    """Set up `world` (per-record decisions only) and return (CRM batch, Campaign batch)."""
    rng = random.Random(seed)
    changes_module._seq = itertools.count(1)  # the builders number their changes: the same numbers both times
    accounts = world.decide([crm_change(ACCOUNT, "Account", "c", f"001A{i}", stamp(1 + i), iso(1 + i),
                                        after={"Id": f"001A{i}", "Name": f"Org {i}"}) for i in range(3)])
    world.sql("INSERT INTO organisations (id, name, crm_account, crm_id) SELECT c.key, c.name, %s, c.crm "
              "FROM unnest(%s::bigint[], %s::text[], %s::text[]) AS c(key, name, crm) RETURNING id",
              (ACCOUNT, [c.key["id"] for c in accounts.commands], [c.values["name"] for c in accounts.commands],
               [c.match["crm_id"] for c in accounts.commands]))
    linked = [f"003L{i:03d}" for i in range(40)]
    rows = {crm_id: contact_row(rng, i, f"l{i}@example.com") for i, crm_id in enumerate(linked)}
    created = world.decide([crm("c", crm_id, stamp(5 + i * 0.01), **rows[crm_id]) for i, crm_id in enumerate(linked)])
    world.apply_creates(created)
    keys = {c.match["crm_id"]: c.key["id"] for c in created.commands}
    for i in range(12):  # unlinked Campaign rows a new CRM record can match by email
        world.sql("INSERT INTO recipients (email, first_name, city, updated_at) VALUES (%s, %s, 'Bergen', %s) "
                  "RETURNING id", (f"m{i}@example.com", f"M{i}", iso(rng.choice([50, 250]))))
    agreed = {crm_id: recipient_row(keys[crm_id], rows[crm_id]["Email"], crm_id, first_name=rows[crm_id]["FirstName"],
                                    last_name=rows[crm_id]["LastName"], job_title=rows[crm_id]["Title"],
                                    city=rows[crm_id]["MailingCity"], birth_date=rows[crm_id]["Birthdate"])
              for crm_id in linked}
    in_flight = linked[:6]  # Campaign edits whose CRM writes are still in flight (pending)
    world.decide([campaign("u", keys[c], iso(20 + i), {**agreed[c], "job_title": f"Sent {i}"}, before=agreed[c])
                  for i, c in enumerate(in_flight)])
    later = linked[6:11]  # edited in Campaign after the CRM batch's edits: those race
    world.decide([campaign("u", keys[c], iso(500 + i), {**agreed[c], "city": f"Later {i}"}, before=agreed[c])
                  for i, c in enumerate(later)])
    world.decide([crm("d", linked[11], stamp(30))])  # deleted in the CRM (marked in Campaign)

    crm_batch = []
    for i, crm_id in enumerate(linked):
        for n in range(rng.choice([1, 1, 1, 2])):
            fields = dict(rows[crm_id])
            for name in rng.sample(["Title", "MailingCity", "FirstName", "HasOptedOutOfEmail", "Birthdate"], 2):
                fields[name] = {"Title": f"T{seed}-{i}-{n}", "MailingCity": f"C{i}{n}", "FirstName": f"G{i}",
                                "HasOptedOutOfEmail": True, "Birthdate": rng.choice(["1980-01-01", "2024-02-30"])
                                }[name]
            crm_batch.append(crm("u", crm_id, stamp(100 + i + n * 0.5), **fields))
    crm_batch.append(crm("u", linked[20], stamp(2), **rows[linked[20]]))  # older than what was decided: stale
    for i in range(30):  # new CRM records: some match an unlinked row, some share an email, some are invalid
        email = rng.choice([f"n{i}@example.com", f"m{rng.randrange(12)}@example.com", "shared@example.com"])
        crm_batch.append(crm(rng.choice(["c", "r"]), f"003N{i:03d}", stamp(200 + i),
                             **contact_row(rng, 100 + i, email, AccountId=rng.choice(["001A0", None]),
                                           Birthdate=rng.choice(["1991-05-06", "0001-01-01T00:30:00+01:00"]))))
    crm_batch.append(crm("d", linked[30], stamp(300)))
    crm_batch.append(crm("d", "003N999", stamp(301)))  # never synced

    campaign_batch = []
    orgs = [c.key["id"] for c in accounts.commands]
    for i, crm_id in enumerate(linked[12:36]):
        before = agreed[crm_id]
        after = {**before, rng.choice(["job_title", "city", "first_name"]): f"E{seed}-{i}",
                 "email_opt_out": rng.choice([False, True])}
        if i % 5 == 0:
            after["organisation_id"] = rng.choice(orgs)
        campaign_batch.append(campaign("u", keys[crm_id], iso(150 + i), after, before=before))
        if i % 7 == 0:  # a second edit of the same row in the batch
            campaign_batch.append(campaign("u", keys[crm_id], iso(150.5 + i), {**after, "city": "Twice"}, before=after))
    for i in range(20):  # new Campaign rows: some duplicate a linked record's email
        key = 90_000 + i
        email = rng.choice([f"x{i}@example.com", f"l{rng.randrange(40)}@example.com"])
        campaign_batch.append(campaign("c", key, iso(400 + i), recipient_row(
            key, email, None, birth_date=rng.choice(["1999-09-09", None]), organisation_id=rng.choice([None, *orgs]))))
    campaign_batch.append(campaign("d", keys[linked[37]], iso(450), None, before=agreed[linked[37]]))
    rng.shuffle(crm_batch)
    rng.shuffle(campaign_batch)
    return crm_batch, campaign_batch


def _comparable(outcome: Any) -> dict[str, Any]:
    def command(c):
        found = asdict(c)
        found.pop("created_ts")
        return found
    return {"commands": sorted((command(c) for c in outcome.commands), key=lambda c: c["id"]),
            "conflicts": sorted(repr(asdict(c)) for c in outcome.conflicts),
            "deferred": sorted((d.change.id, d.reason) for d in outcome.deferred),
            "duplicates": sorted((d.change.id, d.twin.crm_id) for d in outcome.duplicates),
            "invalid": sorted((i.change.id, i.field, i.reason) for i in outcome.invalid),
            "skipped": outcome.skipped}


def _state(world: World) -> dict[str, Any]:
    return {"sync_state": sorted(world.sql(
                "SELECT mapping, crm_id, campaign_key, match_key, agreed, field_meta, pending, crm_modstamp, "
                "campaign_lsn, campaign_seq, deleted FROM crmsync.sync_state"), key=repr),
            "identity_links": sorted(world.sql(
                "SELECT crm_account, crm_object, crm_id, campaign_table, campaign_key FROM crmsync.identity_links")),
            "keys_handed_out": world.sql("SELECT last_value FROM recipients_id_seq")}


@pytest.mark.parametrize("seed", SEEDS)
def test_the_fast_path_decides_as_the_per_record_path(twins, seed):
    one_by_one, together = World(twins[0]), World(twins[1])
    batches = build(one_by_one, seed)
    assert build(together, seed)[0][0].id == batches[0][0].id  # the same world twice
    assert _state(one_by_one) == _state(together)
    taken = Counter()
    for batch in batches:
        expected, got = one_by_one.decide(batch, fast=False), together.decide(batch, fast=True)
        assert _comparable(got) == _comparable(expected)
        assert _state(together) == _state(one_by_one)
        assert not expected.fast
        taken += got.fast
    # every case was taken by the fast path, and a good part of the batches went the per-record way
    assert set(taken) == {"new CRM record", "new Campaign row", "unraced edit"}
    assert 0.2 < sum(taken.values()) / sum(map(len, batches)) < 0.8
