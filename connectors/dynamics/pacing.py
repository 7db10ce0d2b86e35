"""Client-side pacing under Dataverse's service-protection limits, so a steady flow of work never meets a 429.

Dataverse counts, per user and over a sliding 300-second window, the requests sent (6,000) and their combined
execution time (1,200 s); past either limit it answers 429 with `Retry-After`
(learn.microsoft.com/power-apps/developer/data-platform/api-limits). The pacer keeps the same two sliding
windows over this client's own requests and lets a request go only while both stay under `headroom` of the
limits. Other clients of the same user spend the same budget: every response reports what is left of it
(`x-ms-ratelimit-burst-remaining-xrm-requests`, `x-ms-ratelimit-time-remaining-xrm-requests`), and when that drops
into the reserve the headroom leaves, the pacer spaces requests at the steady pace (window / limit: 50 ms for
the documented limits), stretched up to twenty-fold as the reserve runs out.

A 429 that still happens (a burst elsewhere, a server restarted with fresh limits) is not the pacer's business:
the client waits `Retry-After` and retries. Clock and sleep are parameters, so tests can drive the pacer.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable

from .auth import ServiceProtection

MARGIN_SHARE, MAX_MARGIN_SECONDS = 0.05, 1.0  # a request stays in our window this much longer than in the
#                                              server's (it reaches the server later than we sent it)
MIN_RESERVE_SHARE = 0.05  # in the reserve, requests are spaced at most 1 / this times the steady pace


class Pacer:
    def __init__(self, limits: ServiceProtection, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.limits = limits
        self.request_budget = max(1, int(limits.requests_per_window * limits.headroom))
        self.seconds_budget = limits.execution_seconds_per_window * limits.headroom
        self.margin = min(MAX_MARGIN_SECONDS, limits.window_seconds * MARGIN_SHARE)
        self.clock, self.sleep = clock, sleep
        self._sent: deque[float] = deque()  # when each request in the window was sent
        self._spent: deque[tuple[float, float]] = deque()  # (finished at, execution seconds)
        self._lock = threading.Lock()
        self.waited = 0.0  # seconds spent waiting to stay under the limits

    def acquire(self) -> None:
        """Block until one more request fits in both windows, then count it as sent."""
        with self._lock:
            while (wait := self._wait_for(self.clock())) > 0:
                self._pause(wait)
            self._sent.append(self.clock())

    def record(self, seconds: float, remaining_requests: int | None, remaining_seconds: float | None) -> None:
        """A response arrived after `seconds`; slow down if the server says the shared budget is in its reserve."""
        with self._lock:
            self._spent.append((self.clock(), seconds))
            pause = max(self._reserve_pause(remaining_requests, self.limits.requests_per_window, self.request_budget),
                        self._reserve_pause(remaining_seconds, self.limits.execution_seconds_per_window,
                                            self.seconds_budget))
            if pause > 0:
                self._pause(pause)

    def in_window(self) -> int:
        """Requests this client sent within the current window."""
        with self._lock:
            self._prune(self.clock())
            return len(self._sent)

    # ---------------------------------------------------------------- internals

    def _wait_for(self, now: float) -> float:
        self._prune(now)
        window = self.limits.window_seconds + self.margin
        waits = [0.0]
        if len(self._sent) >= self.request_budget:
            waits.append(self._sent[0] + window - now)
        if sum(seconds for _, seconds in self._spent) >= self.seconds_budget:
            waits.append(self._spent[0][0] + window - now)
        return max(waits)

    def _prune(self, now: float) -> None:
        horizon = now - self.limits.window_seconds - self.margin
        while self._sent and self._sent[0] <= horizon:
            self._sent.popleft()
        while self._spent and self._spent[0][0] <= horizon:
            self._spent.popleft()

    def _reserve_pause(self, remaining: float | None, limit: float, budget: float) -> float:
        """Seconds to pause when the server's remaining budget is inside the reserve (limit - budget): the steady
        pace (window / requests allowed), stretched up to 20 times as the reserve runs out."""
        reserve = limit - budget
        if remaining is None or reserve <= 0 or remaining >= reserve:
            return 0.0
        depth = (reserve - remaining) / reserve  # 0 at the reserve's edge, 1 when nothing is left
        pace = self.limits.window_seconds / self.limits.requests_per_window
        return pace / max(1.0 - depth, MIN_RESERVE_SHARE)

    def _pause(self, seconds: float) -> None:
        self.waited += seconds
        self.sleep(seconds)
