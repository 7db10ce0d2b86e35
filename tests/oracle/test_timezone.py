"""connectors.oracle.timezone: OOD wall-clock datetimes <-> UTC, including the repeated and the missing hour."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from connectors.oracle.timezone import UserClock

LA = UserClock("America/Los_Angeles")
UTC = timezone.utc


def test_ordinary_times_round_trip() -> None:
    for moment in (datetime(2024, 1, 15, 17, 0, tzinfo=UTC), datetime(2024, 7, 1, 16, 0, 5, tzinfo=UTC)):
        assert LA.parse_rest(LA.format_rest(moment)) == moment
        assert LA.parse_v1(LA.format_v1(moment)) == moment
    assert LA.format_rest(datetime(2024, 7, 1, 16, 0, tzinfo=UTC)) == "2024-07-01T09:00:00Z"
    assert LA.format_v1(datetime(2024, 1, 15, 17, 0, tzinfo=UTC)) == "01/15/2024 09:00:00"


def test_the_repeated_hour_reads_as_its_first_occurrence() -> None:
    wall = datetime(2024, 11, 3, 1, 30)
    assert LA.is_ambiguous(wall) and not LA.is_missing(wall)
    first, second = datetime(2024, 11, 3, 8, 30, tzinfo=UTC), datetime(2024, 11, 3, 9, 30, tzinfo=UTC)
    assert LA.format_rest(first) == LA.format_rest(second) == "2024-11-03T01:30:00Z"
    assert LA.to_utc(wall) == first
    assert LA.parse_rest("2024-11-03T01:30:00Z") <= second, "never later than the instant it may stand for"


def test_the_missing_hour_maps_to_the_transition() -> None:
    wall = datetime(2024, 3, 10, 2, 30)
    assert LA.is_missing(wall) and not LA.is_ambiguous(wall)
    transition = datetime(2024, 3, 10, 10, 0, tzinfo=UTC)
    assert LA.to_utc(wall) == transition
    assert LA.format_rest(transition) == "2024-03-10T03:00:00Z"
    assert LA.to_utc(datetime(2024, 3, 10, 1, 59, 59)) == transition - timedelta(seconds=1)


@pytest.mark.parametrize("zone, wall, expected", [
    ("Australia/Lord_Howe", datetime(2024, 10, 6, 2, 15), datetime(2024, 10, 5, 15, 30, tzinfo=UTC)),  # 30 min
    ("Europe/Paris", datetime(2024, 3, 31, 2, 30), datetime(2024, 3, 31, 1, 0, tzinfo=UTC)),
    ("Europe/Paris", datetime(2024, 10, 27, 2, 30), datetime(2024, 10, 27, 0, 30, tzinfo=UTC)),
    ("Asia/Tokyo", datetime(2024, 3, 10, 2, 30), datetime(2024, 3, 9, 17, 30, tzinfo=UTC)),  # no DST
])
def test_other_zones(zone: str, wall: datetime, expected: datetime) -> None:
    assert UserClock(zone).to_utc(wall) == expected


def test_the_earliest_instant_rule_is_monotonic_over_a_whole_day() -> None:
    """Walking the wall clock forward never walks the instant backwards, across both transitions."""
    for day in (datetime(2024, 3, 10), datetime(2024, 11, 3)):
        instants = [LA.to_utc(day + timedelta(minutes=m)) for m in range(0, 24 * 60, 5)]
        assert instants == sorted(instants)


def test_bad_input_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="YYYY-MM-DDTHH:MM:SSZ"):
        LA.parse_rest("2024-11-03 01:30")
    with pytest.raises(ValueError, match="naive"):
        LA.to_utc(datetime(2024, 1, 1, tzinfo=UTC))
    with pytest.raises(ValueError, match="aware"):
        LA.format_rest(datetime(2024, 1, 1))
