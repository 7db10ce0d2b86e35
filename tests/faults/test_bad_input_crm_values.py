"""Bad input, entry point: CRM record values. Each corpus value (tests/faults/corpus.py) is written into a linked
contact through Salesforce's REST API (simple-salesforce, against the sandbox), as a CRM user or an integration
would. Each is either refused by the CRM itself with its error (nothing enters the pipeline), or applied in
Campaign, or lands in the rejects ledger with a reason that names the field and says what to fix. After each, an
ordinary edit of the same contact must reach Campaign: the pipeline keeps flowing. The last test checks that
nothing else was lost."""
from __future__ import annotations

from typing import Any

import pytest
from simple_salesforce.exceptions import SalesforceError

from tests.faults.conftest import ValuePipeline
from tests.faults.corpus import EMOJI, INVALID_DATES, LARGE, NUL

# (CRM field, value, what must happen, the Campaign column, what Campaign must hold when applied)
CASES: dict[str, tuple[str, Any, str, str, Any]] = {
    # PostgreSQL text cannot hold a NUL: Campaign gets U+FFFD in its place (docs/two-way-sync.md)
    "NUL in text": ("FirstName", NUL, "applied", "first_name", NUL.replace("\x00", "\ufffd")),
    "300 KB text, longer than the CRM field": ("Title", LARGE, "refused", "", None),  # STRING_TOO_LONG
    "emoji and 4-byte UTF-8": ("Title", EMOJI, "applied", "job_title", EMOJI),
    "timestamp-like text": ("Title", INVALID_DATES["before year 1 in UTC"], "applied", "job_title",
                            INVALID_DATES["before year 1 in UTC"]),
    **{f"{name} in a date field": ("Birthdate", value, "refused", "", None)  # JSON_PARSER_ERROR
       for name, value in INVALID_DATES.items()},
    "a number beyond the column's precision": ("Score__c", 123456.789, "rejected", "score", None),
    "a number with more decimals than the column": ("Score__c", 1.239, "rejected", "score", None),
    "text longer than the column": ("Code__c", "ABCDEFGHIJ", "rejected", "code", None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_crm_value_is_refused_applied_or_rejected_and_the_next_edit_arrives(values: ValuePipeline,
                                                                                  case: str) -> None:
    field, value, outcome, column, held = CASES[case]
    crm_id, key = values.pair()
    try:
        values.world.client.call("update", lambda sf: sf.Contact.update(crm_id, {field: value}))
        got = "taken"
    except SalesforceError as exc:
        got = "refused"
        assert exc.content[0]["errorCode"] and exc.content[0]["message"], "Salesforce says why"
    assert (got == "refused") == (outcome == "refused"), f"{case}: Salesforce {got} it"
    if got == "taken":
        def settled() -> str | None:
            if held is not None and values.campaign(key).get(column) == held:
                return "applied"
            return "rejected" if values.rejects(crm_id, key) else None

        result = values.wait(settled, f"{case}: applied in Campaign or in the rejects ledger")
        assert result == outcome, f"{case}: {result}"
        if result == "rejected":
            [reject, *_] = values.rejects(crm_id, key)
            assert column in reject["reason"] or field in reject["reason"], reject
    after = f"after {case}"[:40]
    values.world.client.call("update", lambda sf: sf.Contact.update(crm_id, {"MailingCity": after}))
    values.wait(lambda: values.campaign(key)["city"] == after, f"the edit after {case}")


def test_nothing_else_was_lost(values: ValuePipeline) -> None:
    """Every record without an open reject agrees on both sides."""
    checker, mapping = values.world.checker(), values.world.settings.mappings[0]
    values.wait(lambda: checker.compare(mapping).converged, "both sides to agree", timeout=120)
