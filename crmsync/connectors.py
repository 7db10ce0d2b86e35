"""The connector interface: everything a CRM provides so that crmsync can sync it without the engine knowing
which CRM it is — and the registry that finds connectors by their account `type`.

Why one module: the streams, the generic CRM poller and writer services, drift repair, the wizard, the workflow
activity, the CLI and the dashboard all meet a CRM only through these protocols. A CRM's specifics (its API,
its query language, its field types, its system fields, its sandbox) live in its connector package
(`connectors/<crm>/`), which registers itself under the entry-point group ``crmsync.connectors``::

    [project.entry-points."crmsync.connectors"]
    salesforce = "connectors.salesforce:CONNECTOR"

so a CRM can also ship as a separate package. Tests register an in-memory connector with `register()`.

The neutral change (what a change source publishes, what the streams read): an envelope `Change` with
``side="crm"``, ``source`` = the account name, ``object`` = the CRM object, ``key = {"id": <CRM id>}`` and
``position = {"ts": <ISO 8601 modification time, UTC>, "id": <CRM id>, …}``. The streams order a record's
changes by ``position["ts"]`` and never read a CRM field name. ``after`` holds the record's fields as the CRM
names them (None for a delete).

Invariants every connector keeps (the conformance suite, tests/connectors/, checks them against its sandbox):

- A change source delivers every create, update and delete of an object exactly once across pages, ties on the
  modification time and restarts from any cursor it handed out (`SourcePage.cursor` is stored by the caller only
  after the page's changes were acknowledged by the broker). A first read (cursor None) is a snapshot: op 'r'.
- A sink applies groups of commands and answers one outcome per command, in order: a refused record never fails
  the others; a transient failure (rate limit, 5xx, timeout) is retried inside the client and, if it persists,
  raised (the whole batch is consumed again). Updates honour `ApplyCommand.expect` (compare-and-set): fields the
  CRM no longer holds as expected are left out and named in `SinkOutcome.superseded`.
- Every call goes through the client's one call path: retry with back-off, the API budget counted (`usage()`),
  secrets scrubbed from every error message.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Protocol, Sequence, TypeVar, runtime_checkable
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from crmsync.envelope import ApplyCommand, Change
from crmsync.filters import Node
from crmsync.values import Kind, shown

ENTRY_POINT_GROUP = "crmsync.connectors"


# -- accounts ------------------------------------------------------------------------------------------------
URL_MAX = 2048  # characters of an account URL


def https_url(value: str) -> str:
    """An account URL: https only (crmsync talks to CRMs over HTTPS only), a host name (IDNA) or address, a port
    from 1 to 65535, nothing a request line cannot carry, no credentials; without a trailing slash. The error
    says what is wrong without repeating a long value whole (or credentials at all)."""
    if not value.startswith("https://"):
        raise ValueError(f"must be an https:// URL (got {shown(value)}); crmsync talks to CRMs over HTTPS only")
    if len(value) > URL_MAX or any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError(f"{shown(value)} is not a usable URL: at most {URL_MAX} characters, no spaces or control "
                         "characters")
    parts = urlsplit(value)
    if "@" in parts.netloc:
        raise ValueError("credentials do not belong in the URL: use the account's own settings for them")
    try:
        parts.port
        host = parts.hostname or ""
        host.encode("idna")
    except (ValueError, UnicodeError):
        raise ValueError(f"{shown(value)}: the host must be a host name or an address and the port a number from "
                         "1 to 65535") from None
    if not host:
        raise ValueError(f"{shown(value)}: the URL names no host")
    return value.rstrip("/")


class AccountBase(BaseModel):
    """What every CRM account model shares. A connector's model adds its own fields (https URLs only; secrets as
    pydantic SecretStr) and fixes ``type`` to its own name with a Literal."""

    model_config = ConfigDict(extra="forbid")
    type: str
    ca_file: Path | None = None  # an extra CA to trust (e.g. the local sandbox CA); TLS verification stays on
    # The API calls per day the poller may spend polling this account (services/crm_poller/budget.py); None: a
    # share of the CRM's own daily limit as its client reports it (`Client.usage()`), no pacing if it reports none.
    api_budget_per_day: int | None = Field(None, gt=0)
    api_budget_share: float = Field(0.5, gt=0, le=1)

    @model_validator(mode="after")
    def _no_control_characters(self) -> "AccountBase":
        """A NUL or another control character cannot travel in a login form, a header or a URL: refused here
        with the setting's name (never its value) rather than failing inside a login. Line breaks and tabs stay
        allowed (PEM text holds them)."""
        for name in type(self).model_fields:
            value = getattr(self, name)
            text = value.get_secret_value() if isinstance(value, SecretStr) else value
            if isinstance(text, str) and any((ord(c) < 32 and c not in "\t\n\r") or ord(c) == 127 for c in text):
                raise ValueError(f"{name}: must not contain control characters (such as NUL)")
        return self

    def secrets(self) -> list[str]:
        """Every secret value of the account (SecretStr fields), longest first; with two or more, also each
        pair joined (Salesforce sends password + security token as one)."""
        values = [v.get_secret_value() for v in (getattr(self, n) for n in type(self).model_fields)
                  if isinstance(v, SecretStr) and v.get_secret_value()]
        joined = [a + b for a in values for b in values if a is not b]
        return sorted({*values, *joined}, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        """`text` with every secret of the account replaced by [redacted] (error messages, logs)."""
        for secret in self.secrets():
            text = text.replace(secret, "[redacted]")
        return text


# -- describing a CRM ----------------------------------------------------------------------------------------
# What a CRM API name can be (Salesforce: "letters, numbers, and underscores … must begin with a letter",
# https://help.salesforce.com/s/articleView?id=sf.custom_field_attributes.htm; Dynamics' logical names and
# Oracle's integration tags fit too). Names from a describe go into queries and mirror DDL: anything else is
# refused rather than trusted.
API_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,254}")


class UnsafeName(ValueError):
    """A describe named a table or field with something no CRM API name can be."""


def check_api_name(name: str, kind: str, table: str | None = None) -> str:
    """`name` when it is a possible CRM API name; else UnsafeName saying which and why it is refused."""
    if not isinstance(name, str) or not API_NAME.fullmatch(name):
        where = f" of {table!r}" if table else ""
        raise UnsafeName(f"the CRM described {kind} {name!r}{where}, which is not a CRM API name (letters, digits "
                         "and underscores, starting with a letter); crmsync does not put it into SQL or queries")
    return name


# The SQL types a mirror column can have (as PostgreSQL's format_type() prints them): each connector maps its
# CRM's field types onto these, and the wizard's DDL is made of nothing else.
MIRROR_PG_TYPES = frozenset({"text", "text[]", "boolean", "integer", "bigint", "double precision", "numeric", "date",
                             "timestamp with time zone", "time without time zone", "jsonb"})


@dataclass
class Enumeration:
    """A picklist (choice) of the CRM: its values as the API writes them, with labels."""

    name: str
    label: str
    multiple: bool  # multi-select
    values: list[dict[str, str]]  # {name, label, value}


@dataclass
class FieldSpec:
    """One CRM field, neutrally: the wizard makes a mirror column of `pg_type`, the streams compare in `kind`."""

    name: str
    label: str
    crm_type: str  # the CRM's own type name (shown to users, stored in crmsync.crm_fields)
    pg_type: str  # mirror column type as format_type() prints it ('text', 'text[]', 'numeric', ...)
    calculated: bool = False
    enumeration: str | None = None  # name of the object's Enumeration, for picklists
    kind: Kind = "text"
    updateable: bool = True
    external_id: bool = False


@dataclass
class TableInfo:
    name: str
    label: str


@dataclass
class TableSpec:
    """One CRM table as the wizard mirrors it. `key` is its primary key field as the API names it in records (the
    mirror table's primary key; every connector states it — CRMs differ: `Id`, `<table>id`, …)."""

    name: str
    label: str
    fields: list[FieldSpec]
    enumerations: list[Enumeration] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (field, CRM type) not mirrored
    key: str = field(kw_only=True)


class Discovery(Protocol):
    """The CRM's tables and fields (the wizard, enumeration sync, the change sources' field kinds)."""

    namespace: str  # schema prefix of the mirror tables: sfdc | mscrm | ood
    connector_label: str  # "Salesforce", "Microsoft CRM", "Oracle On Demand"

    def list_tables(self) -> list[TableInfo]: ...

    def describe_table(self, name: str) -> TableSpec: ...

    def rows(self, table: str, fields: list[str]) -> Iterator[list[dict[str, Any]]]:
        """Current records, page by page, with the given fields only."""
        ...


# -- reading changes -----------------------------------------------------------------------------------------
@dataclass
class SourcePage:
    """Changes to publish, then the cursor to store once the broker acknowledged them."""

    changes: list[Change]
    cursor: dict[str, Any]
    snapshot_done: bool = False  # the first full read ends with this page: Campaign-only records may be exported


class ChangeSource(Protocol):
    """The changes of one object of one account (see the module docstring for the guarantees)."""

    obj: str

    def read(self, cursor: dict[str, Any] | None) -> Iterator[SourcePage]:
        """Every change since `cursor`, page by page, oldest first (None: a snapshot of every record, op 'r')."""
        ...

    def fields(self) -> dict[str, FieldSpec]:
        """The object's fields as the CRM describes them now (kinds go to crmsync.crm_fields)."""
        ...


@runtime_checkable
class PushSource(ChangeSource, Protocol):
    """A change source the CRM pushes changes to (a subscription, e.g. Salesforce's Change Data Capture), instead
    of one the poller asks on a timer. Same `read(cursor)` contract; in addition:

    - `read` returns once the subscription has been quiet for a moment (a read right after writes delivers them
      if the CRM pushes them within that moment), and never blocks much longer than that;
    - reading while nothing arrived costs no API call (the poller reads push sources whenever `wakeup` fires and
      on its timer, without pacing them);
    - `wakeup(event)`: the source sets `event` whenever changes are waiting to be read, and `pending()` says
      whether some are (or the subscription needs attention): the poller reads only those;
    - `close()` ends the subscription."""

    def wakeup(self, event: threading.Event) -> None: ...

    def pending(self) -> bool: ...

    def close(self) -> None: ...


# -- writing ---------------------------------------------------------------------------------------------------
@dataclass
class SinkOutcome:
    """What happened to one command."""

    command: ApplyCommand
    ok: bool
    crm_id: str | None = None
    created: bool = False
    code: str | None = None  # the CRM's error code when refused
    message: str = ""
    superseded: list[str] = field(default_factory=list)  # fields left alone (compare-and-set)
    refused_fields: dict[str, str] = field(default_factory=dict)  # field -> why the CRM cannot take its value;
    # the command's other fields were written (ok=True): the writer rejects just these, with the reasons


P = TypeVar("P")


def plan_commands(commands: Sequence[ApplyCommand],
                  plan: Callable[[int, ApplyCommand], "SinkOutcome | P"]) -> tuple[dict[int, SinkOutcome], list[P]]:
    """A sink's first step: plan each command of a batch (`plan(index, command)`); returns the outcomes of the
    commands refused while planning, by index, and the plans of the others, in order."""
    refused: dict[int, SinkOutcome] = {}
    plans: list[P] = []
    for index, command in enumerate(commands):
        planned = plan(index, command)
        if isinstance(planned, SinkOutcome):
            refused[index] = planned
        else:
            plans.append(planned)
    return refused, plans


class Sink(Protocol):
    """Carries out apply commands against the CRM, in batches, one outcome per command in order. A command's
    `key` is {"id": <CRM id>} when the record is known; `match` names the external-id field and the Campaign
    key otherwise (an idempotent upsert)."""

    def apply(self, commands: Sequence[ApplyCommand]) -> list[SinkOutcome]: ...


# -- querying (drift repair, the workflow activity) ------------------------------------------------------------
@dataclass
class DeletedRecord:
    id: str
    deleted_at: str  # ISO 8601


class RecordQuery(Protocol):
    """Records by a neutral filter tree (crmsync/filters.py), rendered by the connector in the CRM's own query
    language (Salesforce's, OData $filter, Oracle's search specification), with every literal escaped there."""

    def records(self, obj: str, fields: Sequence[str], where: Node | None = None,
                order_by: Sequence[tuple[str, bool]] = (), include_deleted: bool = False,
                ids: Sequence[str] | None = None) -> Iterator[list[dict[str, Any]]]:
        """Pages of records with `fields` (the id always included, as "id"); `order_by` = (field, descending)."""
        ...

    def deleted(self, obj: str, start: str, end: str) -> list[DeletedRecord]:
        """Records deleted in [start, end) (ISO 8601), as far back as the CRM keeps them; a window beyond that
        raises ValueError naming the limit."""
        ...


# -- the API client ------------------------------------------------------------------------------------------
@dataclass
class ApiUsage:
    """The API budget as the CRM reports it (remaining/limit None when it does not say)."""

    calls: int  # calls this process made
    remaining: int | None = None
    limit: int | None = None
    window: str = "day"  # the budget's period: "day" (Salesforce), "5 minutes" (Dataverse), "minute" (Oracle)


@runtime_checkable
class Client(Protocol):
    account_name: str

    def usage(self) -> ApiUsage: ...

    def whoami(self) -> dict[str, str]:
        """Who the client is logged in as, for `crmsync account test`: organization, user, api_version."""
        ...

    def close(self) -> None: ...


# -- the sandbox -----------------------------------------------------------------------------------------------
@dataclass
class RunningSandbox:
    """A CRM sandbox started as a child process (stop it with crmsync.process.stop(process))."""

    process: Any  # subprocess.Popen
    url: str
    ca_file: Path
    account: dict[str, Any]  # account settings that reach it (type, URL, credentials, ca_file)
    admin_token: str

    def stats(self) -> dict[str, Any]:
        """The sandbox's request and write counters (its /__sandbox/stats)."""
        import ssl

        import httpx

        answer = httpx.get(f"{self.url}/__sandbox/stats", headers={"X-Sandbox-Admin": self.admin_token},
                           verify=ssl.create_default_context(cafile=str(self.ca_file)), timeout=10)
        answer.raise_for_status()
        return answer.json()

    def writes(self) -> int:
        return sum(sum(ops.values()) for ops in self.stats()["writes"].values())


class SandboxKit(Protocol):
    def start(self, state_dir: Path, *, seed_contacts: int = 0, log_file: Path | None = None) -> RunningSandbox:
        """Start the sandbox (state under `state_dir`/sandboxes, a child process that dies with this one) and
        return once it answers HTTPS."""
        ...

    def attach(self, url: str, ca_file: Path) -> RunningSandbox:
        """A sandbox started by another process, if it answers at `url` (ValueError otherwise); not ours to stop."""
        ...

    def refused_contact_values(self) -> dict[str, Any]:
        """Campaign recipient values (by column) this sandbox's rules refuse once they reach it: the demo
        scenario shows such a record landing in the rejects ledger while the rest flows."""
        ...


# -- the connector ---------------------------------------------------------------------------------------------
class Connector(Protocol):
    """One CRM type. Attributes are data; methods build the parts for one account."""

    type: ClassVar[str]  # the account `type:` in crmsync.yaml
    label: ClassVar[str]  # for people: "Salesforce"
    account_model: ClassVar[type[AccountBase]]
    default_external_id: ClassVar[str | None]  # field holding the Campaign key (idempotent creates)
    system_fields: ClassVar[frozenset[str]]  # never mapped, never written
    index_fields: ClassVar[tuple[str, ...]]  # modification-stamp fields (incremental imports), preferred first
    stamp_resolution: ClassVar[float]  # seconds one modification stamp stands for: 0.001 (ms), 1.0 (whole seconds)
    deleted_flag: ClassVar[str | None]  # field marking a deleted record a query may return (None: never returned)
    multi_select_separator: ClassVar[str]  # how the API writes a multi-select value ('a;b': ";")
    # The CRM's error codes for a value it can never take as it is (too long, not an email, not in a restricted
    # picklist): retrying the same command cannot help, so its reject is abandoned at once instead of retried for
    # minutes while the record's later edits wait behind it; `crmsync rejects retry` still requeues it by hand.
    value_error_codes: ClassVar[frozenset[str]]
    objects: ClassVar[dict[str, str]]  # the seed objects: "contacts" | "accounts" | "opportunities" -> object name
    # Optional: the change-source modes the connector offers, polling first ("poll", then push modes such as
    # Salesforce's "cdc"); `change_source(..., mode=...)` picks one. Without it a connector has one mode.
    source_modes: ClassVar[tuple[str, ...]]
    # Optional (False without it): a reference can be written as its parent's external id — an ApplyCommand
    # value {"$ref": {"object": "Account", "external_id": {"Campaign_Key__c": "42"}}} that the CRM resolves when
    # it writes the record (Salesforce's relationship by external id). The streams then send a new Campaign row
    # whose parent's create is on its way without waiting until the parent's CRM id is read back; the sink
    # writes the parents of a batch before their children.
    references_by_external_id: ClassVar[bool]

    def client(self, account_name: str, account: AccountBase) -> Client: ...

    def change_source(self, client: Client, obj: str, **options: Any) -> ChangeSource:
        """`options` may hold `mode` (one of `source_modes`; absent: the connector's choice for this object)."""
        ...

    def sink(self, client: Client, *, assignment_rule: str | None = None, bulk: bool | None = None,
             **options: Any) -> Sink:
        """`assignment_rule` and `bulk` are the workflow activity's options (a CRM without them ignores them)."""
        ...

    def discovery(self, client: Client) -> Discovery: ...

    def query(self, client: Client) -> RecordQuery: ...

    def sandbox(self) -> SandboxKit | None: ...

    def default_mappings(self, account_name: str) -> list[dict[str, Any]]:
        """The shipped mappings (contacts, accounts, purchases) for this CRM, as crmsync.yaml would hold them."""
        ...

    def api_error(self, exc: BaseException) -> tuple[str, str] | None:
        """(the CRM's error code, its message) when `exc` is the CRM refusing a call; None for anything else."""
        ...


def mappings_file(path: Path, account_name: str) -> list[dict[str, Any]]:
    """A connector's shipped mappings (a YAML list like crmsync.yaml's `mappings:`, `{account}` standing for the
    account's name) — how a connector implements `default_mappings`."""
    import yaml

    return yaml.safe_load(path.read_text().replace("{account}", account_name))


# -- the registry ----------------------------------------------------------------------------------------------
_registered: dict[str, Connector] = {}
_loaded = False
_lock = threading.Lock()


def register(connector: Connector) -> None:
    """Make `connector` known in this process (entry points are found without this; tests use it)."""
    _registered[connector.type] = connector


def unregister(type_name: str) -> None:
    _registered.pop(type_name, None)


def _load_entry_points() -> None:
    global _loaded
    with _lock:
        if _loaded:
            return
        for entry in entry_points(group=ENTRY_POINT_GROUP):
            if entry.name not in _registered:
                _registered[entry.name] = entry.load()
        _loaded = True


def connector(type_name: str) -> Connector:
    """The connector of an account type; a clear error naming the known types otherwise."""
    _load_entry_points()
    try:
        return _registered[type_name]
    except KeyError:
        raise KeyError(f"no connector for CRM type {type_name!r} (known: {', '.join(types()) or 'none'}); "
                       f"install its package or check the account's `type:`") from None


def types() -> list[str]:
    _load_entry_points()
    return sorted(_registered)


def for_account(account: AccountBase) -> Connector:
    return connector(account.type)


def references_by_external_id(found: Connector) -> bool:
    """Whether the CRM resolves a reference given as the parent's external id (`Connector.references_by_external_id`;
    False without it)."""
    return bool(getattr(found, "references_by_external_id", False))


def source_modes(found: Connector) -> tuple[str, ...]:
    """The change-source modes a connector offers (`Connector.source_modes`; empty: just its one source)."""
    return tuple(getattr(found, "source_modes", ()))


def close_clients(clients: dict[str, Client]) -> None:
    """Close every client (logging its CRM session off); a failure only leaves a session to time out."""
    for client in clients.values():
        try:
            client.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass
