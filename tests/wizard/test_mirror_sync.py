"""Mirror tables kept current both ways by the running services (capture, poller, mirror), without restarts:
CRM edits land in the mirror, SQL edits land in the CRM (changed fields only, multi-select included, no
ping-pong), inserts are refused into the rejects, a field added in the CRM is followed after a wizard re-run,
and the scheduled formula refresh repairs a stale formula value."""
from __future__ import annotations

import time
import uuid
from typing import Any, Iterator

import psycopg
import pytest

from connectors.salesforce.client import SalesforceClient
from tests.waiting import wait_for
from tests.wizard.mirror_services import mirror_services


def scalar(dsn: str, query: str, *params: Any) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def contact_writes(sf) -> int:
    return sum(sf.admin("stats")["writes"].get("Contact", {}).values())


@pytest.fixture
def running(cli, account, sf, campaign_db, endpoints, secrets) -> Iterator[dict]:
    """A fresh account name (its own topics and consumer group on the shared broker), wizard run for Contact,
    then change capture, the poller and the mirror service running in threads."""
    dsn = campaign_db[0]
    name = f"m{uuid.uuid4().hex[:8]}"
    cli("account", "add", name, "--login-url", account.login_url, "--username", account.username,
        "--client-id", account.client_id, "--ca-file", str(account.ca_file),
        env={"CRMSYNC_ACCOUNT_PASSWORD": secrets["CRMSYNC_SF_PASSWORD"],
             "CRMSYNC_ACCOUNT_SECURITY_TOKEN": secrets["CRMSYNC_SF_SECURITY_TOKEN"],
             "CRMSYNC_ACCOUNT_CLIENT_SECRET": secrets["CRMSYNC_SF_CLIENT_SECRET"]})
    cli("wizard", name, "--tables", "Contact", "--yes")
    with mirror_services(name, account.model_dump(), endpoints, dsn, formula_refresh_seconds=2):
        yield {"name": name, "dsn": dsn, "table": f"sfdc_{name}.contact", "client": SalesforceClient(name, account)}


def test_mirror_follows_the_crm_and_sends_sql_edits_back(running, sf) -> None:
    dsn, table, client = running["dsn"], running["table"], running["client"]
    total = client.call("query", lambda s: s.query("SELECT COUNT() FROM Contact"))["totalSize"]
    wait_for(lambda: scalar(dsn, f"SELECT count(*) FROM {table}") == total, 60,
             "the first read of Contact in the mirror")

    # CRM → mirror
    first, second = [r["Id"] for r in next(client.query_all_pages("SELECT Id FROM Contact ORDER BY Id LIMIT 2"))]
    client.collections_update("Contact", [{"id": first, "FirstName": "FromTheCrm"}])
    wait_for(lambda: scalar(dsn, f"SELECT firstname FROM {table} WHERE id = %s", first) == "FromTheCrm", 60,
             "a CRM edit in the mirror")

    # mirror → CRM: only the changed fields, a multi-select as 'a;b', and no ping-pong
    writes_before = contact_writes(sf)
    stamp_before = scalar(dsn, f"SELECT systemmodstamp FROM {table} WHERE id = %s", second)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"UPDATE {table} SET lastname = 'FromSql', interests__c = '{{Golf,Wine}}' WHERE id = %s",
                     (second,))
    record = wait_for(what="the SQL edit in the CRM", predicate=lambda: (r := client.call(
        "get", lambda s: s.Contact.get(second)))["LastName"] == "FromSql" and r)
    assert record["Interests__c"] == "Golf;Wine"
    wait_for(what="the echo of that write back in the mirror (its new modstamp)", predicate=lambda: scalar(
        dsn, f"SELECT systemmodstamp FROM {table} WHERE id = %s", second) != stamp_before)
    time.sleep(4)  # several poll and mirror cycles: nothing may bounce
    assert contact_writes(sf) - writes_before == 1

    # an insert cannot create a CRM record (no id): refused into the rejects, with the way out
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"INSERT INTO {table} (id, lastname) VALUES ('003NOTACRMID0000', 'Nobody')")
    reason = wait_for(what="the refused insert in the rejects", predicate=lambda: scalar(
        dsn, "SELECT reason FROM crmsync.rejects WHERE error_code = 'MIRROR_INSERT_REFUSED'"))
    assert f"{table}" in reason and "Create the record in the CRM" in reason

    # a read-only formula edited in SQL is not sent; the scheduled refresh (every 2 s here) puts it right
    domain = scalar(dsn, f"SELECT email_domain__c FROM {table} WHERE id = %s", second)
    assert domain
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"UPDATE {table} SET email_domain__c = 'stale.example' WHERE id = %s", (second,))
    wait_for(what="the formula refresh", predicate=lambda: scalar(
        dsn, f"SELECT email_domain__c FROM {table} WHERE id = %s", second) == domain, timeout=30)
    assert contact_writes(sf) - writes_before == 1


def test_a_field_added_in_the_crm_is_followed_after_a_wizard_rerun(running, sf, cli) -> None:
    dsn, table, client, name = running["dsn"], running["table"], running["client"], running["name"]
    sf.admin("fields", {"object": "Contact", "name": "Hobby__c", "type": "string", "label": "Hobby"})
    cli("wizard", name, "--yes")  # re-run with last time's tables: the column is added online
    some_id = next(client.query_all_pages("SELECT Id FROM Contact ORDER BY Id DESC LIMIT 1"))[0]["Id"]
    client.collections_update("Contact", [{"id": some_id, "Hobby__c": "Sailing"}])
    wait_for(what="the new field's value in the mirror, services not restarted", predicate=lambda: scalar(
        dsn, f"SELECT hobby__c FROM {table} WHERE id = %s", some_id) == "Sailing", timeout=90)
