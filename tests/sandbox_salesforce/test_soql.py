"""SOQL engine of the Salesforce sandbox, run against a real SQLite database built from a small model."""
from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime

import pytest

from sandboxes.salesforce.model import FieldDef, Model, ObjectDef
from sandboxes.salesforce.soql import QueryResult, SoqlError, execute, parse

NOW = datetime(2024, 6, 15, 12, 0, 0, tzinfo=UTC)  # a Saturday


def _f(name: str, ftype: str, **kw: object) -> FieldDef:
    return FieldDef(name=name, type=ftype, label=name, **kw)  # type: ignore[arg-type]


def _obj(name: str, prefix: str, *fields: FieldDef) -> ObjectDef:
    common = [_f("Id", "id", nillable=False), _f("IsDeleted", "boolean", nillable=False),
              _f("SystemModstamp", "datetime", nillable=False)]
    return ObjectDef(name, name, name + "s", prefix, {f.name: f for f in [*common, *fields]})


def build_model() -> Model:
    user = _obj("User", "005", _f("Name", "string"))
    group = _obj("Group", "00G", _f("Name", "string"))
    account = _obj(
        "Account", "001",
        _f("Name", "string", nillable=False),
        _f("Industry", "picklist", picklist_values=("Technology", "Manufacturing", "Retail")),
        _f("AnnualRevenue", "currency"),
        _f("NumberOfEmployees", "int"),
        _f("OwnerId", "reference", reference_to=("Group", "User"), relationship_name="Owner"),
        _f("Label__c", "string", formula_sql="Name || ' [' || COALESCE(Industry, 'none') || ']'"),
    )
    mailing = ("MailingStreet", "MailingCity", "MailingState", "MailingPostalCode", "MailingCountry")
    contact = _obj(
        "Contact", "003",
        _f("FirstName", "string"),
        _f("LastName", "string", nillable=False),
        _f("Email", "email"),
        _f("AccountId", "reference", reference_to=("Account",), relationship_name="Account"),
        _f("OwnerId", "reference", reference_to=("User",), relationship_name="Owner"),
        _f("Birthdate", "date"),
        _f("HasOptedOutOfEmail", "boolean", nillable=False),
        _f("Interests__c", "multipicklist", picklist_values=("Golf", "Tennis", "Chess")),
        *(_f(name, "string" if not name.endswith("Street") else "textarea") for name in mailing),
        _f("MailingAddress", "address", compound_of=mailing),
        _f("Full_Name__c", "string", formula_sql="FirstName || ' ' || LastName"),
    )
    org = ObjectDef("Organization", "Organization", "Organizations", "00D",
                    {"Id": _f("Id", "id", nillable=False), "Name": _f("Name", "string"),
                     "IsSandbox": _f("IsSandbox", "boolean")})
    return Model({o.name: o for o in (user, group, account, contact, org)})


SQL_TYPES = {"boolean": "INTEGER", "int": "INTEGER", "double": "REAL", "currency": "REAL", "percent": "REAL"}

U1, U2, G1 = "005000000000001AAA", "005000000000002AAA", "00G000000000001AAA"
A = {f"A{i}": f"00100000000000{i}AAA" for i in range(1, 8)}
C = {f"C{i}": f"0030000000000{i:02d}AAA" for i in range(1, 12)}
IDS = {**A, **C, "U1": U1, "U2": U2, "G1": G1}
NAMES = {v: k for k, v in IDS.items()}

ACCOUNTS = [  # Id, Name, Industry, AnnualRevenue, NumberOfEmployees, OwnerId, IsDeleted
    ("A1", "Acme", "Technology", 1000000.0, 50, U1, 0),
    ("A2", "Globex", "Manufacturing", 250000.0, 10, G1, 0),
    ("A3", "Müller GmbH", None, None, None, U2, 0),
    ("A4", "Deleted Co", "Retail", None, None, U1, 1),
    ("A5", "O'Brien_Co", "Retail", 5.5, 1, U1, 0),
    ("A6", "50% Off", "Retail", None, 3, None, 0),
    ("A7", "aardvark ltd", None, None, None, U2, 0),
]
CONTACTS = [  # Id, First, Last, Email, Account, Birthdate, OptedOut, Interests, Street, City, SystemModstamp, Deleted
    ("C1", "Ada", "Lovelace", "ada@example.com", "A1", "1815-12-10", 0, "Golf;Tennis", "12 Main St", "London",
     "2024-01-01T00:00:00.000+0000", 0),
    ("C2", "Grace", "Hopper", "grace@example.com", "A1", "1906-12-09", 1, "Tennis", None, None,
     "2024-01-15T12:30:00.000+0000", 0),
    ("C3", "Alan", "Turing", None, "A2", "1912-06-23", 0, None, None, "Wilmslow",
     "2024-01-31T00:00:00.000+0000", 0),
    ("C4", None, "Torvalds", "linus@example.com", None, None, 0, "Golf;Chess", None, None,
     "2023-12-31T23:59:59.999+0000", 0),
    ("C5", "Margaret", "Hamilton", "mh@example.com", "A3", "2024-06-15", 0, "Chess", None, None,
     "2024-06-15T08:00:00.000+0000", 0),
    ("C6", "Bob", "Gone", "bob@example.com", "A1", None, 0, None, None, None,
     "2024-06-14T10:00:00.000+0000", 1),
    ("C7", "Edsger", "Dijkstra", "ed@example.com", "A2", "2024-06-01", 1, None, None, None,
     "2024-06-14T23:59:59.999+0000", 0),
    ("C8", "Barbara", "Liskov", "bl@example.com", "A1", "2024-05-20", 0, "golf", None, None,
     "2024-06-16T00:00:00.000+0000", 0),
    ("C9", "Tim", "Micro", None, None, None, 0, None, None, None, "2024-03-01T10:00:00.001+0000", 0),
    ("C10", "Tom", "Milli", None, None, None, 0, None, None, None, "2024-03-01T10:00:00.000+0000", 0),
]
LIVE_CONTACTS = [c[0] for c in CONTACTS if not c[-1]]


