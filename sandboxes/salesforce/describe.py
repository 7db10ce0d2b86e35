"""describeGlobal and sObject describe payloads, built from the model the way Salesforce reports them.

Replication clients decide what to sync from these documents (which objects are queryable, which fields are
createable, which types they can map), so every property they read is present with Salesforce's name and a
truthful value. Payloads are built once per (object, API version) and cached.
"""
from __future__ import annotations

from typing import Any

from .model import FieldDef, Model, ObjectDef
from .objects import child_references, extra

_SOAP_TYPES = {"id": "tns:ID", "reference": "tns:ID", "boolean": "xsd:boolean", "int": "xsd:int",
               "double": "xsd:double", "currency": "xsd:double", "percent": "xsd:double", "date": "xsd:date",
               "datetime": "xsd:dateTime", "address": "urn:address"}
_NOT_SORTABLE = {"multipicklist", "address"}
_NOT_GROUPABLE = {"double", "currency", "percent", "datetime", "multipicklist", "address"}
_NOT_FILTERABLE = {"address"}
_MASTER_RECORD_TYPE = "012000000000000AAA"
_CACHE: dict[tuple[int, str, str], dict[str, Any]] = {}


def object_urls(obj: ObjectDef, version: str) -> dict[str, str]:
    base = f"/services/data/v{version}/sobjects/{obj.name}"
    return {"sobject": base, "describe": f"{base}/describe", "rowTemplate": f"{base}/{{ID}}",
            "defaultValues": f"{base}/defaultValues?recordTypeId&fields"}


def object_summary(obj: ObjectDef, version: str) -> dict[str, Any]:
    """The per-object entry of describeGlobal (and `objectDescribe` of `GET sobjects/X`)."""
    return {
        "activateable": False, "associateEntityType": None, "associateParentEntity": None,
        "createable": obj.createable, "custom": obj.name.endswith("__c"), "customSetting": False,
        "deepCloneable": False, "deletable": obj.deletable, "deprecatedAndHidden": False, "feedEnabled": False,
        "hasSubtypes": False, "isInterface": False, "isSubtype": False, "keyPrefix": obj.key_prefix,
        "label": obj.label, "labelPlural": obj.label_plural, "layoutable": True, "mergeable": obj.name in
        ("Account", "Contact", "Lead"), "mruEnabled": True, "name": obj.name, "queryable": True,
        "replicateable": True, "retrieveable": True, "searchable": obj.name != "Organization",
        "triggerable": True, "undeletable": obj.deletable, "updateable": obj.updateable,
        "urls": object_urls(obj, version),
    }


def describe_global(model: Model, version: str) -> dict[str, Any]:
    return {"encoding": "UTF-8", "maxBatchSize": 200,
            "sobjects": [object_summary(o, version) for o in model.objects.values()]}


def describe_object(model: Model, obj: ObjectDef, version: str) -> dict[str, Any]:
    key = (id(model), obj.name, version)
    if key not in _CACHE:
        _CACHE[key] = _build_describe(model, obj, version)
    return _CACHE[key]


def _build_describe(model: Model, obj: ObjectDef, version: str) -> dict[str, Any]:
    compound_of = {c: f.name for f in obj.fields.values() for c in f.compound_of}
    return {
        **object_summary(obj, version),
        "actionOverrides": [], "childRelationships": child_relationships(model, obj),
        "compactLayoutable": True, "defaultImplementation": None, "extendedBy": None, "extendsInterfaces": None,
        "fields": [describe_field(obj, f, compound_of.get(f.name)) for f in obj.fields.values()],
        "implementedBy": None, "implementsInterfaces": None, "listviewable": None, "lookupLayoutable": None,
        "namedLayoutInfos": [], "networkScopeFieldName": None,
        "recordTypeInfos": [{"active": True, "available": True, "defaultRecordTypeMapping": True,
                             "developerName": "Master", "master": True, "name": "Master",
                             "recordTypeId": _MASTER_RECORD_TYPE,
                             "urls": {"layout": f"/services/data/v{version}/sobjects/{obj.name}/describe/layouts/"
                                                f"{_MASTER_RECORD_TYPE}"}}],
        "searchLayoutable": True, "sobjectDescribeOption": "FULL",
        "supportedScopes": [{"label": f"All {obj.label_plural.lower()}", "name": "everything"}],
    }


