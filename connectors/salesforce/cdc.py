"""Salesforce change source in `cdc` mode: Change Data Capture events, pushed through the Pub/Sub API.

Why: polling reads every object every few seconds whether anything changed or not (43,000 calls a day per object
at 2 s) and sees a record only as it is at the next poll. Salesforce publishes every committed change of an object
selected for Change Data Capture as an event on `/data/<Object>ChangeEvent`; subscribing costs no REST call while
nothing happens, and delivers each change within a fraction of a second. (Change Data Capture Developer Guide:
https://developer.salesforce.com/docs/atlas.en-us.change_data_capture.meta/change_data_capture/; Pub/Sub API:
https://developer.salesforce.com/docs/platform/pub-sub-api/guide/.)

How a read works (`CdcSource.read(cursor)`, the crmsync.connectors.PushSource contract):

1. The subscription is (re)opened when there is none or the cursor is not where this source left off (a restart,
   or the poller reloading its stored cursor after a failure): after the cursor's replay id (CUSTOM); without one,
   at the tip (LATEST) — then the polling source (source.py) reads, from the cursor's polling state, what the tip
   does not replay: the first snapshot (op 'r') when nothing was read yet, else everything modified since.
   Subscribing comes first, so whatever commits during that read arrives as events afterwards.
2. Events are turned into neutral changes page by page, one FetchResponse at a time; after the page is handed
   out (the poller publishes it, waits for the broker's acknowledgement and stores the cursor), exactly as many
   events are asked for again (`FetchRequest.num_requested`): at most `fetch_size` events are ever in flight.
   Keepalives carry no events and move nothing.
3. A read returns once the stream has been quiet for `settle_seconds` (up to `open_seconds` after subscribing), or
   after `max_read_seconds` so the poller can serve its other objects. A read abandoned half-way (the poller
   failed to publish) closes the subscription: the next read resubscribes from the stored cursor.

Events → changes (one change per record id; key {"id"}, position {"ts": commitTimestamp, "id", "replay"}, id
`crm:<account>:<object>:<id>:<commit stamp>/<replay id>`, so a redelivered event has the same change id):
- CREATE, UNDELETE → 'c' with every field the event carries (`partial` false; fields change events never carry —
  formula fields, SystemModstamp — are absent, never null);
- UPDATE → 'u' with the changed fields only (`partial` true: an absent field is unchanged, not null; nulledFields
  are None); compound fields are flattened to the describe's names (Name.LastName → LastName, MailingAddress.City
  → MailingCity);
- DELETE → 'd';
- GAP_CREATE / GAP_UPDATE / GAP_DELETE / GAP_UNDELETE (Salesforce could not build the event) → the records are
  read by id (query.py) and published whole; GAP_OVERFLOW (a transaction too large for events) → every record
  modified since the event's commit time minus the lookback is read (source.py). A replay id the server refuses
  (expired after the 72-hour retention, or unknown) and a restart without a replay id are filled the same way,
  from the cursor's `since`. Every fill counts in `crmsync_cdc_gap_fills_total{account,obj,reason}`.
- A change older than what a full read already delivered for that record (the snapshot or a fill read it later)
  is dropped; anything else that arrives twice is dropped by the consumers (same change id, or not newer).

Echoes: our own writes carry `Sforce-Call-Options: client=<api_client>` (client.py) and Salesforce copies it into
the event's `changeOrigin`; such changes get `origin: "crmsync"`. The streams still decide every field by value
(a field equal to what we sent is the echo; anything else — a trigger's change in our own transaction, a user
editing with the integration user's login — is an edit), so the origin never makes them drop a change.

Cursor (stored by the poller in crmsync.checkpoints)::

    {"v": 1, "mode": "cdc", "snapshot_done": true,
     "replay_id": "<hex of the last event handed out>" | null,
     "since": "2024-05-01T10:20:30.000+0000",   # that event's commitTimestamp: a refused replay id fills from here
     "poll": <the polling source's cursor> | null}   # while no event was handed out yet

A polling cursor of the same object (the mode was switched on) is taken as `poll`; source.py takes a cdc cursor
the other way round.
"""
from __future__ import annotations

import logging
import threading
import time
import weakref
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any, Iterable, Iterator

from prometheus_client import Counter
from simple_salesforce.exceptions import SalesforceError