@pytest.fixture(scope="module")
def model() -> Model:
    return build_model()


@pytest.fixture(scope="module")
def conn(model: Model) -> sqlite3.Connection:
    db = sqlite3.connect(":memory:")
    db.row_factory = sqlite3.Row  # the engine must not depend on the connection's row factory
    for obj in model.objects.values():
        cols = ", ".join(f'"{f.name}" {SQL_TYPES.get(f.type, "TEXT")}' for f in obj.stored_fields())
        db.execute(f'CREATE TABLE "{obj.name}" ({cols})')
    ts = "2024-01-01T00:00:00.000+0000"
    db.executemany('INSERT INTO "User" VALUES (?, 0, ?, ?)', [(U1, ts, "Ursula Admin"), (U2, ts, "Victor User")])
    db.execute('INSERT INTO "Group" VALUES (?, 0, ?, ?)', (G1, ts, "Sales Queue"))
    db.executemany(
        'INSERT INTO "Account" ("Id", "Name", "Industry", "AnnualRevenue", "NumberOfEmployees", "OwnerId", '
        '"IsDeleted", "SystemModstamp") VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
        [(A[a[0]], *a[1:], ts) for a in ACCOUNTS])
    for (cid, first, last, email, acc, birth, opted, interests, street, city, stamp, deleted) in CONTACTS:
        db.execute(
            'INSERT INTO "Contact" ("Id", "FirstName", "LastName", "Email", "AccountId", "OwnerId", "Birthdate", '
            '"HasOptedOutOfEmail", "Interests__c", "MailingStreet", "MailingCity", "MailingPostalCode", '
            '"MailingCountry", "SystemModstamp", "IsDeleted") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
            (C[cid], first, last, email, A.get(acc or ""), U1, birth, opted, interests, street, city,
             "EC1A 1BB" if street else None, "UK" if street else None, stamp, deleted))
    db.execute('INSERT INTO "Organization" VALUES (?, ?, ?)', ("00D000000000001AAA", "Sandbox Org", 1))
    db.commit()
    return db


def run(conn: sqlite3.Connection, model: Model, soql: str, **kw: object) -> QueryResult:
    return execute(conn, model, soql, now=NOW, **kw)  # type: ignore[arg-type]


def names(result: QueryResult) -> list[str]:
    return [NAMES[r["Id"]] for r in result.records]


ALL_BUT = lambda *excluded: sorted(c for c in LIVE_CONTACTS if c not in excluded)  # noqa: E731

