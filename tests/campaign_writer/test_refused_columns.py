"""A value its column cannot hold is the value's fault, not the record's (issue 13): the command is applied
without that column, the column is a reject of its own (`<id>#refused`, abandoned: the same value fails the
same way), and the record's next command is applied — before, the whole command was retried for minutes and
every later command of the record waited behind it. A number with more decimals than the column keeps is
refused too (PostgreSQL would round it, and the two sides would differ for good)."""
from __future__ import annotations

from tests.campaign_writer.conftest import ledger, rows


def _purchase(dsn: str) -> int:
    return rows(dsn, "INSERT INTO purchases (product, amount) VALUES ('Boat', 10) RETURNING id")[0][0]


def test_a_value_too_long_for_its_column_is_left_out_and_the_rest_of_the_record_is_written(writer, commands,
                                                                                           campaign_db):
    dsn, _ = campaign_db
    key = _purchase(dsn)
    bad = commands.upsert("purchases", key={"id": key}, product="Ship", currency="EURO")  # char(3)
    result = writer.apply_batch([bad])
    assert [a.campaign_key for a in result.applied] == [key]
    assert rows(dsn, "SELECT product, currency FROM purchases") == [("Ship", "EUR")]
    [reject] = result.rejects
    assert (reject.error_code, reject.record["id"], reject.record["values"]) == (
        "CRMSYNC_INVALID_VALUE", f"{bad.id}#refused", {"currency": "EURO"})
    assert 'column "currency"' in reject.reason and "too long" in reject.reason
    assert ledger(dsn)[f"{bad.id}#refused"]["status"] == "abandoned"

    after = writer.apply_batch([commands.upsert("purchases", key={"id": key}, currency="USD")])
    assert len(after.applied) == 1 and not after.waiting
    assert rows(dsn, "SELECT product, currency FROM purchases") == [("Ship", "USD")]


def test_a_command_of_only_bad_values_is_abandoned_and_does_not_hold_back_the_next(writer, commands, campaign_db):
    dsn, _ = campaign_db
    key = _purchase(dsn)
    too_big = commands.upsert("purchases", key={"id": key}, amount=10**13)  # numeric(14, 2): 12 digits
    result = writer.apply_batch([too_big])
    assert not result.applied and [r.error_code for r in result.rejects] == ["numeric_value_out_of_range"]
    assert ledger(dsn)[too_big.id]["status"] == "abandoned"
    after = writer.apply_batch([commands.upsert("purchases", key={"id": key}, product="Raft")])
    assert len(after.applied) == 1 and not after.waiting and not after.rejects
    assert rows(dsn, "SELECT product, amount::text FROM purchases") == [("Raft", "10.00")]


def test_a_number_with_more_decimals_than_the_column_keeps_is_refused_not_rounded(writer, commands, campaign_db):
    dsn, _ = campaign_db
    key = _purchase(dsn)
    alone = commands.upsert("purchases", key={"id": key}, amount=1.239)
    with_other = commands.upsert("purchases", key={"id": key}, amount="2.345", product="Canoe")
    exact = commands.upsert("purchases", key={"id": key}, amount=12.5)
    first = writer.apply_batch([alone])
    assert [(r.error_code, r.record["id"]) for r in first.rejects] == [("CRMSYNC_INVALID_VALUE", alone.id)]
    assert "more decimals than numeric(14,2)" in first.rejects[0].reason.replace(", ", ",")
    assert rows(dsn, "SELECT amount::text FROM purchases") == [("10.00",)]
    second = writer.apply_batch([with_other])
    assert [r.record["id"] for r in second.rejects] == [f"{with_other.id}#refused"]
    assert rows(dsn, "SELECT product, amount::text FROM purchases") == [("Canoe", "10.00")]
    third = writer.apply_batch([exact])
    assert len(third.applied) == 1 and not third.rejects
    assert rows(dsn, "SELECT amount::text FROM purchases") == [("12.50",)]
    assert {r["status"] for r in ledger(dsn).values()} == {"abandoned"}
