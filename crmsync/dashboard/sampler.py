"""Measure every few seconds, keep the last hour in memory, judge each consumer group.

Why a sampler: Burrow's rules need a window of samples, the charts need a history (users asked Burrow for
graphs over time for years), and the page must not hit the broker once per open browser tab. One thread
samples; the web handlers only read the newest snapshot and the ring buffer.

Measured here, from the broker: lag per group / topic / partition in messages and in seconds (message
timestamps), the group's state, the Burrow verdict and the ETA; exported as Prometheus metrics too (like a
lag exporter). Read from the services' /metrics: end-to-end freshness per mapping and direction, the CRM API
budget, the change-capture slot lag and the pollers' cursor age.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from prometheus_client import Gauge

from crmsync import burrow, lag
from crmsync.config import Settings
from crmsync.dashboard.scrape import Series, samples, scrape_all
from crmsync.observability import mapping_labels

log = logging.getLogger("crmsync.dashboard")

LAG_MESSAGES = Gauge("crmsync_consumer_lag_messages", "Messages not consumed yet (end offset − committed offset)",
                     ["group", "topic", "partition"])
LAG_SECONDS = Gauge("crmsync_consumer_lag_seconds", "Age of the oldest message not consumed yet (its timestamp)",
                    ["group", "topic", "partition"])
GROUP_STATUS = Gauge("crmsync_consumer_group_status",
                     "Burrow-like verdict of the group: 0 OK, 1 WARN, 2 REWIND, 3 STALL, 4 STOP", ["group"])
GROUP_ETA = Gauge("crmsync_consumer_group_eta_seconds", "Seconds to catch up at the observed consume rate "
                  "(-1: not consuming)", ["group"])


@dataclass
class PartitionView:
    topic: str
    partition: int
    committed: int
    end: int
    lag: int
    lag_seconds: float | None
    status: str


@dataclass
class GroupView:
    group: str
    service: str
    direction: str
    state: str
    status: str
    lag: int
    lag_seconds: float | None
    eta_seconds: float | None
    consume_rate: float | None
    produce_rate: float | None
    complete: bool
    partitions: list[PartitionView]


class Sampler:
    """Samples lag and the services' metrics every `interval` seconds into a ring buffer of `history` seconds."""

    def __init__(self, settings: Settings, bootstrap_servers: str, targets: dict[str, str] | None = None, *,
                 interval: float = 5.0, history: float = 3600.0, window: int = burrow.WINDOW) -> None:
        self.settings = settings
        self.bootstrap_servers = bootstrap_servers
        self.targets = targets or {}
        self.interval = interval
        self.window = window
        self.groups = lag.consumer_groups(settings)
        self.windows: dict[tuple[str, str, int], burrow.PartitionWindow] = {}
        self.history: deque[dict[str, Any]] = deque(maxlen=int(history / interval) + 1)
        self.latest: dict[str, Any] = {"at": None, "groups": [], "freshness": [], "api": [], "capture": [],
                                       "pollers": [], "targets": {}}
        self._lock = threading.Lock()

    # -- measuring ---------------------------------------------------------------------------------------------
    def sample_once(self) -> dict[str, Any]:
        """Measure everything once; the snapshot is also what /api/status returns."""
        now = time.time()
        groups = [self._group(spec, now) for spec in self.groups]
        series, health = scrape_all(self.targets)
        snapshot = {"at": now, "groups": [asdict(g) for g in groups], "freshness": self._freshness(series),
                    "api": _api_budget(series), "capture": _labelled(series, "crmsync_capture_slot_lag_bytes"),
                    "pollers": _labelled(series, "crmsync_poller_cursor_age_seconds"), "targets": health}
        with self._lock:
            self.latest = snapshot
            self.history.append(_point(snapshot))
        return snapshot

    def _group(self, spec: lag.GroupSpec, now: float) -> GroupView:
        lags = lag.group_lag(self.bootstrap_servers, spec.group, list(spec.topics))
        seconds = lag.lag_seconds(lags, lag.first_unconsumed_timestamps(self.bootstrap_servers, lags), now)
        state = lag.group_state(self.bootstrap_servers, spec.group)
        partitions, verdicts = [], []
        for item in lags:
            window = self.windows.setdefault((spec.group, item.topic, item.partition),
                                             burrow.PartitionWindow(self.window))
            window.add(burrow.Sample(now, item.committed, item.end))
            verdict = burrow.evaluate(window, state)
            verdicts.append(verdict)
            partitions.append(PartitionView(item.topic, item.partition, item.committed, item.end, item.lag,
                                            seconds[(item.topic, item.partition)], verdict.status))
        view = _summarise(spec, state, partitions, verdicts)
        _export(view)
        return view

    def _freshness(self, series: Series) -> list[dict[str, Any]]:
        """Per mapping and direction: freshness of the last batch, and the mean since the writer started."""
        sums = {_key(l): v for l, v in samples(series, "crmsync_apply_freshness_seconds_sum")}
        counts = {_key(l): v for l, v in samples(series, "crmsync_apply_freshness_seconds_count")}
        rows = []
        for labels, last in samples(series, "crmsync_apply_freshness_last_seconds"):
            mapping, direction = labels.get("mapping"), labels.get("direction")
            if not (mapping and direction):  # a service of an older version
                mapping, direction = mapping_labels(labels["writer"], labels["table"], self.settings.mappings)
            count = counts.get(_key(labels), 0.0)
            rows.append({"mapping": mapping, "direction": direction, "writer": labels["writer"],
                         "table": labels["table"], "last_seconds": last, "count": int(count),
                         "mean_seconds": sums.get(_key(labels), 0.0) / count if count else None})
        return sorted(rows, key=lambda r: (r["mapping"], r["direction"]))

    # -- reading ---------------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return self.latest

    def points(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.history)

    # -- running ---------------------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.sample_once()
            except Exception:  # noqa: BLE001 - the broker may be restarting; the next sample tries again
                log.exception("dashboard sample failed")
            stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(stop,), name="dashboard-sampler", daemon=True)
        thread.start()
        return thread