# (query, expected record names). Lists are compared in order when the query has ORDER BY, else as sets.
CASES: list[tuple[str, list[str]]] = [
    # --- forms seen from real integrations (crm-apis.md §1.3), on Contact
    ("SELECT Id,FirstName,LastName FROM Contact ORDER BY Id ASC", sorted(LIVE_CONTACTS, key=lambda c: C[c])),
    ("SELECT Id,SystemModstamp FROM Contact WHERE SystemModstamp >= 2024-01-01T00:00:00.000+00:00 "
     "AND SystemModstamp < 2024-01-31T00:00:00.000+00:00", ["C1", "C2"]),
    ("SELECT Id, SystemModstamp FROM Contact WHERE SystemModstamp >= 2024-01-01T00:00:00.000+00:00 "
     "AND SystemModstamp < 2024-01-31T00:00:00.000+00:00", ["C1", "C2"]),
    ("SELECT Id,SystemModstamp FROM Contact WHERE SystemModstamp >= 2024-01-01T00:00:00.000000Z  "
     "ORDER BY SystemModstamp ASC", ["C1", "C2", "C3", "C10", "C9", "C7", "C5", "C8"]),
    ("SELECT Id,SystemModstamp FROM Contact WHERE SystemModstamp >= 2024-01-01T00:00:00.000000Z "
     "AND SystemModstamp < 2024-01-15T00:00:00Z  ORDER BY SystemModstamp ASC", ["C1"]),
    (f"SELECT Id FROM Contact WHERE Id IN ('{C['C1']}','{C['C3']}')", ["C1", "C3"]),
    # '+' decoded to a space by a client that did not URL-encode it
    ("SELECT Id FROM Contact WHERE SystemModstamp >= 2024-01-01T00:00:00.000 00:00 "
     "AND SystemModstamp < 2024-01-31T00:00:00.000 00:00", ["C1", "C2"]),
    # connector incremental read (§4.2)
    ("SELECT Id, SystemModstamp FROM Contact WHERE SystemModstamp > 2024-01-15T12:30:00Z "
     "ORDER BY SystemModstamp, Id LIMIT 3", ["C3", "C10", "C9"]),
    # --- datetime literal forms and precision
    ("SELECT Id FROM Contact WHERE SystemModstamp = 2024-01-15T13:30:00+01:00", ["C2"]),
    ("SELECT Id FROM Contact WHERE SystemModstamp = 2024-01-15T07:30:00.000-05:00", ["C2"]),
    ("SELECT Id FROM Contact WHERE SystemModstamp < 2024-01-01T00:00:00Z", ["C4"]),
    ("SELECT Id FROM Contact WHERE SystemModstamp >= 2024-03-01T10:00:00.000500Z "
     "AND SystemModstamp < 2024-03-02T00:00:00Z", ["C9"]),
    ("SELECT Id FROM Contact WHERE SystemModstamp > 2024-03-01T10:00:00.0005Z "
     "AND SystemModstamp < 2024-03-02T00:00:00Z", ["C9"]),
    ("SELECT Id FROM Contact WHERE SystemModstamp < 2024-03-01T10:00:00.000500Z "
     "AND SystemModstamp >= 2024-03-01T00:00:00Z", ["C10"]),
    ("SELECT Id FROM Contact WHERE SystemModstamp <= 2024-03-01T10:00:00.000500Z "
     "AND SystemModstamp >= 2024-03-01T00:00:00Z", ["C10"]),
    ("SELECT Id FROM Contact WHERE SystemModstamp = 2024-03-01T10:00:00.000500Z", []),
    ("SELECT Id FROM Contact WHERE SystemModstamp = 2024-03-01T10:00:00.001000Z", ["C9"]),
    ("SELECT Id FROM Contact WHERE SystemModstamp != 2024-03-01T10:00:00.000500Z", ALL_BUT()),
    # --- boolean logic, NOT, nested parentheses; null is a value (!=, NOT match null fields)
    ("SELECT Id FROM Contact WHERE FirstName = 'Ada' OR FirstName = 'Alan' OR LastName = 'Torvalds'",
     ["C1", "C3", "C4"]),
    ("SELECT Id FROM Contact WHERE HasOptedOutOfEmail = true AND AccountId != null", ["C2", "C7"]),
    ("SELECT Id FROM Contact WHERE NOT LastName = 'Turing'", ALL_BUT("C3")),
    ("SELECT Id FROM Contact WHERE NOT (FirstName = 'Ada' OR FirstName = 'Alan')", ALL_BUT("C1", "C3")),
    ("SELECT Id FROM Contact WHERE FirstName != 'Ada'", ALL_BUT("C1")),
    ("SELECT Id FROM Contact WHERE FirstName <> 'Ada' AND FirstName != null", ALL_BUT("C1", "C4")),
    ("SELECT Id FROM Contact WHERE ((FirstName = 'Ada' OR FirstName = 'Alan') AND (HasOptedOutOfEmail = false)) "
     "OR (LastName = 'Hopper' AND (NOT HasOptedOutOfEmail = false))", ["C1", "C2", "C3"]),
    ("SELECT Id FROM Contact WHERE NOT (NOT (Email = null))", ["C3", "C9", "C10"]),
    ("SELECT Id FROM Contact WHERE Email = null", ["C3", "C9", "C10"]),
    ("SELECT Id FROM Contact WHERE Email != null AND AccountId = null", ["C4"]),
    ("SELECT Id FROM Contact WHERE FirstName NOT IN ('Ada', 'Grace')", ALL_BUT("C1", "C2")),
    ("SELECT Id FROM Contact WHERE FirstName NOT IN ('Ada', null)", ALL_BUT("C1", "C4")),
    ("SELECT Id FROM Contact WHERE FirstName IN ('ada', null)", ["C1", "C4"]),
    # --- text comparisons are case-insensitive (Unicode too); LIKE wildcards and escapes
    ("SELECT Id FROM Contact WHERE LastName = 'TURING'", ["C3"]),
    ("SELECT Id FROM Account WHERE Name = 'MÜLLER GMBH'", ["A3"]),
    ("SELECT Id FROM Contact WHERE LastName LIKE 'h%'", ["C2", "C5"]),
    ("SELECT Id FROM Contact WHERE LastName LIKE '_uring'", ["C3"]),
    ("SELECT Id FROM Contact WHERE Email LIKE '%@EXAMPLE.com' AND NOT Email LIKE 'a%'",
     ["C2", "C4", "C5", "C7", "C8"]),
    ("SELECT Id FROM Account WHERE Name LIKE 'mü%'", ["A3"]),
    ("SELECT Id FROM Account WHERE Name LIKE '50\\%%'", ["A6"]),
    ("SELECT Id FROM Account WHERE Name LIKE '%\\%%'", ["A6"]),
    ("SELECT Id FROM Account WHERE Name LIKE 'O\\'Brien\\_%'", ["A5"]),
    ("SELECT Id FROM Account WHERE Name LIKE 'O_Brien_Co'", ["A5"]),
    ("SELECT Id FROM Account WHERE Name = 'O\\'Brien\\_Co'", ["A5"]),
    ("SELECT Id FROM Account WHERE Name > 'b' AND Name < 'H'", ["A2"]),
    # --- injection attempts stay inside the literal
    ("SELECT Id FROM Account WHERE Name = 'x\\' OR 1=1 --'", []),
    ("SELECT Id FROM Account WHERE Name = 'x\\' OR Name LIKE \\'%'", []),
    ("SELECT Id FROM Account WHERE Name = 'Acme''", None),  # MALFORMED_QUERY, checked below
    # --- ids: exact 18-character match, or a 15-character id
    (f"SELECT Id FROM Contact WHERE Id = '{C['C1'][:15]}'", ["C1"]),
    (f"SELECT Id FROM Contact WHERE Id IN ('{C['C2'][:15]}', '{C['C3']}')", ["C2", "C3"]),
    (f"SELECT Id FROM Contact WHERE AccountId = '{A['A1']}'", ["C1", "C2", "C8"]),
    (f"SELECT Id FROM Contact WHERE AccountId IN ('{A['A1'][:15]}') AND Id != '{C['C2'][:15]}'", ["C1", "C8"]),
    # --- numbers
    ("SELECT Id FROM Account WHERE AnnualRevenue > 500000", ["A1"]),
    ("SELECT Id FROM Account WHERE AnnualRevenue = 250000.0 OR AnnualRevenue = 5.5", ["A2", "A5"]),
    ("SELECT Id FROM Account WHERE AnnualRevenue > -1 AND NumberOfEmployees >= 10", ["A1", "A2"]),
    ("SELECT Id FROM Account WHERE NumberOfEmployees IN (1, 3)", ["A5", "A6"]),
    ("SELECT Id FROM Account WHERE AnnualRevenue = null", ["A3", "A6", "A7"]),
    # --- dates and date literals (now = 2024-06-15T12:00:00Z)
    ("SELECT Id FROM Contact WHERE Birthdate = 1815-12-10", ["C1"]),
    ("SELECT Id FROM Contact WHERE Birthdate < 1910-01-01", ["C1", "C2"]),
    ("SELECT Id FROM Contact WHERE Birthdate >= 1912-06-23 AND Birthdate <= 2024-06-01", ["C3", "C7", "C8"]),
    ("SELECT Id FROM Contact WHERE SystemModstamp = TODAY", ["C5"]),
    ("SELECT Id FROM Contact WHERE SystemModstamp = YESTERDAY", ["C7"]),
    ("SELECT Id FROM Contact WHERE SystemModstamp = TOMORROW", ["C8"]),
    ("SELECT Id FROM Contact WHERE SystemModstamp > TODAY", ["C8"]),
    ("SELECT Id FROM Contact WHERE SystemModstamp >= TODAY", ["C5", "C8"]),
    ("SELECT Id FROM Contact WHERE SystemModstamp <= YESTERDAY AND SystemModstamp > 2024-06-01T00:00:00Z", ["C7"]),
    ("SELECT Id FROM Contact WHERE SystemModstamp < TODAY AND SystemModstamp >= 2024-03-01T00:00:00Z",
     ["C7", "C9", "C10"]),
    ("SELECT Id FROM Contact WHERE SystemModstamp = LAST_N_DAYS:1", ["C5", "C7"]),
    ("SELECT Id FROM Contact WHERE SystemModstamp = NEXT_N_DAYS:1", ["C8"]),
    ("SELECT Id FROM Contact WHERE SystemModstamp = THIS_YEAR", ALL_BUT("C4")),
    ("SELECT Id FROM Contact WHERE SystemModstamp = LAST_YEAR", ["C4"]),
    ("SELECT Id FROM Contact WHERE SystemModstamp != TODAY AND SystemModstamp > 2024-06-01T00:00:00Z",
     ["C7", "C8"]),
    ("SELECT Id FROM Contact WHERE SystemModstamp = THIS_WEEK", ["C5", "C7"]),  # Sunday 9th .. Saturday 15th
    ("SELECT Id FROM Contact WHERE Birthdate = TODAY", ["C5"]),
    ("SELECT Id FROM Contact WHERE Birthdate = THIS_MONTH", ["C5", "C7"]),
    ("SELECT Id FROM Contact WHERE Birthdate = LAST_MONTH", ["C8"]),
    ("SELECT Id FROM Contact WHERE Birthdate = LAST_90_DAYS", ["C5", "C7", "C8"]),
    ("SELECT Id FROM Contact WHERE Birthdate = N_DAYS_AGO:14", ["C7"]),
    ("SELECT Id FROM Contact WHERE Birthdate < THIS_MONTH", ["C1", "C2", "C3", "C8"]),
    # --- multipicklists: INCLUDES / EXCLUDES, ';' means "all of"
    ("SELECT Id FROM Contact WHERE Interests__c INCLUDES ('Golf')", ["C1", "C4", "C8"]),
    ("SELECT Id FROM Contact WHERE Interests__c INCLUDES ('golf;tennis', 'Chess')", ["C1", "C4", "C5"]),
    ("SELECT Id FROM Contact WHERE Interests__c EXCLUDES ('Golf')", ALL_BUT("C1", "C4", "C8")),
    ("SELECT Id FROM Contact WHERE Interests__c = 'Tennis;Golf'", ["C1"]),
    # --- relationship paths in WHERE
    ("SELECT Id FROM Contact WHERE Account.Name = 'acme'", ["C1", "C2", "C8"]),
    ("SELECT Id FROM Contact WHERE Account.Name != 'Acme'", ALL_BUT("C1", "C2", "C8")),
    ("SELECT Id FROM Contact WHERE Account.Owner.Name LIKE 'Sales%'", ["C3", "C7"]),
    ("SELECT Id FROM Contact WHERE Account.Owner.Name = 'Victor User' OR Account.Industry = 'Technology'",
     ["C1", "C2", "C5", "C8"]),
    ("SELECT Id FROM Account WHERE Owner.Name IN ('Sales Queue', 'Ursula Admin')", ["A1", "A2", "A5"]),
    # --- formula fields (evaluated per object, also through a join)
    ("SELECT Id FROM Contact WHERE Full_Name__c = 'ada lovelace'", ["C1"]),
    ("SELECT Id FROM Contact WHERE Account.Label__c = 'Müller GmbH [none]'", ["C5"]),
    # --- ORDER BY: case-insensitive text, NULLS FIRST/LAST, several keys, LIMIT / OFFSET
    ("SELECT Id FROM Account ORDER BY Name", ["A6", "A7", "A1", "A2", "A3", "A5"]),
    ("SELECT Id FROM Account ORDER BY Name DESC", ["A5", "A3", "A2", "A1", "A7", "A6"]),
    ("SELECT Id FROM Contact WHERE AccountId != null OR FirstName = null ORDER BY FirstName",
     ["C4", "C1", "C3", "C8", "C7", "C2", "C5"]),
    ("SELECT Id FROM Contact WHERE AccountId != null OR FirstName = null ORDER BY FirstName NULLS LAST",
     ["C1", "C3", "C8", "C7", "C2", "C5", "C4"]),
    ("SELECT Id FROM Contact WHERE AccountId != null OR FirstName = null ORDER BY FirstName DESC",
     ["C5", "C2", "C7", "C8", "C3", "C1", "C4"]),
    ("SELECT Id FROM Contact WHERE AccountId != null OR FirstName = null ORDER BY FirstName DESC NULLS FIRST",
     ["C4", "C5", "C2", "C7", "C8", "C3", "C1"]),
    ("SELECT Id FROM Account ORDER BY Industry ASC NULLS LAST, Name DESC", ["A2", "A5", "A6", "A1", "A3", "A7"]),
    ("SELECT Id FROM Contact ORDER BY Account.Name DESC NULLS LAST, LastName LIMIT 4",
     ["C5", "C7", "C3", "C2"]),
    ("SELECT Id FROM Contact ORDER BY LastName LIMIT 3 OFFSET 2", ["C2", "C8", "C1"]),
    ("SELECT Id FROM Contact ORDER BY LastName OFFSET 8", ["C3"]),
    ("SELECT Id FROM Contact ORDER BY LastName LIMIT 0", []),
    # --- layout: case-insensitive keywords and names, newlines, tabs, runs of spaces
    ("select id from CONTACT where lastname = 'turing'", ["C3"]),
    ("SELECT Id\nFROM Contact\nWHERE LastName = 'Turing'\n   OR LastName = 'Hopper'\nORDER BY LastName", ["C2", "C3"]),
    ("SELECT\tId ,FirstName\r\nFROM\t\tContact   WHERE(FirstName='Ada')", ["C1"]),
]


