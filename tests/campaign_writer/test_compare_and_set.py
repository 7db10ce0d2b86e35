"""Compare-and-set: the Campaign writer writes a field only if the row still holds what the decision saw.

A decision made by the streams can be overtaken by a user edit of the same row before the writer applies it
(issue: an older CRM value overwrote a later Campaign edit, silently). With `expect`, that field is left as the
user made it — the user's edit is a change of its own, decided by the streams — and the command's other fields
are still written.
"""
from __future__ import annotations

from prometheus_client import REGISTRY

from crmsync import pg
from tests.campaign_writer.conftest import contact, rows


def execute(dsn: str, statement: str, params: tuple = ()) -> None:
    with pg.connect(dsn, autocommit=True) as conn:
        conn.execute(statement, params)


def _superseded_count() -> float:
    return REGISTRY.get_sample_value("crmsync_writer_superseded_fields_total",
                                     {"writer": "writer-campaign", "table": "recipients"}) or 0.0


def _insert(dsn: str, **values) -> int:
    names = list(values)
    return rows(dsn, f"INSERT INTO recipients ({', '.join(names)}) VALUES ({', '.join(['%s'] * len(names))}) "
                     "RETURNING id", tuple(values.values()))[0][0]


def test_a_field_the_user_changed_after_the_decision_is_left_alone(writer, commands, campaign_db):
    dsn, _ = campaign_db
    key = _insert(dsn, email="ann@example.com", last_name="Lee", job_title="Buyer")
    before = _superseded_count()
    # decided while the row held last_name 'Lee' and job_title 'Buyer'; the user then set job_title 'CMO'
    execute(dsn, "UPDATE recipients SET job_title = 'CMO' WHERE id = %s", (key,))
    command = commands.upsert("recipients", key={"id": key}, last_name="Li", job_title="Sales Director")
    command.expect = {"last_name": "Lee", "job_title": "Buyer"}
    [applied] = writer.apply_batch([command]).applied
    assert rows(dsn, "SELECT last_name, job_title FROM recipients WHERE id = %s", (key,)) == [("Li", "CMO")]
    assert applied.superseded == ["job_title"]
    assert _superseded_count() == before + 1


def test_without_expectations_every_value_is_written(writer, commands, campaign_db):
    dsn, _ = campaign_db
    key = _insert(dsn, email="bo@example.com", job_title="CMO")
    [applied] = writer.apply_batch([commands.upsert("recipients", key={"id": key}, job_title="CEO")]).applied
    assert rows(dsn, "SELECT job_title FROM recipients WHERE id = %s", (key,)) == [("CEO",)]
    assert applied.superseded == []


def test_a_replayed_command_whose_value_is_already_there_is_not_superseded(writer, commands, campaign_db):
    dsn, _ = campaign_db
    key = _insert(dsn, email="cy@example.com", job_title="Buyer")
    command = commands.upsert("recipients", key={"id": key}, job_title="CMO")
    command.expect = {"job_title": "Buyer"}
    writer.apply_batch([command])
    [again] = writer.apply_batch([command]).applied  # at-least-once: the same command once more
    assert again.superseded == [] and rows(dsn, "SELECT job_title FROM recipients WHERE id = %s", (key,)) == [("CMO",)]


def test_values_compare_as_their_column_type(writer, commands, campaign_db):
    """The streams' canonical form keeps milliseconds and float precision: a timestamp stored with
    microseconds and a numeric with trailing zeros still equal the expectation built from them."""
    dsn, _ = campaign_db
    key = _insert(dsn, email="di@example.com", birth_date="1990-02-03")
    execute(dsn, "ALTER TABLE recipients ADD COLUMN IF NOT EXISTS seen_at timestamptz, "
              "ADD COLUMN IF NOT EXISTS score numeric(12,4)")
    execute(dsn, "UPDATE recipients SET seen_at = '2026-01-02 03:04:05.678912+00', score = 12.5000 WHERE id = %s", (key,))
    writer.catalog.forget("recipients")
    command = commands.upsert("recipients", key={"id": key}, birth_date="1991-01-01", seen_at="2026-02-01T00:00:00.000Z",
                              score=13)
    command.expect = {"birth_date": "1990-02-03", "seen_at": "2026-01-02T03:04:05.678Z", "score": 12.5}
    [applied] = writer.apply_batch([command]).applied
    assert applied.superseded == []
    assert rows(dsn, "SELECT birth_date::text, seen_at = '2026-02-01T00:00:00Z', score FROM recipients "
                     "WHERE id = %s", (key,)) == [("1991-01-01", True, 13)]


def test_a_create_replayed_after_the_user_edited_the_row_keeps_the_edit(writer, commands, campaign_db):
    """A CRM-created record's insert carries `expect` None for every field: replayed after a crash (the row is
    already there and the user has edited it since), it leaves the edit in place."""
    dsn, _ = campaign_db
    create = commands.upsert("recipients", match=contact("003Z"), email="zo@example.com", job_title="Buyer")
    create.expect = {"email": None, "job_title": None}
    [first] = writer.apply_batch([create]).applied
    assert first.created
    execute(dsn, "UPDATE recipients SET job_title = 'CMO' WHERE crm_id = '003Z'")
    [replayed] = writer.apply_batch([create]).applied
    assert not replayed.created and replayed.superseded == ["job_title"]
    assert rows(dsn, "SELECT email, job_title FROM recipients WHERE crm_id = '003Z'") == [("zo@example.com", "CMO")]


def test_compare_and_set_through_the_crm_link_before_the_key_is_known(writer, commands, campaign_db):
    dsn, _ = campaign_db
    writer.apply_batch([commands.upsert("recipients", match=contact("003Y"), email="yu@example.com",
                                        last_name="Ng", job_title="Buyer")])
    execute(dsn, "UPDATE recipients SET last_name = 'Ngo' WHERE crm_id = '003Y'")
    update = commands.upsert("recipients", match=contact("003Y"), last_name="Nguyen", job_title="CFO")
    update.expect = {"last_name": "Ng", "job_title": "Buyer"}
    [applied] = writer.apply_batch([update]).applied
    assert applied.superseded == ["last_name"]
    assert rows(dsn, "SELECT last_name, job_title FROM recipients WHERE crm_id = '003Y'") == [("Ngo", "CFO")]
