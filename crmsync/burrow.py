"""Consumer health without thresholds: Burrow's evaluation rules over a sliding window of offset samples.

Why Burrow's rules: a lag of 10,000 messages is fine while it shrinks and bad while it grows, and no single
threshold knows which. LinkedIn's Burrow judges the *trend* of committed offsets and lag instead
(https://github.com/linkedin/Burrow/wiki/Consumer-Lag-Evaluation-Rules). Per partition, over the window:

1. any sample with lag 0                                     → OK (the consumer caught up at some point)
2. the committed offset went backwards                       → REWIND
3. the offset never moved and the group has no live member   → STOP  (nobody consumes)
4. the offset never moved while members are there            → STALL (stuck on something)
5. the offset moved but the lag never shrank                 → WARN  (falling behind)
6. otherwise                                                 → OK

Burrow tells STOP from STALL by the time of the last commit (its window holds commit events); we sample
committed offsets periodically, so the broker's group state ("empty" = no member) tells them apart.
A group is as bad as its worst partition. Nothing here does I/O: the dashboard feeds samples in, the tests
feed synthetic histories.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

OK, WARN, REWIND, STALL, STOP = "OK", "WARN", "REWIND", "STALL", "STOP"
SEVERITY = {OK: 0, WARN: 1, REWIND: 2, STALL: 3, STOP: 4}
WINDOW = 10  # samples per partition, Burrow's default
NO_MEMBER_STATES = frozenset({"empty", "dead"})


@dataclass(frozen=True)
class Sample:
    at: float  # epoch seconds
    committed: int  # -1: the group never committed on this partition
    end: int  # offset after the partition's last message

    @property
    def lag(self) -> int:
        return max(0, self.end - max(self.committed, 0))


@dataclass(frozen=True)
class Verdict:
    status: str
    lag: int
    complete: bool  # the window is full: a judgement on less is provisional
    consume_rate: float | None  # messages/s committed over the window
    produce_rate: float | None  # messages/s appended over the window
    eta_seconds: float | None  # lag ÷ consume rate; 0 without lag; None when nothing is consumed


@dataclass
class PartitionWindow:
    """The last `size` samples of one partition of one group."""

    size: int = WINDOW
    samples: deque[Sample] = field(default_factory=deque)

    def add(self, sample: Sample) -> None:
        self.samples.append(sample)
        while len(self.samples) > self.size:
            self.samples.popleft()


def _rate(first: Sample, last: Sample, value: str) -> float | None:
    span = last.at - first.at
    if span <= 0:
        return None
    start, end = getattr(first, value), getattr(last, value)
    return max(0.0, (max(end, 0) - max(start, 0)) / span)


def status(samples: list[Sample], group_state: str = "unknown") -> str:
    """Burrow's rules (see the module docstring) on one partition's samples, oldest first."""
    if len(samples) < 2 or any(s.lag == 0 for s in samples):
        return OK
    offsets = [s.committed for s in samples]
    if any(later < earlier for earlier, later in zip(offsets, offsets[1:])):
        return REWIND
    if offsets[0] == offsets[-1]:
        return STOP if group_state in NO_MEMBER_STATES else STALL
    lags = [s.lag for s in samples]
    if all(later >= earlier for earlier, later in zip(lags, lags[1:])):
        return WARN
    return OK


def evaluate(window: PartitionWindow, group_state: str = "unknown") -> Verdict:
    """Status, rates and the ETA to catch up for one partition."""
    samples = list(window.samples)
    if not samples:
        return Verdict(OK, 0, False, None, None, 0.0)
    first, last = samples[0], samples[-1]
    consume, produce = _rate(first, last, "committed"), _rate(first, last, "end")
    return Verdict(status(samples, group_state), last.lag, len(samples) >= window.size, consume, produce,
                   eta(last.lag, consume))


def eta(lag: int, consume_rate: float | None) -> float | None:
    """Seconds to work off `lag` at the observed consume rate (kafbat#1377's request); None if it never will."""
    if lag == 0:
        return 0.0
    if not consume_rate:
        return None
    return lag / consume_rate


def worst(statuses: list[str]) -> str:
    """A group's status: its worst partition's (OK when it has none)."""
    return max(statuses, key=SEVERITY.__getitem__, default=OK)
