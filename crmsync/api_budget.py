"""The CRM API budget as Prometheus metrics, the same for every CRM: what the dashboard's "CRM API budget" table
and the Grafana board read.

Every connector's client reports its budget as `crmsync.connectors.ApiUsage` (`client.usage()`): the requests left
and the limit in the CRM's own window, as the CRM last said — a day of API requests, Dataverse's 5-minute
service-protection window from the `x-ms-ratelimit-*` headers, Oracle's per-minute REST window. The CRM poller
and the CRM writer call `report()` after each cycle, so any connector's budget is published without the engine
knowing which CRM it is.

    crmsync_crm_api_usage{account}           requests used in the current window (limit − remaining)
    crmsync_crm_api_limit{account}           requests allowed per window
    crmsync_crm_api_window_info{account,window}  1, naming the window ("day", "5 minutes", "minute")
    crmsync_crm_api_calls_total{account,kind}    requests this process sent, counted by each client in its one
                                                 call path (kind: the client's own grouping)

Invariant: a gauge is set only from what the CRM reported (remaining and limit both known); nothing is invented.
"""
from __future__ import annotations

from prometheus_client import Counter, Gauge

from crmsync.connectors import ApiUsage

API_CALLS = Counter("crmsync_crm_api_calls_total", "CRM API requests sent (every attempt counts)",
                    ["account", "kind"])
API_USAGE = Gauge("crmsync_crm_api_usage", "CRM API requests used in the CRM's budget window, as the CRM last "
                                           "reported", ["account"])
API_LIMIT = Gauge("crmsync_crm_api_limit", "CRM API requests allowed per budget window, as the CRM last reported",
                  ["account"])
API_WINDOW = Gauge("crmsync_crm_api_window_info", "The CRM's API budget window (the label; value 1)",
                   ["account", "window"])



def report(account: str, usage: ApiUsage) -> None:
    """Publish the budget `usage` of `account` reports (nothing when the CRM has not said both numbers yet)."""
    if usage.limit is not None and usage.remaining is not None:
        API_USAGE.labels(account).set(max(usage.limit - usage.remaining, 0))
        API_LIMIT.labels(account).set(usage.limit)
        API_WINDOW.labels(account, usage.window).set(1)
