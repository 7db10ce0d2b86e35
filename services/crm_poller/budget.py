"""A daily API budget for the poller: how often each polled object may be read so the calls stay under it.

Why: a CRM counts API calls per day (Salesforce: 100,000 a day plus per licence) and a poller reading every object
every 2 s spends 43,000 a day per object while nothing happens. The budget (`api_budget_per_day` on the account,
or `api_budget_share` of the daily limit the CRM's client reports through `Client.usage()`) is spread over the
objects the poller polls; objects whose changes are pushed (crmsync.connectors.PushSource) cost nothing while idle
and are not paced — their calls (gap fills, re-reads) are measured and taken off the budget first.

The rule (`Pacer.intervals`):
- each polled object has a measured cost (calls per poll, averaged: a poll is one query most of the time, a few
  more when it re-reads its window or the describe) and an activity (the share of recent polls that found
  changes, averaged);
- the calls per second the budget allows, minus what the push sources spent lately, are shared out in proportion
  to 1 + 4 × activity: a busy object gets up to five times the share of an idle one;
- an object's interval is its cost over its share, never below the configured poll interval (the fastest the
  user asked for) nor above `max_interval`; a share an object cannot use at the fastest interval goes to the
  others.
So the projected calls per day (`projected_per_day`) stay within the budget unless even `max_interval` for
every object would exceed it (a budget too small for the objects): then every object is read every
`max_interval`, and the projection says by how much the budget is exceeded.

Engine code: nothing here knows which CRM it is.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from crmsync.connectors import AccountBase, ApiUsage

SECONDS_PER_DAY = 86_400.0
BUSY_WEIGHT = 4.0  # a busy object's share is up to 1 + BUSY_WEIGHT times an idle one's
SMOOTHING = 0.3  # weight of the newest poll in the averages
OTHER_WINDOW = 900.0  # seconds over which the push sources' calls are averaged
DEFAULT_MAX_INTERVAL = 900.0


def daily_budget(account: AccountBase, usage: ApiUsage | None) -> float | None:
    """The account's budget in calls per day: the configured one, else the share of the CRM's daily limit
    (None when neither is known: no pacing)."""
    if account.api_budget_per_day:
        return float(account.api_budget_per_day)
    if usage is not None and usage.limit and usage.window == "day":
        return usage.limit * account.api_budget_share
    return None


@dataclass
class Pace:
    """What is known of one polled object."""

    cost: float = 1.0  # calls per poll
    activity: float = 1.0  # share of recent polls that found changes (starts busy: a first read is a snapshot)
    interval: float = 0.0
    polls: int = 0

    @property
    def weight(self) -> float:
        return 1.0 + BUSY_WEIGHT * self.activity


class Pacer:
    """Intervals for the polled objects of one account under `budget_per_day` (None: every object at the fastest
    interval)."""

    def __init__(self, min_interval: float, budget_per_day: float | None = None,
                 max_interval: float = DEFAULT_MAX_INTERVAL) -> None:
        self.min_interval = min_interval
        self.max_interval = max(max_interval, min_interval)
        self.budget_per_day = budget_per_day
        self.paces: dict[str, Pace] = {}
        self._other: deque[tuple[float, int]] = deque()  # (when, calls) spent outside polling
        self._started = time.monotonic()

    def add(self, obj: str) -> None:
        self.paces.setdefault(obj, Pace(interval=self.min_interval))
        self._share()

    def record_poll(self, obj: str, calls: int, found_changes: bool) -> float:
        """One poll of `obj` spent `calls` and found changes or not; returns the object's next interval."""
        pace = self.paces.setdefault(obj, Pace(interval=self.min_interval))
        pace.cost = calls if pace.polls == 0 else SMOOTHING * calls + (1 - SMOOTHING) * pace.cost
        pace.cost = max(pace.cost, 0.1)
        pace.activity = SMOOTHING * float(found_changes) + (1 - SMOOTHING) * pace.activity
        pace.polls += 1
        self._share()
        return pace.interval

    def record_other(self, calls: int) -> None:
        """Calls spent outside polling (a push source filling a gap, reading a describe)."""
        if calls:
            self._other.append((time.monotonic(), calls))
        self._share()

    def set_budget(self, budget_per_day: float | None) -> None:
        if budget_per_day != self.budget_per_day:
            self.budget_per_day = budget_per_day
            self._share()

    def interval(self, obj: str) -> float:
        return self.paces[obj].interval if obj in self.paces else self.min_interval

    def other_rate(self) -> float:
        """Calls per second spent outside polling, averaged over the last OTHER_WINDOW seconds (or since the
        start, when that is shorter)."""
        now = time.monotonic()
        while self._other and self._other[0][0] < now - OTHER_WINDOW:
            self._other.popleft()
        span = min(OTHER_WINDOW, max(now - self._started, 60.0))
        return sum(calls for _, calls in self._other) / span

    def projected_per_day(self) -> float:
        """Calls per day at the current intervals, plus the push sources' recent rate."""
        polling = sum(p.cost / p.interval for p in self.paces.values() if p.interval > 0)
        return (polling + self.other_rate()) * SECONDS_PER_DAY

    def _share(self) -> None:
        """Share the allowed call rate out over the objects (see the module docstring)."""
        if not self.paces:
            return
        if self.budget_per_day is None:
            for pace in self.paces.values():
                pace.interval = self.min_interval
            return
        allowed = max(0.0, self.budget_per_day / SECONDS_PER_DAY - self.other_rate())
        rates: dict[str, float] = {}
        open_ = dict(self.paces)
        while open_:
            total = sum(p.weight for p in open_.values())
            shares = {obj: allowed * p.weight / total for obj, p in open_.items()}
            capped = {obj: p.cost / self.min_interval for obj, p in open_.items()
                      if shares[obj] > p.cost / self.min_interval}
            if not capped:
                rates.update(shares)
                break
            rates.update(capped)
            allowed -= sum(capped.values())
            for obj in capped:
                del open_[obj]
        for obj, pace in self.paces.items():
            rate = rates.get(obj, 0.0)
            interval = pace.cost / rate if rate > 0 else self.max_interval
            pace.interval = min(self.max_interval, max(self.min_interval, interval))
