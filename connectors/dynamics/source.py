"""The Dynamics change source: one table's creates, updates and deletes as neutral changes, page by page.

Two ways to read, chosen per table from its metadata (`ChangeTrackingEnabled`, which discovery shows):

**Change tracking** (learn.microsoft.com/power-apps/developer/data-platform/use-change-tracking-synchronize-data-
external-systems). The first read (`Prefer: odata.track-changes`) returns every row and, on its last page, a
delta link; each later read of the stored delta link returns the rows created or updated since (by row version),
then `$deletedEntity` entries for the rows deleted since, and a new delta link. The cursor keeps the delta link the
current read started from and, inside a read, the next link to resume from — so a restart from any cursor handed
out continues exactly after the page it covers. A delta link older than ExpireChangeTrackingInDays is refused:
the source then reads every row again (op 'r', a repair read with the same change ids, so consumers drop what
they already have) and counts it in `crmsync_dynamics_change_tracking_resyncs_total`. Deletes that happened
while the link was expired cannot be seen by that pass; drift repair (`crmsync reconcile`) finds them.

**modifiedon + id** (tables without change tracking). Rows are read in (modifiedon, primary id) order with keyset
paging — `modifiedon gt T or (modifiedon eq T and <id> gt I)`, `$top` — so rows sharing one modifiedon second
are never skipped or read twice at a page boundary, and concurrent writes cannot shift pages. Every
`full_window_every_seconds` a pass starts `lookback_seconds` before the cursor, to catch rows whose transaction
committed late with an older modifiedon; the cursor remembers the (id, version) of rows published within the
lookback window, and a row is published again only when its version moved. Such tables report no deletes
(the Web API has no deleted-rows query without change tracking): drift repair finds them.

The neutral change: key {"id": <GUID>}; position {"ts": modifiedon (ISO 8601 UTC, 'Z'), "id": <GUID>, "version":
<row version>}; id `crm:<account>:<table>:<GUID>:<version>`, so a row read twice at one version is one change;
`after` = the row's columns by logical name (values.py). Which op:

- 'r' the first full read (and a full read after an expired delta link);
- 'c' a row created since the read the cursor came from: createdon later than the window start (the delta
  token's time, or the modifiedon cursor). Dataverse's times are whole seconds, so a row created within the
  start's own second may have existed at that read: it is 'u', like any other row;
- 'u' any other row;
- 'd' a `$deletedEntity` entry. It carries no time: its position ts is the time of the delta token the read
  started from (deterministic for the cursor, and never after the deletion) and its version that token's
  version + 1 (above every version published before it, below any version the id could get later); its id is
  `crm:<account>:<table>:<GUID>:<that version>`.

The end of the first full read is a page of its own, without changes, with `snapshot_done` set: its cursor is the
first that says the snapshot is done, so a restart from any earlier cursor still ends with that signal.

Invariants: a page's cursor covers exactly the changes of that page and every earlier one; change ids depend
only on the data, never on when it was read.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator
from urllib.parse import parse_qs, unquote, urlsplit

from prometheus_client import Counter

from crmsync.connectors import FieldSpec, SourcePage
from crmsync.envelope import Change
from crmsync.values import iso_utc, parse_timestamp

from .client import DataverseApiError, DataverseClient
from .schema import Catalog, Column, Table
from .values import record_of, version_of

log = logging.getLogger("crmsync.dynamics.source")
CURSOR_VERSION = 1
DELTA_TOKEN = re.compile(r"^(\d+)!(\d{2})/(\d{2})/(\d{4}) (\d{2}):(\d{2}):(\d{2})$")
EXPIRED_CODES = frozenset({"0x80044184"})

RESYNCS = Counter("crmsync_dynamics_change_tracking_resyncs_total",
                  "Full reads after Dataverse refused an expired delta link", ["account", "object"])
PUBLISHED = Counter("crmsync_dynamics_source_changes_total", "Changes read by the Dynamics change source",
                    ["account", "object", "op"])


@dataclass(frozen=True)
class SourceOptions:
    mode: str = "auto"  # auto (change tracking when the table has it) | tracking | modifiedon
    page_size: int = 5000  # rows per page (Dataverse's maximum)
    lookback_seconds: float = 300.0  # modifiedon mode: how far back a full-window pass starts
    full_window_every_seconds: float = 60.0  # modifiedon mode: how often a pass re-reads the lookback window


def field_specs(table: Table) -> dict[str, FieldSpec]:
    """The table's mirrored columns as neutral FieldSpecs (also what discovery describes)."""
    return {c.name: FieldSpec(name=c.name, label=c.label, crm_type=c.crm_type, pg_type=c.pg_type,
                              calculated=False, enumeration=enumeration_name(table, c) if c.choice else None,
                              kind=c.kind, updateable=c.updatable, external_id=table.is_key(c.name))
            for c in table.mirrored()}


