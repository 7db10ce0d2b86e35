"""The Dynamics 365 (Dataverse) connector: account type `dynamics`, the parts crmsync drives (crmsync/connectors.py).

One `DynamicsClient` per account holds the Web API client (retries, pacing, the budget) and the table catalog
every part reads its metadata from. The parts:

  change_source   source.py     change tracking (delta links), or modifiedon + id where a table has none
  sink            sink.py       *Multiple actions and $batch, upserts by crmsync_campaignkey, compare-and-set
  discovery       discovery.py  tables, typed columns, local and global choices (namespace mscrm)
  query           query.py      the neutral filter as OData $filter; deletions from the audit log
  sandbox         SandboxKit    `crmsync sandbox dynamics` as a child process
"""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any, ClassVar

import yaml

from crmsync.connectors import AccountBase, RunningSandbox

from .auth import DynamicsAccount
from .client import DataverseApiError, DataverseClient
from .discovery import DynamicsDiscovery
from .query import DynamicsQuery
from .schema import Catalog
from .sink import DEFAULT_EXTERNAL_ID, DynamicsSink, SinkOptions
from .source import DynamicsChangeSource, SourceOptions


class DynamicsClient(DataverseClient):
    """The Web API client of one account, with the table catalog its parts share."""

    def __init__(self, account: DynamicsAccount, account_name: str, **options: Any) -> None:
        super().__init__(account, account_name=account_name, **options)
        self.catalog = Catalog(self)

    def whoami(self) -> dict[str, str]:
        """WhoAmI, then the organization's and the user's names (ids when the names cannot be read)."""
        me = self.who_am_i()
        organization, user = me.get("OrganizationId", "?"), me.get("UserId", "?")
        try:
            organization = self.request("GET", f"organizations({organization})?$select=name").json()["name"]
        except (DataverseApiError, KeyError):
            pass
        try:
            user = self.request("GET", f"systemusers({user})?$select=fullname").json()["fullname"]
        except (DataverseApiError, KeyError):
            pass
        return {"organization": str(organization), "user": str(user), "api_version": self.account.api_version}


def _catalog(client: DataverseClient) -> Catalog:
    return getattr(client, "catalog", None) or Catalog(client)


class DynamicsSandboxKit:
    """`crmsync sandbox dynamics` as a child process, and the account settings that reach it."""

    def start(self, state_dir: Path, *, seed_contacts: int = 0, log_file: Path | None = None) -> RunningSandbox:
        """State under `state_dir`/sandboxes/dynamics (the CA one level up, shared by every sandbox)."""
        from sandboxes.launch import launch, seeded_timeout

        launched = launch("dynamics", state_dir / "sandboxes" / "dynamics", ["--seed-contacts", str(seed_contacts)],
                          log_file=log_file, timeout=seeded_timeout(seed_contacts))
        return self._running(launched.process, launched.url, launched.ca_file)

    def attach(self, url: str, ca_file: Path) -> RunningSandbox:
        from sandboxes.launch import answers

        if not answers(url, ca_file):
            raise ValueError(f"no Dynamics 365 sandbox answers at {url}")
        return self._running(None, url, ca_file)

    def refused_contact_values(self) -> dict[str, Any]:
        return {"job_title": "x" * 200}  # contact.jobtitle holds 100 characters: the sandbox refuses more, as Dataverse does

    @staticmethod
    def _running(process: Any, url: str, ca_file: Path) -> RunningSandbox:
        from sandboxes.dynamics.settings import DEFAULT_ADMIN_TOKEN, DEFAULT_CREDENTIALS as creds

        account = {"type": "dynamics", "url": url, "tenant_id": creds.tenant_id, "client_id": creds.client_id,
                   "auth": "client_secret", "client_secret": creds.client_secret, "authority": url,
                   "ca_file": str(ca_file)}
        return RunningSandbox(process, url, ca_file, account, DEFAULT_ADMIN_TOKEN)


