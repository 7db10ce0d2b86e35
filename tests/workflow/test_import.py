"""Example 1 (import contacts → reconcile → deduplicate → update data) and the import options."""
from __future__ import annotations

import uuid

from crmsync import topics
from tests.conftest import consume_changes

from .conftest import ACCOUNT, Env


def make_contacts(client, people: list[dict]) -> list[str]:
    results = client.collections_create("Contact", people)
    assert all(r["success"] for r in results), results
    return [r["id"] for r in results]


def test_import_contacts_reconciles_deduplicates_and_updates(env: Env, client) -> None:
    tag = uuid.uuid4().hex[:6]
    known = f"Ann.{tag}@Example.com"
    twin = f"twin.{tag}@example.com"
    ids = make_contacts(client, [
        {"FirstName": "Ann", "LastName": f"Known {tag}", "Email": known},
        {"FirstName": "Bob", "LastName": f"New {tag}", "Email": f"bob.{tag}@example.com", "Birthdate": "1980-02-03"},
        {"FirstName": "Old", "LastName": f"Twin {tag}", "Email": twin},
    ])
    newer = make_contacts(client, [{"FirstName": "New", "LastName": f"Twin {tag}", "Email": twin.upper()}])[0]
    env.execute("INSERT INTO recipients (email, first_name) VALUES (%s, 'Annie')", (f" ann.{tag}@example.COM",))

    result = env.run("01-import-contacts.yaml")

    assert result.ok, [(a.name, a.message) for a in result.activities]
    rows = {r[0]: r[1:] for r in env.rows("SELECT crm_id, email, first_name, last_name, birth_date::text, crm_account "
                                          "FROM recipients WHERE last_name LIKE %s", (f"% {tag}",))}
    assert set(rows) == {ids[0], ids[1], newer}  # the older twin was dropped by deduplicate
    assert rows[ids[0]][1] == "Ann"  # the existing recipient was linked and updated, not duplicated
    assert env.rows("SELECT count(*) FROM recipients WHERE lower(btrim(email)) = lower(%s)", (known,)) == [(1,)]
    assert rows[ids[1]][3] == "1980-02-03" and rows[newer][1] == "New"
    assert {r[4] for r in rows.values()} == {ACCOUNT}
    links = env.rows("SELECT crm_id FROM crmsync.identity_links WHERE crm_object = 'Contact'")
    assert {ids[0], ids[1], newer} <= {r[0] for r in links}
    dedup = next(a for a in result.activities if a.name == "deduplicate")
    assert ids[2] in [r["Id"] for r in dedup.outputs.reject]

    # an import is a backfill of the change topic: the streams see the same change ids as from the poller
    topic = topics.changes("crm", ACCOUNT, "Contact")
    def ours(found: list) -> list:  # other modules' sandboxes hand out the same ids: recognise ours by name
        return [c for c in found if c.after and str(c.after.get("LastName", "")).endswith(f" {tag}")]

    seen = consume_changes(env.endpoints.bootstrap_servers, [topic],
                           lambda found: set(ids) <= {c.key["id"] for c in ours(found)}, timeout=30)
    mine = ours(seen)
    assert set(ids) <= {c.key["id"] for c in mine}
    assert all(c.op == "r" and c.id == f"crm:{ACCOUNT}:Contact:{c.key['id']}:{c.after['SystemModstamp']}"
               for c in mine)

    again = env.run("01-import-contacts.yaml")  # a rerun changes nothing
    assert again.ok
    update = next(a for a in again.activities if a.name == "update")
    assert "unchanged" in update.outputs.note
