"""The dashboard's web server: one page, a small script, and the JSON API the page polls.

    GET /                     the page (index.html + dashboard.js next to this file, no build step)
    GET /api/status           newest snapshot: groups (status, lag, lag in seconds, ETA), freshness, API budget
    GET /api/lag              per partition, plus the last hour of samples for the charts
    GET /api/rejects          open rejects with their reasons, and counts per reason
    GET /api/journey/{id}     one record's journey (CRM id or Campaign key)
    GET /metrics /healthz /readyz   like every service (consumer lag metrics are exported from here)

Everything but the last three needs the access token, and every request a known host name (access.py).
Reject reasons are shown without the record's values (`show_values` shows them: they can be personal data).
`crmsync run` starts it in a thread next to the services; `crmsync dashboard` runs it alone (a container).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from psycopg.rows import dict_row
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from crmsync import lag, observability, pg, rejects
from crmsync.config import Settings
from crmsync.dashboard import access, journey
from crmsync.dashboard.sampler import Sampler

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8080
STATIC = {"dashboard.js": "text/javascript", "index.html": "text/html"}


@dataclass
class Dashboard:
    """What the handlers read from: the settings, where the infrastructure is, and the sampler."""

    settings: Settings
    bootstrap_servers: str
    dsn: str
    sampler: Sampler
    token: str = field(repr=False)
    show_values: bool = False  # reject reasons with the record's values (personal data) instead of [value]
    extra_hosts: tuple[str, ...] = ()  # host names answered besides loopback and the listening address
    readiness: observability.Readiness = field(default_factory=observability.Readiness)


def _static(name: str) -> str:
    return resources.files("crmsync.dashboard").joinpath(name).read_text(encoding="utf-8")


def rejects_summary(dsn: str, limit: int = 50, show_values: bool = False) -> dict[str, Any]:
    """Open rejects (newest first) and how many per stage, object and reason code; reasons without the record's
    values unless `show_values`."""
    with pg.connect(dsn, autocommit=True, application="crmsync-dashboard") as conn:
        cur = conn.cursor(row_factory=dict_row)
        by_reason = cur.execute(
            "SELECT stage, object, coalesce(error_code, 'unknown') AS error_code, status, count(*) AS count, "
            "(array_agg(reason ORDER BY reason DESC))[1] AS example, "
            "(array_agg(record ORDER BY reason DESC))[1] AS record FROM crmsync.rejects WHERE status <> 'resolved' "
            "GROUP BY 1, 2, 3, 4 ORDER BY count DESC, 1, 2, 3").fetchall()
        recent = cur.execute(
            "SELECT id, stage, object, error_code, reason, status, attempts, record_key, updated_at, record "
            "FROM crmsync.rejects WHERE status <> 'resolved' ORDER BY seq DESC LIMIT %s", (limit,)).fetchall()
    for row in by_reason:
        record = row.pop("record")
        row["example"] = row["example"] if show_values else rejects.without_values(row["example"] or "", record)
    for row in recent:
        record = row.pop("record")
        if not show_values:
            row["reason"] = rejects.without_values(row["reason"] or "", record)
            row["record_key"] = rejects.without_values(row["record_key"] or "", record)
    recent = [{name: pg.json_ready(value) for name, value in row.items()} for row in recent]  # dates as ISO text
    return {"open": sum(r["count"] for r in by_reason), "by_reason": by_reason, "recent": recent}


def build_app(dashboard: Dashboard, host: str = DEFAULT_HOST) -> Starlette:
    async def page(request: Request) -> Response:
        return HTMLResponse(_static("index.html"))

    async def script(request: Request) -> Response:
        return Response(_static("dashboard.js"), media_type="text/javascript")

    async def status(request: Request) -> Response:
        snapshot = dashboard.sampler.snapshot()
        groups = [{k: v for k, v in g.items() if k != "partitions"} for g in snapshot["groups"]]
        return JSONResponse({**snapshot, "groups": groups, "interval": dashboard.sampler.interval,
                             "mappings": [{"name": m.name, "direction": m.direction, "crm_object": m.crm_object,
                                           "campaign_table": m.campaign_table} for m in dashboard.settings.mappings]})

    async def lag_view(request: Request) -> Response:
        snapshot = dashboard.sampler.snapshot()
        return JSONResponse({"at": snapshot["at"], "groups": snapshot["groups"], "history": dashboard.sampler.points()})

    async def rejects_view(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(rejects_summary, dashboard.dsn, 50, dashboard.show_values))

    async def record_journey(request: Request) -> Response:
        found = await run_in_threadpool(journey.lookup, dashboard.settings, dashboard.bootstrap_servers,
                                        dashboard.dsn, request.path_params["record_id"],
                                        show_values=dashboard.show_values)
        return JSONResponse(found, status_code=200 if found["found"] else 404)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "service": "dashboard"})

    async def readyz(request: Request) -> Response:
        checks = await run_in_threadpool(dashboard.readiness.evaluate)
        ready = bool(checks) and all(v == "ok" for v in checks.values())
        return JSONResponse({"status": "ready" if ready else "not ready", "service": "dashboard", "checks": checks},
                            status_code=200 if ready else 503)

    return Starlette(routes=[
        Route("/", page), Route("/static/dashboard.js", script), Route("/api/status", status),
        Route("/api/lag", lag_view), Route("/api/rejects", rejects_view),
        Route("/api/journey/{record_id:str}", record_journey), Route("/metrics", metrics),
        Route("/healthz", healthz), Route("/readyz", readyz),
    ], middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=access.allowed_hosts(host, dashboard.extra_hosts),
                              www_redirect=False),
                   Middleware(access.TokenGate, token=dashboard.token)])


@dataclass
class Running:
    """A dashboard started in the background (by `crmsync run`); `stop()` ends the server and the sampler."""

    server: uvicorn.Server
    thread: threading.Thread
    stop_sampling: threading.Event
    url: str
    token: str = field(repr=False)

    @property
    def login_url(self) -> str:
        """The link to print once: opening it trades the token for a session cookie."""
        return f"{self.url}/?token={self.token}"

    def stop(self) -> None:
        self.stop_sampling.set()
        self.server.should_exit = True
        self.thread.join(10)
        lag.admin.cache_clear()  # its admin clients would keep calling a broker that may be going away


def create(settings: Settings, bootstrap_servers: str, dsn: str, targets: dict[str, str] | None = None,
           interval: float = 5.0, *, show_values: bool = False, extra_hosts: tuple[str, ...] = ()) -> Dashboard:
    sampler = Sampler(settings, bootstrap_servers, targets, interval=interval)
    dashboard = Dashboard(settings, bootstrap_servers, dsn, sampler, access.access_token(settings.state_dir),
                          show_values, tuple(extra_hosts))
    dashboard.readiness.add("broker", observability.broker_check(bootstrap_servers))
    dashboard.readiness.add("database", observability.database_check(dsn))
    return dashboard


def _server(dashboard: Dashboard, host: str, port: int) -> uvicorn.Server:
    config = uvicorn.Config(build_app(dashboard, host), host=host, port=port, log_level="warning", access_log=False,
                            lifespan="off")
    return uvicorn.Server(config)


def start(dashboard: Dashboard, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> Running:
    """Serve in a background thread (the sampler too); returns once the port is accepting connections (`port`
    0 = any free port: the returned url has the real one)."""
    stop_sampling = threading.Event()
    dashboard.sampler.start(stop_sampling)
    server = _server(dashboard, host, port)
    thread = threading.Thread(target=server.run, name="dashboard-http", daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        threading.Event().wait(0.05)
    if not server.started:
        stop_sampling.set()
        raise RuntimeError(f"the dashboard could not listen on {host}:{port}")
    bound = server.servers[0].sockets[0].getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return Running(server, thread, stop_sampling, f"http://{shown}:{bound}", dashboard.token)
