"""The Tooling API's query resource, for the one object a sync tool reads there: which objects are selected for
Change Data Capture (`PlatformEventChannelMember` of the standard `ChangeEvents` channel).

Followed: Tooling API Developer Guide, "PlatformEventChannelMember" (https://developer.salesforce.com/docs/atlas.
en-us.api_tooling.meta/api_tooling/tooling_api_objects_platformeventchannelmember.htm), and the Change Data Capture
Developer Guide, "Select Objects for Change Notifications with Metadata API and Tooling API"
(https://developer.salesforce.com/docs/atlas.en-us.change_data_capture.meta/change_data_capture/
cdc_object_selections_metadata.htm): the standard channel's members are the Setup page's selection, one member per
object, `SelectedEntity` = `<Object>ChangeEvent` (`<Name>__ChangeEvent` for a custom object `<Name>__c`),
`DeveloperName` = `ChangeEvents_<SelectedEntity>`, `EventChannel` = `ChangeEvents`.

`GET /services/data/vXX.X/tooling/query?q=SELECT … FROM PlatformEventChannelMember [WHERE …] [ORDER BY …]
[LIMIT n]` answers like the REST query resource (`size`, `totalSize`, `done`, `queryLocator`, `entityTypeName`,
`records` with `attributes`). The SOQL is parsed by the sandbox's own parser (soql.py) and evaluated over the
members; WHERE compares the text fields with = != IN NOT IN LIKE, AND / OR / NOT. Any other Tooling object is
refused with INVALID_TYPE (the sandbox has no other Tooling API; creating or deleting members is done through
`POST /__sandbox/cdc`, the stand-in for the Setup page).
"""
from __future__ import annotations

from typing import Any

from starlette.responses import Response

from .context import Call, json_response
from .encoding import make_id
from .errors import SalesforceError
from .soql import BoolOp, Comparison, CountAll, FieldRef, Not, SoqlError, like_match, parse

MEMBER = "PlatformEventChannelMember"
CHANNEL = "ChangeEvents"
KEY_PREFIX = "0v8"
FIELDS = ("Id", "DeveloperName", "MasterLabel", "EventChannel", "SelectedEntity", "FilterExpression",
          "NamespacePrefix")


def change_event_name(object_name: str) -> str:
    """`Contact` → `ContactChangeEvent`, `Shoe__c` → `Shoe__ChangeEvent` (the docs' naming rule)."""
    return (object_name[:-3] + "__ChangeEvent") if object_name.endswith("__c") else f"{object_name}ChangeEvent"


def members(call: Call) -> list[dict[str, Any]]:
    """The standard channel's members: one per object selected for Change Data Capture, with stable ids."""
    sandbox = call.sandbox
    numbers = {name: index for index, name in enumerate(sorted(sandbox.model.objects), start=1)}
    result = []
    for name in sorted(sandbox.changes.selected):
        entity = change_event_name(name)
        result.append({"Id": make_id(KEY_PREFIX, numbers[name]), "DeveloperName": f"{CHANNEL}_{entity}",
                       "MasterLabel": entity, "EventChannel": CHANNEL, "SelectedEntity": entity,
                       "FilterExpression": None, "NamespacePrefix": None})
    return result


def query(call: Call) -> Response:
    soql = call.query.get("q")
    if not soql:
        raise SalesforceError("MALFORMED_QUERY", "A query string has to be specified")
    try:
        parsed = parse(soql)
    except SoqlError as exc:
        raise SalesforceError(exc.error_code, exc.message) from None
    if parsed.object_name.lower() != MEMBER.lower():
        raise SalesforceError("INVALID_TYPE", f"sObject type '{parsed.object_name}' is not supported. The crmsync "
                              f"sandbox's Tooling API answers queries of {MEMBER} only.")
    rows = [row for row in members(call) if parsed.where is None or _matches(parsed.where, row)]
    for item in reversed(parsed.order_by):
        name = _field(item.field)
        rows.sort(key=lambda row: (row[name] is None, row[name] or ""), reverse=item.descending)
    rows = rows[parsed.offset or 0:][:parsed.limit] if parsed.limit is not None else rows[parsed.offset or 0:]
    if parsed.is_count:
        return json_response({"size": len(rows), "totalSize": len(rows), "done": True, "queryLocator": None,
                              "entityTypeName": MEMBER, "records": []})
    selected = [_field(item) for item in parsed.select if not isinstance(item, CountAll)]
    records = [{"attributes": {"type": MEMBER, "url": f"{call.base}/tooling/sobjects/{MEMBER}/{row['Id']}"},
                **{name: row[name] for name in selected}} for row in rows]
    return json_response({"size": len(records), "totalSize": len(records), "done": True, "queryLocator": None,
                          "entityTypeName": MEMBER, "records": records})


def _field(ref: FieldRef) -> str:
    if len(ref.parts) != 1:
        raise SalesforceError("INVALID_FIELD", f"Didn't understand relationship '{'.'.join(ref.parts[:-1])}' in "
                              f"field path. {MEMBER} has no relationships in the crmsync sandbox.")
    wanted = ref.parts[0].lower()
    for name in FIELDS:
        if name.lower() == wanted:
            return name
    raise SalesforceError("INVALID_FIELD", f"No such column '{ref.parts[0]}' on entity '{MEMBER}'. If you are "
                          "attempting to use a custom field, be sure to append the '__c' after the custom field "
                          "name. Please reference your WSDL or the describe call for the appropriate names.")


def _matches(condition: Any, row: dict[str, Any]) -> bool:
    if isinstance(condition, BoolOp):
        results = (_matches(item, row) for item in condition.items)
        return all(results) if condition.op == "AND" else any(results)
    if isinstance(condition, Not):
        return not _matches(condition.item, row)
    assert isinstance(condition, Comparison)
    value = row[_field(condition.field)]
    literals = [literal.value for literal in condition.values]
    if condition.op in ("=", "!="):
        equal = (value or "").lower() == str(literals[0] or "").lower() if literals[0] is not None else value is None
        return equal if condition.op == "=" else not equal
    if condition.op in ("IN", "NOT IN"):
        found = (value or "").lower() in {str(v).lower() for v in literals if v is not None}
        return found if condition.op == "IN" else not found
    if condition.op == "LIKE":
        return bool(like_match(value, condition.values[0].pattern))
    raise SalesforceError("INVALID_FIELD", f"operator {condition.op} cannot compare text fields of {MEMBER}")