@pytest.mark.parametrize("soql, expected", [c for c in CASES if c[1] is not None], ids=lambda v: str(v)[:90])
def test_query_returns_expected_records(conn: sqlite3.Connection, model: Model, soql: str,
                                        expected: list[str]) -> None:
    result = run(conn, model, soql)
    got = names(result)
    if "ORDER BY" in soql.upper():
        assert got == expected
    else:
        assert sorted(got) == sorted(expected)
    assert result.total_size == len(expected)
    assert result.object_name == ("Account" if "from account" in soql.lower() else "Contact")


# (query, errorCode, exact message or None to check only the code)
ERRORS: list[tuple[str, str, str | None]] = [
    ("SELECT Foo FROM Contact", "INVALID_FIELD",
     "\nSELECT Foo FROM Contact\n       ^\nERROR at Row:1:Column:8\nNo such column 'Foo' on entity 'Contact'. If you "
     "are attempting to use a custom field, be sure to append the '__c' after the custom field name. Please "
     "reference your WSDL or the describe call for the appropriate names."),
    ("SELECT Id FROM Foo", "INVALID_TYPE",
     "\nSELECT Id FROM Foo\n               ^\nERROR at Row:1:Column:16\nsObject type 'Foo' is not supported. If you "
     "are attempting to use a custom object, be sure to append the '__c' after the entity name. Please reference "
     "your WSDL or the describe call for the appropriate names."),
    ("SELECT Id FRM Contact", "MALFORMED_QUERY",
     "\nSELECT Id FRM Contact\n          ^\nERROR at Row:1:Column:11\nunexpected token: 'FRM'"),
    ("SELECT Id FROM", "MALFORMED_QUERY",
     "\nSELECT Id FROM\n              ^\nERROR at Row:1:Column:15\nunexpected token: <EOF>"),
    ("SELECT Id,\n  LastName\nFROM Contact\nWHERE Bogus__c = 1", "INVALID_FIELD",
     "\nWHERE Bogus__c = 1\n      ^\nERROR at Row:4:Column:7\nNo such column 'Bogus__c' on entity 'Contact'. If you "
     "are attempting to use a custom field, be sure to append the '__c' after the custom field name. Please "
     "reference your WSDL or the describe call for the appropriate names."),
    ("SELECT Id\nFROM Contact\nWHERE LastName = 'x' ORDER LastName", "MALFORMED_QUERY",
     "\nWHERE LastName = 'x' ORDER LastName\n                     ^\nERROR at Row:3:Column:22\n"
     "unexpected token: 'ORDER'"),
    ("SELECT Id, Account.Foo FROM Contact", "INVALID_FIELD",
     "\nSELECT Id, Account.Foo FROM Contact\n           ^\nERROR at Row:1:Column:12\nNo such column 'Foo' on entity "
     "'Account'. If you are attempting to use a custom field, be sure to append the '__c' after the custom field "
     "name. Please reference your WSDL or the describe call for the appropriate names."),
    ("SELECT Id, Acount.Name FROM Contact", "INVALID_FIELD",
     "\nSELECT Id, Acount.Name FROM Contact\n           ^\nERROR at Row:1:Column:12\nDidn't understand relationship "
     "'Acount' in field path. If you are attempting to use a custom relationship, be sure to append the '__r' "
     "after the custom relationship name. Please reference your WSDL or the describe call for the appropriate "
     "names."),
    ("SELECT Id FROM Contact WHERE SystemModstamp > '2024-01-01T00:00:00Z'", "INVALID_FIELD",
     "\nSELECT Id FROM Contact WHERE SystemModstamp > '2024-01-01T00:00:00Z'\n                             ^\n"
     "ERROR at Row:1:Column:30\nvalue of filter criterion for field 'SystemModstamp' must be of type dateTime and "
     "should not be enclosed in quotes"),
    ("SELECT Id FROM Contact WHERE SystemModstamp > 2024-01-01", "INVALID_FIELD", None),
    ("SELECT Id FROM Contact WHERE Birthdate > 2024-01-01T00:00:00Z", "INVALID_FIELD", None),
    ("SELECT Id FROM Contact WHERE Birthdate = '1815-12-10'", "INVALID_FIELD", None),
    ("SELECT Id FROM Contact WHERE HasOptedOutOfEmail = 'true'", "INVALID_FIELD", None),
    ("SELECT Id FROM Contact WHERE LastName = 5", "INVALID_FIELD", None),
    ("SELECT Id FROM Contact WHERE LastName = TODAY", "INVALID_FIELD", None),
    ("SELECT Id FROM Account WHERE AnnualRevenue > '5'", "INVALID_FIELD",
     "\nSELECT Id FROM Account WHERE AnnualRevenue > '5'\n                             ^\nERROR at Row:1:Column:30\n"
     "value of filter criterion for field 'AnnualRevenue' must be of type double and should not be enclosed in "
     "quotes"),
    ("SELECT Id FROM Contact WHERE MailingAddress = null", "INVALID_FIELD", None),
    ("SELECT Id FROM Contact ORDER BY MailingAddress", "INVALID_FIELD", None),
    ("SELECT Id FROM Contact ORDER BY Interests__c", "INVALID_FIELD", None),
    ("SELECT Id, LastName, lastname FROM Contact", "INVALID_FIELD", None),
    ("SELECT Id FROM Contact WHERE Id LIKE '003%'", "INVALID_QUERY_FILTER_OPERATOR", None),
    ("SELECT Id FROM Contact WHERE LastName INCLUDES ('x')", "INVALID_QUERY_FILTER_OPERATOR", None),
    ("SELECT Id FROM Contact WHERE FirstName = 'a' AND LastName = 'b' OR LastName = 'c'", "MALFORMED_QUERY",
     "\nSELECT Id FROM Contact WHERE FirstName = 'a' AND LastName = 'b' OR LastName = 'c'\n"
     + " " * 64 + "^\nERROR at Row:1:Column:65\nunexpected token: 'OR'"),
    ("SELECT Id FROM Account WHERE Name = 'x' OR 1=1 --'", "MALFORMED_QUERY",
     "\nSELECT Id FROM Account WHERE Name = 'x' OR 1=1 --'\n" + " " * 43 + "^\nERROR at Row:1:Column:44\n"
     "unexpected token: '1'"),
    ("SELECT Id FROM Account WHERE Name = 'Acme''", "MALFORMED_QUERY", None),
    ("SELECT Id FROM Account WHERE Name = 'Acme", "MALFORMED_QUERY", None),
    ("SELECT Id FROM Account WHERE Name = 'a\\qb'", "MALFORMED_QUERY", None),
    ("SELECT * FROM Contact", "MALFORMED_QUERY", None),
    ("SELECT Id, FROM Contact", "MALFORMED_QUERY", None),
    ("SELECT COUNT(Id) FROM Contact", "MALFORMED_QUERY", None),
    ("SELECT Id, COUNT() FROM Contact", "MALFORMED_QUERY", None),
    ("SELECT Id FROM Contact WHERE Id IN :ids", "MALFORMED_QUERY", None),
    ("SELECT Id FROM Contact WHERE Id IN ()", "MALFORMED_QUERY", None),
    ("SELECT Id FROM Contact WHERE SystemModstamp > 2024-01-01T00:00:00", "MALFORMED_QUERY", None),
    ("SELECT Id FROM Contact WHERE Birthdate > 2024-13-01", "MALFORMED_QUERY", None),
    ("SELECT Id FROM Contact WHERE SystemModstamp = LAST_N_DAYS", "MALFORMED_QUERY", None),
    ("SELECT Id FROM Contact LIMIT -1", "MALFORMED_QUERY", None),
    ("SELECT Id FROM Contact LIMIT 5 LIMIT 5", "MALFORMED_QUERY", None),
    ("SELECT Id FROM Contact OFFSET 2001", "NUMBER_OUTSIDE_VALID_RANGE", None),
    ("SELECT Id FROM Contact GROUP BY LastName", "MALFORMED_QUERY", None),
    ("SELECT Id, (SELECT Id FROM Contacts) FROM Account", "MALFORMED_QUERY", None),
    ("", "MALFORMED_QUERY", "\n\n^\nERROR at Row:1:Column:1\nunexpected token: <EOF>"),
]


