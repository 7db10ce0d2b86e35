"""The Pub/Sub API client: one gRPC channel per account, Avro schemas by id, and subscriptions with flow control.

Followed: the public `pubsub_api.proto` (its generated modules are shared with the sandbox, imported from
sandboxes/salesforce/pubsub_proto, never copied) and the Pub/Sub API Developer Guide
(https://developer.salesforce.com/docs/platform/pub-sub-api/guide/): "Supported Authentication Metadata"
(`accesstoken`, `instanceurl`, `tenantid` on every call), "Flow Control" (a subscriber receives at most what its
FetchRequests asked for: `num_requested`, ≤ 100 per request), "Event Deserialization Considerations" (Avro
payloads decoded with the schema the event names; changedFields / nulledFields / diffFields as bitmaps) and
"Handle Errors" (a status, an `error-code` trailer).

Why a thread per subscription: the gRPC stream is a blocking iterator; a daemon thread reads it into a queue, so
the change source (cdc.py) can wait for events with a timeout, stop when the stream is quiet, and hand every
FetchResponse over in order. The thread only reads: credit (`grant`) is given by the owner after the events were
published, so at most `fetch_size` events are ever in flight — the server keeps the rest.

Invariants: TLS always (the account's CA file when set, else the system roots); the session id travels only in
call metadata, never in a message or a log; schemas are fetched once per id (an id never changes its schema).
"""
from __future__ import annotations

import io
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import fastavro
import grpc

from connectors.salesforce.client import SalesforceClient
from sandboxes.salesforce.pubsub_proto import pubsub_api_pb2 as pb
from sandboxes.salesforce.pubsub_proto import pubsub_api_pb2_grpc as pb_grpc

log = logging.getLogger("crmsync.salesforce.pubsub")

MAX_FETCH = 100  # events per FetchRequest Salesforce honours
CALL_TIMEOUT = 30.0  # seconds for the unary calls (GetTopic, GetSchema)
AUTH_ERROR = "sfdc.platform.eventbus.grpc.service.auth.error"
REPLAY_CORRUPTED = "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted"
REPLAY_INVALID = "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.validation.failed"


class PubSubError(Exception):
    """A Pub/Sub API call failed: the gRPC status, Salesforce's `error-code` trailer, and its message."""

    def __init__(self, status: grpc.StatusCode | None, error_code: str, message: str) -> None:
        super().__init__(f"{status.name if status else 'UNKNOWN'} {error_code or '-'}: {message}")
        self.status, self.error_code, self.message = status, error_code, message

    @classmethod
    def of(cls, exc: grpc.RpcError) -> "PubSubError":
        trailers = dict(exc.trailing_metadata() or ()) if hasattr(exc, "trailing_metadata") else {}
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        return cls(code, str(trailers.get("error-code", "")), details or "")

    @property
    def unauthenticated(self) -> bool:
        return self.status == grpc.StatusCode.UNAUTHENTICATED or self.error_code == AUTH_ERROR

    @property
    def replay_refused(self) -> str | None:
        """'replay_expired' / 'replay_invalid' when the server refused the replay id to start after."""
        if self.error_code == REPLAY_CORRUPTED:
            return "replay_expired"
        if self.error_code == REPLAY_INVALID:
            return "replay_invalid"
        return None


@dataclass
class Schema:
    """An event schema: fastavro's parsed form, and each top-level field's name and nested field names."""

    schema_id: str
    parsed: Any
    fields: list[tuple[str, list[str]]]  # (field name, names of its nested record's fields or [])

    def decode(self, payload: bytes) -> dict[str, Any]:
        return fastavro.schemaless_reader(io.BytesIO(payload), self.parsed)

    def field_names(self, bitmap: list[str]) -> list[str]:
        """A bitmap field list as names: 'Email', 'Name.LastName', 'MailingAddress.City'. Element '0x…' holds
        the top-level positions (bit i = field i), '<i>-0x…' the components of top-level field i."""
        names: list[str] = []
        for element in bitmap:
            parent, _, bits_text = element.rpartition("-")
            bits = int(bits_text, 16)
            if parent:
                name, nested = self.fields[int(parent)]
                names += [f"{name}.{part}" for j, part in enumerate(nested) if bits >> j & 1]
            else:
                names += [name for i, (name, _) in enumerate(self.fields) if bits >> i & 1]
        return names


