"""Entry points of the Salesforce connector's two services, for `crmsync service poller-salesforce` and
`crmsync service writer-salesforce` (wired in crmsync/cli.py).

Both stop gracefully on SIGTERM / SIGINT: the current cycle or batch finishes (so its checkpoint or offsets are
committed), then the process exits. A second signal is not needed and not special: the services never hold
state that a restart cannot rebuild from the checkpoint and the committed offsets.
"""
from __future__ import annotations

import signal
import threading
from typing import Any, Iterable

from crmsync.config import Settings
from crmsync.infra import Endpoints
from services.salesforce import poller, writer


def stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(_signum: int, _frame: Any) -> None:
        stop.set()

    if threading.current_thread() is threading.main_thread():  # signals can only be set from the main thread
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
    return stop


def run_poller(settings: Settings, endpoints: Endpoints, account_name: str, objects: Iterable[str],
               interval_seconds: float, **options: Any) -> None:
    """Poll `objects` of the Salesforce account every `interval_seconds` until SIGTERM.

    Options (keyword): lookback_seconds (300), batch_size (2000), track_hard_deletes (True)."""
    poller.run(settings, endpoints, account_name, list(objects), interval_seconds, stop=stop_on_signals(),
               **options)


def run_writer(settings: Settings, endpoints: Endpoints, account_name: str, **options: Any) -> None:
    """Apply commands from `crmsync.apply.crm.<account>.*` to the Salesforce account until SIGTERM.

    Options (keyword): objects (None = every apply topic of the account), options (WriterOptions),
    on_applied (hook called for every success)."""
    writer.run(settings, endpoints, account_name, stop=stop_on_signals(), **options)
