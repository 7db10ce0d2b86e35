"""Web Services v2.0 (SOAP) on /Services/Integration: QueryPage, Insert, Update, Delete, Execute (and
InsertOrUpdate, see below) for Account, Contact, Opportunity, Lead and User, plus DeletedItemQueryPage.

Messages follow the Oracle Web Services On Demand Guide (Release 32-40):
- request element `<Object><Method>_Input` in namespace `urn:crmondemand/ws/ecbs/<object>/`, response
  `<Object><Method>_Output` with `ListOf<Object>` in `urn:/crmondemand/xml/<Object>/Data` (element names are
  matched by local name, so prefixed and default-namespace requests both work);
- QueryPage ("QueryPage Arguments", c-QueryPage-Arguments.html; "Using the pagesize, startrownum, and
  recordcountneeded Arguments"): `pagesize` (default 10, at most 100), `startrownum` (default 0) and
  `recordcountneeded` are attributes of `ListOf<Object>`; the response's `ListOf<Object>` carries `lastpage` and,
  when asked, `recordcount`; query by template: the response holds exactly the fields named in the request;
  field elements hold query expressions (query.py), `sortorder` ASC|DESC and `sortsequence` attributes order the
  result; `searchspec` on the object element filters across fields; fields of non-string types with no value are
  left out of the response;
- writes ("Web Services v2.0 API Calls"): records are identified by a user key (Id, ExternalSystemId,
  IntegrationId); the first record of a batch decides which user key identifies all of them (SBL-EAI-04390 in
  the Troubleshooting Guide); at most 20 top-level records per request and "If a single record in a batch causes
  an error, the entire batch is not processed" (Batch Processing, OnDemWebSvcs_BestPractices18.html): a batch
  runs in one transaction and any error is a SOAP fault; on success every record's status key (Id,
  ExternalSystemId, IntegrationId, CreatedDate, ModifiedDate) is returned in request order;
- Execute takes `operation="insert|update|delete|skipnode"` per record; another value is SBL-EAI-04009;
- Echo ("The Echo Argument"): `<Echo>Off</Echo>` (case-sensitive) writes without recording integration events;
- DeletedItemQueryPage ("Sample SOAP Request - DeletedItemQueryPage"): `DeletedItemWS_DeletedItemQueryPage_Input`
  in `urn:crmondemand/ws/deleteditem/` with `PageSize`/`StartRowNum` elements, result sorted by DeletedDate,
  DeletedDate in the v1.0 form MM/DD/YYYY hh:mm:ss in the user's time zone (sandbox choice, docs/oracle.md).

InsertOrUpdate is documented for Web Services v1.0 only; the sandbox also accepts `<Object>InsertOrUpdate` on the
v2.0 services (insert when no record has the user key's value, update otherwise) unless the
`ws_v2_insert_or_update` setting is off, in which case it is an unknown operation as on a real server.
Child components (ListOf<Child> inside a record) are not implemented; a request holding them is refused.
"""
from __future__ import annotations

import itertools
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any, Iterable
from xml.sax.saxutils import escape

from starlette.responses import Response

from .context import Sandbox
from .errors import (BATCH_TOO_BIG, INVALID_OPERATION, MULTIPLE_MATCH, NO_RECORD, NO_USER_KEY, PAGE_SIZE, READ_ONLY,
                     SERVER, SORT_AND_FILTER, SOAP_INPUT, UNKNOWN_FIELD, UNKNOWN_OPERATION, OracleError)
from .model import DELETED_ITEM, RECORD_TYPES, Field, RecordType
from .query import Node, conjunction, parse_searchspec, parse_ws_field
from .values import Dialect

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSSE_DRAFTS = ("http://schemas.xmlsoap.org/ws/2002/04/secext", "http://schemas.xmlsoap.org/ws/2002/07/secext")
DELETED_ITEM_NS = "urn:crmondemand/ws/deleteditem/"
METHODS = ("QueryPage", "InsertOrUpdate", "Insert", "Update", "Delete", "Execute")
DEFAULT_PAGE_SIZE = 10
STATUS_KEY = ("Id", "ExternalSystemId", "IntegrationId", "CreatedDate", "ModifiedDate")
OPERATIONS = ("insert", "update", "delete", "skipnode")
_INPUT = re.compile(rf"^(?P<object>[A-Za-z]+?)(?P<method>{'|'.join(METHODS)})_Input$")
_LOG_NUMBERS = itertools.count(1)