from connectors.salesforce.client import SalesforceClient, retry_reason
from connectors.salesforce.pubsub import ChangeEvent, PubSub, PubSubError, Subscription
from connectors.salesforce.query import SalesforceQuery
from connectors.salesforce.source import DEFAULT_LOOKBACK_SECONDS, SalesforceSource, parse_modstamp
from crmsync.connectors import FieldSpec, SourcePage
from crmsync.envelope import Change, crm_change
from crmsync.values import iso_utc

log = logging.getLogger("crmsync.salesforce.cdc")

CURSOR_VERSION = 1
MODE = "cdc"
STANDARD_CHANNEL = "ChangeEvents"
MAX_REOPENS = 5  # consecutive failed subscriptions before a read gives up (the poller retries next cycle)

GAP_FILLS = Counter("crmsync_cdc_gap_fills_total", "Gaps in the change event stream filled by a query, by reason",
                    ["account", "obj", "reason"])
EVENTS = Counter("crmsync_cdc_events_total", "Change events received through the Pub/Sub API",
                 ["account", "obj", "type"])


# -- naming -----------------------------------------------------------------------------------------------------
def change_event_name(obj: str) -> str:
    """`Contact` → `ContactChangeEvent`, `Shoe__c` → `Shoe__ChangeEvent`."""
    return obj[:-3] + "__ChangeEvent" if obj.endswith("__c") else f"{obj}ChangeEvent"


def object_of(change_event: str) -> str:
    """The inverse of change_event_name."""
    base = change_event.removesuffix("ChangeEvent")
    return base + "c" if base.endswith("__") else base


def salesforce_stamp(millis: int) -> str:
    """Epoch milliseconds in Salesforce's datetime form (`2024-05-01T10:20:30.000+0000`)."""
    moment = datetime.fromtimestamp(millis / 1000, timezone.utc)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{millis % 1000:03d}+0000"


def _millis(text: str) -> int:
    return int(parse_modstamp(text.replace("Z", "+00:00")).timestamp() * 1000)


# -- which objects: the Setup selection --------------------------------------------------------------------------
_selections: "weakref.WeakKeyDictionary[SalesforceClient, frozenset[str]]" = weakref.WeakKeyDictionary()
_pubsubs: "weakref.WeakKeyDictionary[SalesforceClient, PubSub]" = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def cdc_selection(client: SalesforceClient) -> frozenset[str]:
    """The objects selected for Change Data Capture on the standard channel (Setup's selection), read once per
    client from the Tooling API's PlatformEventChannelMember; the account's `cdc_objects` when that is refused."""
    with _lock:
        if client in _selections:
            return _selections[client]
    try:
        members = client.tooling_query("SELECT SelectedEntity FROM PlatformEventChannelMember "
                                       f"WHERE EventChannel = '{STANDARD_CHANNEL}'")
        found = frozenset(object_of(m["SelectedEntity"]) for m in members if m.get("SelectedEntity"))
    except SalesforceError as exc:
        if retry_reason(exc) is not None:
            raise
        configured = client.account.cdc_objects
        log.warning("cannot read the Change Data Capture selection of %s (%s); using cdc_objects: %s",
                    client.account_name, exc, configured)
        found = frozenset(configured or ())
    with _lock:
        _selections[client] = found
    return found


def choose_mode(client: SalesforceClient, obj: str) -> str:
    """'cdc' when the account allows it, knows a Pub/Sub endpoint, and `obj` is selected; else 'poll'."""
    account = client.account
    if not account.cdc or account.pubsub_target() is None:
        return "poll"
    return MODE if obj.lower() in {name.lower() for name in cdc_selection(client)} else "poll"


def pubsub_for(client: SalesforceClient) -> PubSub:
    """One Pub/Sub channel per client, shared by its objects' subscriptions."""
    with _lock:
        found = _pubsubs.get(client)
        if found is None:
            target = client.account.pubsub_target()
            if target is None:
                raise ValueError(f"account {client.account_name}: no Pub/Sub API endpoint is known for "
                                 f"{client.account.login_url}; set pubsub_endpoint (host:port) or cdc: false")
            found = _pubsubs[client] = PubSub(client, target)
            client.when_closed(lambda: _close_pubsub(client))
        return found


def _close_pubsub(client: SalesforceClient) -> None:
    with _lock:
        found = _pubsubs.pop(client, None)
    if found is not None:
        found.close()


# -- the cursor ----------------------------------------------------------------------------------------------
@dataclass
class CdcCursor:
    snapshot_done: bool = False
    replay_id: str | None = None  # hex of the last event handed out
    since: str | None = None  # its commitTimestamp: a fill after a refused replay id starts here (minus lookback)
    poll: dict[str, Any] | None = None  # while no replay id is known: the polling source's cursor

    def key(self) -> tuple[str | None, bool]:
        return self.replay_id, self.snapshot_done

    def to_json(self) -> dict[str, Any]:
        return {"v": CURSOR_VERSION, "mode": MODE, "snapshot_done": self.snapshot_done, "replay_id": self.replay_id,
                "since": self.since, "poll": self.poll}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> "CdcCursor":
        """A cdc cursor; a polling cursor of the same object (cdc was switched on) goes on from where it is."""
        if not data:
            return cls()
        if data.get("mode") != MODE:
            return cls(snapshot_done=bool(data.get("snapshot_done")), poll=data)
        if data.get("v") != CURSOR_VERSION:
            raise ValueError(f"Salesforce cdc cursor has version {data.get('v')!r}; expected {CURSOR_VERSION}")
        return cls(bool(data.get("snapshot_done")), data.get("replay_id"), data.get("since"), data.get("poll"))