def enumeration_name(table: Table, column: Column) -> str:
    """A local option set's enumeration is named `<table>_<column>`; a global one by the option set's own name,
    so every column using it shares one enumeration."""
    assert column.choice is not None
    return column.choice.name if column.choice.is_global and column.choice.name else f"{table.name}_{column.name}"


class DynamicsChangeSource:
    """The changes of one table of one account (module docstring)."""

    def __init__(self, client: DataverseClient, catalog: Catalog, obj: str,
                 options: SourceOptions | None = None) -> None:
        self.client, self.catalog = client, catalog
        self.options = options or SourceOptions()
        self.table = catalog.table(obj)
        self.obj = self.table.name
        self.account = client.account_name
        self._last_full_window = float("-inf")

    def fields(self) -> dict[str, FieldSpec]:
        return field_specs(self.catalog.table(self.obj))

    def read(self, cursor: dict[str, Any] | None) -> Iterator[SourcePage]:
        self.table = self.catalog.table(self.obj)  # columns added since are read from now on
        if "modifiedon" not in self.table.columns:
            raise ValueError(f"{self.obj} has no modifiedon column: its changes cannot be ordered, so crmsync "
                             "cannot sync it")
        mode = self._mode(cursor)
        if mode == "tracking":
            yield from self._tracked(TrackingCursor.load(cursor))
        else:
            yield from self._by_modifiedon(ModifiedCursor.load(cursor))

    def _mode(self, cursor: dict[str, Any] | None) -> str:
        wanted = self.options.mode
        if wanted == "auto":
            wanted = "tracking" if self.table.change_tracking else "modifiedon"
        if wanted == "tracking" and not self.table.change_tracking:
            raise ValueError(f"change tracking is off for {self.obj} in {self.client.account.url}: turn it on "
                             "(table properties, 'Track changes') or use mode modifiedon")
        if cursor and cursor.get("mode") not in (None, wanted):
            log.warning("%s.%s: cursor was made in %s mode, now reading in %s mode: starting with a full read",
                        self.account, self.obj, cursor.get("mode"), wanted)
            RESYNCS.labels(self.account, self.obj).inc()
        return wanted

    # ---------------------------------------------------------------- change tracking

    def _tracked(self, cursor: "TrackingCursor", attempt: int = 0) -> Iterator[SourcePage]:
        reading_all = cursor.delta is None  # the first read, or a full read after an expired link
        link = cursor.next or (_with_select(cursor.delta, self._select()) if cursor.delta else None)
        pages = self.client.change_pages(self.table.entity_set, select=self._select(), link=link,
                                         page_size=self.options.page_size)
        try:
            for page in pages:
                window = cursor.window_start()
                changes = [self._row_change(row, "r" if reading_all else None, window) for row in page.rows]
                changes += [self._delete_change(rid, cursor, page.server_time) for rid in page.deleted_ids]
                finishing_snapshot = page.delta_link is not None and not cursor.snapshot_done
                cursor = cursor.advanced(page.next_link, page.delta_link, done=not finishing_snapshot)
                self._count(changes)
                yield SourcePage(changes, cursor.dump())
                if finishing_snapshot:  # the end of the first full read: a page of its own
                    cursor = cursor.advanced(None, cursor.delta, done=True)
                    yield SourcePage([], cursor.dump(), snapshot_done=True)
        except DataverseApiError as exc:
            if attempt >= 2 or not _expired(exc) or (cursor.delta is None and cursor.next is None):
                raise
            if cursor.next:  # a link inside a read: read it again from its start
                log.warning("%s.%s: Dataverse refused the link to the next page (%s); reading again from the start "
                            "of this read (its changes come again with the same ids)", self.account, self.obj,
                            exc.message)
                yield from self._tracked(cursor.restarted(), attempt + 1)
                return
            log.warning("%s.%s: the delta link expired (%s); reading every row again", self.account, self.obj,
                        exc.message)
            RESYNCS.labels(self.account, self.obj).inc()
            yield from self._tracked(cursor.full_read(), attempt + 1)

    def _delete_change(self, rid: str, cursor: "TrackingCursor", server_time: datetime | None) -> Change:
        version, moment = cursor.token()
        stamp = iso_utc(moment or server_time or datetime.now(timezone.utc))
        return Change(id=f"crm:{self.account}:{self.obj}:{rid}:{version + 1}", side="crm", source=self.account,
                      object=self.obj, op="d", key={"id": rid}, after=None,
                      position={"ts": stamp, "id": rid, "version": version + 1}, source_ts=stamp)

    # ---------------------------------------------------------------- modifiedon + id

    def _by_modifiedon(self, cursor: "ModifiedCursor") -> Iterator[SourcePage]:
        snapshot = not cursor.snapshot_done
        full_window = snapshot or time.monotonic() - self._last_full_window >= self.options.full_window_every_seconds
        lookback = timedelta(seconds=self.options.lookback_seconds)
        after = cursor.start(lookback if full_window else timedelta(0))
        window = parse_timestamp(after[0]) if after else None
        while True:
            rows = self._keyset_page(after)
            changes = []
            for row in rows:
                rid, version = row[self.table.primary_id], version_of(row)
                after = (row["modifiedon"], rid)
                cursor.advance(*after)
                if not cursor.published(rid, version):
                    changes.append(self._row_change(row, "r" if snapshot else cursor.op_for(rid), window))
                    cursor.remember(rid, version, row["modifiedon"])
            last = len(rows) < self.options.page_size
            if last and full_window:
                self._last_full_window = time.monotonic()
            cursor.prune(lookback)
            self._count(changes)
            yield SourcePage(changes, cursor.dump())
            if last:
                if snapshot:  # the end of the first full read: a page of its own
                    cursor.snapshot_done = True
                    yield SourcePage([], cursor.dump(), snapshot_done=True)
                return

    def _keyset_page(self, after: tuple[str, str | None] | None) -> list[dict[str, Any]]:
        """Up to page_size rows after (modifiedon, id) in that order; from (modifiedon, any id) when id is None."""
        pk = self.table.primary_id
        params = {"$select": ",".join(self._select()), "$orderby": f"modifiedon asc,{pk} asc",
                  "$top": str(self.options.page_size)}
        if after is not None:
            stamp = _odata_datetime(after[0])
            params["$filter"] = (f"modifiedon gt {stamp} or (modifiedon eq {stamp} and {pk} gt {after[1]})"
                                 if after[1] else f"modifiedon ge {stamp}")
        return self.client.request("GET", self.table.entity_set, params=params).json().get("value", [])

    # ---------------------------------------------------------------- shared

    def _select(self) -> list[str]:
        return [c.web_name for c in self.table.mirrored()]

    def _row_change(self, row: dict[str, Any], op: str | None, window: datetime | None) -> Change:
        rid, version = row[self.table.primary_id], version_of(row)
        after = record_of(self.table, row)
        stamp = _iso(after.get("modifiedon"))
        if op is None:
            created = parse_timestamp(after.get("createdon"))
            op = "c" if window is not None and created is not None and created > window else "u"
        return Change(id=f"crm:{self.account}:{self.obj}:{rid}:{version}", side="crm", source=self.account,
                      object=self.obj, op=op, key={"id": rid}, after=after,
                      position={"ts": stamp, "id": rid, "version": version}, source_ts=stamp)

    def _count(self, changes: list[Change]) -> None:
        for change in changes:
            PUBLISHED.labels(self.account, self.obj, change.op).inc()


