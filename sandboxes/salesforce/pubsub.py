"""Salesforce Pub/Sub API (gRPC, `eventbus.v1.PubSub`) over the sandbox's change events.

Followed: the public proto (pubsub_proto/pubsub_api.proto, whose comments are the contract for flow control,
replay presets and keepalives) and the Pub/Sub API Developer Guide
(https://developer.salesforce.com/docs/platform/pub-sub-api/guide/): "Supported Authentication Metadata"
(accesstoken + instanceurl + tenantid), "Event Message Durability" (opaque replay ids, 72-hour retention),
"Handle Errors" (status code, an `error-code` trailer, `rpcId:` appended to the message, an `rpc-id` trailer),
"Retry Long-Lived RPC Calls" (`sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted` for a replay id
outside the retention window) and "Event Deserialization Considerations" (Avro payloads, bitmap fields).

Behaviour:
* Topics: `/data/ChangeEvents` (every object selected for CDC) and `/data/<Object>ChangeEvent` for any object of
  the org (events flow only while the object is selected). Anything else: NOT_FOUND.
* Replay ids are 8-byte big-endian event numbers (what Salesforce's own examples store); a subscription starts
  after LATEST (the newest event now), before the oldest retained event (EARLIEST) or after `replay_id`
  (CUSTOM). A CUSTOM id that is not 8 bytes, or whose successors were purged: INVALID_ARGUMENT with
  `...fetch.replayid.corrupted`; an id never issued: INVALID_ARGUMENT with `...fetch.replayid.validation.failed`.
* Flow control: each FetchRequest adds `num_requested` (1..100 honoured per request, as Salesforce caps it) to
  what the server still owes; a FetchResponse carries at most what is owed, and `pending_num_requested` says how
  many are still owed after it. A later topic_name must match the first (else INVALID_ARGUMENT); later
  replay_preset / replay_id values are ignored, as the proto says.
* Keepalive: when nothing was sent for `keepalive_seconds` (270 like Salesforce, `--pubsub-keepalive` to
  shorten), an empty FetchResponse carries `latest_replay_id`, the position the subscription has scanned to.
* Publish / PublishStream to a change event topic answer one PublishResult per event with an error (change
  events are read-only); ManagedSubscribe is not implemented (UNIMPLEMENTED).
Every RPC checks the metadata first: a missing or invalid session, an instanceurl that is not an https URL or a
tenantid that is not this org's id gives UNAUTHENTICATED with `sfdc.platform.eventbus.grpc.service.auth.error`.
All store access goes through the store thread.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from collections import deque
from typing import AsyncIterator

import grpc

from .cdc import ALL_CHANGES, topic_entities
from .context import Sandbox
from .errors import SalesforceError
from .events import StoredEvent
from .pubsub_proto import pubsub_api_pb2 as pb
from .pubsub_proto import pubsub_api_pb2_grpc as pb_grpc

log = logging.getLogger("crmsync.sandbox.salesforce.pubsub")
BANNER = "Salesforce Pub/Sub API: "
MAX_NUM_REQUESTED = 100
MAX_BATCH = 100
POLL_SECONDS = 0.05
AUTH_ERROR = "sfdc.platform.eventbus.grpc.service.auth.error"
REPLAY_CORRUPTED = "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted"
REPLAY_INVALID = "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.validation.failed"
TOPIC_NOT_FOUND = "sfdc.platform.eventbus.grpc.topic.not.found"
BAD_REQUEST = "sfdc.platform.eventbus.grpc.subscription.fetch.invalid.request"


class RpcError(Exception):
    def __init__(self, status: grpc.StatusCode, error_code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error_code, self.message = status, error_code, message


def replay_bytes(replay_id: int) -> bytes:
    return replay_id.to_bytes(8, "big")


class PubSubService(pb_grpc.PubSubServicer):
    def __init__(self, sandbox: Sandbox, keepalive_seconds: float) -> None:
        self.sandbox = sandbox
        self.keepalive_seconds = keepalive_seconds
        self.subscribers = 0

    # ---- unary RPCs

    async def GetTopic(self, request: pb.TopicRequest, context: grpc.aio.ServicerContext) -> pb.TopicInfo:
        rpc_id = _rpc_id()
        try:
            await self._authenticate(context)
            entities = self._topic_entities(request.topic_name)
            schema = "" if request.topic_name == ALL_CHANGES else await self.sandbox.worker.run(
                self._current_schema_id, next(iter(entities)))
        except RpcError as error:
            await _abort(context, error, rpc_id)
        return pb.TopicInfo(topic_name=request.topic_name, tenant_guid=self.sandbox.org_id, can_publish=False,
                            can_subscribe=True, schema_id=schema, rpc_id=rpc_id)

    async def GetSchema(self, request: pb.SchemaRequest, context: grpc.aio.ServicerContext) -> pb.SchemaInfo:
        rpc_id = _rpc_id()
        try:
            await self._authenticate(context)
            schema_json = await self.sandbox.worker.run(self.sandbox.changes.schema_json, request.schema_id)
            if schema_json is None:
                raise RpcError(grpc.StatusCode.NOT_FOUND, "sfdc.platform.eventbus.grpc.schema.not.found",
                               f"Schema {request.schema_id!r} not found.")
        except RpcError as error:
            await _abort(context, error, rpc_id)
        return pb.SchemaInfo(schema_json=schema_json, schema_id=request.schema_id, rpc_id=rpc_id)

    async def Publish(self, request: pb.PublishRequest, context: grpc.aio.ServicerContext) -> pb.PublishResponse:
        rpc_id = _rpc_id()
        try:
            await self._authenticate(context)
            self._topic_entities(request.topic_name)
        except RpcError as error:
            await _abort(context, error, rpc_id)
        return _refused(request, rpc_id)

    async def PublishStream(self, request_iterator: AsyncIterator[pb.PublishRequest],
                            context: grpc.aio.ServicerContext) -> AsyncIterator[pb.PublishResponse]:
        rpc_id = _rpc_id()
        try:
            await self._authenticate(context)
            async for request in request_iterator:
                self._topic_entities(request.topic_name)
                yield _refused(request, rpc_id)
        except RpcError as error:
            await _abort(context, error, rpc_id)

    # ---- Subscribe

    async def Subscribe(self, request_iterator: AsyncIterator[pb.FetchRequest],
                        context: grpc.aio.ServicerContext) -> AsyncIterator[pb.FetchResponse]:
        rpc_id = _rpc_id()
        self.subscribers += 1
        try:
            await self._authenticate(context)
            first = await anext(request_iterator, None)
            if first is None:
                return
            topic = first.topic_name
            entities = self._topic_entities(topic)
            cursor = await self.sandbox.worker.run(self._start_position, first)
            owed = _requested(first)
            incoming = _Requests()
            reader = asyncio.create_task(incoming.read(request_iterator))
            try:
                async for response in self._deliver(topic, entities, cursor, owed, incoming, rpc_id):
                    yield response
            finally:
                reader.cancel()
        except RpcError as error:
            await _abort(context, error, rpc_id)
        finally:
            self.subscribers -= 1

    async def _deliver(self, topic: str, entities: set[str] | None, cursor: int, owed: int,
                       incoming: "_Requests", rpc_id: str) -> AsyncIterator[pb.FetchResponse]:
        last_sent = time.monotonic()
        while True:
            while incoming.pending:
                request = incoming.pending.popleft()
                if request is None:  # the client half-closed its side: finish the call
                    return
                if request.topic_name and request.topic_name != topic:
                    raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, BAD_REQUEST,
                                   f"The topic name {request.topic_name!r} does not match the subscription's "
                                   f"topic {topic!r}.")
                owed += _requested(request)
            if owed > 0 and self.sandbox.changes.head > cursor:
                events, scanned = await self.sandbox.worker.run(
                    self.sandbox.changes.events_after, cursor, self._live_entities(entities), min(owed, MAX_BATCH))
                cursor = scanned
                if events:
                    consumer = await self.sandbox.worker.run(self._consumer_events, events)
                    owed -= len(consumer)
                    yield pb.FetchResponse(events=consumer, latest_replay_id=replay_bytes(events[-1].replay_id),
                                           rpc_id=rpc_id, pending_num_requested=owed)
                    last_sent = time.monotonic()
                    continue
            if time.monotonic() - last_sent >= self.keepalive_seconds:
                yield pb.FetchResponse(latest_replay_id=replay_bytes(cursor), rpc_id=rpc_id,
                                       pending_num_requested=owed)
                last_sent = time.monotonic()
            await incoming.wait(POLL_SECONDS)

    def _start_position(self, first: pb.FetchRequest) -> int:
        changes = self.sandbox.changes
        if first.replay_preset == pb.ReplayPreset.EARLIEST:
            return changes.earliest_replay_id()
        if first.replay_preset != pb.ReplayPreset.CUSTOM:
            return changes.last_replay_id()
        if len(first.replay_id) != 8:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, REPLAY_CORRUPTED,
                           "The Replay ID validation failed. Ensure that the Replay ID is valid.")
        replay_id = int.from_bytes(first.replay_id, "big")
        state = changes.replay_state(replay_id)
        if state == "expired":
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, REPLAY_CORRUPTED,
                           f"The Replay ID validation failed. Ensure that the Replay ID is valid: events after "
                           f"{replay_id} are outside the retention window.")
        if state == "unknown":
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, REPLAY_INVALID,
                           f"The Replay ID validation failed. Ensure that the Replay ID is valid: {replay_id} was "
                           "never issued.")
        return replay_id

    def _consumer_events(self, events: list[StoredEvent]) -> list[pb.ConsumerEvent]:
        result = []
        for event in events:
            layout = self.sandbox.changes.layout_for(event)
            result.append(pb.ConsumerEvent(
                event=pb.ProducerEvent(id=str(uuid.uuid5(uuid.NAMESPACE_OID, f"{event.replay_id}")),
                                       schema_id=event.schema_id, payload=layout.avro_payload(event)),
                replay_id=replay_bytes(event.replay_id)))
        return result

    def _current_schema_id(self, entity: str) -> str:
        return self.sandbox.changes.layout(self.sandbox.model.objects[entity]).schema_id

    def _topic_entities(self, topic: str) -> set[str] | None:
        """The objects a topic carries (None: every selected object); NOT_FOUND for anything else."""
        try:
            return topic_entities(self.sandbox.model, topic)
        except LookupError:
            pass
        raise RpcError(grpc.StatusCode.NOT_FOUND, TOPIC_NOT_FOUND, f"Topic {topic!r} not found. Check the topic "
                       "name: change events use /data/ChangeEvents or /data/<Object>ChangeEvent.")

    def _live_entities(self, entities: set[str] | None) -> set[str]:
        selected = set(self.sandbox.changes.selected)
        return selected if entities is None else entities & selected

    async def _authenticate(self, context: grpc.aio.ServicerContext) -> None:
        metadata = {key: value for key, value in (context.invocation_metadata() or ())}
        token, instance, tenant = (str(metadata.get(k, "")) for k in ("accesstoken", "instanceurl", "tenantid"))
        org = self.sandbox.org_id
        problem = None
        if not token or not instance or not tenant:
            problem = "the accesstoken, instanceurl and tenantid metadata headers are all required"
        elif not instance.startswith("https://"):
            problem = "instanceurl must be the org's https URL"
        elif tenant not in (org, org[:15]):
            problem = "tenantid does not match the org of the session"
        else:
            try:
                await self.sandbox.worker.run(self.sandbox.auth.check_access, token)
            except SalesforceError:
                problem = "the session is invalid or has expired"
        if problem:
            raise RpcError(grpc.StatusCode.UNAUTHENTICATED, AUTH_ERROR,
                           f"An authentication error occurred: {problem}. Ensure that the access token, instance "
                           "URL and tenant ID are valid.")


def _requested(request: pb.FetchRequest) -> int:
    return max(0, min(request.num_requested, MAX_NUM_REQUESTED))


def _refused(request: pb.PublishRequest, rpc_id: str) -> pb.PublishResponse:
    error = pb.Error(code=pb.ErrorCode.PUBLISH, msg="Change events are read-only: they cannot be published.")
    return pb.PublishResponse(results=[pb.PublishResult(error=error, correlation_key=e.id) for e in request.events],
                              rpc_id=rpc_id)


class _Requests:
    """FetchRequests read from the client while events are being delivered; None marks the client's half-close."""

    def __init__(self) -> None:
        self.pending: deque[pb.FetchRequest | None] = deque()
        self._arrived = asyncio.Event()

    async def read(self, requests: AsyncIterator[pb.FetchRequest]) -> None:
        try:
            async for request in requests:
                self.pending.append(request)
                self._arrived.set()
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            return
        self.pending.append(None)
        self._arrived.set()

    async def wait(self, seconds: float) -> None:
        """Sleep `seconds`, or less when a request arrives."""
        try:
            await asyncio.wait_for(self._arrived.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            pass
        self._arrived.clear()


def _rpc_id() -> str:
    return str(uuid.uuid4())


async def _abort(context: grpc.aio.ServicerContext, error: RpcError, rpc_id: str) -> None:
    context.set_trailing_metadata((("error-code", error.error_code), ("rpc-id", rpc_id)))
    await context.abort(error.status, f"{error.message} rpcId: {rpc_id}")


@asynccontextmanager
async def pubsub_server(sandbox: Sandbox, *, host: str, port: int, cert: Path, key: Path,
                        keepalive_seconds: float) -> AsyncIterator[int]:
    """Serve the Pub/Sub API with the sandbox certificate on `host:port` (0 picks); yields the bound port."""
    server = grpc.aio.server()
    pb_grpc.add_PubSubServicer_to_server(PubSubService(sandbox, keepalive_seconds), server)
    credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    bound = server.add_secure_port(f"{host}:{port}", credentials)
    if not bound:
        raise OSError(f"cannot listen on {host}:{port} for the Pub/Sub API")
    await server.start()
    try:
        yield bound
    finally:
        await server.stop(grace=1)
