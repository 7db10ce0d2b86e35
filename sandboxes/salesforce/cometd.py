"""Streaming API (CometD / Bayeux 1.0 over long polling) for change events, at /cometd/<version>.

Followed: Streaming API Developer Guide (https://developer.salesforce.com/docs/atlas.en-us.api_streaming.meta/
api_streaming/): "Streaming API Endpoint" (`/cometd/<version>`, `Authorization: OAuth|Bearer <session>`),
"Message Durability" (the replay extension: `ext.replay = {channel: -1 | -2 | replayId}`; an unusable replay
id fails the subscribe with `400::The replayId {id} you provided was invalid…`), "Clients and Timeouts"
(connect held up to 110 s, `advice {timeout: 110000, interval: 0, reconnect: retry}`, a client not connecting
for 40 s is dropped: `403::Unknown client` with `advice.reconnect: handshake`), "Change Event Message
Structure" for the event message (`{data: {schema, payload, event: {replayId}}, channel}`), and the Bayeux
protocol spec (https://docs.cometd.org/current/reference/#_bayeux) for the meta messages.

A bad or expired session answers HTTP 401 with `403::Handshake denied` and `ext.sfdc.failureReason:
401::Authentication invalid` for a handshake (Salesforce's form) and `401::Authentication invalid` otherwise.
Only long polling is offered (`supportedConnectionTypes: ["long-polling"]`); publishing is refused
(`403::Publish denied`). Event payloads follow events.py (JSON form). Clients live in memory: a restart forgets
them and they re-handshake, as after a Salesforce server move. `--cometd-timeout` shortens the connect hold.
"""
from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .cdc import topic_entities
from .context import Sandbox, json_response
from .errors import SalesforceError

MAX_INTERVAL_SECONDS = 40.0
POLL_SECONDS = 0.05
MAX_EVENTS_PER_CONNECT = 500
REPLAY_NEW, REPLAY_ALL = -1, -2


@dataclass
class _Client:
    id: str
    user_id: str
    subscriptions: dict[str, int] = field(default_factory=dict)  # channel -> replay id delivered up to
    connected: bool = False
    last_seen: float = field(default_factory=time.monotonic)


class Sessions:
    """The CometD clients the server knows, by clientId."""

    def __init__(self) -> None:
        self.clients: dict[str, _Client] = {}

    def get(self, client_id: Any, hold_seconds: float) -> _Client | None:
        cutoff = time.monotonic() - hold_seconds - MAX_INTERVAL_SECONDS
        for stale in [k for k, c in self.clients.items() if c.last_seen < cutoff]:
            del self.clients[stale]
        client = self.clients.get(client_id) if isinstance(client_id, str) else None
        if client is not None:
            client.last_seen = time.monotonic()
        return client


def routes() -> list[Route]:
    return [Route("/cometd/{version}", endpoint, methods=["POST"]),
            Route("/cometd/{version}/{meta:path}", endpoint, methods=["POST"])]


async def endpoint(request: Request) -> Response:
    sandbox: Sandbox = request.app.state.sandbox
    sessions: Sessions = request.app.state.cometd
    try:
        messages = json.loads(await request.body() or b"[]")
    except ValueError:
        return json_response([{"successful": False, "error": "400::Invalid JSON"}], 400)
    messages = messages if isinstance(messages, list) else [messages]
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    try:
        if scheme.lower() not in ("oauth", "bearer"):
            raise SalesforceError("INVALID_SESSION_ID", "no session", status=401)
        user_id = await sandbox.worker.run(sandbox.auth.check_access, token.strip())
    except SalesforceError:
        return json_response([_auth_failure(m) for m in messages if isinstance(m, dict)], 401)
    replies: list[dict[str, Any]] = []
    for message in messages:
        if isinstance(message, dict):
            replies += await _handle(sandbox, sessions, message, user_id)
    return json_response(replies)


