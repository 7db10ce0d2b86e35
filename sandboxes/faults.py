"""Switchable fault injection for any sandbox: random API failures drawn from a seeded RNG.

A sandbox names its failure kinds (e.g. "session_expiry", "rate_limited", "server_error"); an admin sets a
probability per kind plus an optional stall ("slow_probability" / "slow_seconds") and an RNG seed. `decide()` is
called once per API request, after authentication and before anything else happens, so a faulted request has no
side effect. Every decision draws the same number of random values whatever fires, so one seed always fails the
same requests in the same way.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class FaultDecision:
    kind: str | None  # one of the sandbox's kinds, or None
    delay: float  # seconds to stall before answering, 0 for none


class Faults:
    def __init__(self, kinds: Sequence[str]) -> None:
        self.kinds = tuple(kinds)
        self.probabilities = (*self.kinds, "slow_probability")
        self.keys = (*self.probabilities, "slow_seconds", "seed")
        self.configure({})

    def configure(self, spec: dict[str, Any]) -> dict[str, float]:
        """Replace the settings; omitted keys are 0, so {} switches every fault off."""
        unknown = set(spec) - set(self.keys)
        if unknown:
            raise ValueError(f"unknown fault settings: {sorted(unknown)}; known: {list(self.keys)}")
        try:
            settings = {k: float(spec.get(k, 0)) for k in self.keys}
        except (TypeError, ValueError):
            raise ValueError("fault settings must be numbers") from None
        if any(not 0 <= settings[k] <= 1 for k in self.probabilities) or settings["slow_seconds"] < 0:
            raise ValueError("probabilities must be within [0, 1] and slow_seconds >= 0")
        self.settings = settings
        self._rng = random.Random(int(settings["seed"]))
        return settings

    def decide(self) -> FaultDecision:
        draws = [self._rng.random() for _ in self.probabilities]
        delay = self.settings["slow_seconds"] if draws[-1] < self.settings["slow_probability"] else 0.0
        for kind, draw in zip(self.kinds, draws):
            if draw < self.settings[kind]:
                return FaultDecision(kind, delay)
        return FaultDecision(None, delay)
