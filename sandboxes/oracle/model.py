"""The Oracle CRM On Demand sandbox's data model: record types, their fields (integration tags) and picklists.

Field names are the Web Services v2.0 integration tags, which the REST API uses too ("Field names used in the
fields URL parameter, request, or response body are Web service integration tags", REST API Developer's Guide,
"About Using the Oracle CRM On Demand REST API", OnDemRestAPI_Ref2.html). Only standard-template record types a
marketing sync touches are modelled: Account, Contact, Opportunity, Lead and (read-only) User, each with the
standard audit fields, the two integration user keys (`ExternalSystemId`, `IntegrationId`) and a few of the
`Custom*` fields every company has.

Invariants:
- `Id` is the row id, read-only, in OOD's form: four characters, a dash, six base-36 characters (`1SBX-00A4F2`).
  Row ids are unique across record types, as Siebel row ids are.
- `CI_<Field>` search fields are derived (upper-cased copies, never stored); they exist for the fields listed in
  `ci` and can be read and queried but not written ("Special Search Fields", OnDemRestAPI_Ref25.html).
- Joined fields (`AccountName` on a Contact, `Owner`) are read-only and computed from the referenced record.
- Picklist values have a language-independent code (LIC) and an English display value (LDC); most are equal, as
  in OOD, but LeadSource/Source codes differ from their labels so the LOVLanguageMode header visibly matters.
"""
from __future__ import annotations

from dataclasses import dataclass, field as dc_field

TYPES = ("id", "string", "picklist", "boolean", "number", "integer", "currency", "date", "datetime")


@dataclass(frozen=True)
class PicklistValue:
    code: str  # language-independent code (LIC)
    label: str  # English display value (LDC)


@dataclass(frozen=True)
class Field:
    name: str  # integration tag
    type: str  # one of TYPES
    title: str  # display name
    max_length: int = 0
    mandatory: bool = False
    updatable: bool = True  # False: read-only (system, derived or joined)
    picklist: tuple[PicklistValue, ...] = ()
    references: str | None = None  # id fields: the record type the id points at
    joined: tuple[str, str] | None = None  # (id field on this record, field on the referenced record)
    ci_of: str | None = None  # CI_ search fields: the field they upper-case
    unique: bool = False  # the server refuses a second record with the same value

    @property
    def stored(self) -> bool:
        """True when the field is a column of the record type's SQLite table."""
        return self.joined is None and self.ci_of is None

    def code_for(self, label: str) -> str | None:
        return next((v.code for v in self.picklist if v.label == label), None)

    def label_for(self, code: str) -> str | None:
        return next((v.label for v in self.picklist if v.code == code), None)


@dataclass
class RecordType:
    name: str  # Web Services record type and DeletedItem Type, e.g. 'Contact'
    resource: str  # REST collection name, e.g. 'Contacts'
    title: str
    title_plural: str
    fields: dict[str, Field] = dc_field(default_factory=dict)
    children: dict[str, tuple[str, str]] = dc_field(default_factory=dict)  # REST child -> (record type, fk field)
    writable: bool = True
    user_keys: tuple[str, ...] = ("Id", "ExternalSystemId", "IntegrationId")
    name_fields: tuple[str, ...] = ()  # what DeletedItem.Name shows

    def stored_fields(self) -> list[Field]:
        return [f for f in self.fields.values() if f.stored]

    def default_fields(self) -> list[Field]:
        """What a query returns when `fields` is absent: everything except the CI_ search copies."""
        return [f for f in self.fields.values() if f.ci_of is None]


def picklist(*values: str | tuple[str, str]) -> tuple[PicklistValue, ...]:
    return tuple(PicklistValue(v, v) if isinstance(v, str) else PicklistValue(*v) for v in values)


LEAD_SOURCES = picklist(("WEB", "Web Site"), ("EMAIL", "Email"), ("EVENT", "Trade Show"), ("REFERRAL", "Referral"),
                        ("PARTNER", "Partner"), ("COLD_CALL", "Cold Call"))
INDUSTRIES = picklist("Agriculture", "Banking", "Biotechnology", "Chemicals", "Communications", "Construction",
                      "Consulting", "Education", "Electronics", "Energy", "Engineering", "Entertainment", "Finance",
                      "Healthcare", "Hospitality", "Insurance", "Manufacturing", "Media", "Retail", "Technology",
                      "Transportation")
PRIORITIES = picklist("High", "Medium", "Low")
CURRENCIES = picklist("USD", "EUR", "GBP", "JPY", "CAD", "BRL")


def _audit() -> list[Field]:
    """Fields every record type has: the row id, the two integration user keys, ownership and audit stamps."""
    return [
        Field("Id", "id", "Row Id", 15, updatable=False),
        Field("ExternalSystemId", "string", "External Unique Id", 30, unique=True),
        Field("IntegrationId", "string", "Integration Id", 30, unique=True),
        Field("OwnerId", "id", "Owner Id", 15, references="User"),
        Field("Owner", "string", "Owner", 50, updatable=False, joined=("OwnerId", "Alias")),
        Field("CreatedDate", "datetime", "Created Date", updatable=False),
        Field("CreatedById", "id", "Created By Id", 15, updatable=False, references="User"),
        Field("ModifiedDate", "datetime", "Modified Date", updatable=False),
        Field("ModifiedById", "id", "Modified By Id", 15, updatable=False, references="User"),
    ]


