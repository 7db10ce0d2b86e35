"""REST `describe`: metadata about resources, their links, actions, children and field attributes.

Follows "Retrieving Metadata about Oracle CRM On Demand Resources" and its examples (OnDemRestAPI_Ref30-33.html;
c-Retrieving-Metadata-for-a-Specific-Oracle-CRMOn-Demand-Resource-anf1046865.html):
- `GET .../describe?fields=...&offset=&limit=` lists all resources, paged over resources (limit default 2,
  maximum 100, as the guide's note says);
- `GET .../Accounts/describe` (or `.../Accounts/<Id>/describe`, or a child's) describes one resource with every
  attribute; `_contextInfo` echoes the paging parameters and reports `lastpage: true`;
- `fields` picks parts: attributes, collection.finders, collection.links, collection.actions, item.links,
  item.actions, children.attributes, children.collection, children.item, children.links, links
  (Describe Fields Parameters, Ref31); without it every part is returned;
- each attribute carries the documented keys (Describe Field Attributes, Ref32): name, type, updatable,
  mandatory, queryable, title, controlType, maxLength, currencyCode, markfortranslation, copyenabled, optimized,
  postdefault, fieldvalidation, fieldvalidationerrormessage, casesensitivity, htmlfieldtag,
  customwsintegrationtag.

Not from the guide (it documents no REST picklist resource): picklist attributes also carry `"lov": [{"code":
LIC, "value": display value}, ...]` so a client can learn the values; docs/oracle.md marks this as a sandbox
addition.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.responses import Response

from .context import json_response, paging
from .errors import BAD_PARAMETER, OracleError
from .model import RECORD_TYPES, Field, RecordType

if TYPE_CHECKING:
    from .rest import RestCall

PARTS = ("attributes", "collection.finders", "collection.links", "collection.actions", "item.links",
         "item.actions", "children.attributes", "children.collection", "children.item", "children.links", "links")
_TYPES = {"id": "string", "string": "string", "picklist": "string", "boolean": "boolean", "number": "number",
          "integer": "integer", "currency": "number", "date": "date", "datetime": "dateTime"}
_CONTROLS = {"picklist": "drop-down list", "date": "calendar", "datetime": "calendar", "boolean": "check box"}
DEFAULT_DESCRIBE_LIMIT = 2


def all_resources(call: "RestCall") -> Response:
    parts = _parts(call)
    offset, limit = paging(call.query, DEFAULT_DESCRIBE_LIMIT, 100)
    names = list(RECORD_TYPES)
    chosen = names[offset:offset + limit]
    body = {"Resources": {RECORD_TYPES[n].resource: _resource(call, RECORD_TYPES[n], parts) for n in chosen},
            "_contextInfo": {"limit": limit, "offset": offset, "lastpage": offset + limit >= len(names)}}
    return json_response(body)


def one_resource(call: "RestCall", rt: RecordType) -> Response:
    offset, limit = paging(call.query, 100, 100)
    return json_response({"Resources": {rt.resource: _resource(call, rt, _parts(call))},
                          "_contextInfo": {"limit": limit, "offset": offset, "lastpage": True}})


def _resource(call: "RestCall", rt: RecordType, parts: set[str]) -> dict[str, Any]:
    base = f"{call.base}/{rt.resource}"
    out: dict[str, Any] = {"title": rt.title, "titlePlural": rt.title_plural, "CustomObjectTagName": rt.resource}
    collection: dict[str, Any] = {}
    if "collection.links" in parts:
        collection["links"] = _self_links(f"{base}/", "collection")
    if "collection.finders" in parts:
        collection["finders"] = []
    if "collection.actions" in parts:
        collection["actions"] = [{"name": "get", "method": "GET"}] + \
            ([{"name": "create", "method": "POST"}] if rt.writable else [])
    if collection:
        out["collection"] = collection
    item: dict[str, Any] = {}
    if "item.links" in parts:
        item["links"] = {**_self_links(f"{base}/{{id}}", "item"), **_child_links(rt, base)}
    if "item.actions" in parts:
        item["actions"] = [{"name": "get", "method": "GET"}] + \
            ([{"name": "update", "method": "PATCH"}, {"name": "delete", "method": "DELETE"}] if rt.writable else [])
    if item:
        out["item"] = item
    if "attributes" in parts:
        out["attributes"] = [attribute(f) for f in rt.fields.values()]
    children = {name: _child(call, RECORD_TYPES[target], parts) for name, (target, _) in rt.children.items()}
    if any(children.values()):
        out["children"] = children
    if "links" in parts:
        out["links"] = _self_links(f"{base}/describe", "describe")
    return out


def _child(call: "RestCall", rt: RecordType, parts: set[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "children.attributes" in parts:
        out["attributes"] = [attribute(f) for f in rt.fields.values()]
    if "children.collection" in parts:
        out["collection"] = {"links": _self_links(f"{call.base}/{rt.resource}/", "collection")}
    if "children.item" in parts:
        out["item"] = {"links": _self_links(f"{call.base}/{rt.resource}/{{id}}", "item")}
    if "children.links" in parts:
        out["links"] = _self_links(f"{call.base}/{rt.resource}/describe", "describe")
    return out


def attribute(f: Field) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": f.name, "type": _TYPES[f.type], "updatable": f.updatable, "mandatory": f.mandatory,
        "queryable": True, "title": f.title, "controlType": _CONTROLS.get(f.type, "edit box"),
    }
    if f.max_length:
        out["maxLength"] = f.max_length
    if f.type == "currency":
        out["currencyCode"] = "USD"
    out.update(markfortranslation=False, copyenabled=f.updatable and not f.unique, optimized=f.name in (
        "Id", "ModifiedDate", "ExternalSystemId") or f.ci_of is not None, postdefault=False, fieldvalidation="",
        fieldvalidationerrormessage="", casesensitivity=f.type == "string" and f.ci_of is None,
        htmlfieldtag=f.title, customwsintegrationtag=f.name)
    if f.picklist:
        out["lov"] = [{"code": v.code, "value": v.label} for v in f.picklist]
    return out


def _self_links(href: str, kind: str) -> dict[str, Any]:
    return {"self": {"rel": "self", "href": href, "kind": kind},
            "canonical": {"rel": "canonical", "href": href, "kind": kind}}


def _child_links(rt: RecordType, base: str) -> dict[str, Any]:
    return {name: {"rel": "child", "href": f"{base}/{{id}}/child/{name}", "kind": "collection",
                   "cardinality": {"value": "1 to *", "sourceAttributes": "Id", "destinationAttributes": fk}}
            for name, (_, fk) in rt.children.items()}


def _parts(call: "RestCall") -> set[str]:
    raw = call.query.get("fields", "").strip()
    if not raw:
        return set(PARTS)
    parts = {p.strip() for p in raw.split(",") if p.strip()}
    unknown = sorted(parts - set(PARTS))
    if unknown:
        raise OracleError(BAD_PARAMETER, unknown[0], "fields", f"describe accepts {', '.join(PARTS)}")
    return parts
