"""Records of Oracle CRM On Demand by the neutral filter tree (crmsync.connectors.RecordQuery) and the Deleted
Items of a period; the wizard's discovery (tables, typed fields, picklists) over the REST describe.

Records are read with Web Services QueryPage and a search specification (searchspec.py): it expresses every
operator of the filter tree, mixes AND and OR at any depth and compares datetimes as UTC instants. The REST `q`
cannot (no OR across fields, no `<>`, no null tests). Values come back canonical (types.py): datetimes in UTC.

`order_by` sorts on OOD's side; a server that refuses to filter and sort at once (SBL-ODS-00127) is asked to
filter only, and the records are sorted here. `include_deleted` adds the Deleted Items of the record type, which
keep only the id, the name and the external id (OOD keeps no field values of a deleted record), so it cannot be
combined with a filter; they carry `IsDeleted: true` (the connector's `deleted_flag`; asked for as a field, it is
false on live records). `deleted()` reads DeletedItemQueryPage; OOD keeps deleted items 30 days.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Iterator, Sequence

from crmsync.connectors import DeletedRecord, TableInfo, TableSpec
from crmsync.filters import FilterError, Node
from crmsync.values import iso_utc, parse_timestamp

from .client import SORT_AND_FILTER_CODE
from .connection import OracleConnection, record_type_of
from .deleted import deleted_page
from .errors import OracleApiError
from .query import ws_term
from .searchspec import any_of, render
from .types import OodField, enumeration, field_spec, fields_of, from_ws

DELETED_FLAG = "IsDeleted"  # not an OOD field: true on Deleted Items, false on live records when asked for
RETENTION_DAYS = 30  # "Deleted items are purged after 30 days" (the sandbox's deleted_item_retention_days)
IDS_PER_QUERY = 50
PAGE_SIZE = 100


class OracleRecordQuery:
    def __init__(self, connection: OracleConnection) -> None:
        self.connection = connection
        self.sort_refused = False

    def records(self, obj: str, fields: Sequence[str], where: Node | None = None,
                order_by: Sequence[tuple[str, bool]] = (), include_deleted: bool = False,
                ids: Sequence[str] | None = None) -> Iterator[list[dict[str, Any]]]:
        described = self.described(obj)
        flagged = any(f == DELETED_FLAG for f in fields)
        names = list(dict.fromkeys(["Id", *(self._name(obj, f, "fields") for f in fields if f != DELETED_FLAG)]))
        condition = render(where, described) if where is not None else ""
        sort = [(self._name(obj, f, "order_by"), "DESC" if descending else "ASC") for f, descending in order_by]
        if include_deleted and where is not None:
            raise FilterError("filter", "OOD keeps no field values of deleted records (Deleted Items hold the id, "
                                        "name and external id): drop the filter or include_deleted")
        for spec in self._specs(condition, ids):
            for page in self._pages(obj, names, spec, sort):
                yield [self._converted(obj, names, record, flagged) for record in page]
        if include_deleted:
            yield from self._deleted_records(obj, ids)

    def deleted(self, obj: str, start: str, end: str) -> list[DeletedRecord]:
        """Records of `obj` deleted in [start, end), exact instants (deleted.py), as far back as OOD keeps them."""
        since, until = _moment(start, "start"), _moment(end, "end")
        oldest = self.connection.api.server_time() - timedelta(days=RETENTION_DAYS)
        if since < oldest:
            raise ValueError(f"start {iso_utc(since)} is before {iso_utc(oldest)}: Oracle CRM On Demand keeps deleted "
                             f"items for {RETENTION_DAYS} days only; move start later")
        filters = {"Type": ws_term("=", obj), "DeletedDate": f"{ws_term('>=', since)} AND {ws_term('<', until)}"}
        return [DeletedRecord(item.object_id, iso_utc(item.deleted_at)) for item in self._deleted_items(filters)]

    # ---------------------------------------------------------------- reading

    def _pages(self, obj: str, names: list[str], spec: str, sort: list[tuple[str, str]]) \
            -> Iterator[list[dict[str, str]]]:
        web_services = self.connection.api.web_services
        if not self.sort_refused or not sort:
            try:
                start = 0
                while True:
                    page = web_services.query_page(obj, names, searchspec=spec, sort=sort, start_row=start,
                                                   page_size=PAGE_SIZE)
                    if page.records:
                        yield page.records
                    if page.last_page or not page.records:
                        return
                    start += len(page.records)
            except OracleApiError as exc:
                if exc.code != SORT_AND_FILTER_CODE or start:
                    raise
                self.sort_refused = True
        with_keys = list(dict.fromkeys([*names, *(name for name, _ in sort)]))
        records = list(web_services.query(obj, with_keys, searchspec=spec, page_size=PAGE_SIZE))
        for name, direction in reversed(sort):  # stable sorts, last key first; empty values first, as OOD's
            records.sort(key=lambda r: self._sort_key(obj, name, r), reverse=direction == "DESC")
        for start in range(0, len(records), PAGE_SIZE):
            yield records[start:start + PAGE_SIZE]

    def _sort_key(self, obj: str, name: str, record: dict[str, str]) -> tuple[bool, Any]:
        value = from_ws(self.described(obj).get(name), record.get(name))
        return (value is not None, value if value is not None else "")

    def _specs(self, condition: str, ids: Sequence[str] | None) -> list[str]:
        if ids is None:
            return [condition]
        unique = list(dict.fromkeys(str(i) for i in ids))
        chunks = [any_of("Id", unique[s:s + IDS_PER_QUERY]) for s in range(0, len(unique), IDS_PER_QUERY)]
        return [f"({condition}) AND ({chunk})" if condition else chunk for chunk in chunks]

    def _converted(self, obj: str, names: list[str], record: dict[str, str], flagged: bool) -> dict[str, Any]:
        described = self.described(obj)
        out = {"id": record.get("Id")}
        out.update({name: from_ws(described.get(name), record.get(name)) for name in names})
        if flagged:
            out[DELETED_FLAG] = False
        return out

    def _deleted_records(self, obj: str, ids: Sequence[str] | None) -> Iterator[list[dict[str, Any]]]:
        wanted = set(ids) if ids is not None else None
        rows = [{"id": item.object_id, "Id": item.object_id, "ExternalSystemId": item.external_id or None,
                 "DeletedDate": iso_utc(item.deleted_at), DELETED_FLAG: True}
                for item in self._deleted_items({"Type": ws_term("=", obj)})
                if wanted is None or item.object_id in wanted]
        for start in range(0, len(rows), PAGE_SIZE):
            yield rows[start:start + PAGE_SIZE]

    def _deleted_items(self, filters: dict[str, str]) -> list[Any]:
        api, found = self.connection.api, []
        while True:
            items, last_page = deleted_page(api.web_services, api.clock, filters, start=len(found),
                                            page_size=PAGE_SIZE)
            found += items
            if last_page or not items:
                return found

    # ---------------------------------------------------------------- metadata

    def described(self, obj: str) -> dict[str, OodField]:
        return self.connection.fields(obj)

    def _name(self, obj: str, name: str, where: str) -> str:
        found = next((n for n in self.described(obj) if n.lower() == name.lower()), None)
        if found is None:
            raise FilterError(where, f"{name!r} is not a field of {obj} (see `crmsync wizard` or the record type's "
                                     "describe for its integration tags)")
        return found


class OracleDiscovery:
    """The wizard's view of OOD: standard-template record types, their typed fields and picklists."""

    namespace = "ood"
    connector_label = "Oracle On Demand"

    def __init__(self, connection: OracleConnection) -> None:
        self.connection = connection
        self.query = OracleRecordQuery(connection)

    def list_tables(self) -> list[TableInfo]:
        resources = self.connection.api.resources(("links",))
        return sorted((TableInfo(record_type_of(name), str(meta.get("title") or record_type_of(name)))
                       for name, meta in resources.items()), key=lambda t: t.name)

    def describe_table(self, name: str) -> TableSpec:
        described = self.connection.describe(name)
        fields = fields_of(described)
        spec = TableSpec(name, str(described.get("title") or name), [], key="Id")
        for f in fields.values():
            if f.search_copy:
                spec.skipped.append((f.name, "search field (an upper-cased copy)"))
                continue
            spec.fields.append(field_spec(f, name))
            if f.values:
                spec.enumerations.append(enumeration(f, name))
        return spec

    def rows(self, table: str, fields: list[str]) -> Iterator[list[dict[str, Any]]]:
        for page in self.query.records(table, fields):
            yield [{name: record.get(name) for name in fields} for record in page]


def _moment(text: str, what: str) -> datetime:
    try:
        parsed = parse_timestamp(text)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None
    if parsed is None:
        raise ValueError(f"{what} is empty; give an ISO 8601 time such as 2024-11-03T08:00:00Z")
    return parsed.astimezone(timezone.utc)