def _ci(*names: str) -> list[Field]:
    return [Field(f"CI_{n}", "string", f"CI {n}", 100, updatable=False, ci_of=n) for n in names]


def _record_type(name: str, resource: str, title: str, title_plural: str, fields: list[Field], *,
                 children: dict[str, tuple[str, str]] | None = None, writable: bool = True,
                 name_fields: tuple[str, ...] = ()) -> RecordType:
    return RecordType(name, resource, title, title_plural, {f.name: f for f in fields}, children or {}, writable,
                      name_fields=name_fields)


ACCOUNT = _record_type("Account", "Accounts", "Account", "Accounts", [
    *_audit(),
    Field("AccountName", "string", "Account Name", 100, mandatory=True),
    Field("Location", "string", "Location", 50),
    Field("AccountType", "picklist", "Account Type", 30, picklist=picklist(
        "Competitor", "Customer", "Partner", "Prospect", "Reseller", "Service Company", "Other")),
    Field("Industry", "picklist", "Industry", 50, picklist=INDUSTRIES),
    Field("Priority", "picklist", "Priority", 30, picklist=PRIORITIES),
    Field("Region", "picklist", "Region", 30, picklist=picklist("North", "South", "East", "West", "Central")),
    Field("PublicCompany", "boolean", "Public Company"),
    Field("Reference", "boolean", "Reference"),
    Field("MarketShare", "number", "Market Share %"),
    Field("NumberEmployees", "integer", "# Employees"),
    Field("AnnualRevenues", "currency", "Annual Revenues"),
    Field("CurrencyCode", "picklist", "Account Currency", 20, picklist=CURRENCIES),
    Field("MainPhone", "string", "Main Phone #", 40),
    Field("WebSite", "string", "Web Site", 100),
    Field("PrimaryBillToStreetAddress", "string", "Billing Street Address", 200),
    Field("PrimaryBillToCity", "string", "Billing City", 50),
    Field("PrimaryBillToState", "string", "Billing State", 50),
    Field("PrimaryBillToPostalCode", "string", "Billing Zip/Post Code", 30),
    Field("PrimaryBillToCountry", "string", "Billing Country", 50),
    Field("CustomDate0", "date", "Customer Since"),
    *_ci("AccountName", "Location"),
], children={"Contacts": ("Contact", "AccountId"), "Opportunities": ("Opportunity", "AccountId"),
             "Leads": ("Lead", "AccountId")}, name_fields=("AccountName",))

CONTACT = _record_type("Contact", "Contacts", "Contact", "Contacts", [
    *_audit(),
    Field("ContactFirstName", "string", "First Name", 50, mandatory=True),
    Field("ContactLastName", "string", "Last Name", 50, mandatory=True),
    Field("MiddleName", "string", "Middle Name", 50),
    Field("ContactEmail", "string", "Email", 100),
    Field("ContactType", "picklist", "Contact Type", 30, picklist=picklist(
        "Customer", "Prospect", "Partner", "Competitor", "Investor", "Other")),
    Field("JobTitle", "string", "Job Title", 75),
    Field("WorkPhone", "string", "Work Phone #", 40),
    Field("CellularPhone", "string", "Mobile #", 40),
    Field("AlternateAddress1", "string", "Contact Address 1", 200),
    Field("AlternateCity", "string", "Contact City", 50),
    Field("AlternateStateProvince", "string", "Contact State/Province", 50),
    Field("AlternateZipCode", "string", "Contact Zip/Post Code", 30),
    Field("AlternateCountry", "string", "Contact Country", 50),
    Field("DateofBirth", "date", "Date of Birth"),
    Field("LeadSource", "picklist", "Source", 30, picklist=LEAD_SOURCES),
    Field("NeverEmail", "boolean", "Never Email"),
    Field("NeverCall", "boolean", "Never Call"),
    Field("AccountId", "id", "Account Id", 15, references="Account"),
    Field("AccountName", "string", "Account Name", 100, updatable=False, joined=("AccountId", "AccountName")),
    Field("CustomPickList0", "picklist", "Preferred Channel", 30, picklist=picklist("Email", "Phone", "Mail", "SMS")),
    Field("CustomNumber0", "number", "Lead Score"),
    Field("CustomCurrency0", "currency", "Lifetime Value"),
    Field("CustomDate0", "date", "Last Purchase Date"),
    Field("CustomDateTime0", "datetime", "Last Webinar Attended"),
    Field("CustomText0", "string", "Campaign Segment", 255),
    *_ci("ContactFirstName", "ContactLastName", "ContactEmail"),
], children={"Opportunities": ("Opportunity", "ContactId"), "Leads": ("Lead", "ContactId")},
    name_fields=("ContactFirstName", "ContactLastName"))

