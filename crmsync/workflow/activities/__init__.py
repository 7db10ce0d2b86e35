"""The activities, one module per family; `RUNNERS` maps an activity `type:` to the function that runs it.

Every runner has the same shape: ``run(activity, rows, ctx, progress) -> Outputs``."""
from __future__ import annotations

from crmsync.workflow.activities import crm, data, flow, query

RUNNERS = {
    "query": query.run,
    "crm": crm.run,
    "enrich": data.enrich,
    "reconcile": data.enrich,
    "deduplicate": data.deduplicate,
    "update-data": data.update_data,
    "union": data.union,
    "wait": flow.wait,
    "script": flow.script,
}
