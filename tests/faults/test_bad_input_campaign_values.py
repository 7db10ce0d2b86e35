"""Bad input, entry point: Campaign row values. Each corpus value (tests/faults/corpus.py) is written into a linked
recipient with SQL, as a Campaign user or a Campaign workflow would. Each is either refused by PostgreSQL itself
(nothing enters the pipeline), or applied in the CRM, or lands in the rejects ledger with a reason that names the
field and says what to fix. After each, an ordinary edit of the same recipient must reach the CRM: the pipeline
keeps flowing. The last test checks that nothing else was lost: both sides agree on every record without an
open reject."""
from __future__ import annotations

from typing import Any

import psycopg
import pytest

from crmsync import pg
from tests.faults.conftest import ValuePipeline
from tests.faults.corpus import EMOJI, INVALID_DATES, LARGE, NUL

# (Campaign column, value, what must happen, the CRM field, what the CRM must hold when applied)
CASES: dict[str, tuple[str, Any, str, str, Any]] = {
    "NUL in text": ("first_name", NUL, "refused", "", None),  # PostgreSQL text cannot hold a NUL
    "300 KB text, longer than the CRM field": ("job_title", LARGE, "rejected", "Title", None),
    "emoji and 4-byte UTF-8": ("first_name", EMOJI, "applied", "FirstName", EMOJI),
    "timestamp-like text": ("job_title", INVALID_DATES["before year 1 in UTC"], "applied", "Title",
                            INVALID_DATES["before year 1 in UTC"]),
    "year 0": ("birth_date", INVALID_DATES["year 0"], "refused", "", None),
    "February 30": ("birth_date", INVALID_DATES["February 30"], "refused", "", None),
    "year 99999 (PostgreSQL has it, Python and the CRM do not)": ("birth_date", INVALID_DATES["year 99999"],
                                                                 "rejected", "Birthdate", None),
    "a date before year 1 in UTC": ("birth_date", INVALID_DATES["before year 1 in UTC"], "either", "Birthdate",
                                    "0001-01-01"),
    "a number beyond the column's precision": ("score", 1234.5, "refused", "", None),
    "a number rounded to the column's scale": ("score", 1.239, "applied", "Score__c", 1.24),
    "text longer than the column": ("code", "ABCDEFGHIJ", "refused", "", None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_campaign_value_is_refused_applied_or_rejected_and_the_next_edit_arrives(values: ValuePipeline,
                                                                                       case: str) -> None:
    column, value, outcome, crm_field, held = CASES[case]
    crm_id, key = values.pair()
    with pg.connect(values.world.found.campaign_dsn, autocommit=True) as conn:
        try:
            conn.execute(f"UPDATE recipients SET {column} = %s WHERE id = %s", (value, key))
            got = "taken"
        except psycopg.Error as exc:
            got = "refused"
            assert str(exc).strip(), "PostgreSQL says why"
    assert (got == "refused") == (outcome == "refused"), f"{case}: PostgreSQL {got} it"
    if got == "taken":
        def settled() -> str | None:
            found = values.crm(crm_id).get(crm_field)
            if held is not None and found == held:
                return "applied"
            return "rejected" if values.rejects(crm_id, key) else None

        result = values.wait(settled, f"{case}: applied in the CRM or in the rejects ledger")
        assert outcome in (result, "either"), f"{case}: {result}"
        if result == "rejected":
            [reject, *_] = values.rejects(crm_id, key)
            assert crm_field in reject["reason"] or column in reject["reason"], reject
    with pg.connect(values.world.found.campaign_dsn, autocommit=True) as conn:
        conn.execute("UPDATE recipients SET city = %s WHERE id = %s", (f"after {case}"[:40], key))
    values.wait(lambda: values.crm(crm_id)["MailingCity"] == f"after {case}"[:40], f"the edit after {case}")


def test_nothing_else_was_lost(values: ValuePipeline) -> None:
    """Every record without an open reject agrees on both sides."""
    checker, mapping = values.world.checker(), values.world.settings.mappings[0]
    values.wait(lambda: checker.compare(mapping).converged, "both sides to agree", timeout=120)