@pytest.mark.parametrize("soql, code, message", ERRORS, ids=lambda v: str(v)[:70])
def test_query_errors(conn: sqlite3.Connection, model: Model, soql: str, code: str, message: str | None) -> None:
    with pytest.raises(SoqlError) as info:
        run(conn, model, soql)
    assert info.value.error_code == code
    if message is not None:
        assert info.value.message == message
    assert str(info.value) == info.value.message


def test_duplicate_field_message(conn: sqlite3.Connection, model: Model) -> None:
    with pytest.raises(SoqlError) as info:
        run(conn, model, "SELECT Id, Name, id FROM Account")
    assert (info.value.error_code, info.value.message) == ("INVALID_FIELD", "duplicate field selected: Id")


def test_record_shape_with_relationships(conn: sqlite3.Connection, model: Model) -> None:
    result = run(conn, model, f"SELECT id, firstname, Account.Name, ACCOUNT.owner.NAME, HasOptedOutOfEmail, Birthdate "
                              f"FROM contact WHERE Id IN ('{C['C2']}', '{C['C4']}') ORDER BY LastName")
    assert result.columns == ["Id", "FirstName", "Account.Name", "Account.Owner.Name", "HasOptedOutOfEmail",
                              "Birthdate"]
    assert result.records == [
        {"attributes": {"type": "Contact", "url": f"/services/data/v59.0/sobjects/Contact/{C['C2']}"},
         "Id": C["C2"], "FirstName": "Grace",
         "Account": {"attributes": {"type": "Account", "url": f"/services/data/v59.0/sobjects/Account/{A['A1']}"},
                     "Name": "Acme",
                     "Owner": {"attributes": {"type": "User", "url": f"/services/data/v59.0/sobjects/User/{U1}"},
                               "Name": "Ursula Admin"}},
         "HasOptedOutOfEmail": True, "Birthdate": "1906-12-09"},
        {"attributes": {"type": "Contact", "url": f"/services/data/v59.0/sobjects/Contact/{C['C4']}"},
         "Id": C["C4"], "FirstName": None, "Account": None, "HasOptedOutOfEmail": False, "Birthdate": None},
    ]
    assert list(result.records[0]) == ["attributes", "Id", "FirstName", "Account", "HasOptedOutOfEmail", "Birthdate"]
    assert list(result.flat_rows()) == [
        [C["C2"], "Grace", "Acme", "Ursula Admin", "true", "1906-12-09"],
        [C["C4"], None, None, None, "false", None],
    ]


