"""The Dynamics sandbox's own control surface (not Dataverse API): statistics, faults, limits, clock, tokens.

All endpoints live under /__sandbox/ and require `X-Sandbox-Admin: <admin token>` (sandboxes/control.py).

  GET  /__sandbox/faults            current fault settings
  POST /__sandbox/faults            replace them: {"throttle_429": 0.1, "unavailable_503": 0.05,
                                    "token_expiry": 0.02, "slow_probability": 0.05, "slow_seconds": 2.0,
                                    "seed": 1}  (probabilities per Web API request; omitted keys are 0; {} clears)
  GET  /__sandbox/stats             requests per endpoint, writes per entity set, faults, service protection
  POST /__sandbox/reset-stats       zero the statistics
  POST /__sandbox/limits            {"requests_per_window": N, "execution_seconds_per_window": S,
                                    "window_seconds": W, "max_concurrent_requests": C, "reset": true}
                                    (any subset; "reset" forgets the requests already counted)
  POST /__sandbox/clock             {"offset_seconds": S}: run the sandbox clock S seconds ahead of real time;
                                    {"frozen": true}: hold it where it is (every write meanwhile gets the same
                                    createdon/modifiedon), {"frozen": false}: let it run again
  POST /__sandbox/change-tracking   {"expire_days": N, "tables": {"lead": false}}: ExpireChangeTrackingInDays,
                                    and change tracking ("Track changes") switched per table (either key)
  POST /__sandbox/expire-tokens     {}: every access and refresh token issued so far stops working

A fault is decided per Web API request after authentication and before anything else happens, so a faulted
request has no side effect. `throttle_429` answers like service protection (429, Retry-After: 1,
0x80072322); `token_expiry` invalidates every token and answers 401, as an expired token does.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Any, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from sandboxes import control
from sandboxes.control import Faults, admin_endpoint

from .context import Sandbox
from .errors import DataverseError
from .model import ENTITIES

FAULT_KINDS = ("token_expiry", "throttle_429", "unavailable_503")
_LIMIT_KEYS = {"requests_per_window": int, "execution_seconds_per_window": float, "window_seconds": int,
               "max_concurrent_requests": int}


def new_faults() -> Faults:
    return Faults(FAULT_KINDS)


class Stats(control.Stats):
    """The shared counters (sandboxes/control.py); writes are counted per entity set."""

    def record_write(self, entity_set: str, operation: str, count: int = 1) -> None:
        self.count_write(entity_set, operation, count)


def get_faults(sandbox: Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    return sandbox.faults.settings


def set_faults(sandbox: Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    return sandbox.faults.configure(body)


def stats(sandbox: Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    return {**sandbox.stats.snapshot(), "service_protection": sandbox.protection.snapshot()}


def reset_stats(sandbox: Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    sandbox.stats.reset()
    return {}


def limits(sandbox: Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    unknown = set(body) - set(_LIMIT_KEYS) - {"reset"}
    if unknown:
        raise ValueError(f"unknown limit settings: {sorted(unknown)}; known: {sorted(_LIMIT_KEYS)} and reset")
    for key, kind in _LIMIT_KEYS.items():
        if key in body:
            value = kind(body[key])
            if value <= 0:
                raise ValueError(f"{key} must be positive")
            setattr(sandbox.settings, key, value)
    if body.get("reset"):
        sandbox.protection.reset()
    return {key: getattr(sandbox.settings, key) for key in _LIMIT_KEYS}


def clock(sandbox: Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    unknown = set(body) - {"offset_seconds", "frozen"}
    if unknown:
        raise ValueError(f"unknown clock settings: {sorted(unknown)}; known: offset_seconds, frozen")
    store = sandbox.store
    if "offset_seconds" in body:
        store.clock_offset = timedelta(seconds=float(body["offset_seconds"]))
    if "frozen" in body:
        store.frozen_at = None
        store.frozen_at = store.now() if body["frozen"] else None
    return {"offset_seconds": store.clock_offset.total_seconds(), "frozen": store.frozen_at is not None,
            "now": store.now().isoformat()}


def change_tracking(sandbox: Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    unknown = set(body) - {"expire_days", "tables"}
    if unknown:
        raise ValueError(f"unknown change-tracking settings: {sorted(unknown)}; known: expire_days, tables")
    if "expire_days" in body:
        days = int(body["expire_days"])
        if days <= 0:
            raise ValueError("expire_days must be positive")
        sandbox.settings.expire_change_tracking_days = days
    for table, enabled in dict(body.get("tables") or {}).items():
        if table not in ENTITIES:
            raise ValueError(f"no table {table!r}; tables: {', '.join(sorted(ENTITIES))}")
        untracked = [t for t in sandbox.settings.untracked_tables if t != table]
        sandbox.settings.untracked_tables = untracked if enabled else [*untracked, table]
    return {"expire_days": sandbox.settings.expire_change_tracking_days,
            "tables": {name: sandbox.tracks_changes(entity) for name, entity in ENTITIES.items()}}


def expire_tokens(sandbox: Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    sandbox.entra.expire_all()
    return {"expired": True}


def _admin(handler: Callable[[Sandbox, dict[str, Any]], Any]) -> Callable[[Request], Awaitable[Response]]:
    return admin_endpoint(handler, (DataverseError,))


ENDPOINTS: list[tuple[str, list[str], Callable[[Request], Awaitable[Response]]]] = [
    ("/__sandbox/faults", ["GET"], _admin(get_faults)),
    ("/__sandbox/faults", ["POST"], _admin(set_faults)),
    ("/__sandbox/stats", ["GET"], _admin(stats)),
    ("/__sandbox/reset-stats", ["POST"], _admin(reset_stats)),
    ("/__sandbox/limits", ["POST"], _admin(limits)),
    ("/__sandbox/clock", ["POST"], _admin(clock)),
    ("/__sandbox/change-tracking", ["POST"], _admin(change_tracking)),
    ("/__sandbox/expire-tokens", ["POST"], _admin(expire_tokens)),
]
