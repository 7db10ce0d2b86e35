"""The sandbox org's schema: which sObjects exist, their fields, picklists and relationships.

`MODEL` is the `model.Model` instance the whole sandbox (storage, describe, SOQL) works from. It mirrors the
standard Salesforce objects a marketing sync touches (Account, Contact, Lead, Opportunity, Campaign,
CampaignMember, User, Organization) with their real API names, types, lengths and picklists, plus a few custom
fields (`__c`) that exercise the harder describe features: a multi-select picklist, a restricted picklist, a
formula, an external id.

`model.FieldDef` cannot say everything describe reports, so `EXTRAS` adds per-field facts keyed by
(object, field): number precision/scale/digits, the Salesforce text of a formula, server-derived values
(e.g. Contact.Name from FirstName + LastName) and child-relationship names / cascade deletes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .model import FieldDef, Model, ObjectDef

Row = Mapping[str, Any]


@dataclass(frozen=True)
class FieldExtra:
    """Describe/storage facts about one field that `FieldDef` has no slot for."""
    precision: int = 0
    scale: int = 0
    digits: int = 0
    formula_text: str | None = None
    derive: Callable[[Row], Any] | None = None  # stored, server-computed from the row on every write
    child_relationship: str | None = None  # the parent's name for this reference, e.g. AccountId -> 'Contacts'
    cascade_delete: bool = False  # deleting the parent deletes the child, as Salesforce does


_NO_EXTRA = FieldExtra()
EXTRAS: dict[tuple[str, str], FieldExtra] = {}


def extra(object_name: str, field_name: str) -> FieldExtra:
    return EXTRAS.get((object_name, field_name), _NO_EXTRA)


# ---- picklist values (the standard Salesforce defaults) ----

INDUSTRIES = ("Agriculture", "Apparel", "Banking", "Biotechnology", "Chemicals", "Communications",
              "Construction", "Consulting", "Education", "Electronics", "Energy", "Engineering",
              "Entertainment", "Environmental", "Finance", "Food & Beverage", "Government", "Healthcare",
              "Hospitality", "Insurance", "Machinery", "Manufacturing", "Media", "Not For Profit", "Recreation",
              "Retail", "Shipping", "Technology", "Telecommunications", "Transportation", "Utilities", "Other")
LEAD_SOURCES = ("Advertisement", "Customer Event", "Employee Referral", "External Referral", "Partner",
                "Purchased List", "Trade Show", "Webinar", "Website", "Other")
SALUTATIONS = ("Mr.", "Ms.", "Mrs.", "Dr.", "Prof.", "Mx.")
LEAD_STATUSES = ("Open - Not Contacted", "Working - Contacted", "Closed - Converted", "Closed - Not Converted")
STAGES = ("Prospecting", "Qualification", "Needs Analysis", "Value Proposition", "Id. Decision Makers",
          "Perception Analysis", "Proposal/Price Quote", "Negotiation/Review", "Closed Won", "Closed Lost")
INTERESTS = ("Golf", "Tennis", "Running", "Cycling", "Travel", "Music", "Cooking", "Photography", "Technology",
             "Wine")
CHANNELS = ("Email", "SMS", "Phone", "Mail")
RATINGS = ("Hot", "Warm", "Cold")
ACCOUNT_TYPES = ("Prospect", "Customer - Direct", "Customer - Channel", "Channel Partner / Reseller",
                 "Installation Partner", "Technology Partner", "Other")
GEOCODE_ACCURACY = ("Address", "NearAddress", "Block", "Street", "ExtendedZip", "Zip", "Neighborhood", "City",
                    "County", "State", "Unknown")
TIME_ZONES = ("America/Los_Angeles", "America/New_York", "Europe/London", "Europe/Paris", "Europe/Berlin",
              "Asia/Tokyo", "Australia/Sydney")


# ---- small builders so each object reads like its describe ----

def _f(name: str, type_: str, label: str, length: int = 0, **kw: Any) -> FieldDef:
    return FieldDef(name=name, type=type_, label=label, length=length, **kw)


def _text(name: str, label: str, length: int, **kw: Any) -> FieldDef:
    return _f(name, "string", label, length, **kw)


def _pick(name: str, label: str, values: tuple[str, ...], **kw: Any) -> FieldDef:
    return _f(name, "picklist", label, 255, picklist_values=values, **kw)


def _bool(name: str, label: str, default: bool = False, **kw: Any) -> FieldDef:
    return _f(name, "boolean", label, nillable=False, default_value=default, **kw)


def _number(obj: str, name: str, type_: str, label: str, precision: int, scale: int = 0, **kw: Any) -> FieldDef:
    EXTRAS[(obj, name)] = FieldExtra(precision=precision, scale=scale)
    return _f(name, type_, label, **kw)


def _int(obj: str, name: str, label: str, digits: int, **kw: Any) -> FieldDef:
    EXTRAS[(obj, name)] = FieldExtra(digits=digits)
    return _f(name, "int", label, **kw)


def _ref(obj: str, name: str, label: str, target: str, relationship: str, *, children: str | None = None,
         cascade: bool = False, **kw: Any) -> FieldDef:
    if children or cascade:
        EXTRAS[(obj, name)] = FieldExtra(child_relationship=children, cascade_delete=cascade)
    return _f(name, "reference", label, 18, reference_to=(target,), relationship_name=relationship, **kw)


def _derived(obj: str, field: FieldDef, derive: Callable[[Row], Any]) -> FieldDef:
    EXTRAS[(obj, field.name)] = FieldExtra(derive=derive)
    return field


def _formula(obj: str, field: FieldDef, formula_text: str, precision: int = 0, scale: int = 0) -> FieldDef:
    EXTRAS[(obj, field.name)] = FieldExtra(formula_text=formula_text, precision=precision, scale=scale)
    return field


def _full_name(row: Row) -> str | None:
    return " ".join(p for p in (row.get("FirstName"), row.get("LastName")) if p) or None


def _audit(obj: str) -> list[FieldDef]:
    """The fields Salesforce maintains on every record; none can be written through the API."""
    ro = dict(createable=False, updateable=False, nillable=False)
    return [
        _f("Id", "id", f"{obj} ID", 18, id_lookup=True, **ro),
        _bool("IsDeleted", "Deleted", createable=False, updateable=False),
        _f("CreatedDate", "datetime", "Created Date", **ro),
        _ref(obj, "CreatedById", "Created By ID", "User", "CreatedBy", **ro),
        _f("LastModifiedDate", "datetime", "Last Modified Date", **ro),
        _ref(obj, "LastModifiedById", "Last Modified By ID", "User", "LastModifiedBy", **ro),
        _f("SystemModstamp", "datetime", "System Modstamp", **ro),
    ]


def _owner(obj: str, children: str | None = None) -> FieldDef:
    return _ref(obj, "OwnerId", "Owner ID", "User", "Owner", children=children, nillable=False)


def _address(obj: str, prefix: str, label: str) -> list[FieldDef]:
    """A compound address: the stored components plus the read-only `<prefix>Address` that groups them."""
    components = [
        _f(f"{prefix}Street", "textarea", f"{label} Street".strip(), 255),
        _text(f"{prefix}City", f"{label} City".strip(), 40),
        _text(f"{prefix}State", f"{label} State/Province".strip(), 80),
        _text(f"{prefix}PostalCode", f"{label} Zip/Postal Code".strip(), 20),
        _text(f"{prefix}Country", f"{label} Country".strip(), 80),
        _number(obj, f"{prefix}Latitude", "double", f"{label} Latitude".strip(), 18, 15),
        _number(obj, f"{prefix}Longitude", "double", f"{label} Longitude".strip(), 18, 15),
        _pick(f"{prefix}GeocodeAccuracy", f"{label} Geocode Accuracy".strip(), GEOCODE_ACCURACY,
              restricted_picklist=True),
    ]
    compound = _f(f"{prefix}Address", "address", f"{label} Address".strip(), createable=False, updateable=False,
                  compound_of=tuple(f.name for f in components))
    return [*components, compound]


def _campaign_key() -> FieldDef:
    """The external id a marketing database keys its upserts on (case-insensitive, unique)."""
    return _text("Campaign_Key__c", "Campaign Key", 64, external_id=True, unique=True, id_lookup=True)


def _object(name: str, label: str, plural: str, prefix: str, fields: list[FieldDef], **kw: Any) -> ObjectDef:
    audit = _audit(name)
    ordered = [audit[0], *fields, *audit[1:]]
    return ObjectDef(name=name, label=label, label_plural=plural, key_prefix=prefix,
                     fields={f.name: f for f in ordered}, **kw)


# ---- the objects ----

def _organization() -> ObjectDef:
    ro = dict(createable=False, updateable=False)
    return _object("Organization", "Organization", "Organizations", "00D", [
        _text("Name", "Name", 80, nillable=False, **ro),
        _bool("IsSandbox", "Is Sandbox", **ro),
        _pick("OrganizationType", "Edition", ("Developer Edition", "Enterprise Edition", "Unlimited Edition"), **ro),
        _text("InstanceName", "Instance Name", 5, **ro),
        _text("Country", "Country", 80, **ro),
        _pick("DefaultLocaleSidKey", "Locale", ("en_US", "en_GB", "fr_FR", "de_DE"), **ro),
        _pick("TimeZoneSidKey", "Default Time Zone", TIME_ZONES, **ro),
        _pick("LanguageLocaleKey", "Language", ("en_US", "fr", "de"), **ro),
    ], createable=False, updateable=False, deletable=False)


def _user() -> ObjectDef:
    req = dict(nillable=False)
    return _object("User", "User", "Users", "005", [
        _text("Username", "Username", 80, unique=True, id_lookup=True, **req),
        _text("FirstName", "First Name", 40),
        _text("LastName", "Last Name", 80, **req),
        _derived("User", _text("Name", "Full Name", 121, createable=False, updateable=False, id_lookup=True),
                 _full_name),
        _f("Email", "email", "Email", 128, **req),
        _text("Alias", "Alias", 8, **req),
        _bool("IsActive", "Active", default=True),
        _text("Title", "Title", 80),
        _text("Department", "Department", 80),
        _text("CompanyName", "Company Name", 80),
        _text("Country", "Country", 80),
        _pick("TimeZoneSidKey", "Time Zone", TIME_ZONES, restricted_picklist=True, default_value="Europe/London",
              **req),
        _pick("LocaleSidKey", "Locale", ("en_US", "en_GB", "fr_FR", "de_DE", "ja_JP", "en_AU"),
              restricted_picklist=True, default_value="en_US", **req),
        _pick("LanguageLocaleKey", "Language", ("en_US", "fr", "de", "ja"), restricted_picklist=True,
              default_value="en_US", **req),
        _pick("EmailEncodingKey", "Email Encoding", ("UTF-8", "ISO-8859-1"), restricted_picklist=True,
              default_value="UTF-8", **req),
    ], deletable=False)


def _account() -> ObjectDef:
    return _object("Account", "Account", "Accounts", "001", [
        _text("Name", "Account Name", 255, nillable=False, id_lookup=True),
        _pick("Type", "Account Type", ACCOUNT_TYPES),
        _ref("Account", "ParentId", "Parent Account ID", "Account", "Parent", children="ChildAccounts"),
        *_address("Account", "Billing", "Billing"),
        _f("Phone", "phone", "Account Phone", 40),
        _f("Fax", "phone", "Account Fax", 40),
        _text("AccountNumber", "Account Number", 40),
        _f("Website", "url", "Website", 255),
        _pick("Industry", "Industry", INDUSTRIES),
        _number("Account", "AnnualRevenue", "currency", "Annual Revenue", 18, 0),
        _int("Account", "NumberOfEmployees", "Employees", 8),
        _pick("Rating", "Account Rating", RATINGS),
        _pick("AccountSource", "Account Source", LEAD_SOURCES),
        _f("Description", "textarea", "Account Description", 32000),
        _owner("Account"),
        _campaign_key(),
    ])


def _contact() -> ObjectDef:
    return _object("Contact", "Contact", "Contacts", "003", [
        _ref("Contact", "AccountId", "Account ID", "Account", "Account", children="Contacts", cascade=True),
        _pick("Salutation", "Salutation", SALUTATIONS),
        _text("FirstName", "First Name", 40),
        _text("LastName", "Last Name", 80, nillable=False),
        _derived("Contact", _text("Name", "Full Name", 121, createable=False, updateable=False, id_lookup=True),
                 _full_name),
        *_address("Contact", "Mailing", "Mailing"),
        _f("Phone", "phone", "Business Phone", 40),
        _f("MobilePhone", "phone", "Mobile Phone", 40),
        _f("Email", "email", "Email", 80, id_lookup=True),
        _text("Title", "Title", 128),
        _text("Department", "Department", 80),
        _f("Birthdate", "date", "Birthdate"),
        _pick("LeadSource", "Lead Source", LEAD_SOURCES),
        _f("Description", "textarea", "Contact Description", 32000),
        _bool("HasOptedOutOfEmail", "Email Opt Out"),
        _bool("DoNotCall", "Do Not Call"),
        _owner("Contact"),
        _f("Interests__c", "multipicklist", "Interests", 4099, picklist_values=INTERESTS),
        _pick("Preferred_Channel__c", "Preferred Channel", CHANNELS, restricted_picklist=True),
        _campaign_key(),
        _text("Legacy_Id__c", "Legacy ID", 40, external_id=True, id_lookup=True),  # not unique: upserts can hit 300
        _formula("Contact", _text("Email_Domain__c", "Email Domain", 1300, createable=False, updateable=False,
                                  formula_sql="CASE WHEN instr(Email, '@') > 0 "
                                              "THEN lower(substr(Email, instr(Email, '@') + 1)) END"),
                 "LOWER(MID(Email, FIND('@', Email) + 1, LEN(Email)))"),
    ])


def _lead() -> ObjectDef:
    return _object("Lead", "Lead", "Leads", "00Q", [
        _pick("Salutation", "Salutation", SALUTATIONS),
        _text("FirstName", "First Name", 40),
        _text("LastName", "Last Name", 80, nillable=False),
        _derived("Lead", _text("Name", "Full Name", 121, createable=False, updateable=False, id_lookup=True),
                 _full_name),
        _text("Company", "Company", 255, nillable=False),
        _text("Title", "Title", 128),
        *_address("Lead", "", ""),
        _f("Email", "email", "Email", 80, id_lookup=True),
        _f("Phone", "phone", "Phone", 40),
        _f("MobilePhone", "phone", "Mobile Phone", 40),
        _pick("Status", "Status", LEAD_STATUSES, restricted_picklist=True, nillable=False,
              default_value="Open - Not Contacted"),
        _pick("LeadSource", "Lead Source", LEAD_SOURCES),
        _pick("Industry", "Industry", INDUSTRIES),
        _pick("Rating", "Rating", RATINGS),
        _number("Lead", "AnnualRevenue", "currency", "Annual Revenue", 18, 0),
        _int("Lead", "NumberOfEmployees", "Employees", 8),
        _bool("HasOptedOutOfEmail", "Email Opt Out"),
        _bool("IsConverted", "Converted", updateable=False),
        _f("ConvertedDate", "date", "Converted Date", createable=False, updateable=False),
        _ref("Lead", "ConvertedAccountId", "Converted Account ID", "Account", "ConvertedAccount",
             createable=False, updateable=False),
        _ref("Lead", "ConvertedContactId", "Converted Contact ID", "Contact", "ConvertedContact",
             createable=False, updateable=False),
        _f("Description", "textarea", "Description", 32000),
        _owner("Lead"),
        _campaign_key(),
    ])


def _opportunity() -> ObjectDef:
    closed = ("Closed Won", "Closed Lost")
    return _object("Opportunity", "Opportunity", "Opportunities", "006", [
        _ref("Opportunity", "AccountId", "Account ID", "Account", "Account", children="Opportunities",
             cascade=True),
        _text("Name", "Name", 120, nillable=False, id_lookup=True),
        _pick("StageName", "Stage", STAGES, restricted_picklist=True, nillable=False),
        _number("Opportunity", "Amount", "currency", "Amount", 18, 2),
        _number("Opportunity", "Probability", "percent", "Probability (%)", 3, 0),
        _f("CloseDate", "date", "Close Date", nillable=False),
        _pick("Type", "Opportunity Type", ("Existing Customer - Upgrade", "Existing Customer - Replacement",
                                            "Existing Customer - Downgrade", "New Customer")),
        _pick("LeadSource", "Lead Source", LEAD_SOURCES),
        _text("NextStep", "Next Step", 255),
        _f("Description", "textarea", "Description", 32000),
        _derived("Opportunity", _bool("IsClosed", "Closed", createable=False, updateable=False),
                 lambda row: row.get("StageName") in closed),
        _derived("Opportunity", _bool("IsWon", "Won", createable=False, updateable=False),
                 lambda row: row.get("StageName") == "Closed Won"),
        _ref("Opportunity", "CampaignId", "Campaign ID", "Campaign", "Campaign", children="Opportunities"),
        _ref("Opportunity", "Primary_Contact__c", "Primary Contact", "Contact", "Primary_Contact__r",
             children="Primary_Opportunities__r"),
        _owner("Opportunity"),
        _campaign_key(),
        _formula("Opportunity", _f("Weighted_Amount__c", "currency", "Weighted Amount", createable=False,
                                   updateable=False, formula_sql="Amount * Probability / 100.0"),
                 "Amount * Probability", precision=18, scale=2),
    ])


def _campaign() -> ObjectDef:
    return _object("Campaign", "Campaign", "Campaigns", "701", [
        _text("Name", "Name", 80, nillable=False, id_lookup=True),
        _ref("Campaign", "ParentId", "Parent Campaign ID", "Campaign", "Parent", children="ChildCampaigns"),
        _pick("Type", "Type", ("Advertisement", "Banner Ads", "Conference", "Direct Mail", "Email", "Partners",
                               "Public Relations", "Referral Program", "Telemarketing", "Trade Show", "Webinar",
                               "Other")),
        _pick("Status", "Status", ("Planned", "In Progress", "Completed", "Aborted"), default_value="Planned"),
        _f("StartDate", "date", "Start Date"),
        _f("EndDate", "date", "End Date"),
        _bool("IsActive", "Active"),
        _number("Campaign", "BudgetedCost", "currency", "Budgeted Cost in Campaign", 18, 0),
        _number("Campaign", "ActualCost", "currency", "Actual Cost in Campaign", 18, 0),
        _number("Campaign", "ExpectedRevenue", "currency", "Expected Revenue in Campaign", 18, 0),
        _number("Campaign", "ExpectedResponse", "percent", "Expected Response (%)", 8, 2),
        _f("Description", "textarea", "Description", 32000),
        _owner("Campaign"),
        _campaign_key(),
    ])


def _campaign_member() -> ObjectDef:
    return _object("CampaignMember", "Campaign Member", "Campaign Members", "00v", [
        _ref("CampaignMember", "CampaignId", "Campaign ID", "Campaign", "Campaign", children="CampaignMembers",
             cascade=True, nillable=False, updateable=False),
        _ref("CampaignMember", "ContactId", "Contact ID", "Contact", "Contact", children="CampaignMembers",
             cascade=True, updateable=False),
        _ref("CampaignMember", "LeadId", "Lead ID", "Lead", "Lead", children="CampaignMembers", cascade=True,
             updateable=False),
        _pick("Status", "Status", ("Planned", "Sent", "Received", "Responded"), default_value="Sent"),
        _derived("CampaignMember", _bool("HasResponded", "Responded", createable=False, updateable=False),
                 lambda row: row.get("Status") == "Responded"),
        _f("FirstRespondedDate", "date", "First Responded Date", createable=False, updateable=False),
    ])


def build_model() -> Model:
    objects = [_organization(), _user(), _account(), _contact(), _lead(), _opportunity(), _campaign(),
               _campaign_member()]
    return Model(objects={o.name: o for o in objects})


MODEL = build_model()

ALLOWED_DESCRIBE_TYPES = frozenset(
    "id string picklist multipicklist textarea phone url email reference combobox encryptedstring boolean int "
    "long double currency percent date datetime time address location base64 anyType calculated json "
    "complexvalue masterrecord datacategorygroupreference byte".split())
"""The only field types real replication clients accept (crm-apis.md §1.2); a test checks MODEL against it."""


def derived_fields(obj: ObjectDef) -> list[tuple[str, Callable[[Row], Any]]]:
    """(field name, function) pairs the store recomputes from the row on every write."""
    return [(f.name, e.derive) for f in obj.fields.values() if (e := extra(obj.name, f.name)).derive]


def child_references(model: Model, parent: str) -> list[tuple[ObjectDef, FieldDef, FieldExtra]]:
    """Every (child object, reference field, extra) whose reference points at `parent`."""
    return [(child, f, extra(child.name, f.name))
            for child in model.objects.values() for f in child.fields.values()
            if f.type == "reference" and parent in f.reference_to]