def service_ns(rt: RecordType) -> str:
    return f"urn:crmondemand/ws/ecbs/{rt.name.lower()}/"


def data_ns(rt: RecordType) -> str:
    return f"urn:/crmondemand/xml/{rt.name}/Data"


def local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def child(element: ET.Element, name: str) -> ET.Element | None:
    return next((c for c in element if local(c.tag) == name), None)


def attribute(element: ET.Element, name: str, default: str = "") -> str:
    """An attribute by case-insensitive local name (the guide writes both `pagesize` and `PageSize`)."""
    wanted = name.lower()
    return next((v.strip() for k, v in element.attrib.items() if local(k).lower() == wanted), default)


# ---------------------------------------------------------------- envelopes


@dataclass(frozen=True)
class Envelope:
    header: ET.Element | None
    body: ET.Element  # the first element inside soap:Body


def parse_envelope(raw: bytes) -> Envelope:
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as exc:
        raise OracleError(SOAP_INPUT, f"the request is not well-formed XML ({exc})") from None
    if root.tag != f"{{{SOAP_ENV}}}Envelope":
        raise OracleError(SOAP_INPUT, "the root element must be a SOAP 1.1 Envelope")
    body = root.find(f"{{{SOAP_ENV}}}Body")
    if body is None or len(body) == 0:
        raise OracleError(SOAP_INPUT, "the SOAP Body is empty")
    return Envelope(root.find(f"{{{SOAP_ENV}}}Header"), body[0])


def username_token(header: ET.Element | None) -> tuple[str, str, bool] | None:
    """(username, password, stateless) from a WS-Security UsernameToken; stateless only with the OASIS 1.0
    namespace, the draft namespaces sign in statefully (Enabling Support for Stateless Requests)."""
    if header is None:
        return None
    for namespace in (WSSE, *WSSE_DRAFTS):
        token = header.find(f"{{{namespace}}}Security/{{{namespace}}}UsernameToken")
        if token is not None:
            username = token.findtext(f"{{{namespace}}}Username") or ""
            password = token.findtext(f"{{{namespace}}}Password") or ""
            return username.strip(), password, namespace == WSSE
    return None


def envelope(body: str) -> str:
    return ('<?xml version="1.0" encoding="UTF-8"?>'
            f'<SOAP-ENV:Envelope xmlns:SOAP-ENV="{SOAP_ENV}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
            f'xmlns:xsd="http://www.w3.org/2001/XMLSchema"><SOAP-ENV:Body>{body}</SOAP-ENV:Body>'
            '</SOAP-ENV:Envelope>')