# ---------------------------------------------------------------- cursors

@dataclass(frozen=True)
class TrackingCursor:
    """{"v", "mode": "tracking", "delta": link the current read started from (None: read every row), "next": where
    to resume inside it, "snapshot_done"}."""

    delta: str | None = None
    next: str | None = None
    snapshot_done: bool = False

    @classmethod
    def load(cls, data: dict[str, Any] | None) -> "TrackingCursor":
        if not data or data.get("mode") != "tracking":
            return cls(snapshot_done=bool(data and data.get("snapshot_done")))
        _check_version(data)
        return cls(data.get("delta"), data.get("next"), bool(data.get("snapshot_done")))

    def dump(self) -> dict[str, Any]:
        return {"v": CURSOR_VERSION, "mode": "tracking", "delta": self.delta, "next": self.next,
                "snapshot_done": self.snapshot_done}

    def advanced(self, next_link: str | None, delta_link: str | None, done: bool = True) -> "TrackingCursor":
        if delta_link is not None:
            return TrackingCursor(delta_link, None, self.snapshot_done or done)
        return TrackingCursor(self.delta, next_link, self.snapshot_done)

    def restarted(self) -> "TrackingCursor":
        return TrackingCursor(self.delta, None, self.snapshot_done)

    def full_read(self) -> "TrackingCursor":
        return TrackingCursor(None, None, self.snapshot_done)

    def token(self) -> tuple[int, datetime | None]:
        """(row version, time) of the delta token the current read started from."""
        return delta_token(self.delta) if self.delta else (0, None)

    def window_start(self) -> datetime | None:
        return self.token()[1]


