"""Command semantics of the Campaign writer, on a real PostgreSQL and broker (`apply_batch` directly)."""
from __future__ import annotations

from prometheus_client import REGISTRY

from tests.campaign_writer.conftest import account, consume_rejects, contact, ledger, ref, rows


def test_insert_via_crm_match_writes_crm_ids_and_links(writer, commands, campaign_db):
    dsn, _ = campaign_db
    seen = []
    writer.on_applied = lambda command, key, created: seen.append((command.id, key, created))
    org = commands.upsert("organisations", match=account("001A"), name="Acme", employees=12)
    ann = commands.upsert("recipients", match=contact("003A"), email="ann@example.com", first_name="Ann",
                          birth_date="1990-04-01", organisation_id=ref("001A"))
    bob = commands.upsert("recipients", match=contact("003B"), email="bob@example.com", organisation_id=None)
    result = writer.apply_batch([ann, bob, org])  # the child first: the writer applies parents first

    assert not result.rejects and not result.waiting
    assert [a.created for a in result.applied] == [True, True, True]
    org_id = rows(dsn, "SELECT id FROM organisations WHERE crm_id = '001A'")[0][0]
    people = rows(dsn, "SELECT crm_account, crm_id, email, first_name, birth_date::text, organisation_id "
                       "FROM recipients ORDER BY crm_id")
    assert people == [("acme", "003A", "ann@example.com", "Ann", "1990-04-01", org_id),
                      ("acme", "003B", "bob@example.com", None, None, None)]
    links = rows(dsn, "SELECT crm_account, crm_object, crm_id, campaign_table, campaign_key, linked_by "
                      "FROM crmsync.identity_links ORDER BY crm_id")
    ann_id, bob_id = (r[0] for r in rows(dsn, "SELECT id FROM recipients ORDER BY crm_id"))
    assert links == [("acme", "Account", "001A", "organisations", org_id, "sync"),
                     ("acme", "Contact", "003A", "recipients", ann_id, "sync"),
                     ("acme", "Contact", "003B", "recipients", bob_id, "sync")]
    assert sorted(seen) == sorted([(org.id, org_id, True), (ann.id, ann_id, True), (bob.id, bob_id, True)])
    applied = REGISTRY.get_sample_value("crmsync_writer_applied_total",
                                        {"writer": "writer-campaign", "table": "recipients", "action": "insert"})
    assert applied and applied >= 2
    fresh = REGISTRY.get_sample_value("crmsync_apply_freshness_seconds_count",
                                      {"writer": "writer-campaign", "table": "recipients", "mapping": "recipients",
                                       "direction": "crm→campaign"})  # no mapping registered in this process
    assert fresh and fresh >= 2


def test_upsert_by_match_updates_the_linked_row(writer, commands, campaign_db):
    dsn, _ = campaign_db
    writer.apply_batch([commands.upsert("recipients", match=contact("003A"), email="a@example.com", city="Lyon")])
    result = writer.apply_batch([commands.upsert("recipients", match=contact("003A"), city="Paris")])
    assert [(a.created, a.campaign_key) for a in result.applied] == [(False, 1)]
    assert rows(dsn, "SELECT id, email, city FROM recipients") == [(1, "a@example.com", "Paris")]


def test_update_by_key_and_missing_row_is_not_found(writer, commands, campaign_db):
    dsn, _ = campaign_db
    rid = rows(dsn, "INSERT INTO recipients (email, job_title) VALUES ('k@example.com', 'old') RETURNING id")[0][0]
    result = writer.apply_batch([commands.upsert("recipients", key={"id": rid}, job_title="new", email_opt_out=True),
                                 commands.upsert("recipients", key={"id": rid + 1000}, job_title="ghost")])
    assert [a.campaign_key for a in result.applied] == [rid]
    assert rows(dsn, "SELECT job_title, email_opt_out, crm_id FROM recipients") == [("new", True, None)]
    assert [(r.error_code, r.reason) for r in result.rejects] == [
        ("NOT_FOUND", f'no row in recipients with key {{"id": {rid + 1000}}}')]


def test_key_and_match_links_an_existing_recipient(writer, commands, campaign_db):
    dsn, _ = campaign_db
    rid = rows(dsn, "INSERT INTO recipients (email) VALUES ('m@example.com') RETURNING id")[0][0]
    result = writer.apply_batch([commands.upsert("recipients", key={"id": rid}, match=contact("003M"),
                                                 first_name="Mia")])
    assert [(a.campaign_key, a.created) for a in result.applied] == [(rid, False)]
    assert rows(dsn, "SELECT crm_account, crm_id, first_name FROM recipients") == [("acme", "003M", "Mia")]
    assert rows(dsn, "SELECT crm_object, crm_id, campaign_key, linked_by FROM crmsync.identity_links") == [
        ("Contact", "003M", rid, "match")]
    # the same row later linked to another CRM record of the account (a converted lead) replaces the link
    writer.apply_batch([commands.upsert("recipients", key={"id": rid}, match=contact("003N"))])
    assert rows(dsn, "SELECT crm_id FROM recipients") == [("003N",)]
    assert rows(dsn, "SELECT crm_id, campaign_key FROM crmsync.identity_links") == [("003N", rid)]