# -- the source ----------------------------------------------------------------------------------------------
class CdcSource:
    """The changes of one sObject selected for Change Data Capture (crmsync.connectors.PushSource)."""

    def __init__(self, client: SalesforceClient, obj: str, *, fetch_size: int = 100, settle_seconds: float = 0.05,
                 open_seconds: float = 0.5, max_read_seconds: float = 5.0,
                 lookback_seconds: float = DEFAULT_LOOKBACK_SECONDS, **polling: Any) -> None:
        self.client = client
        self.account_name = client.account_name
        self.obj = obj
        self.topic = f"/data/{change_event_name(obj)}"
        self.polling = SalesforceSource(client, obj, lookback_seconds=lookback_seconds, refresh_describe=False,
                                        **polling)
        self.query = SalesforceQuery(client)
        self.fetch_size, self.settle, self.open_wait, self.max_read = (fetch_size, settle_seconds, open_seconds,
                                                                       max_read_seconds)
        self.lookback_millis = int(lookback_seconds * 1000)
        self.own_origin = f"client={client.account.api_client}"
        self._subscription: Subscription | None = None
        self._handed: tuple[str | None, bool] | None = None  # the cursor key of the last page handed out
        self._fresh = False  # the subscription has delivered nothing yet
        self._wake: threading.Event | None = None
        self._seen: dict[str, int] = {}  # record id -> commit millis of the newest version delivered
        self._forget_at = 0  # commit millis from which the next pass over `_seen` may forget something
        self._tip_millis = 0  # when the subscription at the tip was opened (local clock): no event is older
        self._schema_id: str | None = None
        self._names: tuple[int, dict[str, tuple[str, str]]] = (0, {})  # event name -> (field, type), per describe
        self._reopens = 0

    # -- PushSource ----------------------------------------------------------------------------------------------
    def read(self, cursor: dict[str, Any] | None) -> Iterator[SourcePage]:
        state = CdcCursor.from_json(cursor)
        try:
            if self._subscription is None or self._handed != state.key():
                yield from self._open(state, "resume")
            yield from self._drain(state)
        except GeneratorExit:  # the caller stopped reading mid-way: what was handed out may not be stored
            self._close_subscription()
            raise

    def fields(self) -> dict[str, FieldSpec]:
        return self.polling.fields()

    def wakeup(self, event: threading.Event) -> None:
        self._wake = event
        if self._subscription is not None:
            self._subscription.wake = event

    def pending(self) -> bool:
        """Events (or a failure) are waiting, or there is no subscription yet."""
        return self._subscription is None or self._subscription.pending()

    def close(self) -> None:
        self._close_subscription()

    # -- the subscription --------------------------------------------------------------------------------------
    def _close_subscription(self) -> None:
        if self._subscription is not None:
            self._subscription.close()
            self._subscription = None
        self._handed = None

    def _open(self, state: CdcCursor, reason: str) -> Iterator[SourcePage]:
        """Subscribe after the cursor's replay id; without one, at the tip, then read (by query) what the tip does
        not replay: the first full read, or everything since the cursor."""
        self._close_subscription()
        replay = bytes.fromhex(state.replay_id) if state.replay_id else None
        self._subscription = pubsub_for(self.client).subscribe(self.topic, replay, self.fetch_size, self._wake)
        if replay is None:
            self._tip_millis = int(time.time() * 1000)
        self._fresh = True
        log.info("%s.%s: subscribed to %s %s", self.account_name, self.obj, self.topic,
                 f"after replay id {state.replay_id}" if replay else "at the tip")
        if replay is None:
            yield from self._read_by_query(state, reason)
        self._handed = state.key()

    def _read_by_query(self, state: CdcCursor, reason: str) -> Iterator[SourcePage]:
        """The polling source's read from the cursor's polling state (the snapshot when there is none yet; a
        re-read from `since` after events): whatever the subscription at the tip cannot replay."""
        if state.poll is None and state.since is not None:
            state.poll = self.polling.cursor_at(state.since)
        if state.poll is not None and state.snapshot_done:
            GAP_FILLS.labels(self.account_name, self.obj, reason).inc()
            log.info("%s.%s: reading what the change events do not replay (%s)", self.account_name, self.obj, reason)
            self.polling.read_window_next()
        for page in self.polling.read(state.poll):
            self._remember(page.changes)
            state.poll = page.cursor
            state.snapshot_done = state.snapshot_done or page.snapshot_done
            yield self._page(state, page.changes, snapshot_done=page.snapshot_done)

    def _drain(self, state: CdcCursor) -> Iterator[SourcePage]:
        """Events until the stream is quiet (or the read has lasted max_read_seconds)."""
        deadline = time.monotonic() + self.max_read
        while self._subscription is not None:
            quiet = self._open_wait_left(self._subscription) if self._fresh else self.settle
            item = self._subscription.take(min(quiet, max(0.0, deadline - time.monotonic())))
            if item is None:
                return
            self._fresh = False
            if isinstance(item, PubSubError):
                yield from self._recover(state, item)
                continue
            self._reopens = 0
            if item.events:
                yield from self._events(state, [pubsub_for(self.client).decode(e) for e in item.events])
                self._subscription.grant(len(item.events))
            if time.monotonic() >= deadline:
                return

    def _open_wait_left(self, subscription: Subscription) -> float:
        """A new subscription gets `open_seconds` from its opening to deliver its first events, not from the end
        of the read by query that follows it: a snapshot that took that long already gave it the time (a wait
        after each object's snapshot held up the next object's: 2 s per object in a first run)."""
        return max(self.settle, subscription.opened_at + self.open_wait - time.time())

    def _recover(self, state: CdcCursor, error: PubSubError) -> Iterator[SourcePage]:
        """A refused replay id: start at the tip and re-read from `since`. An expired session: log in again.
        Anything else (the stream ended, the network): subscribe again where we are, a few times."""
        self._close_subscription()
        refused = error.replay_refused
        if refused:
            log.warning("%s.%s: the Pub/Sub API refused replay id %s (%s); reading what changed since %s",
                        self.account_name, self.obj, state.replay_id, error.message, state.since)
            state.replay_id = None
            yield from self._open(state, refused)
            return
        self._reopens += 1
        if self._reopens > MAX_REOPENS:
            self._reopens = 0
            raise error
        if error.unauthenticated:
            self.client.relogin()
        else:
            log.warning("%s.%s: subscription failed (%s); subscribing again", self.account_name, self.obj, error)
            time.sleep(min(30.0, 0.5 * 2 ** (self._reopens - 1)))
        yield from self._open(state, "reconnect")

    # -- events --------------------------------------------------------------------------------------------------
    def _events(self, state: CdcCursor, events: list[ChangeEvent]) -> Iterator[SourcePage]:
        """One page per FetchResponse; a gap event first publishes what came before it, then its fill."""
        changes: list[Change] = []
        for event in events:
            EVENTS.labels(self.account_name, self.obj, event.change_type).inc()
            if event.entity != self.obj:
                log.warning("%s: an event of %s on %s ignored", self.account_name, event.entity, self.topic)
            elif event.change_type.startswith("GAP_"):
                if changes:
                    yield self._page(state, changes)
                    changes = []
                yield from self._fill_gap(state, event)
            else:
                changes += self._changes(event)
            state.replay_id, state.since, state.poll = (event.replay_id.hex(),
                                                        salesforce_stamp(event.commit_timestamp), None)
            self._forget_before(event.commit_timestamp)
        yield self._page(state, changes)

    def _changes(self, event: ChangeEvent) -> list[Change]:
        self._check_schema(event.schema_id)
        kind = event.change_type
        op = {"CREATE": "c", "UNDELETE": "c", "UPDATE": "u", "DELETE": "d"}.get(kind)
        if op is None:
            log.warning("%s.%s: change type %s ignored", self.account_name, self.obj, kind)
            return []
        after = self._after(event, op)
        stamp = salesforce_stamp(event.commit_timestamp)
        ts = iso_utc(datetime.fromtimestamp(event.commit_timestamp / 1000, timezone.utc))
        origin = "crmsync" if self.own_origin in event.origin.split(";") else None
        result = []
        for rid in event.record_ids:
            if self._seen.get(rid, -1) > event.commit_timestamp:
                continue  # a read by query already delivered this record as it was after this change
            self._seen[rid] = event.commit_timestamp
            change = crm_change(self.account_name, self.obj, op, rid, f"{stamp}/{event.replay_id.hex()}", ts,
                                after={**after, "Id": rid} if after is not None else None,
                                partial=op == "u", replay=event.replay_id.hex())
            change.origin = origin
            result.append(change)
        return result

    def _after(self, event: ChangeEvent, op: str) -> dict[str, Any] | None:
        """The record's fields as the describe names them: the changed ones of an UPDATE, every one the event
        carries for a CREATE / UNDELETE (null when the event's value is), none for a DELETE."""
        names = self._event_names()
        if op == "d":
            return None
        if op == "u":
            carried = list(dict.fromkeys([*event.changed, *event.nulled]))
        else:
            carried = [name for name in names if name in event.values or name.partition(".")[0] in event.values]
        after = {}
        for name in carried:
            found = names.get(name)
            if found is not None:
                after[found[0]] = _rest_value(found[1], event.values.get(name))
        if op == "c":
            after["IsDeleted"] = False
        return after

    def _event_names(self) -> dict[str, tuple[str, str]]:
        """Event field name → (describe field, its type): 'Email' → Email, 'Name.LastName' → LastName,
        'MailingAddress.City' → MailingCity (compound fields, as "Get Compound Fields in Change Events" shows)."""
        described = self.polling.described()
        if self._names[0] == id(described):
            return self._names[1]
        names: dict[str, tuple[str, str]] = {}
        for f in described:
            name, kind, compound = f["name"], f.get("type", "string"), f.get("compoundFieldName")
            if kind in ("address", "location", "base64"):
                continue
            if compound and compound.endswith("Address"):
                names[f"{compound}.{name[len(compound) - len('Address'):]}"] = (name, kind)
            elif compound or name in PERSON_NAME_PARTS:
                names[f"{compound or 'Name'}.{name}"] = (name, kind)
            names.setdefault(name, (name, kind))
        self._names = (id(described), names)
        return names

    def _check_schema(self, schema_id: str) -> None:
        """A new schema id means the object's fields changed: read the describe again."""
        if self._schema_id is not None and schema_id != self._schema_id:
            log.info("%s.%s: the change event schema changed; reading the describe again", self.account_name,
                     self.obj)
            self.polling.forget_describe()
        self._schema_id = schema_id

    # -- gaps ----------------------------------------------------------------------------------------------------
    def _fill_gap(self, state: CdcCursor, event: ChangeEvent) -> Iterator[SourcePage]:
        """GAP_OVERFLOW: every record modified since the transaction (minus the lookback), by query. Any other
        gap event: the records it names, read by id. The pages keep the cursor before the gap event, so a restart
        in the middle fills again."""
        reason = "overflow" if event.change_type == "GAP_OVERFLOW" else event.change_type.lower()
        GAP_FILLS.labels(self.account_name, self.obj, reason).inc()
        log.info("%s.%s: %s for %s; reading by query", self.account_name, self.obj, event.change_type,
                 f"{len(event.record_ids)} record(s)" if event.record_ids else "the transaction's window")
        if event.change_type == "GAP_OVERFLOW":
            self.polling.read_window_next()
            for page in self.polling.read(self.polling.cursor_at(salesforce_stamp(event.commit_timestamp))):
                self._remember(page.changes)
                yield self._page(state, page.changes)
            return
        changes = self._read_ids(event)
        self._remember(changes)
        yield self._page(state, changes)

    def _read_ids(self, event: ChangeEvent) -> list[Change]:
        """The records a gap event names, as they are now (deleted ones included)."""
        found: dict[str, dict[str, Any]] = {}
        for page in self.query.records(self.obj, self.polling.field_names(), ids=event.record_ids,
                                       include_deleted=True):
            found.update({row["Id"]: {k: v for k, v in row.items() if k != "id"} for row in page})
        changes = []
        for rid in event.record_ids:
            row = found.get(rid)
            if row is None:
                if event.change_type == "GAP_DELETE":  # gone for good (purged or hard deleted)
                    changes.append(self._row_change("d", rid, salesforce_stamp(event.commit_timestamp), None, None))
            elif row.get("IsDeleted"):
                changes.append(self._row_change("d", rid, row["SystemModstamp"], None, row))
            else:
                op = "c" if event.change_type in ("GAP_CREATE", "GAP_UNDELETE") else "u"
                changes.append(self._row_change(op, rid, row["SystemModstamp"], row, None))
        return changes

    def _row_change(self, op: str, rid: str, stamp: str, after: dict[str, Any] | None,
                    before: dict[str, Any] | None) -> Change:
        """A change from a record read by query: versioned by its SystemModstamp, as the polling source does."""
        return crm_change(self.account_name, self.obj, op, rid, stamp, iso_utc(parse_modstamp(stamp)), after=after,
                          before=before, modstamp=stamp)

    # -- bookkeeping ---------------------------------------------------------------------------------------------
    def _remember(self, changes: Iterable[Change]) -> None:
        """Records read by query: an event older than what was read adds nothing. A record last modified before
        the subscription at the tip was opened (less the lookback, for the clocks' skew) cannot be newer than
        any event it delivers, so it is not remembered: a first read of a million records keeps only the few
        modified while it ran (memory flat, issue 16)."""
        horizon = self._tip_millis - self.lookback_millis
        for change in changes:
            millis = _millis(change.position["ts"])
            if millis >= horizon and millis > self._seen.get(change.key["id"], -1):
                self._seen[change.key["id"]] = millis

    def _forget_before(self, commit_millis: int) -> None:
        """Events come in commit order: reads older than the lookback before this one cannot matter any more.

        One pass over `_seen` per tenth of the lookback at most: a pass per event made the read of a burst
        quadratic (20,000 contacts created within the lookback: 20,000 passes over 20,000 entries, most of the
        poller's CPU in an export backfill). Remembering a read a little longer than the lookback only keeps
        suppressing events older than it, which is what `_seen` is for."""
        if len(self._seen) > 10_000 and commit_millis >= self._forget_at:
            horizon = commit_millis - self.lookback_millis
            self._seen = {rid: ms for rid, ms in self._seen.items() if ms >= horizon}
            self._forget_at = commit_millis + self.lookback_millis // 10

    def _page(self, state: CdcCursor, changes: list[Change], snapshot_done: bool = False) -> SourcePage:
        self._handed = state.key()
        return SourcePage(changes, state.to_json(), snapshot_done)


PERSON_NAME_PARTS = frozenset({"Salutation", "FirstName", "LastName", "MiddleName", "InformalName", "Suffix"})


def _rest_value(kind: str, value: Any) -> Any:
    """An Avro event value in the form the REST API gives the same field (what the polling source delivers)."""
    if value is None:
        return None
    if kind == "datetime" and isinstance(value, int):
        return salesforce_stamp(value)
    if kind == "date" and isinstance(value, int):
        return (date(1970, 1, 1) + timedelta(days=value)).isoformat()
    if kind == "time" and isinstance(value, int):
        seconds, millis = divmod(value, 1000)
        return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}.{millis:03d}Z"
    if kind == "boolean":
        return bool(value)
    return value
