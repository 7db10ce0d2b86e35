"""Mirror tables kept current both ways by the running services (capture, poller, mirror) for every CRM with a
connector other than the reference one (test_mirror_sync.py covers Salesforce in more detail): a CRM edit lands
in the mirror row keyed by the CRM's own primary key, an SQL edit lands in the CRM (changed fields only, a
multi-select included where the CRM has one, no ping-pong), a delete in the CRM removes the row, and an insert
is refused into the rejects."""
from __future__ import annotations

import time
import uuid
from typing import Any, Iterator

import psycopg
import pytest

from crmsync.envelope import ApplyCommand
from tests.crms import CrmUnderTest, start_crm
from tests.waiting import wait_for
from tests.wizard.mirror_services import mirror_services


@pytest.fixture(scope="module", params=["dynamics", "oracle"])
def crm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrmUnderTest]:
    yield from start_crm(request.param, tmp_path_factory.mktemp(f"mirror-{request.param}"), seed_contacts=6)


def scalar(dsn: str, query: str, *params: Any) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def crm_record(crm: CrmUnderTest, crm_id: str, fields: list[str]) -> dict[str, Any]:
    obj = crm.profile.tables[1]
    return next(crm.connector.query(crm.client).records(obj, fields, ids=[crm_id]))[0]


def write(crm: CrmUnderTest, action: str, crm_id: str, values: dict[str, Any]) -> None:
    obj = crm.profile.tables[1]
    command = ApplyCommand(id=f"test:{uuid.uuid4().hex}", side="crm", target=crm.client.account_name, object=obj,
                           action=action, key={"id": crm_id}, values=values, cause="test")
    (outcome,) = crm.connector.sink(crm.client).apply([command])
    assert outcome.ok, outcome.message


@pytest.fixture
def running(cli, crm: CrmUnderTest, campaign_db, endpoints) -> Iterator[dict]:
    """A fresh account name (its own topics and consumer group), the wizard run for contacts, then change
    capture, the poller and the mirror service in threads."""
    dsn, contacts = campaign_db[0], crm.profile.tables[1]
    name = f"m{uuid.uuid4().hex[:8]}"
    args, env = crm.account_add_args(name)
    cli(*args, env=env)
    cli("wizard", name, "--tables", contacts, "--yes")
    namespace = crm.connector.discovery(crm.client).namespace
    with mirror_services(name, crm.running.account, endpoints, dsn, poll_seconds=1.0):
        yield {"dsn": dsn, "table": f"{namespace}_{name}.{contacts.lower()}",
               "key": crm.profile.key_of(contacts).lower()}


def test_mirror_follows_the_crm_and_sends_sql_edits_back(running, crm: CrmUnderTest) -> None:
    dsn, table, key, p = running["dsn"], running["table"], running["key"], crm.profile
    ids = sorted(r["id"] for page in crm.connector.query(crm.client).records(p.tables[1], [p.last_name])
                 for r in page)
    wait_for(lambda: scalar(dsn, f"SELECT count(*) FROM {table}") == len(ids), 90,
             "the first read of the contacts in the mirror")

    first, second, third = ids[:3]
    write(crm, "upsert", first, {p.last_name: "FromTheCrm"})  # CRM → mirror
    wait_for(lambda: scalar(dsn, f"SELECT {p.last_name.lower()} FROM {table} WHERE {key} = %s", first)
             == "FromTheCrm", 90, "a CRM edit in the mirror")

    writes_before = crm.running.writes()  # mirror → CRM (the only writer now): changed fields, no ping-pong
    assignments, expected = [f"{p.last_name.lower()} = 'FromSql'"], {p.last_name: "FromSql"}
    if p.multi_select:
        values = [r[0] for r in psycopg.connect(dsn, autocommit=True).execute(
            "SELECT value FROM crmsync.crm_enumeration_values WHERE enumeration = %s ORDER BY position LIMIT 2",
            (p.multi_select[1],))]
        assignments.append(f"{p.multi_select[0].lower()} = '{{{','.join(values)}}}'")
        expected[p.multi_select[0]] = values
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"UPDATE {table} SET {', '.join(assignments)} WHERE {key} = %s", (second,))
    record = wait_for(what="the SQL edit in the CRM", timeout=90, predicate=lambda: (
        r := crm_record(crm, second, list(expected)))[p.last_name] == "FromSql" and r)
    assert {f: record[f] for f in expected} == expected
    time.sleep(5)  # several poll and mirror cycles: nothing may bounce
    assert crm.running.writes() - writes_before == 1

    write(crm, "delete", third, {})  # a CRM delete removes the mirror row
    wait_for(lambda: scalar(dsn, f"SELECT count(*) FROM {table} WHERE {key} = %s", third) == 0, 120,
             "a CRM delete in the mirror")

    with psycopg.connect(dsn, autocommit=True) as conn:  # an insert cannot create a CRM record: refused
        conn.execute(f"INSERT INTO {table} ({key}, {p.last_name.lower()}) VALUES ('not-a-crm-id', 'Nobody')")
    reason = wait_for(what="the refused insert in the rejects", timeout=60, predicate=lambda: scalar(
        dsn, "SELECT reason FROM crmsync.rejects WHERE error_code = 'MIRROR_INSERT_REFUSED'"))
    assert table in reason and "Create the record in the CRM" in reason
