"""Scheduled workflows: each file's `schedule:` (cron) is honoured by `crmsync run` (crmsync.yaml `workflows:`).

One thread runs them one after the other: a workflow is never started twice at once, and a run that takes
longer than its period simply starts again at the next fire time after it ended (missed fire times are not
replayed). The file is read again at every fire, so an edit is picked up without a restart; an invalid file is
logged and retried at its next fire time. The clock can be injected (tests fire "every minute" instantly).
"""
from __future__ import annotations

import logging
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

from croniter import croniter

from crmsync.config import Settings
from crmsync.infra import Endpoints
from crmsync.workflow import engine, model

log = logging.getLogger("crmsync.workflow.scheduler")
Clock = Callable[[], datetime]
OnResult = Callable[[Path, "engine.RunResult | None"], None]


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def next_fire(schedule: str, after: datetime) -> datetime:
    return croniter(schedule, after).get_next(datetime)


def run_scheduled(paths: Iterable[str | Path], stop: threading.Event, *, settings: Settings | None = None,
                  endpoints: Endpoints | None = None, clock: Clock = _utc_now, poll_seconds: float = 1.0,
                  on_result: OnResult | None = None) -> None:
    """Run every scheduled workflow of `paths` at its cron times until `stop` is set."""
    if settings is None or endpoints is None:
        from crmsync import config, infra

        settings = settings or config.load()
        endpoints = endpoints or infra.endpoints(settings)
    due: dict[Path, datetime] = {}
    for path in map(Path, paths):
        try:
            workflow = model.load(path)
        except model.WorkflowError as exc:
            log.error("scheduled workflow not loaded: %s", exc)
            continue
        if not workflow.schedule:
            log.warning("%s has no schedule: it is run with `crmsync workflow run`, not by `crmsync run`", path)
            continue
        due[path] = next_fire(workflow.schedule, clock())
        log.info("workflow %s scheduled (%s), next run %s", workflow.name, workflow.schedule, due[path])
    while due and not stop.is_set():
        for path, when in list(due.items()):
            if clock() >= when and not stop.is_set():
                due[path] = _fire(path, settings, endpoints, stop, clock, on_result) or when
        stop.wait(poll_seconds)


def _fire(path: Path, settings: Settings, endpoints: Endpoints, stop: threading.Event, clock: Clock,
          on_result: OnResult | None) -> datetime | None:
    """Run one workflow now; return its next fire time (from after the run)."""
    result = None
    try:
        workflow = model.load(path)
    except model.WorkflowError as exc:
        log.error("scheduled workflow skipped: %s", exc)
        return None
    try:
        result = engine.run(workflow, settings, endpoints, file=path, stop=stop)
        log.log(logging.INFO if result.ok else logging.ERROR, "scheduled workflow %s (run %s) %s", workflow.name,
                result.run_id, "succeeded" if result.ok else "failed")
    except Exception:  # noqa: BLE001 - one bad run must not end the scheduler
        log.exception("scheduled workflow %s failed", workflow.name)
    if on_result:
        on_result(path, result)
    return next_fire(workflow.schedule or "* * * * *", clock())
