"""The services that keep mirror tables current — change capture, the CRM poller and the mirror service — run in
threads for one account on a fresh Campaign database, stopped (and the replication slot dropped) afterwards."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Iterator

import psycopg

from crmsync import config, infra
from services.capture.service import CaptureService
from services.crm_poller import service as poller
from services.mirror.service import MirrorService


@contextmanager
def mirror_services(name: str, account: dict[str, Any], endpoints: infra.Endpoints, dsn: str, *,
                    poll_seconds: float = 0.5, formula_refresh_seconds: float = 0) -> Iterator[None]:
    """Capture, poller and mirror service for account `name` (its own campaign name, slot and publication)."""
    settings = config.Settings.model_validate({
        "accounts": {name: account}, "mappings": [],
        "campaign": {"name": name, "slot_name": f"slot_{name}", "publication": f"pub_{name}",
                     "capture_tables": ["recipients"], "snapshot": "never",
                     "formula_refresh_seconds": formula_refresh_seconds}})
    found = infra.Endpoints(endpoints.bootstrap_servers, dsn)
    stop = threading.Event()
    capture = CaptureService(settings, found.bootstrap_servers, dsn)
    mirror = MirrorService(settings, found, name, schema_reload_seconds=1)
    threads = [threading.Thread(target=capture.run, daemon=True),
               threading.Thread(target=poller.run, args=(settings, found, name, [], poll_seconds),
                                kwargs={"stop": stop}, daemon=True),
               threading.Thread(target=mirror.run, args=(stop,), daemon=True)]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        capture.stop()
        for thread in threads:
            thread.join(60)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (f"slot_{name}",))
