"""Fixtures and helpers of the throughput tests (issue 16)."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

from crmsync import config
from services.capture.service import CaptureService
from tests.campaign_writer.conftest import commands, writer  # noqa: F401 - the Campaign writer fixtures


@contextmanager
def running_capture(bootstrap: str, dsn: str, name: str) -> Iterator[CaptureService]:
    """Change capture of the recipients table of test database `name`, in a thread, stopped on the way out."""
    settings = config.Settings.model_validate({"campaign": {
        "name": name, "slot_name": f"slot_{name}", "publication": f"pub_{name}", "capture_tables": ["recipients"]}})
    service = CaptureService(settings, bootstrap, dsn)
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    try:
        yield service
    finally:
        service.stop()
        thread.join(30)
