"""The sandbox's own control surface (not Salesforce API): fault injection, statistics, test levers.

All endpoints live under /__sandbox/ and require the header `X-Sandbox-Admin: <admin token>`. They never look at
`Authorization`, so a Salesforce session cannot reach them, and Salesforce API paths never accept the admin
token.

  GET  /__sandbox/faults          current fault settings
  POST /__sandbox/faults          replace them: {"request_limit_exceeded": 0.1, "unavailable_503": 0.05,
                                  "slow_seconds": 2.0, "slow_probability": 0.05, "session_expiry": 0.02,
                                  "seed": 1}  (probabilities per API request; omitted keys are 0; {} clears)
  GET  /__sandbox/stats           request counts per endpoint, writes per object, Sforce-Auto-Assign values
  POST /__sandbox/reset-stats     zero the statistics
  POST /__sandbox/limits          {"daily_api_max": N, "api_usage_today": N} (either key optional)
  POST /__sandbox/expire-sessions {"refresh_tokens": false}: end every session (and refresh token)
  POST /__sandbox/clock           {"offset_seconds": S}: run the sandbox clock S seconds ahead of real time
  POST /__sandbox/undelete        {"object": "Contact", "ids": [...]}: restore from the recycle bin
  POST /__sandbox/fields          {"object": "Contact", "name": "Shoe_Size__c", "type": "double", "label": "…"}:
                                  add (or retype) a custom text, number or long text area (textarea)
                                  field at runtime, kept in settings.json
  GET  /__sandbox/cdc             Change Data Capture state: selected objects, retention, replay id range, the
                                  Pub/Sub API's host:port
  POST /__sandbox/cdc             {"objects": ["Contact", …], "retention_seconds": S, "overflow_limit": N}
                                  (each key optional): the Setup selection, retention and GAP_OVERFLOW threshold
  POST /__sandbox/cdc/gap         {"object": "Contact", "change_type": "GAP_UPDATE", "ids": [...]}: emit a gap
                                  event (GAP_CREATE/UPDATE/DELETE/UNDELETE with ids, GAP_OVERFLOW without)

A fault is decided per API request, after authentication and before anything else happens, so a faulted request
has no side effect (it is not even counted against the daily limit).
"""
from __future__ import annotations

import json
from collections import Counter, deque
from datetime import timedelta
from typing import Any, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from sandboxes import control

from .context import Sandbox
from .errors import SalesforceError

FAULT_KINDS = ("session_expiry", "request_limit_exceeded", "unavailable_503")


def new_faults() -> control.Faults:
    """Salesforce's fault kinds on the shared seeded fault injector (sandboxes/control.py)."""
    return control.Faults(FAULT_KINDS)


class Stats(control.Stats):
    """The shared counters, plus how writes were routed (Sforce-Auto-Assign)."""

    def reset(self) -> None:
        super().reset()
        self.auto_assign_counts: Counter[str] = Counter()
        self.auto_assign_last: deque[dict[str, Any]] = deque(maxlen=200)

    def record_write(self, object_name: str, operation: str, record_id: str, *, header: str | None = None,
                     assigned: str | None = None, tracked: bool = False, source: str = "rest") -> None:
        """Count a successful write; `tracked` writes also log their Sforce-Auto-Assign header (None = absent)."""
        self.count_write(object_name, operation)
        if tracked:
            self.auto_assign_counts["absent" if header is None else header.upper()] += 1
            self.auto_assign_last.append({"object": object_name, "operation": operation, "id": record_id,
                                          "header": header, "assigned_owner": assigned, "source": source})

    def snapshot(self) -> dict[str, Any]:
        return {**super().snapshot(),
                "auto_assign": {"counts": dict(self.auto_assign_counts), "last": list(self.auto_assign_last)}}


# ---------------------------------------------------------------- endpoints

Handler = Callable[[Sandbox, dict[str, Any]], Any]


