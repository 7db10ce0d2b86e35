"""Change builders and a `decide` fixture for the reconciler tests: real PostgreSQL, no broker."""
from __future__ import annotations

import itertools

import pytest

from crmsync import config, pg
from crmsync.defaults import default_mappings
from crmsync.envelope import Change, crm_change
from crmsync.values import iso_utc, parse_timestamp
from streams.reconcile import Reconciler, save_conflicts

ACCOUNT = "sf"
_seq = itertools.count(1)


def _settings(**contacts_overrides):
    mappings = [m.model_dump() for m in default_mappings(ACCOUNT)]
    for m in mappings:
        if m["name"] == "contacts":
            m.update(contacts_overrides)
    return config.Settings.model_validate({
        "accounts": {ACCOUNT: {"type": "salesforce", "username": "u", "password": "p"}},
        "campaign": {"name": "campaign"}, "mappings": mappings})


def crm(op: str, crm_id: str, modstamp: str, **fields) -> Change:
    after = None if op == "d" else {"Id": crm_id, "SystemModstamp": modstamp, **fields}
    change = crm_change(ACCOUNT, "Contact", op, crm_id, f"{modstamp}:{next(_seq)}",
                        iso_utc(parse_timestamp(modstamp)), after=after)
    return change


def campaign(op: str, key: int, commit_ts: str, after: dict | None, before: dict | None = None,
             origin: str | None = None) -> Change:
    lsn = next(_seq) * 1000
    return Change(id=f"campaign:{lsn}", side="campaign", source="campaign", object="recipients", op=op,
                  key={"id": key}, after=after, before=before, position={"lsn": "0/0", "lsn_int": lsn, "seq": 0},
                  source_ts=commit_ts, origin=origin)


@pytest.fixture
def decide(campaign_db):
    dsn, _name = campaign_db
    state = {"settings": _settings()}

    def run(changes, **overrides):
        settings = _settings(**overrides) if overrides else state["settings"]
        with pg.connect(dsn) as conn:
            outcome = Reconciler(settings, "campaign").process(conn, changes)
            save_conflicts(conn, outcome.conflicts)
        return outcome

    run.dsn = dsn
    run.settings = state["settings"]
    return run


def recipient(dsn: str, email: str, **columns) -> dict:
    with pg.connect(dsn) as conn:
        names = ["email", *columns]
        row = conn.execute(f"INSERT INTO recipients ({', '.join(names)}) VALUES ({', '.join(['%s'] * len(names))}) "
                           "RETURNING id, updated_at", [email, *columns.values()]).fetchone()
    return {"id": row[0], "updated_at": row[1]}


def created_row(decide, out, email: str) -> dict:
    """What the Campaign writer does with the streams' `create` command of a new CRM record: insert the row
    with the key the streams allocated, and its CRM link."""
    [create] = [c for c in out.commands if c.side == "campaign" and c.action == "create"]
    return recipient(decide.dsn, email, id=create.key["id"], crm_account=create.match["crm_account"],
                     crm_id=create.match["crm_id"])


def linked(decide, crm_id: str, email: str) -> int:
    out = decide([crm("c", crm_id, "2026-01-01T10:00:00.000+0000", FirstName="Di", LastName="Ho", Email=email,
                      HasOptedOutOfEmail=False)])
    return created_row(decide, out, email)["id"]
