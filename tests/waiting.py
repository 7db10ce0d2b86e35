"""The one polling helper of the test suite: wait until a condition holds, or fail saying what never came."""
from __future__ import annotations

import time
from typing import Any, Callable


def wait_for(predicate: Callable[[], Any], timeout: float = 60, what: str = "the condition", supervisor: Any = None,
             *, every: float = 0.2) -> Any:
    """Poll `predicate` until it returns something truthy (which is returned). With a `supervisor`
    (crmsync.run.Supervisor), services that died meanwhile are restarted, as `crmsync run` does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if supervisor is not None:
            supervisor.check()
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