async def _handle(sandbox: Sandbox, sessions: Sessions, message: dict[str, Any], user_id: str) \
        -> list[dict[str, Any]]:
    channel = str(message.get("channel", ""))
    reply: dict[str, Any] = {"channel": channel, **({"id": message["id"]} if "id" in message else {})}
    if channel == "/meta/handshake":
        client = _Client(secrets.token_hex(16), user_id)
        sessions.clients[client.id] = client
        return [{**reply, "version": "1.0", "minimumVersion": "1.0", "supportedConnectionTypes": ["long-polling"],
                 "clientId": client.id, "successful": True, "ext": {"replay": True, "payload.format": True},
                 "advice": _advice(sandbox)}]
    client = sessions.get(message.get("clientId"), sandbox.cometd_timeout_seconds)
    if client is None:
        return [{**reply, "successful": False, "error": "403::Unknown client",
                 "advice": {"reconnect": "handshake", "interval": 0}}]
    reply["clientId"] = client.id
    if channel == "/meta/connect":
        return await _connect(sandbox, client, reply)
    if channel == "/meta/subscribe":
        return [await _subscribe(sandbox, client, message, reply)]
    if channel == "/meta/unsubscribe":
        subscription = str(message.get("subscription", ""))
        client.subscriptions.pop(subscription, None)
        return [{**reply, "subscription": subscription, "successful": True}]
    if channel == "/meta/disconnect":
        sessions.clients.pop(client.id, None)
        return [{**reply, "successful": True}]
    return [{**reply, "successful": False, "error": "403::Publish denied"}]


async def _connect(sandbox: Sandbox, client: _Client, reply: dict[str, Any]) -> list[dict[str, Any]]:
    """Answer at once the first time (with advice), else when events are ready or the hold time is over."""
    done = {**reply, "successful": True}
    if not client.connected:
        client.connected = True
        return [{**done, "advice": _advice(sandbox)}]
    deadline = time.monotonic() + sandbox.cometd_timeout_seconds
    while True:
        if client.subscriptions and sandbox.changes.head > min(client.subscriptions.values()):
            deliveries = await sandbox.worker.run(_collect, sandbox, client)
            if deliveries:
                return [*deliveries, done]
        if time.monotonic() >= deadline:
            return [done]
        await asyncio.sleep(POLL_SECONDS)


def _collect(sandbox: Sandbox, client: _Client) -> list[dict[str, Any]]:
    """Event messages for every subscription of `client`, advancing its positions (store thread)."""
    changes = sandbox.changes
    messages = []
    for channel, position in list(client.subscriptions.items()):
        entities = topic_entities(sandbox.model, channel)
        live = set(changes.selected) if entities is None else entities & changes.selected
        events, scanned = changes.events_after(position, live, MAX_EVENTS_PER_CONNECT)
        for event in events:
            layout = changes.layout_for(event)
            messages.append({"data": {"schema": event.schema_id, "payload": layout.json_payload(event),
                                      "event": {"replayId": event.replay_id}}, "channel": channel})
        if channel in client.subscriptions:
            client.subscriptions[channel] = scanned
    return messages


async def _subscribe(sandbox: Sandbox, client: _Client, message: dict[str, Any], reply: dict[str, Any]) \
        -> dict[str, Any]:
    subscription = str(message.get("subscription", ""))
    reply["subscription"] = subscription
    try:
        topic_entities(sandbox.model, subscription)
    except LookupError:
        return {**reply, "successful": False,
                "error": f"400::The channel you requested to subscribe to does not exist {{{subscription}}}"}
    ext = message.get("ext") if isinstance(message.get("ext"), dict) else {}
    replay = (ext.get("replay") or {}).get(subscription, REPLAY_NEW) if isinstance(ext.get("replay"), dict) \
        else REPLAY_NEW
    position = await sandbox.worker.run(_start_position, sandbox, replay)
    if position is None:
        return {**reply, "successful": False,
                "error": f"400::The replayId {{{replay}}} you provided was invalid.  Please provide a valid ID, -2 "
                         "to replay all events, or -1 to replay only new events."}
    client.subscriptions[subscription] = position
    return {**reply, "successful": True}


def _start_position(sandbox: Sandbox, replay: Any) -> int | None:
    changes = sandbox.changes
    if replay == REPLAY_NEW:
        return changes.last_replay_id()
    if replay == REPLAY_ALL:
        return changes.earliest_replay_id()
    if not isinstance(replay, int) or isinstance(replay, bool) or changes.replay_state(replay) != "ok":
        return None
    return replay


def _advice(sandbox: Sandbox) -> dict[str, Any]:
    return {"interval": 0, "timeout": int(sandbox.cometd_timeout_seconds * 1000), "reconnect": "retry"}


def _auth_failure(message: dict[str, Any]) -> dict[str, Any]:
    base = {"channel": message.get("channel"), **({"id": message["id"]} if "id" in message else {}),
            "successful": False, "advice": {"reconnect": "none"}}
    if message.get("channel") == "/meta/handshake":
        return {**base, "error": "403::Handshake denied", "ext": {"sfdc": {"failureReason":
                                                                               "401::Authentication invalid"}}}
    return {**base, "error": "401::Authentication invalid"}
