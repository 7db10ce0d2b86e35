"""The Dynamics sandbox's tables: entities, their columns (attributes), choices (option sets) and alternate keys.

This module is the contract between storage (store.py), queries (odata.py), record handlers (records.py) and the
metadata endpoints (metadata.py). Names and types follow Dataverse's own tables
(learn.microsoft.com/power-apps/developer/data-platform/reference/entities/contact, account, opportunity, lead,
systemuser) trimmed to what a marketing sync touches, plus the custom column `crmsync_campaignkey` and the
alternate key `crmsync_campaignkey` on contact, account and opportunity.

Storage: one SQLite table per entity, named like the entity; one column per stored attribute, named like its
logical name. Encodings: GUIDs lower-case text; String/Memo text; Integer/BigInt/Picklist/State/Status/Boolean
integers; Money/Double/Decimal reals; DateTime text `YYYY-MM-DDTHH:MM:SSZ` (UTC) or `YYYY-MM-DD` for DateOnly;
multi-select choices text `"1,3"` (sorted). Polymorphic lookups (Owner, Customer) keep the target table in a
second column `<name>__type`.

Deliberate choice (docs/dynamics.md): `industrycode` uses a *global* choice shared by account and lead, so both
kinds of option set (global and local) exist in the sandbox.

The audit log (`audit`, entity set `audits`, read-only) holds one row per deletion of an audited table (operation
3 Delete, objecttypecode, objectid, userid, createdon): where Dataverse keeps deletions by date
(learn.microsoft.com/power-apps/developer/data-platform/auditing/retrieve-audit-data). Creates and updates are not
audited by the sandbox.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field

# AttributeType -> (metadata @odata.type, AttributeTypeName)
ATTRIBUTE_TYPES = {
    "Uniqueidentifier": ("UniqueIdentifierAttributeMetadata", "UniqueidentifierType"),
    "String": ("StringAttributeMetadata", "StringType"),
    "Memo": ("MemoAttributeMetadata", "MemoType"),
    "Integer": ("IntegerAttributeMetadata", "IntegerType"),
    "BigInt": ("BigIntAttributeMetadata", "BigIntType"),
    "Money": ("MoneyAttributeMetadata", "MoneyType"),
    "Double": ("DoubleAttributeMetadata", "DoubleType"),
    "Decimal": ("DecimalAttributeMetadata", "DecimalType"),
    "Boolean": ("BooleanAttributeMetadata", "BooleanType"),
    "DateTime": ("DateTimeAttributeMetadata", "DateTimeType"),
    "Picklist": ("PicklistAttributeMetadata", "PicklistType"),
    "State": ("StateAttributeMetadata", "StateType"),
    "Status": ("StatusAttributeMetadata", "StatusType"),
    "Lookup": ("LookupAttributeMetadata", "LookupType"),
    "Owner": ("LookupAttributeMetadata", "OwnerType"),
    "Customer": ("LookupAttributeMetadata", "CustomerType"),
    "Virtual": ("MultiSelectPicklistAttributeMetadata", "MultiSelectPicklistType"),  # multi-select choices
}
LOOKUP_TYPES = ("Lookup", "Owner", "Customer")
CHOICE_TYPES = ("Picklist", "State", "Status")
INTEGER_TYPES = ("Integer", "BigInt", *CHOICE_TYPES)
NUMBER_TYPES = ("Money", "Double", "Decimal")
_NAMESPACE = uuid.UUID("0b6c3f5e-5c7a-4f0e-8a52-3e1d2c9b7a10")


def metadata_id(*parts: str) -> str:
    """A stable MetadataId: the same table/column/choice gets the same GUID in every sandbox."""
    return str(uuid.uuid5(_NAMESPACE, "/".join(parts)))


@dataclass(frozen=True)
class Option:
    value: int
    label: str
    state: int | None = None  # for Status options: the statecode they belong to
    color: str | None = None


@dataclass(frozen=True)
class OptionSet:
    name: str
    options: tuple[Option, ...]
    is_global: bool = False
    kind: str = "Picklist"  # Picklist | State | Status

    def label(self, value: int) -> str | None:
        return next((o.label for o in self.options if o.value == value), None)

    def values(self) -> list[int]:
        return [o.value for o in self.options]


@dataclass(frozen=True)
class Attribute:
    name: str  # logical name (lower case)
    type: str  # AttributeType
    label: str
    max_length: int = 0
    required: str = "None"  # None | ApplicationRequired | SystemRequired
    create: bool = True
    update: bool = True
    targets: tuple[str, ...] = ()
    option_set: OptionSet | None = None
    date_only: bool = False  # DateTimeBehavior DateOnly (else UserLocal)
    custom: bool = False
    min_value: float | None = None
    max_value: float | None = None

    @property
    def schema_name(self) -> str:
        return self.name if self.custom else "".join(p.capitalize() for p in self.name.split("_"))

    @property
    def is_lookup(self) -> bool:
        return self.type in LOOKUP_TYPES

    @property
    def is_multiselect(self) -> bool:
        return self.type == "Virtual"

    @property
    def value_property(self) -> str:
        """How the column appears in records: `_x_value` for lookups, the logical name otherwise."""
        return f"_{self.name}_value" if self.is_lookup else self.name

    @property
    def polymorphic(self) -> bool:
        """Points at records of several tables (Owner, Customer, or a lookup such as the audit's objectid)."""
        return self.type in ("Owner", "Customer") or len(self.targets) > 1


@dataclass(frozen=True)
class AlternateKey:
    name: str
    attributes: tuple[str, ...]
    label: str


@dataclass
class Entity:
    name: str  # logical name
    entity_set: str
    label: str
    label_plural: str
    primary_id: str
    primary_name: str
    object_type_code: int
    attributes: dict[str, Attribute] = field(default_factory=dict)
    keys: tuple[AlternateKey, ...] = ()
    change_tracking: bool = True
    ownership: str = "UserOwned"
    audited: bool = True  # IsAuditEnabled: deletions are written to the audit log
    read_only: bool = False  # the Web API only reads it (the audit log)
    advanced_find: bool = True  # IsValidForAdvancedFind
    derived: dict[str, tuple[str, ...]] = field(default_factory=dict)  # e.g. fullname <- firstname, lastname

    def attribute(self, name: str) -> Attribute | None:
        return self.attributes.get(name)

    def by_value_property(self, prop: str) -> Attribute | None:
        """The attribute behind a record property name (`firstname`, `_parentcustomerid_value`)."""
        if prop.startswith("_") and prop.endswith("_value"):
            attr = self.attributes.get(prop[1:-6])
            return attr if attr is not None and attr.is_lookup else None
        attr = self.attributes.get(prop)
        return attr if attr is not None and not attr.is_lookup else None

    def navigation(self, name: str) -> tuple[Attribute, str] | None:
        """(lookup attribute, target table) for a single-valued navigation property name.

        Single-target lookups navigate by their own name (`primarycontactid`); polymorphic ones by
        `<name>_<target>` (`parentcustomerid_account`), and ownerid also as `owninguser`.
        """
        attr = self.attributes.get(name)
        if attr is not None and attr.is_lookup and len(attr.targets) == 1:
            return attr, attr.targets[0]
        if name == "owninguser" and "ownerid" in self.attributes:
            return self.attributes["ownerid"], "systemuser"
        base, _, target = name.rpartition("_")
        attr = self.attributes.get(base)
        if attr is not None and attr.is_lookup and target in attr.targets:
            return attr, target
        return None

    def stored(self) -> list[Attribute]:
        return list(self.attributes.values())


# ---------------------------------------------------------------- choices

def _options(*labels: str, start: int = 1) -> tuple[Option, ...]:
    return tuple(Option(start + i, label) for i, label in enumerate(labels))


INDUSTRY = OptionSet("industrycode", _options(
    "Accounting", "Agriculture and Non-petrol Natural Resource Extraction", "Broadcasting Printing and Publishing",
    "Brokers", "Building Supply Retail", "Business Services", "Consulting", "Consumer Services",
    "Design, Direction and Creative Management", "Distributors, Dispatchers and Processors",
    "Doctor's Offices and Clinics",
    "Durable Manufacturing", "Eating and Drinking Places", "Entertainment Retail", "Equipment Rental and Leasing",
    "Financial", "Food and Tobacco Processing", "Inbound Capital Intensive Processing", "Inbound Repair and Services",
    "Insurance", "Legal Services", "Non-Durable Merchandise Retail", "Outbound Consumer Service",
    "Petrochemical Extraction and Distribution", "Service Retail", "SIG Affiliations", "Social Services",
    "Special Outbound Trade Contractors", "Specialty Realty", "Transportation", "Utility Creation and Distribution",
    "Vehicle Retail", "Wholesale"), is_global=True)
PURCHASE_TIMEFRAME = OptionSet("purchasetimeframe", _options(
    "Immediate", "This Quarter", "Next Quarter", "This Year", "Unknown", start=0), is_global=True)


def _local(entity: str, attribute: str, *labels: str, start: int = 1) -> OptionSet:
    return OptionSet(f"{entity}_{attribute}", _options(*labels, start=start))


def _state(entity: str, *labels: str) -> OptionSet:
    return OptionSet(f"{entity}_statecode", _options(*labels, start=0), kind="State")


def _status(entity: str, *options: tuple[int, str, int]) -> OptionSet:
    return OptionSet(f"{entity}_statuscode", tuple(Option(v, label, state) for v, label, state in options),
                     kind="Status")


GLOBAL_OPTION_SETS = {o.name: o for o in (INDUSTRY, PURCHASE_TIMEFRAME)}


# ---------------------------------------------------------------- columns shared by every table

def _common(entity: str, state: OptionSet, status: OptionSet) -> list[Attribute]:
    return [
        Attribute("statecode", "State", "Status", required="SystemRequired", option_set=state),
        Attribute("statuscode", "Status", "Status Reason", option_set=status),
        Attribute("createdon", "DateTime", "Created On", create=False, update=False),
        Attribute("modifiedon", "DateTime", "Modified On", create=False, update=False),
        Attribute("overriddencreatedon", "DateTime", "Record Created On", update=False),
        Attribute("createdby", "Lookup", "Created By", create=False, update=False, targets=("systemuser",)),
        Attribute("modifiedby", "Lookup", "Modified By", create=False, update=False, targets=("systemuser",)),
        Attribute("ownerid", "Owner", "Owner", required="SystemRequired", targets=("systemuser",)),
        Attribute("versionnumber", "BigInt", "Version Number", create=False, update=False),
    ]


def _address(label: str = "Address 1") -> list[Attribute]:
    return [
        Attribute("address1_line1", "String", f"{label}: Street 1", 250),
        Attribute("address1_city", "String", f"{label}: City", 80),
        Attribute("address1_stateorprovince", "String", f"{label}: State/Province", 50),
        Attribute("address1_postalcode", "String", f"{label}: ZIP/Postal Code", 20),
        Attribute("address1_country", "String", f"{label}: Country/Region", 80),
    ]


def _campaign_key() -> Attribute:
    return Attribute("crmsync_campaignkey", "String", "Campaign Key", 100, custom=True)


CAMPAIGN_KEY = AlternateKey("crmsync_campaignkey", ("crmsync_campaignkey",), "Campaign Key")


def _entity(entity: Entity, attributes: list[Attribute]) -> Entity:
    entity.attributes = {a.name: a for a in attributes}
    return entity


CONTACT = _entity(Entity("contact", "contacts", "Contact", "Contacts", "contactid", "fullname", 2,
                         keys=(CAMPAIGN_KEY,), derived={"fullname": ("firstname", "lastname")}), [
    Attribute("contactid", "Uniqueidentifier", "Contact", update=False),
    Attribute("fullname", "String", "Full Name", 160, create=False, update=False),
    Attribute("firstname", "String", "First Name", 50),
    Attribute("lastname", "String", "Last Name", 50, required="ApplicationRequired"),
    Attribute("emailaddress1", "String", "Email", 100),
    Attribute("telephone1", "String", "Business Phone", 50),
    Attribute("mobilephone", "String", "Mobile Phone", 50),
    Attribute("jobtitle", "String", "Job Title", 100),
    Attribute("description", "Memo", "Description", 2000),
    Attribute("birthdate", "DateTime", "Birthday", date_only=True),
    Attribute("lastusedincampaign", "DateTime", "Last Date Included in Campaign"),
    *_address(),
    Attribute("gendercode", "Picklist", "Gender", option_set=_local("contact", "gendercode", "Male", "Female")),
    Attribute("preferredcontactmethodcode", "Picklist", "Preferred Method of Contact",
              option_set=_local("contact", "preferredcontactmethodcode", "Any", "Email", "Phone", "Fax", "Mail")),
    Attribute("crmsync_interests", "Virtual", "Interests", custom=True, option_set=_local(
        "contact", "crmsync_interests", "Events", "Newsletter", "Product updates", "Webinars", "Offers")),
    Attribute("donotemail", "Boolean", "Do not allow Emails"),
    Attribute("donotphone", "Boolean", "Do not allow Phone Calls"),
    Attribute("creditlimit", "Money", "Credit Limit", min_value=0, max_value=100_000_000_000_000),
    Attribute("numberofchildren", "Integer", "No. of Children", min_value=0, max_value=1_000_000_000),
    Attribute("parentcustomerid", "Customer", "Company Name", targets=("account", "contact")),
    _campaign_key(),
    *_common("contact", _state("contact", "Active", "Inactive"),
             _status("contact", (1, "Active", 0), (2, "Inactive", 1))),
])

ACCOUNT = _entity(Entity("account", "accounts", "Account", "Accounts", "accountid", "name", 1, keys=(CAMPAIGN_KEY,)), [
    Attribute("accountid", "Uniqueidentifier", "Account", update=False),
    Attribute("name", "String", "Account Name", 160, required="ApplicationRequired"),
    Attribute("accountnumber", "String", "Account Number", 20),
    Attribute("emailaddress1", "String", "Email", 100),
    Attribute("telephone1", "String", "Main Phone", 50),
    Attribute("websiteurl", "String", "Website", 200),
    *_address(),
    Attribute("industrycode", "Picklist", "Industry", option_set=INDUSTRY),
    Attribute("customertypecode", "Picklist", "Relationship Type", option_set=_local(
        "account", "customertypecode", "Competitor", "Consultant", "Customer", "Investor", "Partner",
        "Influencer", "Press", "Prospect", "Reseller", "Supplier", "Vendor", "Other")),
    Attribute("numberofemployees", "Integer", "Number of Employees", min_value=0, max_value=1_000_000_000),
    Attribute("revenue", "Money", "Annual Revenue", min_value=0, max_value=100_000_000_000_000),
    Attribute("primarycontactid", "Lookup", "Primary Contact", targets=("contact",)),
    Attribute("parentaccountid", "Lookup", "Parent Account", targets=("account",)),
    _campaign_key(),
    *_common("account", _state("account", "Active", "Inactive"),
             _status("account", (1, "Active", 0), (2, "Inactive", 1))),
])

OPPORTUNITY = _entity(Entity("opportunity", "opportunities", "Opportunity", "Opportunities", "opportunityid", "name",
                             3, keys=(CAMPAIGN_KEY,)), [
    Attribute("opportunityid", "Uniqueidentifier", "Opportunity", update=False),
    Attribute("name", "String", "Topic", 300, required="ApplicationRequired"),
    Attribute("estimatedvalue", "Money", "Est. Revenue", min_value=0, max_value=100_000_000_000_000),
    Attribute("estimatedclosedate", "DateTime", "Est. Close Date", date_only=True),
    Attribute("closeprobability", "Integer", "Probability", min_value=0, max_value=100),
    Attribute("stepname", "String", "Pipeline Phase", 200),
    Attribute("opportunityratingcode", "Picklist", "Rating",
              option_set=_local("opportunity", "opportunityratingcode", "Hot", "Warm", "Cold")),
    Attribute("purchasetimeframe", "Picklist", "Purchase Timeframe", option_set=PURCHASE_TIMEFRAME),
    Attribute("parentaccountid", "Lookup", "Account", targets=("account",)),
    Attribute("parentcontactid", "Lookup", "Contact", targets=("contact",)),
    _campaign_key(),
    *_common("opportunity", _state("opportunity", "Open", "Won", "Lost"),
             _status("opportunity", (1, "In Progress", 0), (2, "On Hold", 0), (3, "Won", 1), (4, "Canceled", 2),
                     (5, "Out-Sold", 2))),
])

LEAD = _entity(Entity("lead", "leads", "Lead", "Leads", "leadid", "fullname", 4,
                      derived={"fullname": ("firstname", "lastname")}), [
    Attribute("leadid", "Uniqueidentifier", "Lead", update=False),
    Attribute("subject", "String", "Topic", 300, required="ApplicationRequired"),
    Attribute("fullname", "String", "Name", 160, create=False, update=False),
    Attribute("firstname", "String", "First Name", 50),
    Attribute("lastname", "String", "Last Name", 50, required="ApplicationRequired"),
    Attribute("companyname", "String", "Company Name", 100),
    Attribute("emailaddress1", "String", "Email", 100),
    Attribute("telephone1", "String", "Business Phone", 50),
    *_address(),
    Attribute("industrycode", "Picklist", "Industry", option_set=INDUSTRY),
    Attribute("leadsourcecode", "Picklist", "Lead Source", option_set=_local(
        "lead", "leadsourcecode", "Advertisement", "Employee Referral", "External Referral", "Partner",
        "Public Relations", "Seminar", "Trade Show", "Web", "Word of Mouth", "Other")),
    Attribute("purchasetimeframe", "Picklist", "Purchase Timeframe", option_set=PURCHASE_TIMEFRAME),
    Attribute("parentaccountid", "Lookup", "Parent Account for lead", targets=("account",)),
    Attribute("parentcontactid", "Lookup", "Parent Contact for lead", targets=("contact",)),
    *_common("lead", _state("lead", "Open", "Qualified", "Disqualified"),
             _status("lead", (1, "New", 0), (2, "Contacted", 0), (3, "Qualified", 1), (4, "Lost", 2),
                     (5, "Cannot Contact", 2), (6, "No Longer Interested", 2), (7, "Canceled", 2))),
])

SYSTEMUSER = _entity(Entity("systemuser", "systemusers", "User", "Users", "systemuserid", "fullname", 8,
                            ownership="BusinessOwned", derived={"fullname": ("firstname", "lastname")}), [
    Attribute("systemuserid", "Uniqueidentifier", "User", update=False),
    Attribute("fullname", "String", "Full Name", 200, create=False, update=False),
    Attribute("firstname", "String", "First Name", 64),
    Attribute("lastname", "String", "Last Name", 64, required="SystemRequired"),
    Attribute("domainname", "String", "User Name", 1024, required="SystemRequired"),
    Attribute("internalemailaddress", "String", "Primary Email", 100),
    Attribute("azureactivedirectoryobjectid", "Uniqueidentifier", "Azure AD Object ID"),
    Attribute("applicationid", "Uniqueidentifier", "Application ID"),
    Attribute("isdisabled", "Boolean", "Status", create=False),
    Attribute("createdon", "DateTime", "Created On", create=False, update=False),
    Attribute("modifiedon", "DateTime", "Modified On", create=False, update=False),
    Attribute("versionnumber", "BigInt", "Version Number", create=False, update=False),
])

AUDITED = ("account", "contact", "lead", "opportunity")
AUDIT_OPERATIONS = _local("audit", "operation", "Create", "Update", "Delete", "Access", "Upsert", "Merge")
AUDIT = _entity(Entity("audit", "audits", "Auditing", "Auditing", "auditid", "objecttypecode", 4567,
                       change_tracking=False, ownership="None", audited=False, read_only=True, advanced_find=False), [
    Attribute("auditid", "Uniqueidentifier", "Record Id", create=False, update=False),
    Attribute("operation", "Picklist", "Operation", create=False, update=False, option_set=AUDIT_OPERATIONS),
    Attribute("action", "Picklist", "Event", create=False, update=False, option_set=_local(
        "audit", "action", "Create", "Update", "Delete", start=1)),
    Attribute("objecttypecode", "EntityName", "Entity", create=False, update=False),
    Attribute("objectid", "Lookup", "Record", create=False, update=False, targets=AUDITED),
    Attribute("userid", "Lookup", "Changed By", create=False, update=False, targets=("systemuser",)),
    Attribute("createdon", "DateTime", "Changed Date", create=False, update=False),
    Attribute("versionnumber", "BigInt", "Version Number", create=False, update=False),
])
SYSTEMUSER.audited = False

ENTITIES: dict[str, Entity] = {e.name: e for e in (ACCOUNT, CONTACT, LEAD, OPPORTUNITY, SYSTEMUSER, AUDIT)}
BY_ENTITY_SET: dict[str, Entity] = {e.entity_set: e for e in ENTITIES.values()}