def test_polymorphic_owner_and_idless_parent(conn: sqlite3.Connection, model: Model) -> None:
    result = run(conn, model, "SELECT Owner.Name, AnnualRevenue, NumberOfEmployees FROM Account "
                              "WHERE Name IN ('Acme', 'Globex', '50% Off') ORDER BY Name", api_version="61.0")
    assert [r["Owner"] for r in result.records] == [
        None,
        {"attributes": {"type": "User", "url": f"/services/data/v61.0/sobjects/User/{U1}"}, "Name": "Ursula Admin"},
        {"attributes": {"type": "Group", "url": f"/services/data/v61.0/sobjects/Group/{G1}"}, "Name": "Sales Queue"},
    ]
    assert [r["attributes"]["url"] for r in result.records] == [
        f"/services/data/v61.0/sobjects/Account/{A[a]}" for a in ("A6", "A1", "A2")]
    assert [(r["AnnualRevenue"], r["NumberOfEmployees"]) for r in result.records] == [
        (None, 3), (1000000.0, 50), (250000.0, 10)]
    assert isinstance(result.records[1]["NumberOfEmployees"], int)
    assert isinstance(result.records[1]["AnnualRevenue"], float)
    assert list(result.records[0]) == ["attributes", "Owner", "AnnualRevenue", "NumberOfEmployees"]


