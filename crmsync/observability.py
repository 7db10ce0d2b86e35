"""What every crmsync service shows the outside world on one port: /metrics, /healthz and /readyz.

Why one module: a container orchestrator (compose, Kubernetes) and Prometheus need the same three endpoints
from every service, and the metrics shared by several services (end-to-end freshness) must be registered
once, or importing two services into one process (tests, the dashboard) would register them twice.

- ``/metrics``: the prometheus_client registry, as Prometheus scrapes it.
- ``/healthz`` (liveness): the process answers. It never checks dependencies — restarting a service because
  the broker is down would not bring the broker back.
- ``/readyz`` (readiness): every registered check passes (broker reachable, database reachable, consumer
  group has members …); 503 with the failing checks otherwise. Checks are cached a few seconds so a busy
  probe never hammers the broker.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Callable, Iterable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, Gauge, Histogram, make_wsgi_app

if TYPE_CHECKING:
    from crmsync.config import Mapping, Settings

log = logging.getLogger("crmsync.observability")
Check = Callable[[], None]  # raises (any exception) when not ready; the message says why

FRESHNESS_LABELS = ["writer", "table", "mapping", "direction"]
FRESHNESS = Histogram("crmsync_apply_freshness_seconds",
                      "End-to-end freshness: applied on the target side minus the source modification time",
                      FRESHNESS_LABELS, buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600))
FRESHNESS_LAST = Gauge("crmsync_apply_freshness_last_seconds",
                       "Freshness of the newest record of the last applied batch (what the dashboards chart)",
                       FRESHNESS_LABELS)
_mappings: list["Mapping"] = []  # this service's mappings, from know_mappings()


def know_mappings(settings: "Settings") -> None:
    """Let the freshness metrics name the mapping and direction of what a writer applied (called at start)."""
    _mappings[:] = settings.mappings


def mapping_labels(writer: str, table: str, mappings: Iterable["Mapping"] | None = None) -> tuple[str, str]:
    """(mapping, direction) of a writer's target table or CRM object; the table itself when no mapping has it
    (a workflow's or the mirror's writes)."""
    to_campaign = writer == "writer-campaign"
    direction = "crm→campaign" if to_campaign else "campaign→crm"
    for m in _mappings if mappings is None else mappings:
        if (m.campaign_table == table) if to_campaign else (m.crm_object.lower() == table.lower()):
            return m.name, direction
    return table, direction


def freshness_histogram(writer: str, table: str) -> Histogram:
    return FRESHNESS.labels(writer, table, *mapping_labels(writer, table))


def freshness_last(writer: str, table: str) -> Gauge:
    return FRESHNESS_LAST.labels(writer, table, *mapping_labels(writer, table))
SERVICE_INFO = Gauge("crmsync_service_up", "1 while the service process runs (its name in the label)", ["service"])


def source_age(source_ts: str | None, now: datetime) -> float | None:
    """Seconds from a source modification time (ISO 8601, as in the envelope) to `now`; None if unknown."""
    if not source_ts:
        return None
    try:
        moment = datetime.fromisoformat(source_ts.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return max((now - moment).total_seconds(), 0.0)


def observe_freshness(writer: str, table: str, source_timestamps: Iterable[str | None]) -> None:
    """Record the freshness of records just applied by `writer` to `table` (histogram + last-batch gauge)."""
    now = datetime.now(timezone.utc)
    ages = [age for age in (source_age(ts, now) for ts in source_timestamps) if age is not None]
    if not ages:
        return
    histogram = freshness_histogram(writer, table)
    for age in ages:
        histogram.observe(age)
    freshness_last(writer, table).set(min(ages))


WAITING_FOR_GROUP = "not in its consumer group yet (waiting for partitions)"  # a /readyz reason the supervisor reads


class Progress:
    """Whether this process is doing its work: ready means working, not merely started. A service's main loop
    calls `tick()` every round (idle rounds included); a consumer also calls `joined()` when its group assigned
    it partitions (an empty assignment counts: more workers than partitions). Until then /readyz says why not."""

    def __init__(self) -> None:
        self.joined_at: float | None = None
        self.ticked_at: float | None = None
        self.consumer = False

    def expect_group(self) -> None:
        self.consumer = True

    def joined(self, *_: object) -> None:
        self.joined_at = time.monotonic()
        self.tick()

    def left(self, *_: object) -> None:
        self.joined_at = None

    def tick(self) -> None:
        self.ticked_at = time.monotonic()

    def check(self, max_idle: float = 15.0) -> None:
        if self.consumer and self.joined_at is None:
            raise RuntimeError(WAITING_FOR_GROUP)
        if self.ticked_at is None:
            raise RuntimeError("starting")
        idle = time.monotonic() - self.ticked_at
        if idle > max_idle:
            raise RuntimeError(f"its work loop has not run for {idle:.0f} s")


progress = Progress()  # this process's


@dataclass
class Readiness:
    """Named readiness checks, each run at most every `cache_seconds`."""

    cache_seconds: float = 5.0
    checks: dict[str, Check] = field(default_factory=dict)
    _results: dict[str, tuple[float, str | None]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _uncached: set[str] = field(default_factory=set)

    def add(self, name: str, check: Check, *, cached: bool = True) -> None:
        """`cached=False` for checks that cost nothing (they then answer the moment things change)."""
        self.checks[name] = check
        if not cached:
            self._uncached.add(name)

    def evaluate(self) -> dict[str, str]:
        """check name → "ok" or the reason it fails."""
        with self._lock:
            return {name: self._run(name, check) for name, check in self.checks.items()}

    def _run(self, name: str, check: Check) -> str:
        checked_at, problem = self._results.get(name, (0.0, "not checked"))
        if name in self._uncached or time.monotonic() - checked_at >= self.cache_seconds:
            try:
                check()
                problem = None
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready", with its message
                problem = f"{type(exc).__name__}: {exc}"
            self._results[name] = (time.monotonic(), problem)
        return problem or "ok"


def health_app(service: str, readiness: Readiness, metrics_app: Callable | None = None) -> Callable:
    """The WSGI application: /healthz, /readyz, and everything else is the Prometheus exposition."""
    metrics_app = metrics_app or make_wsgi_app(REGISTRY)
    started = time.time()

    def app(environ: dict, start_response: Callable) -> list[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/healthz":
            return _json(start_response, 200, {"status": "ok", "service": service,
                                               "uptime_seconds": round(time.time() - started, 1)})
        if path == "/readyz":
            results = readiness.evaluate()
            ready = bool(results) and all(value == "ok" for value in results.values())  # none yet: starting
            return _json(start_response, 200 if ready else 503,
                         {"status": "ready" if ready else "not ready", "service": service, "checks": results})
        return metrics_app(environ, start_response)

    return app


def _json(start_response: Callable, status: int, body: dict) -> list[bytes]:
    payload = json.dumps(body).encode()
    reason = {200: "OK", 503: "Service Unavailable"}[status]
    start_response(f"{status} {reason}", [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
    return [payload]


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # probes every few seconds: not worth a log line
        pass


def serve(service: str, port: int, host: str = "127.0.0.1", readiness: Readiness | None = None) -> WSGIServer | None:
    """Serve /metrics, /healthz and /readyz on host:port from a daemon thread; returns the server, or None when
    the port is taken (logged: a service that cannot be watched should still sync)."""
    SERVICE_INFO.labels(service).set(1)
    try:
        server = make_server(host, port, health_app(service, readiness or Readiness()),
                             server_class=_ThreadingServer, handler_class=_QuietHandler)
    except OSError as exc:
        log.error("cannot serve metrics and health on %s:%s: %s", host, port, exc)
        return None
    threading.Thread(target=server.serve_forever, name=f"{service}-metrics", daemon=True).start()
    return server


# -- readiness checks shared by the services and the dashboard -------------------------------------------------
def broker_check(bootstrap_servers: str) -> Check:
    """The broker answers a metadata request."""
    def check() -> None:
        from crmsync.lag import admin

        admin(bootstrap_servers).list_topics(timeout=3)
    return check


def database_check(dsn: str) -> Check:
    """The Campaign database accepts a connection and a query."""
    def check() -> None:
        from crmsync import pg

        with pg.connect(dsn, autocommit=True, application="crmsync-readyz", connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    return check


def group_check(bootstrap_servers: str, group: str) -> Check:
    """The service's consumer group has live members (the broker assigned it partitions)."""
    def check() -> None:
        from crmsync.lag import group_state

        state = group_state(bootstrap_servers, group)
        if state != "stable":
            raise RuntimeError(f"consumer group {group} is {state}")
    return check


def add_service_checks(readiness: Readiness, service: str, settings: "Settings", bootstrap_servers: str, dsn: str,
                       account: str | None = None) -> None:
    """What `service` needs to do its work: the broker, the database — and that it is working: its loop runs
    and, for a consumer, its group has given it its partitions (`progress`)."""
    from crmsync.lag import consumer_groups

    readiness.add("broker", broker_check(bootstrap_servers))
    readiness.add("database", database_check(dsn))
    if service == "mirror" or any(spec.service == service for spec in consumer_groups(settings)):
        progress.expect_group()
    readiness.add("working", progress.check, cached=False)