OPPORTUNITY = _record_type("Opportunity", "Opportunities", "Opportunity", "Opportunities", [
    *_audit(),
    Field("OpportunityName", "string", "Opportunity Name", 100, mandatory=True),
    Field("AccountId", "id", "Account Id", 15, references="Account"),
    Field("AccountName", "string", "Account", 100, updatable=False, joined=("AccountId", "AccountName")),
    Field("ContactId", "id", "Primary Contact Id", 15, references="Contact"),
    Field("SalesStage", "picklist", "Sales Stage", 50, mandatory=True, picklist=picklist(
        "Qualified Lead", "Building Vision", "Short List", "Selected", "Negotiation", "Closed/Won",
        "Closed/Lost")),
    Field("Status", "picklist", "Status", 30, picklist=picklist("Pending", "Won", "Lost")),
    Field("Revenue", "currency", "Revenue"),
    Field("Probability", "integer", "Probability %"),
    Field("CloseDate", "date", "Close Date", mandatory=True),
    Field("Forecast", "boolean", "Forecast"),
    Field("Priority", "picklist", "Priority", 30, picklist=PRIORITIES),
    Field("LeadSource", "picklist", "Source", 30, picklist=LEAD_SOURCES),
    Field("CurrencyCode", "picklist", "Opportunity Currency", 20, picklist=CURRENCIES),
    Field("Description", "string", "Description", 255),
    *_ci("OpportunityName"),
], children={"Leads": ("Lead", "OpportunityId")}, name_fields=("OpportunityName",))

LEAD = _record_type("Lead", "Leads", "Lead", "Leads", [
    *_audit(),
    Field("LeadFirstName", "string", "First Name", 50, mandatory=True),
    Field("LeadLastName", "string", "Last Name", 50, mandatory=True),
    Field("EmailAddress", "string", "Email", 100),
    Field("Company", "string", "Company", 100),
    Field("JobTitle", "string", "Job Title", 75),
    Field("WorkPhone", "string", "Work Phone #", 40),
    Field("Rating", "picklist", "Rating", 30, picklist=picklist("A", "B", "C", "D")),
    Field("Source", "picklist", "Source", 30, picklist=LEAD_SOURCES),
    Field("Status", "picklist", "Status", 30, picklist=picklist(
        "Not Qualified", "Qualified", "Rejected", "Converted")),
    Field("PotentialRevenue", "currency", "Potential Revenue"),
    Field("EstimatedCloseDate", "date", "Estimated Close Date"),
    Field("AccountId", "id", "Account Id", 15, references="Account"),
    Field("ContactId", "id", "Contact Id", 15, references="Contact"),
    Field("OpportunityId", "id", "Opportunity Id", 15, references="Opportunity"),
    *_ci("LeadFirstName", "LeadLastName", "EmailAddress"),
], name_fields=("LeadFirstName", "LeadLastName"))

USER = _record_type("User", "Users", "User", "Users", [
    Field("Id", "id", "Row Id", 15, updatable=False),
    Field("ExternalSystemId", "string", "External Unique Id", 30, unique=True),
    Field("IntegrationId", "string", "Integration Id", 30, unique=True),
    Field("UserLoginId", "string", "User Sign In Id", 50, updatable=False),
    Field("FirstName", "string", "First Name", 50, mandatory=True),
    Field("LastName", "string", "Last Name", 50, mandatory=True),
    Field("Alias", "string", "Alias", 50),
    Field("EmailAddr", "string", "Email", 100),
    Field("Role", "string", "Role", 50, updatable=False),
    Field("Status", "picklist", "Status", 30, picklist=picklist("Active", "Inactive")),
    Field("TimeZoneName", "string", "Time Zone", 100, updatable=False),
    Field("LastLoggedIn", "datetime", "Last Signed In", updatable=False),
    Field("CreatedDate", "datetime", "Created Date", updatable=False),
    Field("ModifiedDate", "datetime", "Modified Date", updatable=False),
    *_ci("LastName"),
], writable=False, name_fields=("FirstName", "LastName"))

RECORD_TYPES: dict[str, RecordType] = {r.name: r for r in (ACCOUNT, CONTACT, OPPORTUNITY, LEAD, USER)}
BY_RESOURCE: dict[str, RecordType] = {r.resource: r for r in RECORD_TYPES.values()}

DELETED_ITEM = _record_type("DeletedItem", "DeletedItems", "Deleted Item", "Deleted Items", [
    Field("DeletedItemId", "id", "Deleted Item Id", 15, updatable=False),
    Field("DeletedById", "id", "Deleted By Id", 15, updatable=False),
    Field("DeletedBy", "string", "Deleted By", 100, updatable=False),
    Field("DeletedDate", "datetime", "Deleted Date", updatable=False),
    Field("Name", "string", "Name", 200, updatable=False),
    Field("ObjectId", "id", "Object Id", 15, updatable=False),
    Field("Type", "string", "Type", 50, updatable=False),
    Field("ExternalSystemId", "string", "External Unique Id", 30, updatable=False),
], writable=False)
"""The Deleted Items area as DeletedItemQueryPage sees it (not a record type; stored in `_deleted_items`)."""
