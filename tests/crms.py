"""Tests that run one feature against several CRMs: each CRM's sandbox started through its connector's kit, a
logged-in client, and a `Profile` — the few names a CRM-neutral test needs (tables, a picklist, a multi-select,
the primary key field), which differ by CRM. Everything else such a test does goes through the connector.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from crmsync import connectors, process
from crmsync.connectors import AccountBase, Client, Connector, RunningSandbox


@dataclass(frozen=True)
class Profile:
    """What a CRM-neutral test names per CRM."""

    tables: tuple[str, str]  # (accounts, contacts) as the wizard lists them
    key: str  # the primary key field of those tables as the API names it ({table} stands for the table)
    last_name: str  # the contact's last-name field
    email: str  # the contact's email field
    picklist: tuple[str, str, str]  # (table, field, its enumeration's name)
    picklist_value: tuple[str, str]  # (value as the API writes it, its label) of that picklist
    multi_select: tuple[str, str] | None  # (contact field, its enumeration) when the CRM has one
    skipped: tuple[str, str] | None = None  # (field, CRM type) the wizard cannot mirror, when the CRM has one
    refuses_malformed_ids: bool = True  # a delete by an id no record can have is refused (False: "already gone")

    def key_of(self, table: str) -> str:
        return self.key.format(table=table)


PROFILES: dict[str, Profile] = {
    "salesforce": Profile(("Account", "Contact"), "Id", "LastName", "Email",
                          ("Account", "Industry", "Account_Industry"), ("Banking", "Banking"),
                          ("Interests__c", "Contact_Interests__c"), ("MailingAddress", "address")),
    "dynamics": Profile(("account", "contact"), "{table}id", "lastname", "emailaddress1",
                        ("account", "industrycode", "industrycode"), ("16", "Financial"),
                        ("crmsync_interests", "contact_crmsync_interests")),
    "oracle": Profile(("Account", "Contact"), "Id", "ContactLastName", "ContactEmail",
                      ("Contact", "ContactType", "Contact_ContactType"), ("Customer", "Customer"), None,
                      refuses_malformed_ids=False),  # OOD row ids have no fixed form: a delete of one not there is done
}


@dataclass
class CrmUnderTest:
    """One CRM's sandbox, started through its connector's kit, with a client of our own."""

    type: str
    connector: Connector
    running: RunningSandbox
    account: AccountBase
    client: Client
    profile: Profile

    def field(self, campaign_column: str) -> str:
        """The CRM field the connector's shipped contacts mapping puts a recipients column in."""
        mapping = next(m for m in self.connector.default_mappings("any") if m["campaign_table"] == "recipients")
        return next(f["crm"] for f in mapping["fields"] if f["campaign"] == campaign_column)

    def account_add_args(self, name: str) -> tuple[list[str], dict[str, str]]:
        """`crmsync account add NAME …` arguments for this sandbox, and the environment carrying its secrets."""
        model = self.connector.account_model
        secrets = {k for k, f in model.model_fields.items() if "SecretStr" in str(f.annotation)}
        args = ["account", "add", name, "--type", self.type]
        env = {}
        for key, value in self.running.account.items():
            if key == "type" or value is None:
                continue
            if key in secrets:
                env[f"CRMSYNC_ACCOUNT_{key.upper()}"] = str(value)
            else:
                args += ["--set", f"{key}={value}"]
        return args, env


def start_crm(type_name: str, state: Path, seed_contacts: int = 0) -> Iterator[CrmUnderTest]:
    """Fixture body: the CRM's sandbox and a client, both stopped afterwards."""
    connector = connectors.connector(type_name)
    kit = connector.sandbox()
    assert kit is not None, f"connector {type_name!r} ships no sandbox"
    running = kit.start(state, seed_contacts=seed_contacts, log_file=state / "sandbox.log")
    try:
        account = connector.account_model.model_validate(running.account)
        client = connector.client(f"test_{type_name}", account)
        try:
            yield CrmUnderTest(type_name, connector, running, account, client, PROFILES[type_name])
        finally:
            client.close()
    finally:
        if running.process is not None:
            process.stop(running.process)


def sandbox_admin(running: RunningSandbox, path: str, body: dict[str, Any]) -> Any:
    from tests.connectors.harnesses import sandbox_admin as admin

    return admin(running, path, body)
