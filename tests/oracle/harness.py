"""The conformance suite's harness for Oracle CRM On Demand (tests/connectors/harnesses.py registers it as
`"oracle": OracleHarness()`): what a test does to the OOD sandbox from outside the connector interface."""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Iterator

from crmsync.connectors import RunningSandbox
from tests.connectors.harnesses import sandbox_admin as _admin


class OracleHarness:
    secret_key = "password"

    @contextmanager
    def tied_writes(self, running: RunningSandbox) -> Iterator[None]:
        """OOD stamps ModifiedDate to the second: the sandbox clock is set to the start of a second just ahead
        and the writes inside take less than that second. Afterwards real time is waited for until it has passed
        that second, so no later write is stamped earlier than the tied ones."""
        tied = int(time.time()) + 2
        _admin(running, "clock", {"offset_seconds": tied - time.time()})
        try:
            yield
        finally:
            time.sleep(max(0.0, tied + 1 - time.time()))
            _admin(running, "clock", {"offset_seconds": 0})

    @contextmanager
    def rate_limited(self, running: RunningSandbox) -> Iterator[None]:
        """A quarter of the requests get OOD's rate-limit answer (REST and Web Services)."""
        _admin(running, "faults", {"rate_limited": 0.25, "seed": 5})
        try:
            yield
        finally:
            _admin(running, "faults", {})

    def refused_contact_values(self) -> dict[str, Any]:
        return {"ContactType": "Not a contact type"}  # SBL-DAT-00225: not a value of the bounded picklist

