"""What every sandbox's /__sandbox/ control surface shares: the admin-header check, JSON in and out, and the
request/write/fault counters.

Admin endpoints require `X-Sandbox-Admin: <admin token>` and never look at the CRM's own credentials, so a CRM
session cannot reach them and CRM paths never accept the admin token. A handler takes the sandbox (found in
`request.app.state.sandbox`, which has an `admin_token`) and the JSON body (an object, `{}` when empty) and returns
something JSON-serializable; bad input (ValueError, TypeError, KeyError or the sandbox's own API error type) is
answered with 400 and a message saying what to fix.
"""
from __future__ import annotations

import hmac
import json
from collections import Counter, defaultdict
from typing import Any, Awaitable, Callable, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

Handler = Callable[[Any, dict[str, Any]], Any]
DEFAULT_ADMIN_TOKEN = "crmsync-sandbox-admin"
"""Default value of the `X-Sandbox-Admin` header for every sandbox (override with --admin-token)."""


class ApiError(Protocol):
    message: str
    code: str


def admin_endpoint(handler: Handler, *, api_error: type[Exception]) -> Callable[[Request], Awaitable[Response]]:
    """Wrap a handler: check X-Sandbox-Admin, parse the JSON body, render the result or the error."""
    async def endpoint(request: Request) -> Response:
        sandbox = request.app.state.sandbox
        given = request.headers.get("x-sandbox-admin", "")
        if not hmac.compare_digest(given.encode(), sandbox.admin_token.encode()):
            return JSONResponse({"error": "the X-Sandbox-Admin header is missing or wrong"}, status_code=403)
        try:
            raw = await request.body()
            body = json.loads(raw) if raw.strip() else {}
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            return JSONResponse(handler(sandbox, body))
        except (ValueError, TypeError, KeyError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except api_error as exc:
            error: ApiError = exc  # type: ignore[assignment]
            return JSONResponse({"error": error.message, "errorCode": error.code}, status_code=400)
    endpoint.__name__ = handler.__name__
    return endpoint


class Stats:
    """In-memory counters for tests and demos; sandboxes subclass it to count their own specifics."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests: Counter[str] = Counter()
        self.writes: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.faults: Counter[str] = Counter()

    def snapshot(self) -> dict[str, Any]:
        return {"requests": dict(self.requests), "writes": {k: dict(v) for k, v in self.writes.items()},
                "faults_injected": dict(self.faults)}