def test_formula_and_compound_address(conn: sqlite3.Connection, model: Model) -> None:
    result = run(conn, model, f"SELECT Full_Name__c, MailingAddress, Account.Label__c FROM Contact "
                              f"WHERE Id IN ('{C['C1']}', '{C['C2']}') ORDER BY Id")
    assert result.records[0]["Full_Name__c"] == "Ada Lovelace"
    assert result.records[0]["MailingAddress"] == {
        "city": "London", "country": "UK", "geocodeAccuracy": None, "latitude": None, "longitude": None,
        "postalCode": "EC1A 1BB", "state": None, "street": "12 Main St"}
    assert result.records[0]["Account"]["Label__c"] == "Acme [Technology]"
    assert result.records[1]["MailingAddress"] is None
    assert result.compound_fields == ["MailingAddress"]
    assert result.columns == ["Full_Name__c", "MailingAddress", "Account.Label__c"]
    first, second = result.flat_rows()
    assert first[0] == "Ada Lovelace" and '"city": "London"' in first[1]
    assert second == ["Grace Hopper", None, "Acme [Technology]"]


def _flattened(record: dict | None, column: str) -> object:
    """A column of a REST record the way a Bulk CSV shows it (the reference for flat_rows)."""
    value: object = record
    for key in column.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, dict) else value


