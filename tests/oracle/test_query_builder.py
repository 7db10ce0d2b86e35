"""connectors.oracle.query: literals, operators and the 4,096-character cap (pure; the sandbox round trips are
in test_client_rest.py)."""
from __future__ import annotations

from datetime import date, datetime, timezone

import pytest

from connectors.oracle.query import (QueryTooLong, order_by, rest_all, rest_any_of_chunks, rest_literal, rest_term,
                                     ws_any_of, ws_literal, ws_term)
from connectors.oracle.timezone import UserClock

LA = UserClock("America/Los_Angeles")


def test_rest_literals() -> None:
    assert rest_literal("O'Brien") == "'O\\'Brien'"
    assert rest_literal('a"b\\c*d') == "'a\\\"b\\\\c\\*d'"
    assert rest_literal("Acme*", wildcard=True) == "'Acme*'"
    assert rest_literal(True) == "true" and rest_literal(3.5) == "3.5" and rest_literal(7) == "7"
    assert rest_literal(date(2024, 2, 29)) == "'2024-02-29'"
    assert rest_literal(datetime(2024, 7, 1, 16, 0, tzinfo=timezone.utc), LA) == "'2024-07-01T09:00:00Z'"
    with pytest.raises(ValueError, match="UserClock"):
        rest_literal(datetime(2024, 7, 1, tzinfo=timezone.utc))


def test_rest_terms_and_ordering() -> None:
    assert rest_term("ModifiedDate", ">=", datetime(2024, 11, 3, 9, 30, tzinfo=timezone.utc), LA) == \
        "ModifiedDate >= '2024-11-03T01:30:00Z'"
    assert rest_term("AccountName", "like", "Acme*") == "AccountName LIKE 'Acme*'"
    assert rest_all(rest_term("A", "=", "x"), rest_term("B", "<", 3)) == "A = 'x';B < 3"
    assert order_by(("ModifiedDate", "asc"), "Id") == "ModifiedDate:asc,Id:asc"
    with pytest.raises(ValueError, match="operators"):
        rest_term("A", "<>", "x")
    with pytest.raises(ValueError, match="integration tag"):
        rest_term("A; B", "=", "x")


def test_the_cap() -> None:
    with pytest.raises(QueryTooLong, match="4096"):
        rest_all(rest_term("ExternalSystemId", "=", "x" * 4100))
    chunks = list(rest_any_of_chunks("ExternalSystemId", [f"KEY-{n:05d}" for n in range(1000)],
                                     prefix="ModifiedDate >= '2024-01-01T00:00:00Z'"))
    assert all(len(c) <= 4096 and c.startswith("ModifiedDate >= '2024-01-01T00:00:00Z';ExternalSystemId = ")
               for c in chunks)
    assert sum(c.count("'KEY-") for c in chunks) == 1000


def test_ws_literals_and_terms() -> None:
    assert ws_literal("O'Neil") == "'O''Neil'"
    assert ws_literal("a*b?c\\") == "'a\\*b\\?c\\\\'"
    assert ws_literal(datetime(2024, 11, 3, 1, 30, tzinfo=timezone.utc)) == "'2024-11-03T01:30:00Z'"
    assert ws_term(">=", 5) == ">= '5'"
    assert ws_term("LIKE", "Sm*") == "LIKE 'Sm*'"
    assert ws_any_of(["a", "b"]) == "= 'a' OR = 'b'"
    with pytest.raises(ValueError, match="aware"):
        ws_literal(datetime(2024, 1, 1))
