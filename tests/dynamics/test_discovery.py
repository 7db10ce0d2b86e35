"""Dynamics discovery against a real sandbox: tables, typed columns, local and global choices as enumerations,
rows in mirror form; and the type table on metadata the sandbox does not have (skipped column types)."""
from __future__ import annotations

from connectors.dynamics import CONNECTOR
from connectors.dynamics.connector import DynamicsClient
from connectors.dynamics.schema import table_from_metadata
from crmsync.mirrors.schema import build_document


def test_tables_typed_fields_and_choices(dynamics: DynamicsClient) -> None:
    discovery = CONNECTOR.discovery(dynamics)
    assert (discovery.namespace, discovery.connector_label) == ("mscrm", "Microsoft CRM")
    tables = {t.name: t.label for t in discovery.list_tables()}
    assert {"account", "contact", "lead", "opportunity", "systemuser"} <= set(tables) and "audit" not in tables
    assert tables["contact"] == "Contact"

    account = discovery.describe_table("account")
    fields = {f.name: f for f in account.fields}
    assert (fields["industrycode"].crm_type, fields["industrycode"].pg_type, fields["industrycode"].kind) == \
        ("Picklist", "integer", "integer")
    assert fields["industrycode"].enumeration == "industrycode"  # global: named by the option set
    assert fields["customertypecode"].enumeration == "account_customertypecode"  # local: table_column
    assert fields["statuscode"].enumeration == "account_statuscode"
    assert (fields["revenue"].pg_type, fields["revenue"].kind) == ("numeric", "number")
    assert (fields["primarycontactid"].pg_type, fields["primarycontactid"].crm_type) == ("text", "Lookup")
    assert (fields["modifiedon"].pg_type, fields["modifiedon"].updateable) == ("timestamp with time zone", False)
    assert fields["crmsync_campaignkey"].external_id
    enums = {e.name: e for e in account.enumerations}
    assert enums["industrycode"].values[6] == {"name": "7", "label": "Consulting", "value": "7"}
    assert "global choice 'industrycode'" in enums["industrycode"].label and not enums["industrycode"].multiple
    assert enums["account_customertypecode"].label == "List of 'Relationship Type' from 'account'"

    lead = {e.name: e for e in discovery.describe_table("lead").enumerations}
    assert lead["industrycode"].values == enums["industrycode"].values  # one enumeration for both tables

    contact = discovery.describe_table("contacts")
    interests = next(f for f in contact.fields if f.name == "crmsync_interests")
    assert (interests.pg_type, interests.crm_type, interests.enumeration) == \
        ("text[]", "MultiSelectPicklistType", "contact_crmsync_interests")
    multi = next(e for e in contact.enumerations if e.name == "contact_crmsync_interests")
    assert multi.multiple and [v["label"] for v in multi.values][:2] == ["Events", "Newsletter"]
    assert next(f for f in contact.fields if f.name == "birthdate").pg_type == "date"

    document = build_document(discovery, "dyn", [account, contact])  # what the wizard stores
    assert document["name"] == "mscrm:mscrmSchemadyn" and document["elements"][1]["sqlTable"] == \
        "mscrm_dyn.contact"


def test_rows_in_mirror_form(dynamics: DynamicsClient) -> None:
    pages = list(CONNECTOR.discovery(dynamics).rows("contact", ["contactid", "crmsync_interests", "parentcustomerid",
                                                                "birthdate"]))
    rows = [r for page in pages for r in page]
    assert len(rows) >= 1200 and set(rows[0]) == {"contactid", "crmsync_interests", "parentcustomerid", "birthdate"}
    chosen = [r["crmsync_interests"] for r in rows if r["crmsync_interests"]]
    assert chosen and all(isinstance(v, list) and all(x.isdigit() for x in v) for v in chosen)
    assert all(len(r["birthdate"]) == 10 for r in rows if r["birthdate"])


def test_type_table_skips_what_is_not_mirrored() -> None:
    def attribute(name: str, kind: str, **extra: object) -> dict[str, object]:
        return {"LogicalName": name, "AttributeType": kind, "DisplayName": {}, **extra}

    table = table_from_metadata({
        "LogicalName": "activity", "EntitySetName": "activities", "PrimaryIdAttribute": "activityid",
        "ChangeTrackingEnabled": False, "IsAuditEnabled": {"Value": False}, "Keys": [],
        "ManyToOneRelationships": [{"ReferencingAttribute": "regardingobjectid", "ReferencedEntity": "account",
                                    "ReferencingEntityNavigationPropertyName": "regardingobjectid_account_task"}],
        "Attributes": [
            attribute("activityid", "Uniqueidentifier"), attribute("to", "PartyList"),
            attribute("regardingobjectid", "Lookup", Targets=["account"]),
            attribute("regardingobjectidname", "String", AttributeOf="regardingobjectid"),
            attribute("image", "Virtual", AttributeTypeName={"Value": "ImageType"}),
            attribute("scheduledend", "DateTime", DateTimeBehavior={"Value": "TimeZoneIndependent"}),
            attribute("duedate", "DateTime", DateTimeBehavior={"Value": "DateOnly"}),
            attribute("actualdurationminutes", "Integer"), attribute("cost", "Decimal", Precision=4)]}, [])
    assert [c.name for c in table.mirrored()] == ["activityid", "regardingobjectid", "scheduledend", "duedate",
                                                  "actualdurationminutes", "cost"]
    assert table.column("regardingobjectid").navigation == {"account": "regardingobjectid_account_task"}
    assert (table.column("duedate").kind, table.column("scheduledend").kind) == ("date", "datetime")
    assert table.column("cost").precision == 4 and not table.change_tracking and not table.audit_enabled
