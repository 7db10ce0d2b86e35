"""Metadata endpoints: EntityDefinitions (with Attributes, typed attribute casts, Keys, relationships) and
GlobalOptionSetDefinitions, built from model.py.

Follows learn.microsoft.com/power-apps/developer/data-platform/webapi/query-metadata-web-api and
.../retrieve-metadata-name-metadataid:
  * collections are wrapped in `value` and never paged; a key-addressed definition is returned un-wrapped
  * `$select`, `$filter` (also on complex values: `CanChangeTrackingBeEnabled/Value eq true`, enum literals
    `Microsoft.Dynamics.CRM.OwnershipTypes'UserOwned'`) and `$expand=Attributes($select=..;$filter=..)`, Keys,
    ManyToOneRelationships, OneToManyRelationships
  * `OptionSet` / `GlobalOptionSet` can only be expanded on a typed cast, e.g.
    `Attributes/Microsoft.Dynamics.CRM.PicklistAttributeMetadata?$select=LogicalName&$expand=OptionSet`
  * MultiSelect choices: AttributeType `Virtual`, AttributeTypeName `MultiSelectPicklistType`,
    MultiSelectPicklistAttributeMetadata; DateTime columns carry `DateTimeBehavior` {"Value": UserLocal|DateOnly}
"""
from __future__ import annotations

import uuid
from typing import Any, Callable, Iterable

from starlette.responses import Response

from .context import Call, respond
from .errors import INVALID_PROPERTY, RECORD_NOT_FOUND, DataverseError, bad_request
from .model import (ATTRIBUTE_TYPES, CHOICE_TYPES, ENTITIES, GLOBAL_OPTION_SETS, Attribute, Entity, OptionSet,
                    metadata_id)
from .odata import matches, parse_expand, parse_filter, parse_select, select_keys, split_top_level

CAST_PREFIX = "Microsoft.Dynamics.CRM."
_LANGUAGE = 1033


def label(text: str) -> dict[str, Any]:
    localized = {"Label": text, "LanguageCode": _LANGUAGE, "IsManaged": True, "MetadataId": None, "HasChanged": None}
    return {"LocalizedLabels": [localized], "UserLocalizedLabel": localized}


def _managed(value: Any, name: str) -> dict[str, Any]:
    return {"Value": value, "CanBeChanged": False, "ManagedPropertyLogicalName": name}


# ---------------------------------------------------------------- building definitions

def entity_definition(entity: Entity, tracked: bool = True) -> dict[str, Any]:
    return {
        "MetadataId": metadata_id("entity", entity.name), "LogicalName": entity.name,
        "SchemaName": entity.name.capitalize() if entity.name != "systemuser" else "SystemUser",
        "EntitySetName": entity.entity_set, "LogicalCollectionName": entity.entity_set,
        "CollectionSchemaName": entity.label_plural, "PrimaryIdAttribute": entity.primary_id,
        "PrimaryNameAttribute": entity.primary_name, "ObjectTypeCode": entity.object_type_code,
        "OwnershipType": entity.ownership, "IsCustomEntity": False, "IsActivity": False, "IsIntersect": False,
        "IsManaged": True, "IsValidForAdvancedFind": entity.advanced_find, "IsLogicalEntity": False,
        "ChangeTrackingEnabled": tracked,
        "CanChangeTrackingBeEnabled": _managed(True, "canchangetrackingbeenabled"),
        "IsAuditEnabled": _managed(entity.audited, "canmodifyauditsettings"),
        "DisplayName": label(entity.label), "DisplayCollectionName": label(entity.label_plural),
        "Description": label(f"{entity.label} records"),
    }


def attribute_definition(entity: Entity, attr: Attribute, column: int) -> dict[str, Any]:
    odata_type, type_name = ATTRIBUTE_TYPES[attr.type]
    item: dict[str, Any] = {
        "@odata.type": f"#{CAST_PREFIX}{odata_type}", "MetadataId": metadata_id("attribute", entity.name, attr.name),
        "LogicalName": attr.name, "SchemaName": attr.schema_name, "EntityLogicalName": entity.name,
        "AttributeType": attr.type, "AttributeTypeName": {"Value": type_name}, "ColumnNumber": column,
        "DisplayName": label(attr.label), "Description": label(attr.label),
        "RequiredLevel": {"Value": attr.required, "CanBeChanged": attr.required != "SystemRequired",
                          "ManagedPropertyLogicalName": "canmodifyrequirementlevelsettings"},
        "IsPrimaryId": attr.name == entity.primary_id, "IsPrimaryName": attr.name == entity.primary_name,
        "IsCustomAttribute": attr.custom, "IsValidForCreate": attr.create, "IsValidForUpdate": attr.update,
        "IsValidForRead": True, "IsValidODataAttribute": True, "IsLogical": False, "AttributeOf": None,
        "SourceType": 0, "IsManaged": not attr.custom, "IsFilterable": True, "IsSearchable": True,
    }
    item.update(_type_specific(attr))
    return item


