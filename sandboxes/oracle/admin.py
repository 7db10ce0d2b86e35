"""The sandbox's own control surface (not Oracle API): statistics, faults, the clock, limiter levers, switches.

Every endpoint lives under /__sandbox/ and requires the header `X-Sandbox-Admin: <admin token>`; Oracle API paths
never accept that token and these endpoints never look at sessions.

  GET  /__sandbox/stats            requests per operation, writes per record type, errors, faults, sessions with
                                   their REST budget, integration events, the clock and the settings
  POST /__sandbox/reset-stats      zero the counters
  GET  /__sandbox/faults           current fault settings
  POST /__sandbox/faults           {"session_expiry": 0.1, "rate_limited": 0.05, "server_error": 0.05,
                                   "slow_probability": 0.1, "slow_seconds": 2, "seed": 1}  ({} clears)
  GET  /__sandbox/settings         the limiter levers and switches (settings.py)
  POST /__sandbox/settings         change some of them, e.g. {"rest_requests_per_window": 5,
                                   "rest_window_seconds": 2, "sort_or_filter": true}; saved to settings.json
  POST /__sandbox/clock            {"offset_seconds": S} or {"at": "2024-11-03T08:30:00Z"}: the sandbox clock
                                   (audit stamps, ServerDate, session timeouts, rate windows) reads that from now on
  POST /__sandbox/expire-sessions  end every session (clients must sign in again)
  POST /__sandbox/undelete         {"ids": [row ids or DeletedItemIds]}: restore deleted records
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from sandboxes.control import admin_endpoint

from .context import Sandbox
from .errors import OracleError

def _admin(handler: Callable[[Sandbox, dict[str, Any]], Any]) -> Callable[[Request], Awaitable[Response]]:
    return admin_endpoint(handler, (OracleError,))


def stats(sandbox: Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    sessions = []
    for session in sandbox.sessions.live():
        budget = sandbox.sessions.budget(session)
        sessions.append({"kind": session.kind, "requests": session.requests, "rest_window_used": budget.used,
                         "rest_window_limit": budget.limit, "rest_window_resets_in": round(budget.resets_in, 3)})
    return {**sandbox.stats.snapshot(), "rate_limited": sandbox.sessions.rate_limited,
            "sessions_created": sandbox.sessions.created, "sessions": sessions,
            "integration_events": sandbox.store.event_counts(), **_clock(sandbox)}


def reset_stats(sandbox: Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    sandbox.stats.reset()
    sandbox.sessions.rate_limited = 0
    return {}


def get_faults(sandbox: Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    return sandbox.faults.settings


def set_faults(sandbox: Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    return sandbox.faults.configure(body)


def get_settings(sandbox: Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    return sandbox.settings.update({})


def set_settings(sandbox: Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    result = sandbox.settings.update(body)
    sandbox.save_settings()
    return result


def clock(sandbox: Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    if "at" in body:
        at = datetime.fromisoformat(str(body["at"]).replace("Z", "+00:00"))
        if at.tzinfo is None:
            raise ValueError("'at' needs a time zone, e.g. 2024-11-03T08:30:00Z")
        sandbox.store.set_clock(at=at)
    elif "offset_seconds" in body:
        sandbox.store.set_clock(offset_seconds=float(body["offset_seconds"]))
    else:
        raise ValueError('send {"offset_seconds": S} or {"at": "<ISO datetime with zone>"}')
    sandbox.store.purge_deleted(sandbox.settings.deleted_item_retention_days)
    return _clock(sandbox)


def expire_sessions(sandbox: Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    return {"expired": sandbox.sessions.expire_all()}


def undelete(sandbox: Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    ids = body["ids"]
    if not isinstance(ids, list):
        raise ValueError('"ids" must be a list of row ids or DeletedItemIds')
    return {"undeleted": [list(sandbox.store.undelete(str(i))) for i in ids]}


def _clock(sandbox: Sandbox) -> dict[str, Any]:
    now = sandbox.store.now()
    return {"now": now.isoformat(timespec="seconds"), "user_now": now.astimezone(sandbox.zone).isoformat(
        timespec="seconds"), "user_timezone": sandbox.zone.key, "offset_seconds": sandbox.store.clock_offset
        .total_seconds()}


ENDPOINTS: list[tuple[str, list[str], Callable[[Request], Awaitable[Response]]]] = [
    ("/__sandbox/stats", ["GET"], _admin(stats)),
    ("/__sandbox/reset-stats", ["POST"], _admin(reset_stats)),
    ("/__sandbox/faults", ["GET"], _admin(get_faults)),
    ("/__sandbox/faults", ["POST"], _admin(set_faults)),
    ("/__sandbox/settings", ["GET"], _admin(get_settings)),
    ("/__sandbox/settings", ["POST"], _admin(set_settings)),
    ("/__sandbox/clock", ["POST"], _admin(clock)),
    ("/__sandbox/expire-sessions", ["POST"], _admin(expire_sessions)),
    ("/__sandbox/undelete", ["POST"], _admin(undelete)),
]
