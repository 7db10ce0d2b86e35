"""Salesforce change source: one object, SystemModstamp-ordered, every change delivered exactly once.

How a read works (`SalesforceSource.read(cursor)`):

1. Describe the object (cached for one full-window period: it picks up new or removed fields). All fields are
   read except compound address/location fields (their components are read) and base64 fields (Salesforce
   serves those one record at a time only).
2. Query ``SELECT <fields> FROM <obj> WHERE SystemModstamp >= <cursor> ORDER BY SystemModstamp, Id`` through
   ``queryAll`` (soft-deleted rows come back too, with ``IsDeleted = true``), page by page. The first full read
   of an object holding at least `bulk_threshold` records goes through a Bulk API 2.0 query job instead (one
   job, result pages of `bulk_page_records` CSV rows: a handful of calls, and several times faster than REST
   pages of 2,000), handed out in slices of `bulk_slice_records`; see "Bulk snapshot" below. Every
   ``full_window_every`` seconds (60) the query starts at ``cursor - lookback`` instead, to catch rows that
   committed late with an older SystemModstamp.
3. Skip every row already delivered: the cursor remembers, for each record delivered within the lookback
   window, the SystemModstamp it was delivered with. A row is delivered again only if its SystemModstamp moved.
   So rows that share one timestamp are never missed (the query is inclusive, ``>=``), late commits with an
   older timestamp are caught (the lookback), and nothing is delivered twice as a new change.
4. Each page of changes comes with the cursor that covers it; the caller (services/crm_poller) publishes the
   page, waits for the broker's acknowledgement, *then* stores that cursor. A crash in between delivers the page
   again on restart with the same change ids (consumers drop them).
5. Hard deletes (records removed from the recycle bin, Bulk hardDelete) never show up in queryAll; the
   ``sobjects/<obj>/deleted`` resource reports them, so it is read on every full-window pass.

Which op (consumers rely on this rule):
- ``r`` - the initial snapshot (no cursor yet, until the first full pass finished): a read, not a change.
- ``d`` - a row with IsDeleted = true, or an id reported by the deleted resource. ``after`` is None; ``before``
  holds the row when queryAll returned it.
- ``c`` - a live row seen for the first time whose CreatedDate is inside the current window (it did not exist
  at the previous read), or a row that comes back after we delivered its delete (undelete).
- ``u`` - every other live row: it was delivered before (it is in the lookback memory, or it was created
  before the window and therefore already existed at an earlier read).

Bulk snapshot: Bulk API 2.0 query results are not ordered, so while one runs the cursor is not a position to
resume from. The checkpoint then carries ``"bulk": {"job": <id>, "locator": <next page>}`` next to the newest
SystemModstamp seen so far; a restart goes on from that locator (Salesforce keeps a job's results for 7 days)
or, if the job is gone, reads the object again from the start (the same records again: consumers take them as
what they are, reads). CSV values are typed back by the object's describe, datetimes in REST's spelling
(``+0000``), so a record reads the same whichever API served it. Objects Bulk cannot serve fall back to REST.
A result page (`bulk_page_records` rows, one call) is handed out in slices of `bulk_slice_records` rows, parsed
as they go: the poller holds one page's CSV text and one slice's records (a whole page as records and changes
made the poller's peak memory grow with the backfill). While a page is half handed out, the checkpoint says
``{"job": <id>, "locator": <this page>, "done": <rows handed out>}``: a restart reads the page again and skips
those rows (a job's result pages read the same every time). While a snapshot runs its checkpoints carry no
memory of delivered records (`seen` stays empty until the last one): the memory of a snapshot whose records
were all modified within the lookback (a freshly loaded org) is every record, and storing it with every slice
was quadratic. A restart in the middle reads the pages handed out before from the same job to remember them.

Cursor (stored by the poller in ``crmsync.checkpoints``)::

    {"v": 1, "snapshot_done": true,
     "cursor": {"modstamp": "2024-05-01T10:20:30.000+0000", "id": "0035g0000000001AAA"},
     "lookback_seconds": 300,
     "seen": {"2024-05-01T10:20:30.000+0000": ["0035g...", ...], ...},   # delivered within the window
     "deleted": ["0035g...", ...],                                       # ids in `seen` last delivered as 'd'
     "bulk": {"job": "750…", "locator": "MjAwMDA", "done": 2000}}        # only while a Bulk snapshot runs
"""
from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from itertools import islice
from typing import Any, Callable, Iterable, Iterator