def xml_response(body: str, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(envelope(body), status_code=status, media_type="text/xml; charset=utf-8", headers=headers)


def fault_response(error: OracleError) -> Response:
    """A SOAP 1.1 fault: siebdetail for data errors, ErrorCode/ErrorMessage for session and limiter errors."""
    code = "SOAP-ENV:Server" if error.kind is SERVER else "SOAP-ENV:Client"
    if error.kind.symbol or error.status in (400, 404):
        detail = ('<siebelf:siebdetail xmlns:siebelf="http://www.siebel.com/ws/fault">'
                  f"<siebelf:logfilename>OnDemandServicesObjMgr_enu_0042_{next(_LOG_NUMBERS):09d}.log"
                  "</siebelf:logfilename><siebelf:errorstack><siebelf:error>"
                  f"<siebelf:errorcode>{error.code}</siebelf:errorcode>"
                  f"<siebelf:errorsymbol>{escape(error.kind.symbol)}</siebelf:errorsymbol>"
                  f"<siebelf:errormsg>{escape(error.detail)}</siebelf:errormsg>"
                  "</siebelf:error></siebelf:errorstack></siebelf:siebdetail>")
    else:
        detail = f"<ErrorCode>{error.code}</ErrorCode><ErrorMessage>{escape(error.detail)}</ErrorMessage>"
    body = (f"<SOAP-ENV:Fault><faultcode>{code}</faultcode><faultstring>{escape(error.detail)}</faultstring>"
            f"<detail>{detail}</detail></SOAP-ENV:Fault>")
    return xml_response(body, status=500)


# ---------------------------------------------------------------- dispatch


@dataclass
class WsCall:
    sandbox: Sandbox
    user_id: str
    body: ET.Element

    def dialect(self, datetimes: str = "xsd") -> Dialect:
        mode = (self.body.findtext("{*}LOVLanguageMode") or "LIC").strip().upper()
        return self.sandbox.dialect(datetimes, "LDC" if mode == "LDC" else "LIC")

    @property
    def echo(self) -> bool:
        return (self.body.findtext("{*}Echo") or "On").strip() != "Off"


def operation_name(body: ET.Element) -> str:
    """For statistics: e.g. 'ContactQueryPage'."""
    name = local(body.tag)
    return name.removesuffix("_Input").replace("DeletedItemWS_", "")


def dispatch(call: WsCall) -> Response:
    name = local(call.body.tag)
    if name == "DeletedItemWS_DeletedItemQueryPage_Input":
        return deleted_item_query_page(call)
    match = _INPUT.match(name)
    rt = RECORD_TYPES.get(match.group("object")) if match else None
    if match is None or rt is None:
        raise OracleError(UNKNOWN_OPERATION, name.removesuffix("_Input"), name.split("Query")[0].lower())
    method = match.group("method")
    if method == "InsertOrUpdate" and not call.sandbox.settings.ws_v2_insert_or_update:
        raise OracleError(UNKNOWN_OPERATION, f"{rt.name}{method}", rt.name.lower())
    if method == "QueryPage":
        return query_page(call, rt)
    if not rt.writable:
        raise OracleError(UNKNOWN_OPERATION, f"{rt.name}{method}", rt.name.lower())
    return write(call, rt, method)


# ---------------------------------------------------------------- QueryPage


def query_page(call: WsCall, rt: RecordType) -> Response:
    listing = _list_element(call.body, rt)
    template = child(listing, rt.name)
    dialect = call.dialect()
    fields, filters, sorts = _template(template, rt, dialect) if template is not None else ([], [], [])
    if not fields:
        fields = rt.default_fields()
    searchspec = parse_searchspec(attribute(template, "searchspec"), rt, dialect) if template is not None else None
    where = conjunction([*filters, searchspec])
    order = [(name, desc) for _, _, name, desc in sorted(sorts)]
    if where is not None and order and call.sandbox.settings.sort_or_filter:
        raise OracleError(SORT_AND_FILTER, "query expressions", "sortorder attributes")
    size, start = _page_size(call, attribute(listing, "pagesize", str(DEFAULT_PAGE_SIZE))), \
        _whole(attribute(listing, "startrownum", "0"), "startrownum")
    store = call.sandbox.store
    rows = store.select(rt, fields, where, order, start, size + 1)
    attrs = f' lastpage="{"true" if len(rows) <= size else "false"}"'
    if attribute(listing, "recordcountneeded").lower() == "true":
        attrs += f' recordcount="{store.count(rt, where)}"'
    records = "".join(_record_xml(rt.name, fields, row, dialect) for row in rows[:size])
    return xml_response(f'<ns:{rt.name}QueryPage_Output xmlns:ns="{service_ns(rt)}">'
                        f'<ListOf{rt.name} xmlns="{data_ns(rt)}"{attrs}>{records}</ListOf{rt.name}>'
                        f"</ns:{rt.name}QueryPage_Output>")


def _template(template: ET.Element, rt: RecordType, dialect: Dialect) \
        -> tuple[list[Field], list[Node], list[tuple[int, int, str, bool]]]:
    fields, filters, sorts = [], [], []
    for position, element in enumerate(template):
        f = _field_of(element, rt)
        name = f.name
        fields.append(f)
        node = parse_ws_field(element.text or "", f, rt, dialect)
        if node is not None:
            filters.append(node)
        order = attribute(element, "sortorder").upper()
        if order:
            if order not in ("ASC", "DESC"):
                raise OracleError(SOAP_INPUT, f"sortorder of {name} must be ASC or DESC, not {order!r}")
            sequence = attribute(element, "sortsequence", str(position))
            sorts.append((_whole(sequence, "sortsequence"), position, name, order == "DESC"))
    return fields, filters, sorts


def _record_xml(name: str, fields: Iterable[Field], row: dict[str, Any], dialect: Dialect,
                attrs: str = "") -> str:
    parts = []
    for f in fields:
        text = dialect.as_text(f, row.get(f.name))
        if text is None:
            continue
        parts.append(f"<{f.name}>{escape(text)}</{f.name}>" if text else f"<{f.name}/>")
    return f"<{name}{attrs}>{''.join(parts)}</{name}>"


# ---------------------------------------------------------------- writes


def write(call: WsCall, rt: RecordType, method: str) -> Response:
    records = [r for r in _list_element(call.body, rt) if local(r.tag) == rt.name]
    limit = call.sandbox.settings.ws_batch_limit
    if len(records) > limit:
        raise OracleError(BATCH_TOO_BIG, len(records), limit)
    dialect, store, echo = call.dialect(), call.sandbox.store, call.echo
    parsed = [(_operation(method, r), _values(r, rt, dialect)) for r in records]
    key = _batch_user_key(rt, parsed)
    results: list[tuple[str, str | None]] = []
    with store.atomic():
        for operation, values in parsed:
            results.append(_apply(call, rt, operation, values, key, echo))
    for operation, _ in results:
        call.sandbox.stats.writes[rt.name][operation] += 1
    if not echo:
        call.sandbox.stats.echo_off += len(results)
    out_fields = [rt.fields[n] for n in STATUS_KEY]
    rows = []
    for (operation, record_id), (_, values) in zip(results, parsed):
        row = store.get(rt, record_id) if record_id and operation != "delete" else {**values, "Id": record_id}
        attrs = f' operation="{operation}"' if method in ("Execute", "InsertOrUpdate") else ""
        rows.append(_record_xml(rt.name, out_fields, row or {}, call.dialect(), attrs))
    return xml_response(f'<ns:{rt.name}{method}_Output xmlns:ns="{service_ns(rt)}">'
                        f'<ListOf{rt.name} xmlns="{data_ns(rt)}">{"".join(rows)}</ListOf{rt.name}>'
                        f"</ns:{rt.name}{method}_Output>")


def _operation(method: str, record: ET.Element) -> str:
    if method != "Execute":
        return method.lower() if method != "InsertOrUpdate" else "upsert"
    operation = attribute(record, "operation")
    if operation not in OPERATIONS:
        raise OracleError(INVALID_OPERATION, operation)
    return operation


def _values(record: ET.Element, rt: RecordType, dialect: Dialect) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for element in record:
        f = _field_of(element, rt)
        name = f.name
        text = (element.text or "").strip()
        if name != "Id" and not f.updatable:
            raise OracleError(READ_ONLY, name, rt.name)
        values[name] = text if name == "Id" else dialect.to_storage(rt, f, text)
    return values


def _batch_user_key(rt: RecordType, parsed: list[tuple[str, dict[str, Any]]]) -> str | None:
    """The user key of the first record that needs one; every such record must carry it."""
    keyed = [values for operation, values in parsed if operation not in ("insert", "skipnode")]
    if not keyed:
        return None
    key = next((k for k in rt.user_keys if keyed[0].get(k)), None)
    if key is None:
        raise OracleError(NO_USER_KEY, rt.name)
    position = rt.user_keys.index(key) + 1
    if any(not values.get(key) for values in keyed):
        raise OracleError(MULTIPLE_MATCH, rt.name, f"User Key:{position}")
    return key


def _apply(call: WsCall, rt: RecordType, operation: str, values: dict[str, Any], key: str | None,
           echo: bool) -> tuple[str, str | None]:
    store, user = call.sandbox.store, call.user_id
    fields = {k: v for k, v in values.items() if k != "Id"}
    if operation == "skipnode":
        return operation, None
    if operation == "insert":
        return operation, store.insert(rt, fields, user_id=user, api="ws", echo=echo)
    assert key is not None
    matches = store.ids_by(rt, key, values[key])
    if operation == "upsert":
        if not matches and key == "Id":
            raise OracleError(NO_RECORD, rt.name, key, values[key])
        if not matches:
            return "insert", store.insert(rt, fields, user_id=user, api="ws", echo=echo)
        operation = "update"
    if not matches:
        raise OracleError(NO_RECORD, rt.name, key, values[key])
    if operation == "update":
        store.update(rt, matches[0], {k: v for k, v in fields.items() if k != key}, user_id=user, api="ws",
                     echo=echo)
    else:
        store.delete(rt, matches[0], user_id=user, api="ws", echo=echo)
    return operation, matches[0]


# ---------------------------------------------------------------- DeletedItemQueryPage


def deleted_item_query_page(call: WsCall) -> Response:
    listing = child(call.body, "ListOfDeletedItem")
    template = child(listing, "DeletedItem") if listing is not None else None
    dialect = call.dialect("v1")
    fields, filters, _ = _template(template, DELETED_ITEM, dialect) if template is not None else ([], [], [])
    fields = fields or list(DELETED_ITEM.fields.values())
    size = _page_size(call, (call.body.findtext("{*}PageSize") or str(DEFAULT_PAGE_SIZE)).strip())
    start = _whole((call.body.findtext("{*}StartRowNum") or "0").strip(), "StartRowNum")
    store = call.sandbox.store
    store.purge_deleted(call.sandbox.settings.deleted_item_retention_days)
    rows = store.deleted_items(conjunction(filters), start, size + 1)
    items = "".join(_record_xml("DeletedItem", fields, row, dialect) for row in rows[:size])
    last = "true" if len(rows) <= size else "false"
    return xml_response(f'<ns:DeletedItemWS_DeletedItemQueryPage_Output xmlns:ns="{DELETED_ITEM_NS}">'
                        f'<ListOfDeletedItem xmlns="urn:/crmondemand/xml/DeletedItem/Data">{items}'
                        f"</ListOfDeletedItem><ns:LastPage>{last}</ns:LastPage>"
                        "</ns:DeletedItemWS_DeletedItemQueryPage_Output>")


# ---------------------------------------------------------------- helpers


def _field_of(element: ET.Element, rt: RecordType) -> Field:
    """The field a request element names; child components (ListOf...) are not implemented."""
    name = local(element.tag)
    if name.startswith("ListOf"):
        raise OracleError(SOAP_INPUT, f"child components such as {name} are not supported by the sandbox")
    field = rt.fields.get(name)
    if field is None:
        raise OracleError(UNKNOWN_FIELD, name, rt.name)
    return field


def _list_element(body: ET.Element, rt: RecordType) -> ET.Element:
    listing = child(body, f"ListOf{rt.name}")
    if listing is None:
        raise OracleError(SOAP_INPUT, f"the request has no ListOf{rt.name} element")
    return listing


def _page_size(call: WsCall, raw: str) -> int:
    maximum = call.sandbox.settings.page_size_limit
    size = _whole(raw, "pagesize")
    if not 1 <= size <= maximum:
        raise OracleError(PAGE_SIZE, size, maximum)
    return size


def _whole(raw: str, name: str) -> int:
    if not raw.strip().isdigit():
        raise OracleError(SOAP_INPUT, f"{name} must be a whole number, not {raw!r}")
    return int(raw)

