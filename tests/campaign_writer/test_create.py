"""`create`: the row of a new CRM record, inserted with the key the streams allocated. A replay (after a crash,
before the offsets were committed) finds the row and changes nothing a person edited meanwhile."""
from __future__ import annotations

from tests.campaign_writer.conftest import contact, rows


def _next_key(dsn: str) -> int:
    return rows(dsn, "SELECT nextval('recipients_id_seq')")[0][0]


def test_create_inserts_with_the_allocated_key_and_links_it(campaign_db, commands, writer):
    dsn, _ = campaign_db
    key = _next_key(dsn)
    result = writer.apply_batch([commands.create("recipients", key={"id": key}, match=contact("003N"),
                                                 email="n@example.com", first_name="Nia")])
    assert [(a.campaign_key, a.created) for a in result.applied] == [(key, True)]
    assert rows(dsn, "SELECT id, crm_account, crm_id, first_name FROM recipients") == [(key, "acme", "003N", "Nia")]
    assert rows(dsn, "SELECT crm_id, campaign_table, campaign_key FROM crmsync.identity_links") == [
        ("003N", "recipients", key)]


def test_a_replayed_create_keeps_what_a_person_entered_since(campaign_db, commands, writer):
    dsn, _ = campaign_db
    key = _next_key(dsn)
    create = commands.create("recipients", key={"id": key}, match=contact("003P"), email="p@example.com",
                             first_name="Pat", city=None)
    writer.apply_batch([create])
    rows(dsn, "UPDATE recipients SET first_name = 'Patricia' WHERE id = %s RETURNING id", (key,))
    replay = commands.create("recipients", key={"id": key}, match=contact("003P"), email="p@example.com",
                             first_name="Pat", city=None)
    [applied] = writer.apply_batch([replay]).applied
    assert (applied.campaign_key, applied.created, applied.superseded) == (key, False, ["first_name"])
    assert rows(dsn, "SELECT count(*), min(first_name) FROM recipients") == [(1, "Patricia")]


def test_a_create_without_its_key_or_link_is_refused(campaign_db, commands, writer):
    command = commands.create("recipients", key={"id": 5}, match=None, email="q@example.com")
    [reject] = writer.apply_batch([command]).rejects
    assert reject.error_code == "CRMSYNC_BAD_COMMAND" and "key and its CRM link" in reject.reason


def test_a_create_replayed_after_a_person_deleted_the_row_does_not_bring_it_back(campaign_db, commands, writer):
    """Found by the fault run (`deleted recipients came back`): the writer killed after applying a batch and
    before committing its offsets applies it again; a row created by it and deleted by a person in between must
    stay deleted — that delete is a change of its own, which the streams decide. The replay alone (one by one, as
    after a failed batch) and beside new creates (the batch path) are answered as done, not re-inserted."""
    dsn, _ = campaign_db
    first, second = _next_key(dsn), _next_key(dsn)
    made = [commands.create("recipients", key={"id": key}, match=contact(f"003D{key}"), email=f"d{key}@example.com",
                            first_name="Del") for key in (first, second)]
    writer.apply_batch(made)
    rows(dsn, "DELETE FROM recipients WHERE id = ANY(%s) RETURNING id", ([first, second],))
    fresh = _next_key(dsn)
    replayed = writer.apply_batch([*made, commands.create("recipients", key={"id": fresh}, match=contact("003NEW"),
                                                          email="new@example.com", first_name="New")])
    assert replayed.rejects == []
    assert sorted((a.campaign_key, a.created) for a in replayed.applied) == [(first, False), (second, False),
                                                                             (fresh, True)]
    assert rows(dsn, "SELECT id FROM recipients ORDER BY id") == [(fresh,)]
    [again] = writer.apply_batch([made[0]]).applied
    assert (again.campaign_key, again.created) == (first, False)
    assert rows(dsn, "SELECT count(*) FROM recipients WHERE id = %s", (first,)) == [(0,)]