from simple_salesforce.exceptions import SalesforceError

from connectors.salesforce.client import SalesforceClient, retry_reason
from connectors.salesforce.discovery import field_spec
from connectors.salesforce.soql import soql_datetime
from crmsync.connectors import FieldSpec, SourcePage
from crmsync.envelope import Change, crm_change
from crmsync.values import iso_utc

log = logging.getLogger("crmsync.salesforce.source")

CURSOR_VERSION = 1
DEFAULT_LOOKBACK_SECONDS = 300.0
DEFAULT_BULK_THRESHOLD = 10_000  # records: a first read of this many or more goes through a Bulk 2.0 query
BULK_PAGE_RECORDS = 10_000  # rows per Bulk result page: one call each (the page's CSV text is held while read)
BULK_SLICE_RECORDS = 2_000  # rows of a Bulk page per SourcePage: what is held as records and changes at once
BULK_UNSUPPORTED = ("not supported by the Bulk API", "compound data not supported", "does not support query")
SKIPPED_FIELD_TYPES = frozenset({"address", "location", "base64"})
REQUIRED_FIELDS = ("Id", "SystemModstamp", "CreatedDate", "IsDeleted")


@functools.lru_cache(maxsize=4096)
def parse_modstamp(text: str) -> datetime:
    """Salesforce datetimes (`2024-05-01T10:20:30.000+0000`, also `Z` / `+00:00`) as aware datetimes. (Cached:
    a record's stamp is read up to four times as it is delivered, and a mass update shares one.)"""
    return datetime.fromisoformat(text)