def _type_specific(attr: Attribute) -> dict[str, Any]:
    if attr.type in ("String", "Memo"):
        text_format = "Email" if attr.name.startswith("emailaddress") or attr.name == "internalemailaddress" else \
            "Url" if attr.name == "websiteurl" else "Phone" if attr.name.startswith(("telephone", "mobile")) else \
            "TextArea" if attr.type == "Memo" else "Text"
        return {"MaxLength": attr.max_length, "DatabaseLength": attr.max_length * 2, "Format": text_format,
                "FormatName": {"Value": text_format}}
    if attr.type in ("Integer", "BigInt"):
        bounds = (-9223372036854775808, 9223372036854775807) if attr.type == "BigInt" else (-2147483648, 2147483647)
        return {"Format": "None", "MinValue": int(attr.min_value if attr.min_value is not None else bounds[0]),
                "MaxValue": int(attr.max_value if attr.max_value is not None else bounds[1])}
    if attr.type in ("Money", "Decimal", "Double"):
        return {"Precision": 2, "PrecisionSource": 2, "MinValue": attr.min_value, "MaxValue": attr.max_value,
                "ImeMode": "Auto", "IsBaseCurrency": False}
    if attr.type == "DateTime":
        behavior = "DateOnly" if attr.date_only else "UserLocal"
        return {"Format": "DateOnly" if attr.date_only else "DateAndTime", "DateTimeBehavior": {"Value": behavior},
                "CanChangeDateTimeBehavior": _managed(attr.custom, "canchangedatetimebehavior"),
                "MinSupportedValue": "1753-01-01T00:00:00Z", "MaxSupportedValue": "9999-12-30T23:59:59Z"}
    if attr.is_lookup:
        return {"Targets": list(attr.targets), "Format": "None"}
    if attr.type in CHOICE_TYPES or attr.is_multiselect:
        default = attr.option_set.options[0].value if attr.option_set and attr.type == "Picklist" else None
        return {"DefaultFormValue": default if default is not None else -1}
    if attr.type == "Boolean":
        return {"DefaultValue": False}
    return {}


def option_set_definition(option_set: OptionSet, *, typed: bool = False) -> dict[str, Any]:
    options = []
    for option in option_set.options:
        item: dict[str, Any] = {"Value": option.value, "Color": option.color, "IsManaged": True,
                                "ExternalValue": None, "ParentValues": [], "Tag": None, "IsHidden": False,
                                "MetadataId": None, "HasChanged": None, "Label": label(option.label),
                                "Description": label(option.label)}
        if option_set.kind == "Status":
            item = {"@odata.type": f"#{CAST_PREFIX}StatusOptionMetadata", **item, "State": option.state,
                    "TransitionData": None}
        elif option_set.kind == "State":
            item = {"@odata.type": f"#{CAST_PREFIX}StateOptionMetadata", **item, "InvariantName": option.label,
                    "DefaultStatus": None}
        options.append(item)
    body = {"MetadataId": metadata_id("optionset", option_set.name), "Name": option_set.name,
            "IsGlobal": option_set.is_global, "OptionSetType": option_set.kind, "IsCustomOptionSet": False,
            "IsManaged": True, "DisplayName": label(option_set.name), "Description": label(option_set.name),
            "Options": options}
    return {"@odata.type": f"#{CAST_PREFIX}OptionSetMetadata", **body} if typed else body


def _boolean_option_set(attr: Attribute) -> dict[str, Any]:
    return {"MetadataId": metadata_id("optionset", "boolean", attr.name), "Name": f"{attr.name}_bool",
            "IsGlobal": False, "OptionSetType": "Boolean",
            "TrueOption": {"Value": 1, "Label": label("Yes"), "Color": None},
            "FalseOption": {"Value": 0, "Label": label("No"), "Color": None}}