@pytest.mark.parametrize("soql", [
    "SELECT Id, FirstName, Account.Name, Account.Owner.Name, HasOptedOutOfEmail, Birthdate FROM Contact",
    "SELECT Owner.Name, AnnualRevenue, NumberOfEmployees, Name FROM Account",
    "SELECT Full_Name__c, MailingAddress, Account.Label__c, Account.Owner.Name, Interests__c FROM Contact",
])
def test_flat_rows_are_the_rest_records_flattened(conn: sqlite3.Connection, model: Model, soql: str) -> None:
    """Bulk reads its rows straight from SQL (no REST record is built); they must be the records' values."""
    with_records = run(conn, model, soql)
    without = run(conn, model, soql, records=False)
    expected = [[_flattened(r, c) for c in with_records.columns] for r in with_records.records]
    assert len(expected) >= 3 and without.records == []
    assert list(with_records.flat_rows()) == expected
    assert list(without.flat_rows()) == expected
    # every kind of value the flat rows carry shows up in these queries: text, null, 'true'/'false', numbers
    kinds = {type(v).__name__ for row in expected for v in row}
    assert {"str", "NoneType"} <= kinds


def test_count(conn: sqlite3.Connection, model: Model) -> None:
    result = run(conn, model, "SELECT COUNT() FROM Contact")
    assert (result.total_size, result.records, result.columns) == (len(LIVE_CONTACTS), [], [])
    assert run(conn, model, "select count ( ) from Contact where Account.Name = 'Acme'").total_size == 3
    assert run(conn, model, "SELECT COUNT() FROM Contact LIMIT 2").total_size == 2
    assert run(conn, model, "SELECT COUNT() FROM Contact", include_deleted=True).total_size == len(CONTACTS)


def test_query_all_includes_deleted_rows(conn: sqlite3.Connection, model: Model) -> None:
    soql = "SELECT Id, IsDeleted FROM Contact WHERE IsDeleted = true"
    assert run(conn, model, soql).records == []
    deleted = run(conn, model, soql, include_deleted=True)
    assert names(deleted) == ["C6"] and deleted.records[0]["IsDeleted"] is True
    accounts = run(conn, model, "SELECT Id FROM Account WHERE Industry = 'Retail'", include_deleted=True)
    assert sorted(names(accounts)) == ["A4", "A5", "A6"]


def test_organization_is_sandbox(conn: sqlite3.Connection, model: Model) -> None:
    result = run(conn, model, "SELECT IsSandbox FROM Organization LIMIT 1")
    assert result.records == [{"attributes": {"type": "Organization",
                                              "url": "/services/data/v59.0/sobjects/Organization/00D000000000001AAA"},
                               "IsSandbox": True}]


def test_default_now_is_current_time(conn: sqlite3.Connection, model: Model) -> None:
    # C8 is stamped 2024-06-16; measured against the real clock it is in the past.
    result = execute(conn, model, "SELECT Id FROM Contact WHERE SystemModstamp < TODAY AND LastName = 'Liskov'")
    assert names(result) == ["C8"]


def test_parse_ast() -> None:
    q = parse("SELECT Id, Account.Name FROM Contact WHERE NOT (A = 1 OR B IN ('x', null)) "
              "ORDER BY Name DESC NULLS FIRST LIMIT 5 OFFSET 10")
    assert [getattr(s, "parts") for s in q.select] == [("Id",), ("Account", "Name")]
    assert (q.object_name, q.limit, q.offset) == ("Contact", 5, 10)
    assert q.order_by[0].descending and q.order_by[0].nulls_first
    assert type(q.where).__name__ == "Not"
    assert [v.kind for v in q.where.item.items[1].values] == ["string", "null"]  # type: ignore[union-attr]