@dataclass
class CursorState:
    """The cursor plus the memory of what was delivered inside the lookback window."""

    cursor_ts: str | None = None
    cursor_id: str | None = None
    seen: dict[str, str] = field(default_factory=dict)  # Id -> SystemModstamp it was last delivered with
    deleted: set[str] = field(default_factory=set)  # ids whose last delivered change was a delete
    snapshot_done: bool = False
    bulk: dict[str, str] | None = None  # a Bulk snapshot under way: {"job": id, "locator": next page}
    # no stamp in `seen` is older than this (`oldest_known`; None with an empty `seen`): `prune` has nothing to do
    # while the window starts at or before it — the usual case, and a read whose records were all modified within
    # the lookback (a freshly loaded org: a million of them) no longer re-parses every one of them for every page
    oldest: datetime | None = None
    oldest_known: bool = True

    def to_json(self, lookback_seconds: float, memory: bool = True) -> dict[str, Any]:
        """The cursor as stored; without its `memory` (`seen`, `deleted`) while a Bulk snapshot runs, whose job
        can tell it again (`SalesforceSource._recall_handed_out`)."""
        by_stamp: dict[str, list[str]] = {}
        for rid, stamp in (self.seen.items() if memory else ()):
            by_stamp.setdefault(stamp, []).append(rid)
        cursor = {"modstamp": self.cursor_ts, "id": self.cursor_id} if self.cursor_ts else None
        found = {"v": CURSOR_VERSION, "snapshot_done": self.snapshot_done, "cursor": cursor,
                 "lookback_seconds": lookback_seconds, "seen": {k: sorted(v) for k, v in sorted(by_stamp.items())},
                 "deleted": sorted(self.deleted & set(self.seen)) if memory else []}
        if self.bulk:
            found["bulk"] = dict(self.bulk)
        return found

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> "CursorState":
        if not data:
            return cls()
        if data.get("mode") == "cdc":  # the object was read through Change Data Capture (cdc.py) until now
            if data.get("poll"):
                return cls.from_json(data["poll"])
            return cls(cursor_ts=data.get("since"), cursor_id="", snapshot_done=bool(data.get("snapshot_done")))
        if data.get("v") != CURSOR_VERSION:
            raise ValueError(f"Salesforce cursor has version {data.get('v')!r}; expected {CURSOR_VERSION}")
        cursor = data.get("cursor") or {}
        seen = {rid: stamp for stamp, ids in (data.get("seen") or {}).items() for rid in ids}
        return cls(cursor_ts=cursor.get("modstamp"), cursor_id=cursor.get("id"), seen=seen,
                   deleted=set(data.get("deleted") or ()), snapshot_done=bool(data.get("snapshot_done")),
                   bulk=data.get("bulk") or None, oldest_known=not seen)

    def window_start(self, lookback: timedelta) -> datetime | None:
        return parse_modstamp(self.cursor_ts) - lookback if self.cursor_ts else None

    def advance(self, stamp: str, rid: str) -> None:
        """Move the cursor forward to (stamp, rid) if that is later; it never goes back."""
        if self.cursor_ts is None or (parse_modstamp(stamp), rid) > (parse_modstamp(self.cursor_ts), self.cursor_id or ""):
            self.cursor_ts, self.cursor_id = stamp, rid

    def prune(self, lookback: timedelta) -> None:
        """Forget records delivered before the window: no future query can return them at that timestamp."""
        start = self.window_start(lookback)
        if start is None or (self.oldest_known and (self.oldest is None or self.oldest >= start)):
            return
        kept: dict[str, str] = {}
        oldest = None
        for rid, stamp in self.seen.items():
            when = parse_modstamp(stamp)
            if when >= start:
                kept[rid] = stamp
                oldest = when if oldest is None or when < oldest else oldest
        self.seen, self.oldest, self.oldest_known = kept, oldest, True
        self.deleted &= set(self.seen)

    def delivered(self, rid: str, stamp: str) -> None:
        """Remember that `rid` was delivered at `stamp` (a re-read of the same version is not delivered again)."""
        self.seen[rid] = stamp
        if self.oldest_known:
            when = parse_modstamp(stamp)
            self.oldest = when if self.oldest is None or when < self.oldest else self.oldest


