"""connectors.oracle.pacer on a simulated clock: fixed windows, guard time, minimum interval, rate-limit waits."""
from __future__ import annotations

from connectors.oracle.pacer import Pacer


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sent: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def pacer(fake: FakeTime, **kwargs: object) -> Pacer:
    return Pacer(kwargs.pop("limit", 30), kwargs.pop("window", 60.0), clock=fake.clock, sleep=fake.sleep,
                 **kwargs)  # type: ignore[arg-type]


def windows(times: list[float], origin: float, window: float) -> dict[int, int]:
    counts: dict[int, int] = {}
    for t in times:
        counts[int((t - origin) // window)] = counts.get(int((t - origin) // window), 0) + 1
    return counts


def test_never_more_than_the_limit_in_a_window() -> None:
    fake = FakeTime()
    p = pacer(fake)
    for _ in range(100):
        p.acquire()
        fake.sent.append(fake.now)
        fake.now += 0.2  # each request takes 200 ms
    counts = windows(fake.sent, 1000.0, 60.0)
    assert max(counts.values()) == 30 and sum(counts.values()) == 100
    assert all(t - 1000.0 - 60 * int((t - 1000.0) // 60) < 60 - 0.5 for t in fake.sent), "the guard is kept"
    assert p.requests == 100 and p.rate_limited_count == 0 and p.waited > 0


def test_budget_reports_use_and_reset() -> None:
    fake = FakeTime()
    p = pacer(fake, limit=5, window=10.0)
    for _ in range(3):
        p.acquire()
    budget = p.budget()
    assert (budget.used, budget.remaining, budget.limit) == (3, 2, 5)
    assert budget.resets_in == 10.0
    fake.now += 10.0
    assert p.budget().used == 0


def test_rate_limited_waits_for_the_next_window_and_counts() -> None:
    fake = FakeTime()
    p = pacer(fake, limit=30, window=60.0)
    p.acquire()
    fake.now += 12.0
    p.rate_limited()
    assert fake.now == 1060.0 and p.rate_limited_count == 1
    p.acquire()
    assert p.budget().used == 1
    p.rate_limited(retry_after=0.25)
    assert fake.now == 1060.25 and p.rate_limited_count == 2


def test_restart_follows_a_new_session() -> None:
    fake = FakeTime()
    p = pacer(fake, limit=2, window=60.0)
    p.acquire()
    p.acquire()
    fake.now += 5
    p.restart()
    p.acquire()
    assert fake.now == 1005.0, "a new session starts with a fresh budget"


def test_minimum_interval_counts_from_the_answer() -> None:
    fake = FakeTime()
    p = pacer(fake, limit=20, window=1.0, min_interval=0.05, guard=0.0)
    starts = []
    for _ in range(5):
        p.acquire()
        starts.append(fake.now)
        fake.now += 0.03  # the answer takes 30 ms
        p.release()
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert all(gap >= 0.08 - 1e-9 for gap in gaps)