def child_relationships(model: Model, parent: ObjectDef) -> list[dict[str, Any]]:
    return [{"cascadeDelete": ex.cascade_delete, "childSObject": child.name, "deprecatedAndHidden": False,
             "field": f.name, "junctionIdListNames": [], "junctionReferenceTo": [],
             "relationshipName": ex.child_relationship, "restrictedDelete": False}
            for child, f, ex in child_references(model, parent.name)]


def describe_field(obj: ObjectDef, f: FieldDef, compound_field_name: str | None) -> dict[str, Any]:
    """One entry of `fields[]`, with every property Salesforce sends."""
    ex = extra(obj.name, f.name)
    text_like = f.type in ("string", "picklist", "multipicklist", "textarea", "phone", "url", "email", "combobox",
                           "id", "reference", "encryptedstring")
    long_text = f.type == "textarea" and f.length > 255
    defaulted = f.default_value is not None or f.type == "boolean" or f.name in (
        "OwnerId", "CreatedDate", "CreatedById", "LastModifiedDate", "LastModifiedById", "SystemModstamp")
    return {
        "aggregatable": not long_text and f.type not in ("address", "boolean", "multipicklist"),
        "aiPredictionField": False, "autoNumber": False, "byteLength": f.length * 3 if text_like else 0,
        "calculated": f.calculated, "calculatedFormula": ex.formula_text, "cascadeDelete": False,
        "caseSensitive": False, "compoundFieldName": compound_field_name, "controllerName": None,
        "createable": f.createable, "custom": f.name.endswith("__c"), "defaultValue": f.default_value,
        "defaultValueFormula": None, "defaultedOnCreate": defaulted, "dependentPicklist": False,
        "deprecatedAndHidden": False, "digits": ex.digits, "displayLocationInDecimal": False, "encrypted": False,
        "externalId": f.external_id, "extraTypeInfo": "plaintextarea" if f.type == "textarea" else None,
        "filterable": not long_text and f.type not in _NOT_FILTERABLE, "filteredLookupInfo": None,
        "formulaTreatNullNumberAsZero": False, "groupable": not long_text and f.type not in _NOT_GROUPABLE,
        "highScaleNumber": False, "htmlFormatted": False, "idLookup": f.id_lookup, "inlineHelpText": None,
        "label": f.label, "length": f.length if text_like or f.type == "textarea" else 0, "mask": None,
        "maskType": None, "name": f.name, "nameField": f.name == "Name", "namePointing": False,
        "nillable": f.nillable and f.type != "boolean", "permissionable": f.nillable and not f.calculated and
        f.createable, "picklistValues": [
            {"active": True, "defaultValue": v == f.default_value, "label": v, "validFor": None, "value": v}
            for v in f.picklist_values],
        "polymorphicForeignKey": len(f.reference_to) > 1, "precision": ex.precision, "queryByDistance": False,
        "referenceTargetField": None, "referenceTo": list(f.reference_to), "relationshipName": f.relationship_name,
        "relationshipOrder": None, "restrictedDelete": False, "restrictedPicklist": f.restricted_picklist,
        "scale": ex.scale, "searchPrefilterable": f.type == "reference",
        "soapType": _SOAP_TYPES.get(f.type, "xsd:string"), "sortable": not long_text and f.type not in _NOT_SORTABLE,
        "type": f.type, "unique": f.unique, "updateable": f.updateable, "writeRequiresMasterRead": False,
    }