@dataclass
class ChangeEvent:
    """One change event, decoded: its `ChangeEventHeader` as Avro gives it (entityName, changeType, recordIds,
    changeOrigin, commitTimestamp in epoch ms, …), the body's fields by their event names (compound fields as
    'Name.LastName' / 'MailingAddress.City', raw Avro values), and the header's field lists as names."""

    replay_id: bytes
    schema_id: str
    header: dict[str, Any]
    values: dict[str, Any] = field(default_factory=dict)
    changed: list[str] = field(default_factory=list)
    nulled: list[str] = field(default_factory=list)

    @property
    def entity(self) -> str:
        return self.header["entityName"]

    @property
    def change_type(self) -> str:
        return self.header["changeType"]

    @property
    def record_ids(self) -> list[str]:
        return list(self.header["recordIds"])

    @property
    def origin(self) -> str:
        return self.header.get("changeOrigin") or ""

    @property
    def commit_timestamp(self) -> int:
        return int(self.header["commitTimestamp"])


def _nested_record(avro_type: Any) -> dict[str, Any] | None:
    options = avro_type if isinstance(avro_type, list) else [avro_type]
    return next((t for t in options if isinstance(t, dict) and t.get("type") == "record"), None)


def parse_schema(schema_id: str, schema_json: str) -> Schema:
    import json

    schema = json.loads(schema_json)
    fields = []
    for f in schema["fields"]:
        nested = _nested_record(f["type"]) if f["name"] != "ChangeEventHeader" else None
        fields.append((f["name"], [n["name"] for n in nested["fields"]] if nested else []))
    return Schema(schema_id, fastavro.parse_schema(schema), fields)


def flatten(record: dict[str, Any]) -> dict[str, Any]:
    """Body fields by event name, compound fields' components as 'Parent.Part' (the header left out)."""
    flat: dict[str, Any] = {}
    for name, value in record.items():
        if name == "ChangeEventHeader":
            continue
        if isinstance(value, dict):
            flat.update({f"{name}.{part}": v for part, v in value.items()})
        else:
            flat[name] = value
    return flat


class PubSub:
    """The Pub/Sub API for one logged-in account (the REST client's session and org id authenticate it)."""

    def __init__(self, client: SalesforceClient, endpoint: str) -> None:
        self.client = client
        self.endpoint = endpoint
        ca = client.account.ca_file.read_bytes() if client.account.ca_file else None
        self.channel = grpc.secure_channel(endpoint, grpc.ssl_channel_credentials(root_certificates=ca),
                                           options=[("grpc.keepalive_time_ms", 60_000)])
        self.stub = pb_grpc.PubSubStub(self.channel)
        self._schemas: dict[str, Schema] = {}
        self._lock = threading.Lock()

    def metadata(self) -> tuple[tuple[str, str], ...]:
        session = self.client.session
        return (("accesstoken", session.session_id), ("instanceurl", session.instance_url),
                ("tenantid", self.client.org_id()))

    def _unary(self, method: Any, request: Any) -> Any:
        """A unary call; an expired session is renewed once (the REST client logs in again)."""
        for attempt in (1, 2):
            try:
                return method(request, metadata=self.metadata(), timeout=CALL_TIMEOUT)
            except grpc.RpcError as exc:
                error = PubSubError.of(exc)
                if attempt == 1 and error.unauthenticated:
                    self.client.relogin()
                    continue
                raise error from None
        raise AssertionError("unreachable")

    def topic(self, name: str) -> pb.TopicInfo:
        return self._unary(self.stub.GetTopic, pb.TopicRequest(topic_name=name))

    def schema(self, schema_id: str) -> Schema:
        with self._lock:
            found = self._schemas.get(schema_id)
        if found is None:
            info = self._unary(self.stub.GetSchema, pb.SchemaRequest(schema_id=schema_id))
            found = parse_schema(schema_id, info.schema_json)
            with self._lock:
                self._schemas[schema_id] = found
        return found

    def decode(self, consumer: pb.ConsumerEvent) -> ChangeEvent:
        schema = self.schema(consumer.event.schema_id)
        record = schema.decode(consumer.event.payload)
        header = record["ChangeEventHeader"]
        return ChangeEvent(bytes(consumer.replay_id), schema.schema_id, header, flatten(record),
                           schema.field_names(header.get("changedFields") or []),
                           schema.field_names(header.get("nulledFields") or []))

    def subscribe(self, topic: str, replay_id: bytes | None, fetch_size: int,
                  wake: threading.Event | None = None) -> "Subscription":
        return Subscription(self, topic, replay_id, min(fetch_size, MAX_FETCH), wake)

    def close(self) -> None:
        self.channel.close()