def test_deletes_by_key_and_by_match_are_idempotent(writer, commands, campaign_db):
    dsn, _ = campaign_db
    writer.apply_batch([commands.upsert("recipients", match=contact("003A"), email="a@example.com"),
                        commands.upsert("recipients", match=contact("003B"), email="b@example.com")])
    first_id = rows(dsn, "SELECT id FROM recipients WHERE crm_id = '003A'")[0][0]
    deletes = [commands.delete("recipients", key={"id": first_id}), commands.delete("recipients", match=contact("003B")),
               commands.delete("recipients", key={"id": 999_999})]
    result = writer.apply_batch(deletes)
    assert len(result.applied) == 3 and not result.rejects
    assert rows(dsn, "SELECT count(*) FROM recipients") == [(0,)]
    assert rows(dsn, "SELECT count(*) FROM crmsync.identity_links") == [(0,)]
    again = writer.apply_batch(deletes)
    assert len(again.applied) == 3 and not again.rejects


def test_commands_of_one_record_keep_their_order_within_a_batch(writer, commands, campaign_db):
    dsn, _ = campaign_db
    batch = [commands.upsert("recipients", match=contact("003A"), job_title=f"v{n}") for n in range(5)]
    batch.insert(2, commands.upsert("recipients", match=contact("003B"), job_title="other"))
    batch.append(commands.delete("recipients", match=contact("003B")))
    batch.append(commands.upsert("recipients", match=contact("003B"), job_title="reborn"))
    writer.apply_batch(batch)
    assert rows(dsn, "SELECT crm_id, job_title FROM recipients ORDER BY crm_id") == [("003A", "v4"), ("003B", "reborn")]


def test_replaying_a_batch_changes_nothing(writer, commands, campaign_db):
    dsn, _ = campaign_db
    rid = rows(dsn, "INSERT INTO recipients (email) VALUES ('old@example.com') RETURNING id")[0][0]
    gone = rows(dsn, "INSERT INTO recipients (email) VALUES ('gone@example.com') RETURNING id")[0][0]
    batch = [commands.upsert("organisations", match=account("001A"), name="Acme", employees=3, website="acme.io"),
             commands.upsert("recipients", match=contact("003A"), email="a@example.com", organisation_id=ref("001A")),
             commands.upsert("recipients", key={"id": rid}, match=contact("003R"), job_title="linked"),
             commands.upsert("recipients", match=contact("003A"), first_name="Ann"),
             commands.delete("recipients", key={"id": gone})]

    def state() -> list:
        return [rows(dsn, "SELECT * FROM organisations ORDER BY id"), rows(dsn, "SELECT * FROM recipients ORDER BY id"),
                rows(dsn, "SELECT * FROM crmsync.identity_links ORDER BY crm_id"),
                rows(dsn, "SELECT count(*) FROM crmsync.rejects")]

    first = writer.apply_batch(batch)
    assert len(first.applied) == 5
    before = state()
    second = writer.apply_batch(batch)
    assert state() == before  # not even updated_at moved
    assert len(second.applied) == 5 and not any(a.created for a in second.applied)


def test_a_bad_record_is_rejected_with_the_reason_while_the_others_land(writer, commands, campaign_db, endpoints):
    dsn, name = campaign_db
    good = [commands.upsert("organisations", match=account(f"001G{n}"), name=f"Good {n}", employees=n)
            for n in range(3)]
    negative = commands.upsert("organisations", match=account("001BAD"), name="Bad", employees=-1)
    nameless = commands.upsert("organisations", match=account("001NONAME"), employees=5)
    bad_date = commands.upsert("recipients", match=contact("003D"), birth_date="1990-13-45")
    unknown = commands.upsert("recipients", match=contact("003U"), shoe_size=44)
    result = writer.apply_batch([good[0], negative, good[1], nameless, bad_date, unknown, good[2]])

    assert sorted(a.command.id for a in result.applied) == sorted(c.id for c in good)
    assert rows(dsn, "SELECT name, employees FROM organisations ORDER BY name") == [
        ("Good 0", 0), ("Good 1", 1), ("Good 2", 2)]
    by_command = {r.record["id"]: r for r in result.rejects}
    assert by_command[negative.id].error_code == "check_violation"
    assert 'check constraint "organisations_employees_check"' in by_command[negative.id].reason
    assert 'column "employees" = -1' in by_command[negative.id].reason
    assert by_command[nameless.id].error_code == "not_null_violation"
    assert 'column "name"' in by_command[nameless.id].reason
    assert by_command[bad_date.id].error_code.endswith(("datetime_format", "field_overflow"))
    assert 'column "birth_date"' in by_command[bad_date.id].reason
    assert by_command[unknown.id].error_code == "undefined_column" and "'shoe_size'" in by_command[unknown.id].reason
    assert by_command[negative.id].record == {**by_command[negative.id].record, "values": negative.values}

    stored = ledger(dsn)
    assert {cid: stored[cid]["status"] for cid in by_command} == {  # a value its column cannot hold: abandoned
        cid: "abandoned" if cid == bad_date.id else "pending" for cid in by_command}
    assert stored[negative.id]["reason"] == by_command[negative.id].reason
    assert stored[negative.id]["command"]["values"] == {"name": "Bad", "employees": -1}
    assert stored[negative.id]["next_retry_at"] is not None

    published = consume_rejects(endpoints.bootstrap_servers, name, lambda seen: len(seen) >= 4)
    assert {r.id: r.error_code for r in published} == {r.id: r.error_code for r in result.rejects}
    assert all(r.stage == "writer-campaign" and r.side == "campaign" and r.target == name for r in published)
