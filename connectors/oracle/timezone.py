"""Oracle CRM On Demand local datetimes <-> UTC, correct across daylight-saving changes.

OOD shows datetimes in the signed-in user's time zone: the REST API writes `YYYY-MM-DDTHH:mm:ssZ` where the `Z`
is a literal and the digits are the user's wall-clock time ("Date and Time Formats", REST API Developer's Guide,
OnDemRestAPI_Overview15.html), and Web Services v1.0-style services (DeletedItemQueryPage) write
`MM/DD/YYYY hh:mm:ss` in the same zone. A wall-clock time does not always name one instant:

- when DST ends, an hour repeats (America/Los_Angeles, 2024-11-03: 01:00-01:59 happens at PDT and again at PST),
  so `01:30` is *ambiguous*;
- when DST starts, an hour is skipped (2024-03-10: 02:00-02:59 never happens), so `02:30` is *missing*.

The rule this module applies when turning a wall-clock time into an instant: **the earliest instant at which the
user's clock shows that time or later.** For an ordinary time that is simply the instant; for an ambiguous time it
is the first occurrence (fold=0, the daylight-time one); for a missing time it is the transition instant itself
(03:00 PDT = 10:00 UTC for 02:30). The result is never later than any instant the wall time could stand for, so a
sync cursor converted back from a record's ModifiedDate never jumps past a record it has not seen: at worst the
records of the repeated hour are read twice, which the consumer absorbs (changes are idempotent per record id and
ModifiedDate). Turning an instant into a wall-clock time (for a `q` value) is exact; the server reads an
ambiguous value as its first occurrence too, so a query `ModifiedDate >= <cursor>` errs towards re-reading.
"""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

UTC = timezone.utc
_REST = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})Z?$")
_V1 = re.compile(r"^(\d{2})/(\d{2})/(\d{4}) (\d{2}):(\d{2}):(\d{2})$")


class UserClock:
    """Conversions for one OOD user's time zone (an IANA name such as 'America/Los_Angeles')."""

    def __init__(self, zone: str | ZoneInfo) -> None:
        self.zone = zone if isinstance(zone, ZoneInfo) else ZoneInfo(zone)

    # ---------------------------------------------------------------- wall clock -> UTC

    def to_utc(self, wall: datetime) -> datetime:
        """The earliest instant at which the user's clock shows `wall` (naive) or later; see the module doc."""
        if wall.tzinfo is not None:
            raise ValueError(f"{wall.isoformat()} already has a time zone; pass the naive wall-clock time")
        if self.is_missing(wall):
            return self._transition_after(wall)
        return wall.replace(tzinfo=self.zone, fold=0).astimezone(UTC)

    def parse_rest(self, text: str) -> datetime:
        """A REST datetime ('2024-11-03T01:30:00Z', user's wall clock) as an aware UTC datetime."""
        match = _REST.match(text.strip())
        if not match:
            raise ValueError(f"{text!r} is not an OOD REST datetime (YYYY-MM-DDTHH:MM:SSZ)")
        return self.to_utc(datetime(*map(int, match.groups())))

    def parse_v1(self, text: str) -> datetime:
        """A Web Services v1.0 datetime ('11/03/2024 01:30:00', user's wall clock) as an aware UTC datetime."""
        match = _V1.match(text.strip())
        if not match:
            raise ValueError(f"{text!r} is not an OOD v1.0 datetime (MM/DD/YYYY hh:mm:ss)")
        month, day, year, hour, minute, second = map(int, match.groups())
        return self.to_utc(datetime(year, month, day, hour, minute, second))

    def wall_of(self, text: str) -> datetime:
        """The naive wall-clock time a REST ('2024-11-03T01:30:00Z') or v1.0 ('11/03/2024 01:30:00') value shows."""
        if match := _REST.match(text.strip()):
            return datetime(*map(int, match.groups()))
        if match := _V1.match(text.strip()):
            month, day, year, hour, minute, second = map(int, match.groups())
            return datetime(year, month, day, hour, minute, second)
        raise ValueError(f"{text!r} is not an OOD wall-clock datetime (YYYY-MM-DDTHH:MM:SSZ or MM/DD/YYYY hh:mm:ss)")

    def second_reading(self, wall: datetime) -> datetime:
        """The later of the two instants an ambiguous wall-clock time stands for (its second occurrence)."""
        return wall.replace(tzinfo=self.zone, fold=1).astimezone(UTC)

    def reads_back(self, moment: datetime) -> bool:
        """True when the wall-clock form of `moment` reads back as `moment` itself (false only for instants in
        the second occurrence of a repeated hour: the server reads their wall time as the first occurrence)."""
        return self.to_utc(self.to_wall(moment)) == moment.astimezone(UTC).replace(microsecond=0)

    # ---------------------------------------------------------------- UTC -> wall clock

    def to_wall(self, moment: datetime) -> datetime:
        """The user's wall-clock time (naive) at an aware instant."""
        if moment.tzinfo is None:
            raise ValueError(f"{moment.isoformat()} has no time zone; pass an aware datetime (UTC)")
        return moment.astimezone(self.zone).replace(tzinfo=None)

    def format_rest(self, moment: datetime) -> str:
        """An instant as the REST API writes it: the user's wall clock followed by a literal Z."""
        return self.to_wall(moment).strftime("%Y-%m-%dT%H:%M:%SZ")

    def format_v1(self, moment: datetime) -> str:
        return self.to_wall(moment).strftime("%m/%d/%Y %H:%M:%S")

    # ---------------------------------------------------------------- classification

    def is_ambiguous(self, wall: datetime) -> bool:
        """True for a wall-clock time that happens twice (the hour repeated when DST ends)."""
        first = wall.replace(tzinfo=self.zone, fold=0)
        second = wall.replace(tzinfo=self.zone, fold=1)
        return first.utcoffset() != second.utcoffset() and not self.is_missing(wall)

    def is_missing(self, wall: datetime) -> bool:
        """True for a wall-clock time that never happens (skipped when DST starts)."""
        round_trip = wall.replace(tzinfo=self.zone).astimezone(UTC).astimezone(self.zone).replace(tzinfo=None)
        return round_trip != wall

    def offset_now(self, now: datetime | None = None) -> timedelta:
        moment = now or datetime.now(UTC)
        offset = moment.astimezone(self.zone).utcoffset()
        return offset if offset is not None else timedelta(0)

    def _transition_after(self, wall: datetime) -> datetime:
        """The first instant after the gap that swallowed `wall` (binary search between its two readings)."""
        low = wall.replace(tzinfo=self.zone, fold=1).astimezone(UTC)  # before the gap, e.g. 01:30 PST
        high = wall.replace(tzinfo=self.zone, fold=0).astimezone(UTC)  # after the gap, e.g. 03:30 PDT
        low, high = min(low, high), max(low, high)
        after = high.astimezone(self.zone).utcoffset()
        while high - low > timedelta(seconds=1):
            middle = low + (high - low) / 2
            if middle.astimezone(self.zone).utcoffset() == after:
                high = middle
            else:
                low = middle
        return high.replace(microsecond=0)
