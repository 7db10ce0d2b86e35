"""A client-side pacer for Oracle CRM On Demand's per-session request limits.

REST: "The REST Request Rate Limit is 30 requests for each minute ... the REST request rate count starts at zero
[when a session is established] ... returns to zero at the end of each defined time period, which is one minute
and is not a rolling time period" (REST API Developer's Guide, OnDemRestAPI_Overview18.html). Web Services: 20
requests a second, "measured as a minimum of 1/20th second wait time between requests" (OnDemWebSvcs_Limiters3).

The pacer mirrors the server's fixed windows from the moment the session was established (`restart`), counts every
request it lets through (`acquire`) and, once the window's budget is spent, sleeps until the next window. Windows
are aligned to the client's receipt of the sign-in response, which is no earlier than the server's start of the
session; `guard` seconds at the end of each window are left unused so a request sent just before the boundary
cannot arrive in the server's next window. If the server still answers with the rate-limit error (another client
on the same session, clock skew, a restarted server), `rate_limited()` records it and waits for the next window;
the caller then retries. `min_interval` spaces requests (the Web Services rule).

The pacer takes its clock and sleep function as arguments, so tests can drive it without waiting.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Budget:
    """Where the current window stands."""
    used: int
    limit: int
    resets_in: float  # seconds until the next window

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)


class Pacer:
    def __init__(self, limit: int, window: float, *, min_interval: float = 0.0, guard: float = 0.5,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("a pacer needs limit >= 1 and window > 0 seconds")
        self.limit, self.window, self.min_interval = limit, window, min_interval
        self.guard = min(guard, window / 4)
        self.clock, self.sleep = clock, sleep
        self._lock = threading.Lock()
        self.requests = 0  # all requests let through, over every window and session
        self.rate_limited_count = 0  # rate-limit errors the server still answered with
        self.waited = 0.0  # seconds spent sleeping to stay under the limits
        self.restart()

    def restart(self) -> None:
        """A new session: the server's count starts at zero now."""
        self._origin = self.clock()
        self._window_index = 0
        self._used = 0
        self._last: float | None = None

    def acquire(self) -> None:
        """Block until one more request fits in the current window (and the minimum interval), then count it."""
        with self._lock:
            while True:
                now = self.clock()
                self._roll(now)
                wait = self._wait_for(now)
                if wait <= 0:
                    break
                self._pause(wait)
            self._used += 1
            self.requests += 1
            self._last = self.clock()

    def release(self) -> None:
        """The answer to the last request arrived: the minimum interval counts from now, because the server
        measures it between the arrivals of requests and the last one has certainly arrived by now."""
        with self._lock:
            self._last = self.clock()

    def rate_limited(self, retry_after: float | None = None) -> None:
        """The server refused a request for its rate: count it and wait for the next window (or `retry_after`)."""
        with self._lock:
            self.rate_limited_count += 1
            now = self.clock()
            self._roll(now)
            wait = retry_after if retry_after is not None else self._window_end(now) - now
            self._pause(max(wait, 0.0))

    def budget(self) -> Budget:
        with self._lock:
            now = self.clock()
            self._roll(now)
            return Budget(self._used, self.limit, max(0.0, self._window_end(now) - now))

    # ---------------------------------------------------------------- internals

    def _roll(self, now: float) -> None:
        index = int((now - self._origin) // self.window)
        if index != self._window_index:
            self._window_index, self._used = index, 0

    def _window_end(self, now: float) -> float:
        return self._origin + (int((now - self._origin) // self.window) + 1) * self.window

    def _wait_for(self, now: float) -> float:
        """Seconds to wait before the next request may go (0 when it may go now)."""
        end = self._window_end(now)
        if self._used >= self.limit or now > end - self.guard:
            return end - now + 1e-3
        if self._last is not None and self.min_interval:
            return self._last + self.min_interval - now
        return 0.0

    def _pause(self, seconds: float) -> None:
        self.waited += seconds
        self.sleep(seconds)