def delta_token(link: str) -> tuple[int, datetime | None]:
    """The `<version>!<MM/dd/yyyy HH:mm:ss>` (UTC) token of a delta link, as Dataverse writes it; (0, None) when
    the token has another form."""
    values = parse_qs(urlsplit(link).query).get("$deltatoken") or [""]
    match = DELTA_TOKEN.match(unquote(values[0]).strip())
    if match is None:
        return 0, None
    version, month, day, year, hour, minute, second = (int(g) for g in match.groups())
    return version, datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc)


@dataclass
class ModifiedCursor:
    """{"v", "mode": "modifiedon", "ts", "id" (the last row read), "snapshot_done", "seen": {id: [version,
    modifiedon]} of rows published within the lookback window}."""

    ts: str | None = None
    id: str | None = None
    snapshot_done: bool = False
    seen: dict[str, list[Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, data: dict[str, Any] | None) -> "ModifiedCursor":
        if not data or data.get("mode") != "modifiedon":
            return cls()  # a first read (or one after a change of mode): every row, op 'r'
        _check_version(data)
        return cls(data.get("ts"), data.get("id"), bool(data.get("snapshot_done")), dict(data.get("seen") or {}))

    def dump(self) -> dict[str, Any]:
        return {"v": CURSOR_VERSION, "mode": "modifiedon", "ts": self.ts, "id": self.id,
                "snapshot_done": self.snapshot_done, "seen": dict(sorted(self.seen.items()))}

    def start(self, lookback: timedelta) -> tuple[str, str | None] | None:
        """Where a pass starts: after the cursor, or from `lookback` before it (any id) for a full window."""
        if self.ts is None:
            return None
        if not lookback:
            return self.ts, self.id
        moment = parse_timestamp(self.ts)
        assert moment is not None
        return iso_utc(moment - lookback), None

    def advance(self, stamp: str, rid: str) -> None:
        """Move to the row just read (rows come in the server's (modifiedon, id) order; never back in time)."""
        if self.ts is None or _epoch(stamp) >= _epoch(self.ts):
            self.ts, self.id = stamp, rid

    def published(self, rid: str, version: int) -> bool:
        seen = self.seen.get(rid)
        return seen is not None and int(seen[0]) >= version

    def op_for(self, rid: str) -> str | None:
        return "u" if rid in self.seen else None  # None: decided by createdon

    def remember(self, rid: str, version: int, stamp: str) -> None:
        self.seen[rid] = [version, stamp]

    def prune(self, lookback: timedelta) -> None:
        """Forget rows published before the lookback window: no later pass reads them at that version again."""
        if self.ts is None:
            return
        horizon = _epoch(self.ts) - lookback.total_seconds()
        self.seen = {rid: entry for rid, entry in self.seen.items() if _epoch(entry[1]) >= horizon}


def _with_select(link: str, select: list[str]) -> str:
    """The delta link asking for the table's columns as they are now (a column added since is read from the next
    delta on); everything else in the link, the token above all, stays as Dataverse wrote it."""
    parts = urlsplit(link)
    kept = [p for p in parts.query.split("&") if p and not p.startswith(("$select=", "%24select="))]
    query = "&".join([f"$select={','.join(select)}", *kept])
    return parts._replace(query=query).geturl()


def _check_version(data: dict[str, Any]) -> None:
    if data.get("v") != CURSOR_VERSION:
        raise ValueError(f"Dynamics source cursor has version {data.get('v')!r}; this crmsync reads "
                         f"version {CURSOR_VERSION}")


def _expired(exc: DataverseApiError) -> bool:
    """Dataverse refusing a delta or next link because it is too old (or no longer valid)."""
    text = exc.message.lower()
    return exc.status == 400 and (exc.code in EXPIRED_CODES or "expired" in text or "full sync" in text
                                  or "skiptoken" in text or "delta token" in text)


def _iso(value: Any) -> str | None:
    moment = parse_timestamp(value)
    return iso_utc(moment) if moment else None


def _epoch(value: Any) -> float:
    moment = parse_timestamp(value)
    return moment.timestamp() if moment else 0.0


def _odata_datetime(value: str) -> str:
    moment = parse_timestamp(value)
    assert moment is not None
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