def key_definition(entity: Entity, index: int) -> dict[str, Any]:
    key = entity.keys[index]
    return {"MetadataId": metadata_id("key", entity.name, key.name), "LogicalName": key.name,
            "SchemaName": key.name, "EntityLogicalName": entity.name, "KeyAttributes": list(key.attributes),
            "DisplayName": label(key.label), "EntityKeyIndexStatus": "Active", "IsManaged": False,
            "IsCustomizable": _managed(True, "iscustomizable")}


def _relationships(entity: Entity, many_to_one: bool) -> list[dict[str, Any]]:
    out = []
    for referencing in ENTITIES.values():
        for attr in referencing.attributes.values():
            if not attr.is_lookup:
                continue
            for target in attr.targets:
                if (referencing is entity) if many_to_one else (target == entity.name):
                    name = f"{referencing.name}_{attr.name}_{target}"
                    nav = attr.name if len(attr.targets) == 1 else f"{attr.name}_{target}"
                    out.append({"MetadataId": metadata_id("relationship", name), "SchemaName": name,
                                "RelationshipType": "OneToManyRelationship", "ReferencedEntity": target,
                                "ReferencedAttribute": ENTITIES[target].primary_id,
                                "ReferencingEntity": referencing.name, "ReferencingAttribute": attr.name,
                                "ReferencingEntityNavigationPropertyName": nav,
                                "ReferencedEntityNavigationPropertyName": name, "IsCustomRelationship": False})
    return out


# ---------------------------------------------------------------- request handling

def entity_definitions(call: Call, rest: list[str]) -> Response:
    """/EntityDefinitions[(<key>)[/Attributes[(<key>)][/<cast>] | /Keys[(<key>)] | /<relationships>]]."""
    if not rest:
        items = [entity_definition(e, call.sandbox.tracks_changes(e)) for e in ENTITIES.values()]
        items = [_with_expansions(call, ENTITIES[i["LogicalName"]], i) for i in _filtered(call, items)]
        return _collection(call, "EntityDefinitions", items)
    entity = _entity_from_key(rest[0])
    if len(rest) == 1:
        item = _with_expansions(call, entity, entity_definition(entity, call.sandbox.tracks_changes(entity)))
        return _single(call, f"EntityDefinitions({_selected(call)})", item)
    navigation, key = _segment(rest[1])
    if navigation == "Attributes":
        return _attributes(call, entity, key, rest[2:])
    if navigation == "Keys":
        keys = [key_definition(entity, i) for i in range(len(entity.keys))]
        if key is not None:
            match = [k for k in keys if _key_matches(k, key, "LogicalName")]
            if not match:
                raise _missing("key", key)
            return _single(call, "EntityDefinitions/Keys", match[0])
        return _collection(call, f"EntityDefinitions('{entity.name}')/Keys", _filtered(call, keys))
    if navigation in ("ManyToOneRelationships", "OneToManyRelationships"):
        items = _relationships(entity, navigation == "ManyToOneRelationships")
        return _collection(call, f"EntityDefinitions('{entity.name}')/{navigation}", _filtered(call, items))
    if navigation == "ManyToManyRelationships":
        return _collection(call, f"EntityDefinitions('{entity.name}')/{navigation}", [])
    raise bad_request(f"Resource not found for the segment '{rest[1]}'.", INVALID_PROPERTY)


def _attributes(call: Call, entity: Entity, key: str | None, rest: list[str]) -> Response:
    items = [attribute_definition(entity, a, i) for i, a in enumerate(entity.attributes.values(), start=1)]
    cast = _cast(rest[0]) if rest else None
    if key is not None:
        items = [i for i in items if _key_matches(i, key, "LogicalName")]
        if not items:
            raise _missing("attribute", key)
    if cast is not None:
        items = [i for i in items if i["@odata.type"] == f"#{CAST_PREFIX}{cast}"]
        if key is not None and not items:
            raise bad_request(f"The attribute {key} is not a {cast}.", INVALID_PROPERTY)
    items = [_attribute_expansions(call, entity, item, cast) for item in items]
    context = f"EntityDefinitions('{entity.name}')/Attributes" + (f"/{CAST_PREFIX}{cast}" if cast else "")
    if key is not None:
        return _single(call, context, items[0])
    return _collection(call, context, _filtered(call, items))