class DynamicsConnector:
    type: ClassVar[str] = "dynamics"
    label: ClassVar[str] = "Microsoft Dynamics 365"
    account_model: ClassVar[type[AccountBase]] = DynamicsAccount
    default_external_id: ClassVar[str | None] = DEFAULT_EXTERNAL_ID
    system_fields: ClassVar[frozenset[str]] = frozenset({
        "contactid", "accountid", "opportunityid", "createdon", "createdby", "createdonbehalfby", "modifiedon",
        "modifiedby", "modifiedonbehalfby", "versionnumber", "overriddencreatedon", "importsequencenumber",
        "timezoneruleversionnumber", "utcconversiontimezonecode", "owningbusinessunit", "owninguser",
        "owningteam"})
    index_fields: ClassVar[tuple[str, ...]] = ("modifiedon",)
    stamp_resolution: ClassVar[float] = 1.0  # modifiedon is stamped to the second
    deleted_flag: ClassVar[str | None] = None  # a Web API query never returns a deleted row
    multi_select_separator: ClassVar[str] = ","  # multi-select choices are written "1,2,3"
    # validation (e.g. a string over MaxLength), a choice value not in the option set, a payload of the wrong type
    value_error_codes: ClassVar[frozenset[str]] = frozenset({"0x80044331", "0x8004431a", "0x80048d19"})
    references_by_external_id: ClassVar[bool] = True  # "<navigation>@odata.bind": "/accounts(<alternate key>=…)"
    objects: ClassVar[dict[str, str]] = {"contacts": "contact", "accounts": "account",
                                         "opportunities": "opportunity"}

    def client(self, account_name: str, account: AccountBase) -> DynamicsClient:
        """A signed-in client: the token is obtained and WhoAmI answered, so a wrong secret, an unknown app or an
        unreachable environment is said here (without the secret), not at the first read."""
        if not isinstance(account, DynamicsAccount):
            account = DynamicsAccount.model_validate(account.model_dump())
        client = DynamicsClient(account, account_name)
        try:
            client.who_am_i()
        except BaseException:
            client.close()
            raise
        return client

    def change_source(self, client: Any, obj: str, **options: Any) -> DynamicsChangeSource:
        return DynamicsChangeSource(client, _catalog(client), obj, SourceOptions(**options))

    def sink(self, client: Any, *, assignment_rule: str | None = None, bulk: bool | None = None,
             **options: Any) -> DynamicsSink:
        """The workflow activity's options: the Web API names no assignment rule (Dataverse assigns records by its
        own workflows and plug-ins), so `assignment_rule` is ignored; `bulk` sends every group of one table and
        kind through the *Multiple actions, however small (default: from `multiple_threshold` records)."""
        external_id = options.pop("external_id", DEFAULT_EXTERNAL_ID)
        if bulk:
            options.setdefault("multiple_threshold", 1)
        return DynamicsSink(client, _catalog(client), SinkOptions(**options), external_id=external_id)

    def discovery(self, client: Any) -> DynamicsDiscovery:
        return DynamicsDiscovery(client, _catalog(client))

    def query(self, client: Any) -> DynamicsQuery:
        return DynamicsQuery(client, _catalog(client))

    def sandbox(self) -> DynamicsSandboxKit:
        return DynamicsSandboxKit()

    def api_error(self, exc: BaseException) -> tuple[str, str] | None:
        """(Dataverse's error code, its message) when `exc` is Dataverse refusing a call; None for anything else."""
        if isinstance(exc, DataverseApiError):
            return exc.code or f"HTTP_{exc.status}", exc.message
        return None

    def default_mappings(self, account_name: str) -> list[dict[str, Any]]:
        """contacts ⇄ recipients, accounts ⇄ organisations, purchases ⇄ opportunities (default_mappings.yaml)."""
        mappings = yaml.safe_load(files("connectors.dynamics").joinpath("default_mappings.yaml").read_text())
        return [{**mapping, "account": account_name} for mapping in mappings]
