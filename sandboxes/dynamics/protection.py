"""Dataverse service protection API limits, per user, over a sliding window.

learn.microsoft.com/power-apps/developer/data-platform/api-limits: per user and per web server, in a 300 s sliding
window, at most 6,000 requests (error 0x80072322) and 20 minutes of combined execution time (0x80072321); at most
52 concurrent requests (0x80072326, enforced at once). A refused request is answered 429 with `Retry-After`
(seconds) and Dataverse's error body. Every response carries the remaining budget:
`x-ms-ratelimit-burst-remaining-xrm-requests` (requests left in the window) and
`x-ms-ratelimit-time-remaining-xrm-requests` (execution seconds left, two decimals; the docs don't give the unit,
the sandbox uses seconds).

The sandbox is one "web server", so the limits are simply per user. Time is the sandbox clock, so moving the
clock (admin API) ends a window. The admin API can shrink the limits for tests (`/__sandbox/limits`).
"""
from __future__ import annotations

import math
from collections import defaultdict, deque
from dataclasses import dataclass

from .errors import CONCURRENCY_EXCEEDED, EXECUTION_TIME_EXCEEDED, REQUESTS_EXCEEDED, DataverseError
from .settings import OrgSettings


@dataclass
class Throttled(Exception):
    error: DataverseError
    retry_after: int


class Protection:
    def __init__(self, settings: OrgSettings) -> None:
        self.settings = settings
        self.reset()

    def reset(self) -> None:
        self._window: defaultdict[str, deque[tuple[float, float]]] = defaultdict(deque)  # (start, seconds)
        self._in_flight: defaultdict[str, int] = defaultdict(int)
        self.throttled = 0

    def admit(self, user: str, now: float) -> None:
        """Count a request in; raises Throttled when a limit is reached (the request then doesn't count)."""
        window = self._prune(user, now)
        s = self.settings
        if self._in_flight[user] >= s.max_concurrent_requests:
            raise self._throttle(CONCURRENCY_EXCEEDED, f"Number of concurrent requests exceeded the limit of "
                                 f"{s.max_concurrent_requests}.", 1)
        if len(window) >= s.requests_per_window:
            raise self._throttle(REQUESTS_EXCEEDED, f"Number of requests exceeded the limit of "
                                 f"{s.requests_per_window} over time window of {s.window_seconds} seconds.",
                                 self._until_room(window, now))
        if sum(seconds for _, seconds in window) >= s.execution_seconds_per_window:
            raise self._throttle(EXECUTION_TIME_EXCEEDED, f"Combined execution time of incoming requests exceeded "
                                 f"limit of {int(s.execution_seconds_per_window * 1000):,} milliseconds over time "
                                 f"window of {s.window_seconds} seconds. Decrease number of concurrent requests or "
                                 "reduce the duration of requests and try again later.",
                                 self._until_room(window, now))
        self._in_flight[user] += 1
        window.append((now, 0.0))

    def finish(self, user: str, started: float, seconds: float) -> None:
        """Record the execution time of a request admitted at `started`."""
        self._in_flight[user] = max(0, self._in_flight[user] - 1)
        window = self._window[user]
        for i in range(len(window) - 1, -1, -1):
            if window[i][0] == started and window[i][1] == 0.0:
                window[i] = (started, seconds)
                break

    def remaining(self, user: str, now: float) -> tuple[int, float]:
        window = self._prune(user, now)
        s = self.settings
        return max(0, s.requests_per_window - len(window)), \
            max(0.0, s.execution_seconds_per_window - sum(seconds for _, seconds in window))

    def headers(self, user: str, now: float) -> list[tuple[str, str]]:
        requests, seconds = self.remaining(user, now)
        return [("x-ms-ratelimit-burst-remaining-xrm-requests", str(requests)),
                ("x-ms-ratelimit-time-remaining-xrm-requests", f"{seconds:.2f}")]

    def snapshot(self) -> dict[str, object]:
        return {"throttled": self.throttled, "in_window": {u: len(w) for u, w in self._window.items()},
                "in_flight": dict(self._in_flight)}

    def _prune(self, user: str, now: float) -> deque[tuple[float, float]]:
        window = self._window[user]
        horizon = now - self.settings.window_seconds
        while window and window[0][0] <= horizon:
            window.popleft()
        return window

    def _until_room(self, window: deque[tuple[float, float]], now: float) -> int:
        oldest = window[0][0] if window else now
        return max(1, math.ceil(oldest + self.settings.window_seconds - now))

    def _throttle(self, code: str, message: str, retry_after: int) -> Throttled:
        self.throttled += 1
        return Throttled(DataverseError(429, code, message), retry_after)