def _summarise(spec: lag.GroupSpec, state: str, partitions: list[PartitionView],
               verdicts: list[burrow.Verdict]) -> GroupView:
    """A group's numbers: total lag, the oldest unconsumed message, rates and ETA over all its partitions."""
    total = sum(p.lag for p in partitions)
    known = [p.lag_seconds for p in partitions if p.lag_seconds is not None]
    oldest = max(known) if known else (0.0 if total == 0 else None)  # None: a timestamp could not be read
    consume = _total([v.consume_rate for v in verdicts])
    produce = _total([v.produce_rate for v in verdicts])
    complete = bool(verdicts) and all(v.complete for v in verdicts)
    return GroupView(spec.group, spec.service, spec.direction, state, burrow.worst([v.status for v in verdicts]),
                     total, oldest, burrow.eta(total, consume), consume, produce, complete, partitions)


def _total(rates: list[float | None]) -> float | None:
    """Sum of the partitions' rates; None while no partition has two samples yet."""
    known = [rate for rate in rates if rate is not None]
    return sum(known) if known else None


def _export(view: GroupView) -> None:
    for p in view.partitions:
        LAG_MESSAGES.labels(view.group, p.topic, str(p.partition)).set(p.lag)
        if p.lag_seconds is not None:
            LAG_SECONDS.labels(view.group, p.topic, str(p.partition)).set(p.lag_seconds)
    GROUP_STATUS.labels(view.group).set(burrow.SEVERITY[view.status])
    GROUP_ETA.labels(view.group).set(-1 if view.eta_seconds is None else view.eta_seconds)


def _key(labels: dict[str, str]) -> tuple[str, str]:
    return labels.get("writer", ""), labels.get("table", "")


def _labelled(series: Series, name: str) -> list[dict[str, Any]]:
    return [{**labels, "value": value} for labels, value in samples(series, name)]


def _api_budget(series: Series) -> list[dict[str, Any]]:
    """API requests used / limit / remaining per CRM account in the CRM's own budget window (a day, 5 minutes, a
    minute: crmsync/api_budget.py), as the CRM last reported them to any of our services; the poller's daily budget
    and the calls per day it projects at its pace (services/crm_poller/budget.py)."""
    limits: dict[str, float] = {}
    used: dict[str, float] = {}  # several services report (a CRM may count per session): the tightest is shown
    windows: dict[str, str] = {}
    for labels, value in samples(series, "crmsync_crm_api_limit"):
        limits[labels["account"]] = value
    for labels, value in samples(series, "crmsync_crm_api_usage"):
        used[labels["account"]] = max(value, used.get(labels["account"], 0.0))
    for labels, value in samples(series, "crmsync_crm_api_window_info"):
        windows[labels["account"]] = labels["window"]
    calls: dict[str, float] = {}
    for labels, value in samples(series, "crmsync_crm_api_calls_total"):
        calls[labels["account"]] = calls.get(labels["account"], 0.0) + value
    budget = {labels["account"]: value or None for labels, value in samples(series, "crmsync_api_budget_per_day")}
    projected = {labels["account"]: value for labels, value in samples(series, "crmsync_api_calls_projected_per_day")}
    return [{"account": account, "window": windows.get(account), "used": used.get(account), "limit": limits.get(account),
             "remaining": limits[account] - used[account] if account in used and account in limits else None,
             "calls": calls.get(account, 0.0), "budget": budget.get(account), "projected": projected.get(account)}
            for account in sorted(set(limits) | set(budget) | set(projected))]


def _point(snapshot: dict[str, Any]) -> dict[str, Any]:
    """What the charts need from one snapshot (a small dict: an hour of them stays a few hundred KB)."""
    return {"at": snapshot["at"],
            "lag": {g["group"]: g["lag"] for g in snapshot["groups"]},
            "lag_seconds": {g["group"]: g["lag_seconds"] for g in snapshot["groups"]},
            "freshness": {f"{f['mapping']} {f['direction']}": f["last_seconds"] for f in snapshot["freshness"]}}