class SalesforceSource:
    """The changes of one sObject of one account (crmsync.connectors.ChangeSource)."""

    def __init__(self, client: SalesforceClient, obj: str, *, lookback_seconds: float = DEFAULT_LOOKBACK_SECONDS,
                 batch_size: int = 2000, track_hard_deletes: bool = True,
                 full_window_every_seconds: float = 60.0, bulk_threshold: int = DEFAULT_BULK_THRESHOLD,
                 bulk_page_records: int = BULK_PAGE_RECORDS, bulk_slice_records: int = BULK_SLICE_RECORDS,
                 refresh_describe: bool = True) -> None:
        self.client = client
        self.account_name = client.account_name
        self.obj = obj
        self.lookback = timedelta(seconds=lookback_seconds)
        self.lookback_seconds = lookback_seconds
        self.batch_size = batch_size
        self.track_hard_deletes = track_hard_deletes
        # Most reads start at the cursor (ties at the cursor are in the `seen` memory); every
        # `full_window_every` seconds a read re-reads the whole lookback window (late commits with an older
        # SystemModstamp) and asks for hard deletes. Re-reading the window every time cost ~10x the API calls.
        self.full_window_every = full_window_every_seconds
        self.last_full_window = 0.0
        self.bulk_threshold = bulk_threshold  # 0 = never
        self.bulk_page_records = bulk_page_records
        self.bulk_slice_records = bulk_slice_records
        self.refresh_describe = refresh_describe  # False: the describe is read again only after forget_describe()
        self._described: list[dict[str, Any]] = []
        self._described_at = 0.0

    # -- ChangeSource ----------------------------------------------------------------------------------------
    def read(self, cursor: dict[str, Any] | None) -> Iterator[SourcePage]:
        state = CursorState.from_json(cursor)
        names = self.field_names()
        snapshot = not state.snapshot_done
        if snapshot and (state.bulk or (state.cursor_ts is None and self._bulk_worth_it())):
            try:
                yield from self._bulk_snapshot(state, names)
                return
            except SalesforceError as exc:
                if not any(text in str(exc) for text in BULK_UNSUPPORTED):
                    raise
                log.info("%s cannot be read through the Bulk API (%s); reading it through REST queries", self.obj,
                         exc)
                state = CursorState()
        full_window = snapshot or time.monotonic() - self.last_full_window >= self.full_window_every
        window_start = state.window_start(self.lookback if full_window else timedelta(0))
        for page in self.client.query_all_pages(self._soql(names, window_start),
                                                include_deleted=window_start is not None,
                                                batch_size=self.batch_size):
            changes = [c for record in page if (c := self._consider(state, record, snapshot, window_start))]
            yield self._page(state, changes)
        if full_window:
            self.last_full_window = time.monotonic()
            if not snapshot and self.track_hard_deletes and window_start is not None:
                yield self._page(state, self._hard_deletes(state, window_start))
        if snapshot:
            state.snapshot_done = True
            yield self._page(state, [], snapshot_done=True)

    def fields(self) -> dict[str, FieldSpec]:
        return {f["name"]: field_spec(f) for f in self._describe()}

    # -- the Bulk snapshot -----------------------------------------------------------------------------------
    def _bulk_worth_it(self) -> bool:
        return bool(self.bulk_threshold) and self.client.count(self.obj) >= self.bulk_threshold

    def _bulk_snapshot(self, state: CursorState, names: list[str]) -> Iterator[SourcePage]:
        """The first full read through one Bulk API 2.0 query job, page by page, each page in slices (see the
        module docstring). Memory: one page's CSV text and one slice's records and changes at a time."""
        soql = f"SELECT {', '.join(names)} FROM {self.obj}"
        resume = dict(state.bulk or {})
        if not resume:
            state = CursorState()
        converters = _bulk_converters({f["name"]: f.get("type", "") for f in self._describe()})
        current, skip = resume.get("locator", ""), int(resume.get("done", 0))  # the page under way, rows handed out
        pages = self.client.bulk2_query_pages(self.obj, soql, job_id=resume.get("job"), locator=current,
                                              max_records=self.bulk_page_records)
        try:
            if resume:
                self._recall_handed_out(state, soql, resume["job"], current, converters)
            for job_id, locator, header, text_rows in pages:
                rows = _typed_rows(header, text_rows, converters)
                for row in islice(rows, skip):  # handed out before a restart: the page reads the same again
                    self._consider(state, row, True, None)
                done, piece = skip, list(islice(rows, self.bulk_slice_records))
                while True:
                    following = list(islice(rows, self.bulk_slice_records)) if piece else []
                    changes = [c for row in piece if (c := self._consider(state, row, True, None))]
                    done += len(piece)
                    if following:
                        state.bulk = {"job": job_id, "locator": current, "done": done}
                    else:
                        state.bulk = {"job": job_id, "locator": locator} if locator else None
                    yield self._page(state, changes, memory=False)
                    if not following:
                        break
                    piece = following
                current, skip = locator, 0
        except SalesforceError as exc:
            if not resume or "NOT_FOUND" not in str(exc):
                raise
            log.warning("the Bulk query job %s of %s is gone; reading %s again from the start", resume.get("job"),
                        self.account_name, self.obj)
            state.bulk = None
            yield from self._bulk_snapshot(CursorState(), names)
            return
        state.bulk, state.snapshot_done = None, True
        yield self._page(state, [], snapshot_done=True)

    def _recall_handed_out(self, state: CursorState, soql: str, job_id: str, current: str,
                           converters: dict[str, Callable[[str], Any]]) -> None:
        """After a restart in the middle of a Bulk snapshot: remember again what the pages before `current`
        handed out, read from the same job (its pages read the same every time). A snapshot's checkpoints carry
        no memory of delivered records: rewriting all of it with every slice made a snapshot of a million
        records modified within the lookback quadratic (a 20 MB cursor stored 500 times). Only if the pages
        lead to `current` is anything remembered (a locator that is not met must not mark rows still to come
        as delivered); otherwise the reads after the snapshot may deliver those records again, as reads."""
        if not current:
            return
        recalled = CursorState(cursor_ts=state.cursor_ts, cursor_id=state.cursor_id)
        for _, following, header, rows in self.client.bulk2_query_pages(self.obj, soql, job_id=job_id,
                                                                         max_records=self.bulk_page_records):
            for row in _typed_rows(header, rows, converters):
                self._consider(recalled, row, True, None)
            if following == current:
                state.cursor_ts, state.cursor_id = recalled.cursor_ts, recalled.cursor_id
                state.seen.update(recalled.seen)
                state.deleted |= recalled.deleted
                state.oldest_known = False  # (what it holds now is pruned in full once)
                return
            if not following:
                break
        log.warning("the Bulk query job %s of %s did not lead to the page it was stopped at; the records it handed "
                    "out before may be read once more after the snapshot", job_id, self.obj)

    # -- for push sources (cdc.py) ----------------------------------------------------------------------------
    def described(self) -> list[dict[str, Any]]:
        """The object's describe (`fields` of sobjects/<obj>/describe), as this source last read it."""
        return self._describe()

    def forget_describe(self) -> None:
        """Read the describe again at the next use (the object's fields changed)."""
        self._described = []

    def cursor_at(self, stamp: str) -> dict[str, Any]:
        """A cursor that reads every record modified since `stamp` (a SystemModstamp) minus the lookback, with
        no memory of what was delivered: where a push source starts a read it cannot replay."""
        return CursorState(cursor_ts=stamp, cursor_id="", snapshot_done=True).to_json(self.lookback_seconds)

    def read_window_next(self) -> None:
        """Make the next read re-read the whole lookback window (and ask for hard deletes)."""
        self.last_full_window = 0.0

    # -- reading ---------------------------------------------------------------------------------------------
    def _describe(self) -> list[dict[str, Any]]:
        """The object's describe, re-read once per full-window period (fields added or removed in the CRM)."""
        stale = self.refresh_describe and time.monotonic() - self._described_at >= self.full_window_every
        if not self._described or stale:
            self._described, self._described_at = self.client.describe(self.obj)["fields"], time.monotonic()
        return self._described

    def field_names(self) -> list[str]:
        """Every queryable field, compound and base64 fields excepted."""
        names = [f["name"] for f in self._describe() if f.get("type") not in SKIPPED_FIELD_TYPES]
        missing = [name for name in REQUIRED_FIELDS if name not in names]
        if missing:
            raise RuntimeError(f"{self.obj} has no {', '.join(missing)} field(s); the change source needs them to "
                               "find changes")
        return names

    def _soql(self, names: list[str], window_start: datetime | None) -> str:
        where = f" WHERE SystemModstamp >= {soql_datetime(window_start)}" if window_start else ""
        return f"SELECT {', '.join(names)} FROM {self.obj}{where} ORDER BY SystemModstamp, Id"

    def _page(self, state: CursorState, changes: list[Change], snapshot_done: bool = False,
              memory: bool = True) -> SourcePage:
        # (during a Bulk snapshot the cursor only says what is newest so far: records older than its window are
        # never in a window read, so forgetting them is safe whatever order they come in)
        state.prune(self.lookback)
        return SourcePage(changes, state.to_json(self.lookback_seconds, memory), snapshot_done)

    def _consider(self, state: CursorState, record: dict[str, Any], snapshot: bool,
                  window_start: datetime | None) -> Change | None:
        row = {k: v for k, v in record.items() if k != "attributes"} if "attributes" in record else record
        rid, stamp = row["Id"], row["SystemModstamp"]
        state.advance(stamp, rid)
        delivered = state.seen.get(rid)
        if delivered is not None and parse_modstamp(delivered) >= parse_modstamp(stamp):
            return None
        if row.get("IsDeleted"):
            if snapshot and delivered is None:
                return None  # deleted before anyone was told it existed
            return self._change(state, "d", rid, stamp, after=None, before=row)
        return self._change(state, self._op(state, row, snapshot, window_start), rid, stamp, after=row)

    def _op(self, state: CursorState, row: dict[str, Any], snapshot: bool, window_start: datetime | None) -> str:
        rid = row["Id"]
        if snapshot:
            return "r"
        if rid in state.deleted:
            return "c"  # undeleted: it comes back after consumers were told it was gone
        if rid in state.seen:
            return "u"
        created = row.get("CreatedDate")
        if window_start is None or (created and parse_modstamp(created) >= window_start):
            return "c"
        return "u"

    def _hard_deletes(self, state: CursorState, window_start: datetime) -> list[Change]:
        """Deletes that queryAll cannot see (purged from the recycle bin or hard-deleted).

        The resource works in whole minutes and wants at least one minute, so the request may start before
        the window; entries before the window are ignored (an earlier read's window covered them)."""
        now = datetime.now(timezone.utc)
        start = max(min(window_start, now - timedelta(minutes=2)), now - timedelta(days=14))
        try:
            answer = self.client.get_deleted(self.obj, start, now)
        except SalesforceError as exc:
            if retry_reason(exc) is not None:
                raise
            log.warning("cannot read deleted %s records of %s: %s", self.obj, self.account_name, exc)
            return []
        changes = []
        for entry in answer.get("deletedRecords", []):
            rid, stamp = entry["id"], entry["deletedDate"]
            if parse_modstamp(stamp) < window_start or rid in state.deleted:
                continue
            delivered = state.seen.get(rid)
            if delivered is not None and parse_modstamp(delivered) >= parse_modstamp(stamp):
                continue
            changes.append(self._change(state, "d", rid, stamp, after=None))
        return changes

    def _change(self, state: CursorState, op: str, rid: str, stamp: str, *, after: dict[str, Any] | None,
                before: dict[str, Any] | None = None) -> Change:
        state.delivered(rid, stamp)
        if op == "d":
            state.deleted.add(rid)
        else:
            state.deleted.discard(rid)
        return crm_change(self.account_name, self.obj, op, rid, stamp, iso_utc(parse_modstamp(stamp)), after=after,
                          before=before, modstamp=stamp)