def _attribute_expansions(call: Call, entity: Entity, item: dict[str, Any], cast: str | None) -> dict[str, Any]:
    expansions = parse_expand(call.query["$expand"]) if "$expand" in call.query else []
    if expansions and cast is None:
        raise bad_request(f"Could not find a property named '{expansions[0][0]}' on type "
                          f"'{CAST_PREFIX}AttributeMetadata'. Cast the Attributes collection to a typed "
                          "attribute metadata type to expand it.", INVALID_PROPERTY)
    attr = entity.attributes[item["LogicalName"]]
    for name, options in expansions:
        if name not in ("OptionSet", "GlobalOptionSet"):
            raise bad_request(f"Could not find a property named '{name}' on type '{CAST_PREFIX}{cast}'.",
                              INVALID_PROPERTY)
        if attr.type == "Boolean":
            value: dict[str, Any] | None = _boolean_option_set(attr) if name == "OptionSet" else None
        elif attr.option_set is None or (name == "GlobalOptionSet" and not attr.option_set.is_global):
            value = None
        else:
            value = option_set_definition(attr.option_set)
        item[name] = select_keys(value, parse_select(options.get("$select")), ("MetadataId",)) if value else value
    return item


def _with_expansions(call: Call, entity: Entity, item: dict[str, Any]) -> dict[str, Any]:
    for name, options in (parse_expand(call.query["$expand"]) if "$expand" in call.query else []):
        if name == "Attributes":
            values = [attribute_definition(entity, a, i) for i, a in enumerate(entity.attributes.values(), 1)]
        elif name == "Keys":
            values = [key_definition(entity, i) for i in range(len(entity.keys))]
        elif name in ("ManyToOneRelationships", "OneToManyRelationships"):
            values = _relationships(entity, name == "ManyToOneRelationships")
        elif name == "ManyToManyRelationships":
            values = []
        else:
            raise bad_request(f"Could not find a property named '{name}' on type '{CAST_PREFIX}EntityMetadata'.",
                              INVALID_PROPERTY)
        if "$filter" in options:
            tree = parse_filter(options["$filter"])
            values = [v for v in values if matches(tree, v)]
        select = parse_select(options.get("$select"))
        item[name] = [select_keys(v, select, ("MetadataId",)) for v in values]
    return item


def global_option_sets(call: Call, rest: list[str]) -> Response:
    items = [option_set_definition(o, typed=True) for o in GLOBAL_OPTION_SETS.values()]
    if rest:
        key = _segment(rest[0])[1] or ""
        match = [i for i in items if _key_matches(i, key, "Name")]
        if not match:
            raise _missing("option set", key)
        return _single(call, "GlobalOptionSetDefinitions", match[0])
    return _collection(call, "GlobalOptionSetDefinitions", _filtered(call, items))


# ---------------------------------------------------------------- helpers

