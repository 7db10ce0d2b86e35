"""How hard to insist and how long to wait between tries: one policy for API calls and for the rejects ledger.

The wait before try n+1 is initial·2^n seconds, capped at `max_wait`, minus a random share (`jitter`) so that the
retries of many calls or records spread out instead of arriving together.
"""
from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8
    initial_wait: float = 0.5
    max_wait: float = 30.0
    jitter: float = 0.5  # up to this fraction of a wait is taken off at random
    retrying_timeout: float = 300.0  # the rejects ledger: a requeued command not settled by then goes again

    def delay(self, attempt: int) -> float:
        full = min(self.max_wait, self.initial_wait * 2 ** max(attempt, 0))
        return full * (1 - self.jitter * random.random())
