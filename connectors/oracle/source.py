"""The Oracle CRM On Demand change source: every create, update and delete of one record type, exactly once.

How a read works (crmsync.connectors.ChangeSource; the cursor below is stored by the caller only after the
broker acknowledged a page's changes):

1. Records modified since the cursor, oldest first: `ModifiedDate >= <bound>` sorted by ModifiedDate, Id
   (REST `q`/`orderBy` or Web Services QueryPage, the account's `api`), 100 a page. The bound is inclusive and
   moves with the pages (keyset paging): each page starts at the last ModifiedDate read, skipping with `offset`
   the records of that same second already read (ties of any size). A read starting at the cursor whose second
   holds more than a page skips what it read there by Id (`ModifiedDate = <ts>; Id > <last id>`), then goes on
   with `ModifiedDate > <ts>`. Every `full_window_every` seconds a read starts `lookback` earlier, to catch
   records committed late with an older ModifiedDate or passed over when a record saved in the very second of a
   page's end sorted before it.
2. Nothing is published twice: the cursor remembers, for every record published within the lookback window,
   the ModifiedDate it was published with and a digest of its content (`seen`); a record comes out again only
   when its stamp moved -- or, as OOD stamps to the second, when a second save in the same second changed it.
   Change ids are `crm:<account>:<object>:<id>:<ModifiedDate>/<digest>` (`/deleted` for a delete): one version
   of a record always gets one id (`change_id`, `content_digest`), whoever reads it.
3. Deletes from DeletedItemQueryPage (Web Services; `Type = <record type>`, `DeletedDate >= <bound>`, sorted by
   DeletedDate), paged the same way, after the modified records. The first read starts them at the server's
   clock, so 30 days of old deletes are not replayed (a delete in that very second is published: it may be of
   a record the snapshot read).
4. The first read (cursor None) is a snapshot (op 'r'), ended by a page with `snapshot_done`.

Which op: 'r' in the snapshot; 'd' for a deleted item; 'c' for a record whose delete we published (it was
restored) or that was created inside the read's window; 'u' otherwise (the Salesforce poller's rule).

Time (timezone.py): REST ModifiedDates are the user's wall-clock time. They are turned into UTC, and a value in
the hour repeated when daylight-saving time ends -- which names two instants -- is settled by asking Web Services,
which answer in UTC, for those records' datetimes (DeletedDates the same way, deleted.py). So positions are
exact instants: nothing is lost or shifted across either transition. A REST bound inside the repeated hour is
read by OOD as its first occurrence (an hour early): the rows before the bound are dropped, and the page after
it continues by offset rather than by re-anchoring there. Web Services bounds are XSD UTC: always exact.

`after` holds every field of the record but the `CI_` search copies, in canonical form (types.py): the same
whichever API read it.

Sort or filter: a server that refuses to filter and sort in one query (SBL-ODS-00127; Adobe documents it for the
v1.0 API) gets filter-only queries, read to the end and sorted here; a snapshot then pages a sort-only query
by offset (records edited during that snapshot can shift past a page boundary: drift repair finds them).

Cursor::

    {"v": 1, "ts": "2024-11-03T09:10:00.000Z", "id": "1SBX-10007F",    # newest ModifiedDate read, its record
     "snapshot_done": true, "deleted_since": "2024-11-03T08:40:00.000Z", "window_at": 1730624400.0,
     "seen": {"2024-11-03T09:10:00.000Z": {"1SBX-10007F": "3fa2c1d0"}, ...},  # published in the lookback window
     "deleted": ["1SBX-100080"]}                                               # ids last published as deletes
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

from crmsync.connectors import FieldSpec, SourcePage
from crmsync.envelope import Change, dumps
from crmsync.values import iso_utc, parse_timestamp

from .client import SORT_AND_FILTER_CODE
from .connection import OracleConnection, resource_of
from .deleted import deleted_page
from .errors import OracleApiError
from .query import order_by, rest_all, rest_term, ws_any_of, ws_term
from .types import OodField, field_spec, from_rest, from_ws

log = logging.getLogger("crmsync.oracle.source")

CURSOR_VERSION = 1
DEFAULT_LOOKBACK_SECONDS = 300.0
DEFAULT_FULL_WINDOW_EVERY_SECONDS = 300.0
REQUIRED_FIELDS = ("Id", "ModifiedDate", "CreatedDate")
DELETED = "deleted"  # the digest of a delete


@dataclass
class Row:
    """One record as read: its exact modification instant, id and canonical fields."""
    stamp: datetime
    id: str
    after: dict[str, Any]


@dataclass
class SourceState:
    ts: datetime | None = None
    id: str | None = None
    snapshot_done: bool = False
    deleted_since: datetime | None = None
    window_at: float = 0.0
    seen: dict[str, tuple[datetime, str]] = field(default_factory=dict)  # id -> (stamp, digest) last published
    deleted: set[str] = field(default_factory=set)

    @classmethod
    def from_cursor(cls, cursor: dict[str, Any] | None) -> "SourceState":
        if not cursor:
            return cls()
        if cursor.get("v") != CURSOR_VERSION:
            raise ValueError(f"Oracle change-source cursor has version {cursor.get('v')!r}; expected {CURSOR_VERSION}")
        seen = {rid: (_instant(stamp), digest) for stamp, ids in (cursor.get("seen") or {}).items()
                for rid, digest in ids.items()}
        return cls(_instant(cursor.get("ts")), cursor.get("id"), bool(cursor.get("snapshot_done")),
                   _instant(cursor.get("deleted_since")), float(cursor.get("window_at") or 0.0), seen,
                   set(cursor.get("deleted") or ()))

    def to_cursor(self, lookback: timedelta) -> dict[str, Any]:
        self._prune(lookback)
        by_stamp: dict[str, dict[str, str]] = {}
        for rid, (stamp, digest) in self.seen.items():
            by_stamp.setdefault(iso_utc(stamp), {})[rid] = digest
        return {"v": CURSOR_VERSION, "ts": _iso(self.ts), "id": self.id, "snapshot_done": self.snapshot_done,
                "deleted_since": _iso(self.deleted_since), "window_at": self.window_at,
                "seen": {k: dict(sorted(v.items())) for k, v in sorted(by_stamp.items())},
                "deleted": sorted(self.deleted & set(self.seen))}

    def advance(self, stamp: datetime, rid: str) -> None:
        if self.ts is None or (stamp, rid) > (self.ts, self.id or ""):
            self.ts, self.id = stamp, rid

    def published(self, rid: str, stamp: datetime, digest: str) -> bool:
        """True when this version was published: a later stamp, or the same stamp and the same content (OOD
        stamps to the second, so two saves in one second differ by content only)."""
        known = self.seen.get(rid)
        return known is not None and (known[0] > stamp or known == (stamp, digest))

    def _prune(self, lookback: timedelta) -> None:
        """Forget what no later read can return at the same stamp again (older than both bounds' windows)."""
        bounds = [b for b in (self.ts, self.deleted_since) if b is not None]
        if not bounds:
            return
        oldest = min(bounds) - lookback
        self.seen = {rid: s for rid, s in self.seen.items() if s[0] >= oldest}
        self.deleted &= set(self.seen)


class OracleChangeSource:
    """The changes of one record type (`obj`: "Contact", "Account", ...) of one account."""

    def __init__(self, connection: OracleConnection, obj: str, *, lookback_seconds: float = DEFAULT_LOOKBACK_SECONDS,
                 full_window_every_seconds: float = DEFAULT_FULL_WINDOW_EVERY_SECONDS, page_size: int = 100,
                 api: str | None = None) -> None:
        self.connection, self.obj = connection, obj
        self.resource = resource_of(obj)
        self.lookback = timedelta(seconds=lookback_seconds)
        self.full_window_every = full_window_every_seconds
        self.page_size = page_size
        self.api = api or connection.account.api
        self.sort_refused = False  # the server answered SBL-ODS-00127: filter here, sort here

    # ---------------------------------------------------------------- the interface

    def fields(self) -> dict[str, FieldSpec]:
        return {name: field_spec(f, self.obj) for name, f in self._described().items() if not f.search_copy}

    def read(self, cursor: dict[str, Any] | None) -> Iterator[SourcePage]:
        state = SourceState.from_cursor(cursor)
        snapshot = not state.snapshot_done
        full_window = snapshot or time.time() - state.window_at >= self.full_window_every
        if state.deleted_since is None:
            state.deleted_since = self.connection.api.server_time()
        bound = state.ts - self.lookback if (state.ts and full_window and not snapshot) else state.ts
        after_id = state.id if bound is not None and bound == state.ts else None
        for rows in self._modified_pages(bound, after_id):
            changes = [c for row in rows if (c := self._consider(state, row, snapshot, bound)) is not None]
            yield SourcePage(changes, state.to_cursor(self.lookback))
        for rows in self._deleted_pages(state):
            changes = [c for row in rows if (c := self._consider_delete(state, row)) is not None]
            yield SourcePage(changes, state.to_cursor(self.lookback))
        if full_window:
            state.window_at = time.time()
        if snapshot:
            state.snapshot_done = True
        self.connection.count_refusals()
        yield SourcePage([], state.to_cursor(self.lookback), snapshot_done=snapshot)

    # ---------------------------------------------------------------- deciding

    def _consider(self, state: SourceState, row: Row, snapshot: bool, bound: datetime | None) -> Change | None:
        state.advance(row.stamp, row.id)
        digest = content_digest(row.after)
        if state.published(row.id, row.stamp, digest):
            return None
        if snapshot:
            op = "r"
        elif row.id in state.deleted:
            op = "c"  # restored after we published its delete
        elif row.id in state.seen:
            op = "u"
        else:
            created = parse_timestamp(row.after.get("CreatedDate"))
            op = "c" if bound is None or (created is not None and created >= bound) else "u"
        state.seen[row.id] = (row.stamp, digest)
        state.deleted.discard(row.id)
        return self._change(op, row.id, row.stamp, row.after, digest)

    def _consider_delete(self, state: SourceState, row: Row) -> Change | None:
        if state.deleted_since is None or row.stamp > state.deleted_since:
            state.deleted_since = row.stamp
        if row.id in state.deleted and state.published(row.id, row.stamp, DELETED):
            return None
        state.seen[row.id] = (row.stamp, DELETED)
        state.deleted.add(row.id)
        return self._change("d", row.id, row.stamp, None, DELETED)

    def _change(self, op: str, rid: str, stamp: datetime, after: dict[str, Any] | None, digest: str) -> Change:
        account, ts = self.connection.account_name, iso_utc(stamp)
        return Change(id=change_id(account, self.obj, rid, ts, digest), side="crm", source=account,
                      object=self.obj, op=op, key={"id": rid}, after=after,
                      position={"ts": ts, "id": rid, "digest": digest}, source_ts=ts)

    # ---------------------------------------------------------------- modified records

    def _modified_pages(self, bound: datetime | None, after_id: str | None) -> Iterator[list[Row]]:
        """Pages of rows with ModifiedDate >= bound (all rows when None), in (ModifiedDate, Id) order; `after_id`
        is the last Id read at `bound`, which lets a large tie at the cursor be skipped by Id."""
        if not self.sort_refused:
            try:
                yield from self._keyset_pages(bound, after_id)
                return
            except OracleApiError as exc:
                if exc.code != SORT_AND_FILTER_CODE:
                    raise
                log.info("%s refuses to filter and sort at once: %s is filtered there and sorted here",
                         self.connection.account_name, self.obj)
                self.sort_refused = True
        yield from self._pages_sorted_here(bound)

    def _keyset_pages(self, bound: datetime | None, after_id: str | None) -> Iterator[list[Row]]:
        offset, op, wanted, first = 0, ">=", bound, True
        while True:
            rows, last_page = self._query(bound, offset, sort=True, op=op)
            if inside := _from(rows, wanted):
                yield inside
            if last_page or not rows:
                return
            end = rows[-1].stamp
            ties = sum(1 for r in rows if r.stamp == end)
            if first and after_id is not None and end == bound and self._exact(bound):
                # a tie at the cursor larger than a page: the rest of it by Id, then what follows it
                yield from self._tie_pages(bound, max(after_id, rows[-1].id))
                offset, op = 0, ">"
            elif op == ">=" and end == bound:
                offset += ties  # the whole page was one second: continue within it
            elif self._exact(end):
                bound, offset, op = end, ties, ">="
            else:
                offset += len(rows)  # OOD would read `end` an hour early (the repeated hour): keep the bound
            first = False

    def _tie_pages(self, stamp: datetime, after_id: str) -> Iterator[list[Row]]:
        """The rows saved in the second `stamp` with an Id after `after_id`, in Id order."""
        offset = 0
        while True:
            rows, last_page = self._query(stamp, offset, sort=True, op="=", after_id=after_id)
            if rows:
                yield rows
            if last_page or not rows:
                return
            offset += len(rows)

    def _exact(self, moment: datetime) -> bool:
        """True when OOD reads the bound as this very instant (Web Services always; REST but in the repeated
        hour, whose wall-clock times OOD reads as their first occurrence)."""
        return self.api == "webservices" or self.connection.clock.reads_back(moment)

    def _pages_sorted_here(self, bound: datetime | None) -> Iterator[list[Row]]:
        """Filter-only queries read to the end and sorted here; a snapshot pages a sort-only query."""
        rows: list[Row] = []
        while True:
            page, last_page = self._query(bound, len(rows), sort=bound is None)
            if bound is None and page:
                yield page
            rows += page
            if last_page or not page:
                break
        if bound is not None:
            rows = sorted(_from(rows, bound), key=lambda r: (r.stamp, r.id))
            for start in range(0, len(rows), self.page_size):
                yield rows[start:start + self.page_size]

    def _query(self, bound: datetime | None, offset: int, *, sort: bool, op: str = ">=",
               after_id: str | None = None) -> tuple[list[Row], bool]:
        """One page of `ModifiedDate <op> bound` (and `Id > after_id`), sorted by ModifiedDate, Id or not."""
        fields = self._read_fields()
        if self.api == "webservices":
            filters = {"ModifiedDate": ws_term(op, bound)} if bound else {}
            if after_id is not None:
                filters["Id"] = ws_term(">", after_id)
            ordering = [("ModifiedDate", "ASC"), ("Id", "ASC")] if sort else []
            page = self.connection.api.web_services.query_page(self.obj, fields, filters=filters, sort=ordering,
                                                               start_row=offset, page_size=self.page_size)
            return [self._ws_row(record) for record in page.records], page.last_page
        api = self.connection.api
        terms = [rest_term("ModifiedDate", op, bound, api.clock)] if bound else []
        if after_id is not None:
            terms.append(rest_term("Id", ">", after_id))
        found = api.query_page(self.resource, fields=fields, offset=offset, limit=self.page_size,
                               q=rest_all(*terms), order_by=order_by("ModifiedDate", "Id") if sort else "")
        return self._rest_rows(found.records), found.last_page

    def _ws_row(self, record: dict[str, str]) -> Row:
        described = self._described()
        after = {name: from_ws(described.get(name), record.get(name)) for name in self._read_fields()}
        return Row(_instant(after["ModifiedDate"]), record["Id"], after)

    def _rest_rows(self, records: list[dict[str, Any]]) -> list[Row]:
        described, clock = self._described(), self.connection.clock
        rows = []
        for record in records:
            after = {name: from_rest(described.get(name), record.get(name), clock) for name in self._read_fields()}
            rows.append(Row(_instant(after["ModifiedDate"]), record["Id"], after))
        ambiguous = [r for r, record in zip(rows, records) if any(
            clock.is_ambiguous(clock.wall_of(record[name])) for name in self._datetime_fields() if record.get(name))]
        if ambiguous:
            self._settle_repeated_hour(ambiguous)
        return rows

    def _settle_repeated_hour(self, rows: list[Row]) -> None:
        """Datetimes in the repeated hour name two instants: ask Web Services (XSD UTC) which one they are."""
        names = ["Id", *self._datetime_fields()]
        by_id = {r.id: r for r in rows}
        for record in self.connection.api.web_services.query(self.obj, names, filters={"Id": ws_any_of(list(by_id))},
                                                              page_size=self.page_size):
            row = by_id.get(record.get("Id", ""))
            if row is None:
                continue
            described = self._described()
            row.after.update({n: from_ws(described.get(n), record.get(n)) for n in names if n != "Id"})
            row.stamp = _instant(row.after["ModifiedDate"])

    # ---------------------------------------------------------------- deleted records

    def _deleted_pages(self, state: SourceState) -> Iterator[list[Row]]:
        """Deleted items of this record type since `deleted_since`, in DeletedDate order (keyset pages)."""
        api, bound, offset = self.connection.api, state.deleted_since, 0
        while True:
            filters = {"Type": ws_term("=", self.obj)}
            if bound is not None:
                filters["DeletedDate"] = ws_term(">=", bound)
            items, last_page = deleted_page(api.web_services, api.clock, filters, start=offset,
                                            page_size=self.page_size)
            rows = [Row(item.deleted_at, item.object_id, {}) for item in items]
            if rows:
                yield rows
            if last_page or not rows:
                return
            end = rows[-1].stamp
            ties = sum(1 for r in rows if r.stamp == end)
            bound, offset = (end, offset + ties) if end == bound else (end, ties)

    # ---------------------------------------------------------------- metadata

    def _described(self) -> dict[str, OodField]:
        found = self.connection.fields(self.obj)
        missing = [name for name in REQUIRED_FIELDS if name not in found]
        if missing:
            raise RuntimeError(f"{self.obj} has no {', '.join(missing)} field(s); the change source needs them")
        return found

    def _read_fields(self) -> list[str]:
        return [name for name, f in self._described().items() if not f.search_copy]

    def _datetime_fields(self) -> list[str]:
        return [name for name, f in self._described().items() if f.crm_type == "datetime" and not f.search_copy]


def content_digest(after: dict[str, Any]) -> str:
    """Eight hex digits of the record's canonical content: tells apart two versions saved in one second."""
    return hashlib.sha256(dumps(dict(sorted(after.items())))).hexdigest()[:8]


def change_id(account: str, obj: str, rid: str, ts: str, digest: str) -> str:
    """`crm:<account>:<object>:<id>:<ts>/<digest>` (`/deleted` for a delete): the same version of a record always
    gets the same id, whoever reads it (the change source, a workflow import)."""
    return f"crm:{account}:{obj}:{rid}:{ts}/{digest}"


def _from(rows: list[Row], bound: datetime | None) -> list[Row]:
    """The rows at or after `bound`: OOD reads a REST bound inside the repeated hour as its first occurrence and
    answers rows from up to an hour before it, which earlier reads have covered."""
    return rows if bound is None else [r for r in rows if r.stamp >= bound]


def _instant(value: Any) -> datetime | None:
    parsed = parse_timestamp(value) if value else None
    return parsed.astimezone(timezone.utc) if parsed else None


def _iso(moment: datetime | None) -> str | None:
    return iso_utc(moment) if moment else None

