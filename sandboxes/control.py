"""Pieces every sandbox's control surface shares: seeded fault injection, the /__sandbox/ admin endpoint wrapper,
request/write statistics, settings.json loading, and an access log that never prints query strings.

A sandbox names its own fault kinds (Salesforce: session_expiry, request_limit_exceeded, unavailable_503;
Dynamics: token_expiry, throttle_429, unavailable_503); each kind is a probability per API request, plus
`slow_probability`/`slow_seconds` for stalls and `seed` for the RNG. The RNG draws a fixed number of values per
request, so a test run with the same seed fails the same requests.

Admin endpoints require `X-Sandbox-Admin: <admin token>` (compared in constant time), take a JSON object body and
answer JSON; they never look at `Authorization`, so a CRM session cannot reach them.
"""
from __future__ import annotations

import hmac
import json
import logging
import random
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

T = TypeVar("T")
DEFAULT_ADMIN_TOKEN = "crmsync-sandbox-admin"  # X-Sandbox-Admin of every sandbox unless --admin-token says otherwise


@dataclass(frozen=True)
class FaultDecision:
    kind: str | None  # one of the sandbox's fault kinds, or None
    delay: float  # seconds to stall before answering (slow fault), 0 for none


class Faults:
    """Random API failures from a seeded RNG; `kinds` are checked in order, the first that fires wins."""

    def __init__(self, kinds: Sequence[str]) -> None:
        self.kinds = tuple(kinds)
        self.keys = (*self.kinds, "slow_probability", "slow_seconds", "seed")
        self.configure({})

    def configure(self, spec: dict[str, Any]) -> dict[str, float]:
        unknown = set(spec) - set(self.keys)
        if unknown:
            raise ValueError(f"unknown fault settings: {sorted(unknown)}; known: {list(self.keys)}")
        try:
            settings = {k: float(spec.get(k, 0)) for k in self.keys}
        except (TypeError, ValueError):
            raise ValueError("fault settings must be numbers") from None
        if any(not 0 <= settings[k] <= 1 for k in (*self.kinds, "slow_probability")) or settings["slow_seconds"] < 0:
            raise ValueError("probabilities must be within [0, 1] and slow_seconds >= 0")
        self.settings = settings
        self._rng = random.Random(int(settings["seed"]))
        return settings

    def decide(self) -> FaultDecision:
        draws = [self._rng.random() for _ in range(len(self.kinds) + 1)]  # fixed draw count per request
        delay = self.settings["slow_seconds"] if draws[-1] < self.settings["slow_probability"] else 0.0
        for kind, draw in zip(self.kinds, draws):
            if draw < self.settings[kind]:
                return FaultDecision(kind, delay)
        return FaultDecision(None, delay)


AdminHandler = Callable[[Any, dict[str, Any]], Any]


def admin_endpoint(handler: AdminHandler, errors: tuple[type[Exception], ...] = ()) \
        -> Callable[[Request], Awaitable[Response]]:
    """Wrap `handler(sandbox, body)`: check X-Sandbox-Admin, parse the JSON body, render the result or the error.

    `errors` are the sandbox's own exception types, answered as 400 with their message.
    """
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
            worker = getattr(sandbox, "worker", None)  # a sandbox whose store lives on one thread runs it there
            result = await worker.run(handler, sandbox, body) if worker is not None else handler(sandbox, body)
            return JSONResponse(result)
        except (ValueError, TypeError, KeyError, *errors) as exc:
            return JSONResponse({"error": getattr(exc, "message", None) or str(exc),
                                 **({"errorCode": exc.code} if hasattr(exc, "code") else {})}, status_code=400)
    endpoint.__name__ = handler.__name__
    return endpoint


class AccessLog:
    """Logs method, path and status only: query strings and bodies may carry credentials."""

    def __init__(self, app: ASGIApp, logger: logging.Logger) -> None:
        self.app, self.log = app, logger

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status: dict[str, int] = {}

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        await self.app(scope, receive, capture)
        # the path without `;jsessionid=…`-style parameters, which carry credentials (Oracle On Demand)
        self.log.info("%s %s %s", scope["method"], scope["path"].split(";", 1)[0], status.get("code"))


class Stats:
    """In-memory counters for tests and demos: requests per endpoint, writes per object, faults injected."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests: Counter[str] = Counter()
        self.writes: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.faults: Counter[str] = Counter()

    def record_request(self, method: str, endpoint: str) -> None:
        self.requests[f"{method} {endpoint}"] += 1

    def count_write(self, target: str, operation: str, count: int = 1) -> None:
        self.writes[target][operation] += count

    def snapshot(self) -> dict[str, Any]:
        return {"requests": dict(self.requests), "writes": {k: dict(v) for k, v in self.writes.items()},
                "faults_injected": dict(self.faults)}


def load_settings(cls: type[T], state_dir: Path, file_name: str = "settings.json",
                  convert: Callable[[dict[str, Any]], dict[str, Any]] = lambda raw: raw) -> T:
    """Read a sandbox's settings dataclass from `<state_dir>/<file_name>`, writing the defaults on first start.

    Unknown keys are ignored (a newer file still loads); `convert` turns nested JSON into nested dataclasses."""
    path = Path(state_dir) / file_name
    if not path.exists():
        settings = cls()
        path.write_text(json.dumps(asdict(settings), indent=2) + "\n")  # type: ignore[call-overload]
        return settings
    raw = convert(json.loads(path.read_text()))
    known = set(cls.__dataclass_fields__)  # type: ignore[attr-defined]
    return cls(**{k: v for k, v in raw.items() if k in known})