def _admin(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Check X-Sandbox-Admin, parse the JSON body, render the result or the error (sandboxes/control.py). The
    handler runs on the store thread, like every API call that touches the store."""
    return control.admin_endpoint(handler, (SalesforceError,))


def get_faults(sandbox: Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    return sandbox.faults.settings


def set_faults(sandbox: Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    return sandbox.faults.configure(body)


def stats(sandbox: Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    return {**sandbox.stats.snapshot(), "api_usage_today": sandbox.store.daily("api"),
            "daily_api_max": sandbox.settings.daily_api_max}


def reset_stats(sandbox: Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    sandbox.stats.reset()
    return {}


def limits(sandbox: Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    if "daily_api_max" in body:
        sandbox.settings.daily_api_max = int(body["daily_api_max"])
    if "api_usage_today" in body:
        sandbox.store.set_daily("api", int(body["api_usage_today"]))
    return {"daily_api_max": sandbox.settings.daily_api_max, "api_usage_today": sandbox.store.daily("api")}


def expire_sessions(sandbox: Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    return {"expired": sandbox.auth.expire_all(refresh_tokens=bool(body.get("refresh_tokens", False)))}


def clock(sandbox: Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    sandbox.store.clock_offset = timedelta(seconds=float(body["offset_seconds"]))
    sandbox.store.purge_recycle_bin()  # time moved: the recycle bin may have expired rows
    sandbox.changes.purge()  # ... and change events may have left the retention window
    return {"offset_seconds": sandbox.store.clock_offset.total_seconds(), "now": sandbox.store.now().isoformat()}


def cdc_state(sandbox: Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    changes = sandbox.changes
    return {"objects": sorted(changes.selected), "retention_seconds": changes.retention_seconds,
            "overflow_limit": changes.overflow_limit, "last_replay_id": changes.last_replay_id(),
            "earliest_replay_id": changes.earliest_replay_id(), "purged_through": changes.purged_through(),
            "pubsub": sandbox.pubsub_address}


def cdc_configure(sandbox: Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    changes = sandbox.changes
    if "objects" in body:
        if not isinstance(body["objects"], list):
            raise ValueError('"objects" must be a list of object names, e.g. ["Contact", "Lead"]')
        changes.select(body["objects"])
    if "retention_seconds" in body:
        changes.retention_seconds = int(body["retention_seconds"])
        changes.purge()
    if "overflow_limit" in body:
        changes.overflow_limit = max(1, int(body["overflow_limit"]))
    return cdc_state(sandbox, {})


def cdc_gap(sandbox: Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    event = sandbox.changes.inject_gap(str(body["object"]), str(body["change_type"]),
                                       [str(i) for i in body.get("ids", [])], sandbox.api_user_id)
    return {"replay_id": event.replay_id, "change_type": event.change_type, "record_ids": event.record_ids}


def undelete(sandbox: Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    restored = [sandbox.store.undelete(body["object"], rid, user_id=sandbox.api_user_id) for rid in body["ids"]]
    for rid in restored:
        sandbox.stats.record_write(body["object"], "undelete", rid, source="admin")
    return {"undeleted": restored}


# Text(255), Number, and Long Text Area at its largest (131,072 characters; a record can hold several, so one
# record can be larger than a Kafka message: https://help.salesforce.com/s/articleView?id=sf.custom_field_types.htm)
CUSTOM_FIELD_TYPES = {"string": 255, "double": 0, "textarea": 131_072}


def apply_custom_field(model: Any, spec: dict[str, Any]) -> Any:
    """Add or replace one custom field of the model (the runtime stand-in for Setup > Object Manager > Fields)."""
    from .model import FieldDef

    obj = model.object(str(spec["object"]))
    name, type_ = str(spec["name"]), str(spec.get("type", "string"))
    if obj is None:
        raise ValueError(f"unknown object {spec['object']!r}")
    if not name.endswith("__c") or not name[:-3].replace("_", "").isalnum():
        raise ValueError(f"a custom field name looks like Shoe_Size__c, not {name!r}")
    if type_ not in CUSTOM_FIELD_TYPES:
        raise ValueError(f"type must be one of {sorted(CUSTOM_FIELD_TYPES)}, not {type_!r}")
    obj.fields[name] = FieldDef(name=name, type=type_, label=str(spec.get("label") or name[:-3].replace("_", " ")),
                                length=CUSTOM_FIELD_TYPES[type_])
    return obj


def add_field(sandbox: Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    """Add the field, its storage column and forget cached describes; persist it so a restart keeps it."""
    from . import describe

    obj = apply_custom_field(sandbox.model, body)
    sandbox.store.refresh_object(obj)
    describe._CACHE.clear()
    spec = {k: body[k] for k in ("object", "name", "type", "label") if k in body}
    sandbox.settings.custom_fields = [f for f in sandbox.settings.custom_fields
                                      if (f["object"], f["name"]) != (obj.name, spec["name"])] + [spec]
    path = sandbox.store.path.parent / "settings.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**saved, "custom_fields": sandbox.settings.custom_fields}, indent=2) + "\n")
    return {"object": obj.name, "field": spec["name"], "type": obj.fields[spec["name"]].type}


ENDPOINTS: list[tuple[str, list[str], Callable[[Request], Awaitable[Response]]]] = [
    ("/__sandbox/faults", ["GET"], _admin(get_faults)),
    ("/__sandbox/faults", ["POST"], _admin(set_faults)),
    ("/__sandbox/stats", ["GET"], _admin(stats)),
    ("/__sandbox/reset-stats", ["POST"], _admin(reset_stats)),
    ("/__sandbox/limits", ["POST"], _admin(limits)),
    ("/__sandbox/expire-sessions", ["POST"], _admin(expire_sessions)),
    ("/__sandbox/clock", ["POST"], _admin(clock)),
    ("/__sandbox/undelete", ["POST"], _admin(undelete)),
    ("/__sandbox/fields", ["POST"], _admin(add_field)),
    ("/__sandbox/cdc", ["GET"], _admin(cdc_state)),
    ("/__sandbox/cdc", ["POST"], _admin(cdc_configure)),
    ("/__sandbox/cdc/gap", ["POST"], _admin(cdc_gap)),
]