def _bulk_datetime(text: str) -> str:
    return text[:-1] + "+0000" if text.endswith("Z") else text


_BULK_CONVERTERS: dict[str, Callable[[str], Any]] = {
    "boolean": lambda text: text.lower() == "true", "int": lambda text: int(float(text)),
    "long": lambda text: int(float(text)), "double": float, "currency": float, "percent": float,
    "datetime": _bulk_datetime}


def _bulk_converters(types: dict[str, str]) -> dict[str, Callable[[str], Any]]:
    """Per field, how its Bulk CSV text becomes the REST API's value (fields kept as text have none)."""
    return {name: _BULK_CONVERTERS[kind] for name, kind in types.items() if kind in _BULK_CONVERTERS}


def _typed_rows(header: list[str], rows: Iterable[list[str]],
                converters: dict[str, Callable[[str], Any]]) -> Iterator[dict[str, Any]]:
    """Bulk CSV rows as the REST API returns the records: empty = null, booleans, numbers, and datetimes
    spelled `…+0000` (Bulk writes `…Z`), so the change is the same whichever API read it. (Each column's
    converter is looked up once per page: this runs for every record of a snapshot.)"""
    columns = [(name, converters.get(name)) for name in header]
    for row in rows:
        yield {name: None if not text else (convert(text) if convert else text)
               for (name, convert), text in zip(columns, row)}