def _filtered(call: Call, items: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    if "$filter" not in call.query:
        return list(items)
    tree = parse_filter(call.query["$filter"])
    return [i for i in items if matches(tree, i)]


def _selected(call: Call) -> str:
    return call.query.get("$select", "")


def _collection(call: Call, context: str, items: list[dict[str, Any]]) -> Response:
    select = parse_select(call.query.get("$select"))
    _check_select(select, items)
    columns = f"({call.query['$select']})" if select else ""
    return respond(200, {"@odata.context": f"{call.service_root}/$metadata#{context}{columns}",
                         "value": [_pick(i, select, _expanded(call)) for i in items]})


def _single(call: Call, context: str, item: dict[str, Any]) -> Response:
    select = parse_select(call.query.get("$select"))
    _check_select(select, [item])
    body = {"@odata.context": f"{call.service_root}/$metadata#{context}/$entity",
            **_pick(item, select, _expanded(call))}
    return respond(200, body)


def _pick(item: dict[str, Any], select: list[str] | None, expanded: list[str]) -> dict[str, Any]:
    return select_keys(item, select, ("MetadataId", *expanded))


def _expanded(call: Call) -> list[str]:
    return [name for name, _ in parse_expand(call.query["$expand"])] if "$expand" in call.query else []


def _check_select(select: list[str] | None, items: list[dict[str, Any]]) -> None:
    if not select or not items:
        return
    known = set().union(*(i.keys() for i in items))
    for name in select:
        if name not in known:
            kind = str(items[0].get("@odata.type", "#Microsoft.Dynamics.CRM.EntityMetadata")).lstrip("#")
            raise bad_request(f"Could not find a property named '{name}' on type '{kind}'.", INVALID_PROPERTY)


def _segment(text: str) -> tuple[str, str | None]:
    name, paren, rest = text.partition("(")
    return name, (rest[:-1] if paren and rest.endswith(")") else None)


def _cast(segment: str) -> str:
    if not segment.startswith(CAST_PREFIX) or segment[len(CAST_PREFIX):] not in \
            {t for t, _ in ATTRIBUTE_TYPES.values()}:
        raise bad_request(f"Resource not found for the segment '{segment}'.", INVALID_PROPERTY)
    return segment[len(CAST_PREFIX):]


def _key_matches(item: dict[str, Any], key: str, name_property: str) -> bool:
    """A key segment `LogicalName='x'` / `Name='x'` or a bare MetadataId GUID."""
    parts = dict(split_pair(p) for p in split_top_level(key))
    if name_property in parts:
        return item.get(name_property) == parts[name_property]
    try:
        return item.get("MetadataId") == str(uuid.UUID(key.strip("{}")))
    except ValueError:
        return False


def split_pair(text: str) -> tuple[str, str]:
    name, _, value = text.partition("=")
    return name.strip(), value.strip().strip("'")


def _entity_from_key(segment: str) -> Entity:
    _, key = _segment(segment)
    if key is None:
        raise bad_request(f"Resource not found for the segment '{segment}'.", INVALID_PROPERTY)
    for entity in ENTITIES.values():
        if _key_matches(entity_definition(entity), key, "LogicalName"):
            return entity
    raise _missing("entity", key)


def _missing(kind: str, key: str) -> DataverseError:
    return DataverseError(404, RECORD_NOT_FOUND, f"Could not find {kind} with {key}.")


RESOLVERS: dict[str, Callable[[Call, list[str]], Response]] = {
    "EntityDefinitions": entity_definitions,
    "GlobalOptionSetDefinitions": global_option_sets,
}


# ---------------------------------------------------------------- $metadata (CSDL)

_EDM = {"Uniqueidentifier": "Edm.Guid", "String": "Edm.String", "Memo": "Edm.String", "Integer": "Edm.Int32",
        "BigInt": "Edm.Int64", "Money": "Edm.Decimal", "Double": "Edm.Double", "Decimal": "Edm.Decimal",
        "Boolean": "Edm.Boolean", "Picklist": "Edm.Int32", "State": "Edm.Int32", "Status": "Edm.Int32",
        "Virtual": "Edm.String"}


def csdl(call: Call) -> str:
    """The service's CSDL document: entity types (properties, keys, single-valued navigation properties), entity
    sets and the bound bulk actions. Enough for generic OData tooling; Dataverse's own document is far larger."""
    types, sets = [], []
    for entity in ENTITIES.values():
        props, navs = [], []
        for attr in entity.attributes.values():
            if attr.is_lookup:
                props.append(f'<Property Name="_{attr.name}_value" Type="Edm.Guid" />')
                for target in attr.targets:
                    nav = attr.name if len(attr.targets) == 1 else f"{attr.name}_{target}"
                    navs.append(f'<NavigationProperty Name="{nav}" Type="mscrm.{target}" />')
            else:
                edm = "Edm.Date" if attr.date_only else _EDM.get(attr.type, "Edm.DateTimeOffset")
                props.append(f'<Property Name="{attr.name}" Type="{edm}" />')
        types.append(f'<EntityType Name="{entity.name}"><Key><PropertyRef Name="{entity.primary_id}" /></Key>'
                     f'{"".join(props)}{"".join(navs)}</EntityType>')
        sets.append(f'<EntitySet Name="{entity.entity_set}" EntityType="mscrm.{entity.name}" />')
    actions = "".join(f'<Action Name="{name}" IsBound="true"><Parameter Name="entityset" '
                      f'Type="Collection(mscrm.crmbaseentity)" Nullable="false" /><Parameter Name="Targets" '
                      f'Type="Collection(mscrm.crmbaseentity)" Nullable="false" /></Action>'
                      for name in ("CreateMultiple", "UpdateMultiple", "UpsertMultiple"))
    return ('<?xml version="1.0" encoding="utf-8"?><edmx:Edmx Version="4.0" '
            'xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx"><edmx:DataServices>'
            '<Schema Namespace="Microsoft.Dynamics.CRM" Alias="mscrm" xmlns="http://docs.oasis-open.org/odata/ns/edm">'
            '<EntityType Name="crmbaseentity" Abstract="true" />'
            f'{"".join(types)}{actions}<Function Name="WhoAmI"><ReturnType Type="mscrm.WhoAmIResponse" '
            'Nullable="false" /></Function><EntityContainer Name="System">'
            f'{"".join(sets)}<FunctionImport Name="WhoAmI" Function="mscrm.WhoAmI" /></EntityContainer>'
            '</Schema></edmx:DataServices></edmx:Edmx>')