_END = object()  # the server ended the stream


class Subscription:
    """One Subscribe stream from `replay_id` (None: LATEST). `take()` hands over FetchResponses, PubSubErrors
    and the end of the stream in order; `grant(n)` asks for n more events."""

    def __init__(self, pubsub: PubSub, topic: str, replay_id: bytes | None, fetch_size: int,
                 wake: threading.Event | None) -> None:
        self.topic = topic
        self.started_after = replay_id
        self.opened_at = time.time()
        self.wake = wake
        self._requests: queue.SimpleQueue[pb.FetchRequest | None] = queue.SimpleQueue()
        self._items: queue.Queue[Any] = queue.Queue()
        self._closed = False
        preset = pb.ReplayPreset.CUSTOM if replay_id else pb.ReplayPreset.LATEST
        self._requests.put(pb.FetchRequest(topic_name=topic, replay_preset=preset, replay_id=replay_id or b"",
                                           num_requested=fetch_size))
        self._call = pubsub.stub.Subscribe(self._outgoing(), metadata=pubsub.metadata())
        self._thread = threading.Thread(target=self._read, name=f"pubsub {topic}", daemon=True)
        self._thread.start()

    def _outgoing(self) -> Iterator[pb.FetchRequest]:
        while True:
            request = self._requests.get()
            if request is None:
                return
            yield request

    def _read(self) -> None:
        try:
            for response in self._call:
                self._items.put(response)
                if response.events and self.wake is not None:
                    self.wake.set()
            self._items.put(_END)
        except grpc.RpcError as exc:
            if not self._closed:
                self._items.put(PubSubError.of(exc))
        except Exception as exc:  # noqa: BLE001 - handed to the owner, who decides
            if not self._closed:
                self._items.put(PubSubError(None, "", f"{type(exc).__name__}: {exc}"))
        if not self._closed and self.wake is not None:
            self.wake.set()

    def take(self, timeout: float) -> pb.FetchResponse | PubSubError | None:
        """The next FetchResponse (a keepalive has no events), a PubSubError (also for the end of the stream),
        or None when nothing came within `timeout` seconds."""
        try:
            item = self._items.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None
        if item is _END:
            return PubSubError(grpc.StatusCode.UNAVAILABLE, "", "the server ended the subscription")
        return item

    def pending(self) -> bool:
        return not self._items.empty()

    def grant(self, count: int) -> None:
        """Ask for `count` more events (after the ones received were published)."""
        while count > 0 and not self._closed:
            self._requests.put(pb.FetchRequest(topic_name=self.topic, num_requested=min(count, MAX_FETCH)))
            count -= MAX_FETCH

    def close(self) -> None:
        self._closed = True
        self._requests.put(None)
        self._call.cancel()
